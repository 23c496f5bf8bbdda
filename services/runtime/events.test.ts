// The event runtime against real PostgreSQL and RabbitMQ: the outbox is published exactly when the
// transaction commits, a relay that fails or is killed mid-batch loses nothing, consumers apply
// each event once, a failing event is retried, parked and replayed, and a broker outage only
// delays delivery.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { createRouterTransport, createClient } from "@connectrpc/connect";
import { sql } from "drizzle-orm";
import { RiskEventSchema, type Envelope } from "../../gen/cowrie/events/v1/events_pb.js";
import { EventOperationsService } from "../../gen/cowrie/events/v1/operations_pb.js";
import { inbox, outbox, parked } from "../risk/schema.js";
import { createRabbitBroker, type Broker } from "./broker.js";
import { createPostgresDatabase, type Database } from "./db.js";
import { appendEvents, consumerQueue, eventOperations, eventsExchange, outboxFeed, startEventConsumer, startRelay, type EventConsumer, type NewEvent } from "./events.js";
import { createLogger } from "./log.js";
import { startTcpProxy } from "./tcp-proxy.js";
import { deleteBrokerTopology, freshDatabase, TEST_AMQP_URL } from "./testing.js";
import { pause } from "./pause.js";

const log = createLogger("error");
const riskMigrations = fileURLToPath(new URL("../risk/migrations", import.meta.url));

function event(subject: string, n: number): NewEvent {
  return { type: "risk.flagged", subject, tenantId: "t1", schema: RiskEventSchema, data: create(RiskEventSchema, { paymentId: subject, score: n }) };
}

async function until(condition: () => boolean | Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await pause(20);
  }
}

