import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { Connection } from "rabbitmq-client";
import { createMemoryBroker, createRabbitBroker, retryQueueNames, type Broker, type BrokerMessage } from "./broker.js";

const AMQP_URL = process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672";
const RUN_ID = `${Date.now().toString(36)}-${randomBytes(3).toString("hex")}`;
const WAIT_TIMEOUT_MS = 5_000;

interface Backend {
  suite: string;
  kind: Broker["kind"];
  create(): Broker;
  /** Deletes what the tests declared on a real server. */
  cleanup(names: { queues: string[]; exchanges: string[] }): Promise<void>;
}

const backends: Backend[] = [
  {
    suite: "createMemoryBroker()",
    kind: "memory",
    create: () => createMemoryBroker(),
    cleanup: async () => {},
  },
  {
    suite: "createRabbitBroker()",
    kind: "rabbitmq",
    create: () => createRabbitBroker(AMQP_URL, { connectionName: `cowrie-test-${RUN_ID}` }),
    cleanup: deleteRabbitTopology,
  },
];

async function deleteRabbitTopology(names: { queues: string[]; exchanges: string[] }): Promise<void> {
  const admin = new Connection({ url: AMQP_URL, connectionName: `cowrie-test-cleanup-${RUN_ID}` });
  admin.on("error", () => {}); // cleanup is best effort; never crash the test process
  try {
    for (const queue of names.queues) await admin.queueDelete({ queue });
    for (const exchange of names.exchanges) await admin.exchangeDelete({ exchange });
  } finally {
    await admin.close();
  }
}