describe("events: outbox, relay and consumers on PostgreSQL and RabbitMQ", () => {
  let fresh: Awaited<ReturnType<typeof freshDatabase>>;
  let database: Database;
  let broker: Broker;
  const namespaces: string[] = [];
  const consumers: EventConsumer[] = [];

  before(async () => {
    fresh = await freshDatabase("events");
    database = createPostgresDatabase(fresh.url, { poolMax: 8, applicationName: "events-test" });
    await database.migrate("risk", riskMigrations);
    broker = createRabbitBroker(TEST_AMQP_URL, { connectionName: "events-test" });
  });

  after(async () => {
    await Promise.all(consumers.map((consumer) => consumer.close()));
    await broker.close();
    await database.close();
    await fresh.drop();
    for (const namespace of namespaces) {
      await deleteBrokerTopology({ queues: consumers.flatMap((c) => c.queues).filter((q) => q.startsWith(namespace)), exchanges: [eventsExchange(namespace)] });
    }
  });

  /** A fresh namespace and a consumer that records each application (its transaction committed). */
  async function sink(label: string, options: { fail?: (event: Envelope) => boolean; retryDelaysMs?: number[]; namespace?: string; name?: string } = {}) {
    const namespace = options.namespace ?? `test-events-${label}-${randomUUID().slice(0, 8)}`;
    if (!options.namespace) namespaces.push(namespace);
    const applied: Envelope[] = [];
    const consumer = await startEventConsumer({
      name: options.name ?? "test.sink",
      namespace,
      broker,
      db: database.db,
      tables: { inbox, parked },
      bindingKeys: ["risk.#"],
      log,
      retryDelaysMs: options.retryDelaysMs ?? [50],
      handle: async (_tx, events) => {
        for (const { event } of events) if (options.fail?.(event)) throw new Error(`refusing ${event.subject}`);
        applied.push(...events.map(({ event }) => event));
      },
    });
    consumers.push(consumer);
    return { namespace, applied, consumer };
  }

  async function clearOutbox(): Promise<void> {
    await database.db.execute(sql`delete from risk.outbox; delete from risk.inbox; delete from risk.parked_events`);
  }

  async function appendInTransactions(count: number, perTransaction: number, subject: (i: number) => string): Promise<void> {
    for (let start = 0; start < count; start += perTransaction) {
      await database.db.transaction((tx) =>
        appendEvents(tx, outbox, "risk", Array.from({ length: Math.min(perTransaction, count - start) }, (_, k) => event(subject(start + k), start + k))),
      );
    }
  }

  it("publishes what committed, never what rolled back, and a batch that failed halfway goes again without a double application", async () => {
    await clearOutbox();
    const { namespace, applied } = await sink("commit");
    await appendInTransactions(300, 100, (i) => `payment/p${i % 10}`);
    await assert.rejects(
      database.db.transaction(async (tx) => {
        await appendEvents(tx, outbox, "risk", [event("payment/rolled-back", 999)]);
        throw new Error("the change failed");
      }),
    );
    // A broker that fails the 150th publish once: the first batch is half out and not stamped.
    const published: string[] = [];
    let failed = false;
    const flaky: Broker = {
      ...broker,
      async publish(exchange, routingKey, body, options) {
        if (published.length === 149 && !failed) {
          failed = true;
          throw new Error("connection reset mid-batch");
        }
        published.push(options.messageId);
        return broker.publish(exchange, routingKey, body, options);
      },
    };
    const relay = startRelay({ source: "risk", db: database.db, feed: outboxFeed(outbox), broker: flaky, namespace, log, intervalMs: 50 });
    await until(() => new Set(applied.map((e) => e.id)).size === 300, "300 applications");
    await relay.drain();
    await pause(300); // anything duplicated would have arrived by now
    await relay.stop();

    assert.ok(failed, "the batch failed halfway");
    assert.ok(published.length >= 449, `the failed batch was published again (${published.length} publishes)`);
    assert.equal(applied.length, 300, "each event applied once although about 150 were delivered twice");
    assert.ok(!applied.some((e) => e.subject === "payment/rolled-back"));
    const [row] = await database.db.execute(sql`select count(*)::int as n from risk.inbox where consumer = 'test.sink'`).then((r) => [...(r as unknown as { n: number }[])]);
    assert.equal(row?.n, 300);
    const unpublished = await database.db.execute(sql`select count(*)::int as n from risk.outbox where published_at is null`);
    assert.equal((unpublished as unknown as { n: number }[])[0]?.n, 0);
  });

  it("gives up a batch whose publishes are never confirmed, rolls it back and sends it again", async () => {
    // As once in the chaos round: a publish cut off by a dropped RabbitMQ connection never
    // settled, and the relay waited for it for ever (nothing more published, no clean stop).
    await clearOutbox();
    const { namespace, applied } = await sink("unconfirmed");
    await appendInTransactions(20, 10, (i) => `payment/u${i}`);
    let unanswered = 0;
    const silent: Broker = {
      ...broker,
      async publish(exchange, routingKey, body, options) {
        if (unanswered < 20) {
          unanswered++;
          return new Promise<void>(() => {});
        }
        return broker.publish(exchange, routingKey, body, options);
      },
    };
    const relay = startRelay({ source: "risk", db: database.db, feed: outboxFeed(outbox), broker: silent, namespace, log, intervalMs: 50, confirmTimeoutMs: 300 });
    await until(() => new Set(applied.map((e) => e.id)).size === 20, "20 applications");
    const stoppedAt = Date.now();
    await relay.stop();
    assert.ok(Date.now() - stoppedAt < 1000, "the relay stops at once");
    assert.equal(unanswered, 20, "the first batch's publishes were never answered");
    assert.equal(applied.length, 20, "each event applied once");
    const unpublished = await database.db.execute(sql`select count(*)::int as n from risk.outbox where published_at is null`);
    assert.equal((unpublished as unknown as { n: number }[])[0]?.n, 0);
  });

  it("keeps each subject's events in commit order on the wire", async () => {
    await clearOutbox();
    const { namespace } = await sink("order");
    const order: { subject: string; id: string }[] = [];
    const watcher = await broker.consume(
      { queue: consumerQueue(namespace, "order-watch"), exchange: eventsExchange(namespace), bindingKeys: ["#"], concurrency: 1, deliveryLimit: 3 },
      async (message) => {
        const { fromBinary } = await import("@bufbuild/protobuf");
        const { EnvelopeSchema } = await import("../../gen/cowrie/events/v1/events_pb.js");
        const envelope = fromBinary(EnvelopeSchema, message.body);
        order.push({ subject: envelope.subject, id: envelope.id });
      },
    );
    consumers.push({ name: "order-watch", queue: consumerQueue(namespace, "order-watch"), queues: [consumerQueue(namespace, "order-watch")], close: () => watcher.close() });
    // Four writers interleave transactions on five subjects.
    await Promise.all([0, 1, 2, 3].map((writer) => appendInTransactions(100, 5, (i) => `payment/s${(i + writer) % 5}`)));
    const relay = startRelay({ source: "risk", db: database.db, feed: outboxFeed(outbox), broker, namespace, log, batchSize: 64, intervalMs: 20 });
    await until(() => order.length === 400, "400 events on the wire");
    await relay.stop();
    const rows = (await database.db.execute(sql`select id::text as id, sequence::int8 as sequence from risk.outbox`)) as unknown as { id: string; sequence: string }[];
    const sequenceOf = new Map(rows.map((row) => [row.id, Number(row.sequence)]));
    const lastBySubject = new Map<string, number>();
    for (const { subject, id } of order) {
      const sequence = sequenceOf.get(id) ?? -1;
      assert.ok(sequence > (lastBySubject.get(subject) ?? 0), `${subject}: sequence ${sequence} after ${lastBySubject.get(subject)}`);
      lastBySubject.set(subject, sequence);
    }
    assert.equal(lastBySubject.size, 5);
  });

  it("loses nothing when the relay process is killed mid-batch", async () => {
    await clearOutbox();
    const { namespace, applied } = await sink("kill");
    await appendInTransactions(3_000, 500, (i) => `payment/k${i % 50}`);
    const child = spawn(process.execPath, ["--import", "tsx", fileURLToPath(new URL("./fixtures/relay-process.ts", import.meta.url)), fresh.url, TEST_AMQP_URL, namespace], { stdio: ["ignore", "pipe", "inherit"] });
    await until(() => applied.length >= 300, "the child relay to be publishing", 30_000);
    child.kill("SIGKILL");
    await new Promise((resolve) => child.once("exit", resolve));
    const stamped = (await database.db.execute(sql`select count(*)::int as n from risk.outbox where published_at is not null`)) as unknown as { n: number }[];
    assert.ok((stamped[0]?.n ?? 0) < 3_000, "killed before it finished");
    const relay = startRelay({ source: "risk", db: database.db, feed: outboxFeed(outbox), broker, namespace, log, intervalMs: 20 });
    await until(() => applied.length === 3_000, "all 3,000 applied", 30_000);
    await relay.drain();
    await pause(300);
    await relay.stop();
    assert.equal(applied.length, 3_000);
    assert.equal(new Set(applied.map((e) => e.id)).size, 3_000, "no event applied twice");
  });

  it("retries a failing event, parks it with its reason, and replays it to that consumer alone", async () => {
    await clearOutbox();
    let broken = true;
    const { namespace, applied } = await sink("park", { fail: (e) => broken && e.subject === "payment/poison", retryDelaysMs: [50, 100] });
    const other = await sink("park-other", { namespace, name: "test.other" });
    await appendInTransactions(1, 1, () => "payment/poison");
    await appendInTransactions(5, 5, (i) => `payment/fine${i}`);
    const relay = startRelay({ source: "risk", db: database.db, feed: outboxFeed(outbox), broker, namespace, log, intervalMs: 20 });
    const operations = createClient(EventOperationsService, createRouterTransport((router) =>
      router.service(EventOperationsService, eventOperations({ db: database.db, tables: { inbox, parked }, broker, namespace, consumers: ["test.sink"] }))));
    await until(async () => (await operations.listParkedEvents({})).events.length === 1, "the poison event to be parked");
    const [parkedEvent] = (await operations.listParkedEvents({ consumer: "test.sink" })).events;
    assert.equal(parkedEvent?.attempts, 3, "the first delivery and two delayed retries");
    assert.match(parkedEvent?.reason ?? "", /refusing payment\/poison/);
    assert.equal(applied.length, 5, "the others went through meanwhile");

    broken = false;
    const replayed = await operations.replayParkedEvent({ id: parkedEvent!.id, operator: "olu" });
    assert.equal(replayed.event?.replayedBy, "olu");
    await until(() => applied.some((e) => e.subject === "payment/poison"), "the replayed event to be applied");
    await assert.rejects(operations.replayParkedEvent({ id: parkedEvent!.id, operator: "olu" }), /already replayed/);
    await assert.rejects(operations.replayParkedEvent({ id: 0n, operator: "olu" }), /id/);
    assert.equal((await operations.listParkedEvents({})).events.length, 0);
    assert.equal((await operations.listParkedEvents({ includeReplayed: true })).events.length, 1);
    await pause(300);
    await relay.stop();
    assert.deepEqual(other.applied.filter((e) => e.subject === "payment/poison").length, 1, "the other consumer had it once, before and after the replay");
    assert.equal(other.applied.length, 6);
  });

  it("delivers everything once the broker is reachable again; meanwhile the outbox holds the backlog", async () => {
    await clearOutbox();
    const { namespace, applied } = await sink("outage");
    const url = new URL(TEST_AMQP_URL);
    const proxy = await startTcpProxy({ host: url.hostname, port: Number(url.port || 5672) });
    url.port = String(proxy.port);
    const relayBroker = createRabbitBroker(url.toString(), { connectionName: "events-test-relay" });
    const relay = startRelay({ source: "risk", db: database.db, feed: outboxFeed(outbox), broker: relayBroker, namespace, log, intervalMs: 50 });
    try {
      await appendInTransactions(50, 10, (i) => `payment/o${i}`);
      await until(() => applied.length === 50, "the first 50");
      proxy.setMode("refuse");
      proxy.cutAll();
      await appendInTransactions(200, 10, (i) => `payment/o${50 + i}`);
      await pause(3_000);
      const backlog = (await database.db.execute(sql`select count(*)::int as n from risk.outbox where published_at is null`)) as unknown as { n: number }[];
      assert.equal(backlog[0]?.n, 200, "the outbox holds what the broker could not take");
      assert.equal(applied.length, 50);
      proxy.setMode("up");
      await until(() => applied.length === 250, "the backlog", 30_000);
      assert.equal(new Set(applied.map((e) => e.id)).size, 250);
    } finally {
      await relay.stop();
      await relayBroker.close();
      await proxy.close();
    }
  });
});