/** Resolves when `condition` holds, polling; fails the test instead of hanging. */
async function waitUntil(condition: () => boolean, what: string): Promise<void> {
  const deadlineMs = performance.now() + WAIT_TIMEOUT_MS;
  while (!condition()) {
    if (performance.now() > deadlineMs) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

const bytes = (text: string) => new TextEncoder().encode(text);
const text = (body: Uint8Array) => new TextDecoder().decode(body);

for (const backend of backends) {
  describe(backend.suite, () => {
    let broker: Broker;
    const declared = { queues: new Set<string>(), exchanges: new Set<string>() };

    /** Fresh queue and exchange names per test, remembered (with their dead-letter twins) for cleanup. */
    function names(label: string) {
      const suffix = `${RUN_ID}.${label}.${randomBytes(2).toString("hex")}`;
      const queue = `cowrie-test.q.${suffix}`;
      const exchange = `cowrie-test.x.${suffix}`;
      declared.queues.add(queue).add(`${queue}.dead`);
      declared.exchanges.add(exchange).add(`${exchange}.dead`);
      return { queue, exchange };
    }

    before(() => {
      broker = backend.create();
    });

    after(async () => {
      await broker.close();
      await backend.cleanup({ queues: [...declared.queues], exchanges: [...declared.exchanges] });
    });

    it("reports its kind and readiness", async () => {
      assert.equal(broker.kind, backend.kind);
      await waitUntil(() => broker.isReady(), "the broker to be ready");
    });

    it("delivers a published message with its body, routing key, headers and messageId", async () => {
      const { queue, exchange } = names("roundtrip");
      const received: BrokerMessage[] = [];
      const consumer = await broker.consume(
        { queue, exchange, bindingKeys: ["payment.created"], concurrency: 1, deliveryLimit: 3 },
        async (message) => {
          received.push(message);
        },
      );
      const body = new Uint8Array([0, 1, 2, 254, 255]);
      await broker.publish(exchange, "payment.created", body, {
        messageId: "msg-1",
        headers: { "x-tenant": "acme", traceparent: "00-abc-def-01" },
      });
      await waitUntil(() => received.length === 1, "the message");
      await consumer.close();

      const [message] = received;
      assert.ok(message);
      assert.deepEqual([...message.body], [...body]);
      assert.equal(message.routingKey, "payment.created");
      assert.equal(message.messageId, "msg-1");
      assert.equal(message.redelivered, false);
      assert.equal(message.headers["x-tenant"], "acme");
      assert.equal(message.headers.traceparent, "00-abc-def-01");
    });

    it("retries a failing message after each delay, to its own queue only, keeping routing key and headers", async () => {
      const { queue, exchange } = names("retry");
      const other = `${queue}.other`;
      const delays = [150, 300];
      for (const name of [...retryQueueNames(queue, delays), other, `${other}.dead`]) declared.queues.add(name);
      const attempts: { attempt: number; at: number; routingKey: string; tenant?: string }[] = [];
      const otherReceived: string[] = [];
      const started = performance.now();
      const consumers = [
        await broker.consume(
          { queue, exchange, bindingKeys: ["payment.#"], concurrency: 1, deliveryLimit: 5, retryDelaysMs: delays },
          async (message) => {
            attempts.push({ attempt: message.attempt, at: performance.now() - started, routingKey: message.routingKey, tenant: message.headers["x-tenant"] });
            if (message.attempt < 2) throw new Error("not yet");
          },
        ),
        await broker.consume({ queue: other, exchange, bindingKeys: ["payment.#"], concurrency: 1, deliveryLimit: 5 }, async (message) => {
          otherReceived.push(message.messageId);
        }),
      ];
      await broker.publish(exchange, "payment.failed", bytes("x"), { messageId: "retry-1", headers: { "x-tenant": "acme" } });
      await waitUntil(() => attempts.length === 3, "three attempts");
      await sleep(200);
      await Promise.all(consumers.map((consumer) => consumer.close()));
      assert.deepEqual(attempts.map((a) => a.attempt), [0, 1, 2]);
      assert.ok(attempts[1]!.at - attempts[0]!.at >= 140, `first retry after ${attempts[1]!.at - attempts[0]!.at} ms`);
      assert.ok(attempts[2]!.at - attempts[1]!.at >= 290, `second retry after ${attempts[2]!.at - attempts[1]!.at} ms`);
      assert.ok(attempts.every((a) => a.routingKey === "payment.failed" && a.tenant === "acme"));
      assert.deepEqual(otherReceived, ["retry-1"], "the other queue got the event once, retries did not reach it");
    });

    it("reports how many messages wait in a queue", async () => {
      const { queue, exchange } = names("depth");
      const consumer = await broker.consume({ queue, exchange, bindingKeys: ["depth.#"], concurrency: 1, deliveryLimit: 3 }, async () => {});
      await consumer.close(); // the queue stays; nobody takes from it now
      for (const n of [1, 2, 3]) await broker.publish(exchange, "depth.x", bytes(String(n)), { messageId: `depth-${n}` });
      let depth = 0;
      for (let tries = 0; tries < 50 && depth !== 3; tries++) {
        depth = await broker.queueDepth(queue);
        if (depth !== 3) await sleep(20);
      }
      assert.equal(depth, 3);
    });

    it("publishes an unroutable message without error", async () => {
      const { exchange } = names("unroutable");
      await broker.publish(exchange, "nobody.listens", bytes("lost"), { messageId: "msg-unroutable" });
    });

    it("routes by topic pattern: `*` is one word, `#` is zero or more", async () => {
      const { exchange, queue: oneWordQueue } = names("topic");
      const manyWordsQueue = `${oneWordQueue}.many`;
      declared.queues.add(manyWordsQueue).add(`${manyWordsQueue}.dead`);
      const oneWord: string[] = [];
      const manyWords: string[] = [];
      const consumers = [
        await broker.consume(
          { queue: oneWordQueue, exchange, bindingKeys: ["payment.*"], concurrency: 1, deliveryLimit: 3 },
          async (message) => void oneWord.push(message.routingKey),
        ),
        await broker.consume(
          { queue: manyWordsQueue, exchange, bindingKeys: ["payment.#"], concurrency: 1, deliveryLimit: 3 },
          async (message) => void manyWords.push(message.routingKey),
        ),
      ];
      const keys = ["payment.created", "payment.card.captured", "refund.created", "payment", "payments.created"];
      for (const key of keys) await broker.publish(exchange, key, bytes(key), { messageId: key });
      // Both queues match the sentinel; with FIFO and concurrency 1, it arrives after everything else.
      await broker.publish(exchange, "payment.end", bytes("end"), { messageId: "end" });
      await waitUntil(() => oneWord.includes("payment.end") && manyWords.includes("payment.end"), "the sentinel");
      await Promise.all(consumers.map((consumer) => consumer.close()));

      assert.deepEqual(oneWord, ["payment.created", "payment.end"]);
      assert.deepEqual(manyWords, ["payment.created", "payment.card.captured", "payment", "payment.end"]);
    });

    it("redelivers a message whose handler threw, marked redelivered", async () => {
      const { queue, exchange } = names("redeliver");
      const deliveries: BrokerMessage[] = [];
      const consumer = await broker.consume(
        { queue, exchange, bindingKeys: ["#"], concurrency: 1, deliveryLimit: 3 },
        async (message) => {
          deliveries.push(message);
          if (deliveries.length === 1) throw new Error("transient failure");
        },
      );
      await broker.publish(exchange, "payment.created", bytes("retry me"), { messageId: "msg-retry" });
      await waitUntil(() => deliveries.length === 2, "the redelivery");
      await sleep(50); // an acked message must not come back
      await consumer.close();

      assert.equal(deliveries.length, 2);
      assert.deepEqual(
        deliveries.map((m) => [m.messageId, m.redelivered, text(m.body)]),
        [
          ["msg-retry", false, "retry me"],
          ["msg-retry", true, "retry me"],
        ],
      );
    });

    it("dead-letters a message after deliveryLimit failed deliveries", async () => {
      const { queue, exchange } = names("dead");
      const deliveryLimit = 3;
      let attempts = 0;
      const consumer = await broker.consume(
        { queue, exchange, bindingKeys: ["payment.#"], concurrency: 1, deliveryLimit },
        async () => {
          attempts += 1;
          throw new Error("permanent failure");
        },
      );
      const deadLetters: BrokerMessage[] = [];
      const deadConsumer = await broker.consume(
        { queue: `${queue}.dead`, exchange: `${exchange}.dead`, bindingKeys: ["#"], concurrency: 1, deliveryLimit },
        async (message) => void deadLetters.push(message),
      );
      await broker.publish(exchange, "payment.failed", bytes("poison"), {
        messageId: "msg-poison",
        headers: { "x-tenant": "acme" },
      });
      await waitUntil(() => deadLetters.length === 1, "the dead letter");
      await sleep(50); // no further attempts after dead-lettering
      await Promise.all([consumer.close(), deadConsumer.close()]);

      assert.equal(attempts, deliveryLimit);
      const [dead] = deadLetters;
      assert.ok(dead);
      assert.equal(dead.messageId, "msg-poison");
      assert.equal(text(dead.body), "poison");
      assert.equal(dead.routingKey, "payment.failed", "the original routing key is kept");
      assert.equal(dead.headers["x-tenant"], "acme");
      assert.equal(dead.headers["x-first-death-queue"], queue);
      assert.equal(dead.headers["x-first-death-reason"], "delivery_limit");
    });

    it("keeps dead letters of queues sharing an exchange apart", async () => {
      const { exchange, queue: failingQueue } = names("dead-apart");
      const healthyQueue = `${failingQueue}.healthy`;
      declared.queues.add(healthyQueue).add(`${healthyQueue}.dead`);
      const failing = await broker.consume(
        { queue: failingQueue, exchange, bindingKeys: ["#"], concurrency: 1, deliveryLimit: 1 },
        async () => {
          throw new Error("permanent failure");
        },
      );
      const healthy = await broker.consume(
        { queue: healthyQueue, exchange, bindingKeys: ["#"], concurrency: 1, deliveryLimit: 1 },
        async () => {},
      );
      const failingDead: string[] = [];
      const healthyDead: string[] = [];
      const deadConsumers = [
        await broker.consume(
          { queue: `${failingQueue}.dead`, exchange: `${exchange}.dead`, bindingKeys: [failingQueue], concurrency: 1, deliveryLimit: 1 },
          async (message) => void failingDead.push(message.messageId),
        ),
        await broker.consume(
          { queue: `${healthyQueue}.dead`, exchange: `${exchange}.dead`, bindingKeys: [healthyQueue], concurrency: 1, deliveryLimit: 1 },
          async (message) => void healthyDead.push(message.messageId),
        ),
      ];
      await broker.publish(exchange, "payment.created", bytes("x"), { messageId: "msg-shared" });
      await waitUntil(() => failingDead.length === 1, "the dead letter");
      await sleep(50);
      await Promise.all([failing, healthy, ...deadConsumers].map((consumer) => consumer.close()));

      assert.deepEqual(failingDead, ["msg-shared"]);
      assert.deepEqual(healthyDead, []);
    });

    it("never runs more than `concurrency` handlers at once", async () => {
      const { queue, exchange } = names("concurrency");
      const concurrency = 3;
      const messageCount = 12;
      let inFlight = 0;
      let maxInFlight = 0;
      let done = 0;
      const consumer = await broker.consume(
        { queue, exchange, bindingKeys: ["work.#"], concurrency, deliveryLimit: 3 },
        async () => {
          inFlight += 1;
          maxInFlight = Math.max(maxInFlight, inFlight);
          await sleep(30);
          inFlight -= 1;
          done += 1;
        },
      );
      await Promise.all(
        Array.from({ length: messageCount }, (_, i) =>
          broker.publish(exchange, "work.item", bytes(`item-${i}`), { messageId: `item-${i}` }),
        ),
      );
      await waitUntil(() => done === messageCount, "all messages");
      await consumer.close();

      assert.equal(maxInFlight, concurrency);
    });

    it("rejects invalid consumer options", async () => {
      const { queue, exchange } = names("invalid");
      await assert.rejects(
        broker.consume({ queue, exchange, bindingKeys: ["#"], concurrency: 0, deliveryLimit: 1 }, async () => {}),
        RangeError,
      );
      await assert.rejects(
        broker.consume({ queue, exchange, bindingKeys: ["#"], concurrency: 1, deliveryLimit: 0 }, async () => {}),
        RangeError,
      );
    });
  });
}

describe("createRabbitBroker() against an unreachable server", () => {
  it("is not ready, and closes without crashing the process", async () => {
    const errors: unknown[] = [];
    const broker = createRabbitBroker("amqp://guest:guest@127.0.0.1:1", {
      connectionName: `cowrie-test-unreachable-${RUN_ID}`,
      onError: (error) => errors.push(error),
    });
    await sleep(200);
    assert.equal(broker.isReady(), false);
    assert.ok(errors.length > 0, "connection errors are reported to onError");
    await broker.close();
  });
});
