// Events end to end, on the real PostgreSQL, Redis and RabbitMQ: payments flow through the public
// Edge while RabbitMQ is unreachable for 10 seconds; afterwards every event each service committed
// is delivered, each consumer applied each once (the audit log, the merchant's webhooks, Risk's
// failed streak), and the webhooks verify with the helper merchants are given.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import type { DescService } from "@bufbuild/protobuf";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import postgres from "postgres";
import { AdminService } from "../gen/cowrie/edge/v1/admin_pb.js";
import { PaymentsService, PaymentStatus } from "../gen/cowrie/edge/v1/payments_pb.js";
import { WalletKind, WalletsService } from "../gen/cowrie/edge/v1/wallets_pb.js";
import { WebhooksService } from "../gen/cowrie/edge/v1/webhooks_pb.js";
import { RiskService } from "../gen/cowrie/risk/v1/risk_pb.js";
import { verifyWebhook } from "./edge/webhooks/signature.js";
import { meshTopology, startMesh, type Mesh } from "./mesh.js";
import { SERVICE_NAMES } from "./runtime/config.js";
import { pause } from "./runtime/pause.js";
import { startTcpProxy, type TcpProxy } from "./runtime/tcp-proxy.js";
import { startWebhookReceiver, type WebhookReceiver } from "./edge/test-support.js";
import { capturingLogger, deleteBrokerTopology, freshDatabase, meshEnvironment, TEST_AMQP_URL, TEST_REDIS_URL, testConfig } from "./runtime/testing.js";

const OPERATOR_TOKEN = `operator-${randomUUID()}`;

function client<T extends DescService>(service: T, port: number, token: string): Client<T> {
  return createClient(
    service,
    createGrpcTransport({
      baseUrl: `http://127.0.0.1:${port}`,
      interceptors: [(next) => (request) => {
        request.header.set("authorization", `Bearer ${token}`);
        return next(request);
      }],
    }),
  );
}

async function until(condition: () => Promise<boolean> | boolean, what: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await pause(100);
  }
}

describe("events on the real backends while RabbitMQ is away", () => {
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let sql: postgres.Sql;
  let proxy: TcpProxy;
  let mesh: Mesh;
  let receiver: WebhookReceiver;
  let namespace = "";

  before(async () => {
    database = await freshDatabase("events_mesh");
    sql = postgres(database.url, { max: 2, onnotice: () => {} });
    const amqp = new URL(TEST_AMQP_URL);
    proxy = await startTcpProxy({ host: amqp.hostname, port: Number(amqp.port || 5672) });
    amqp.port = String(proxy.port);
    receiver = await startWebhookReceiver(() => 204);
    const env = await meshEnvironment({
      DATABASE_URL: database.url,
      REDIS_URL: TEST_REDIS_URL,
      AMQP_URL: amqp.toString(),
      COWRIE_OPERATOR_TOKEN: OPERATOR_TOKEN,
      COWRIE_WEBHOOK_INTERVAL_MS: "100",
      COWRIE_WEBHOOK_RETRY_BASE_MS: "100",
    });
    namespace = env.COWRIE_BROKER_NAMESPACE as string;
    mesh = await startMesh(testConfig(env), SERVICE_NAMES, capturingLogger().log);
  });

  after(async () => {
    await mesh?.close();
    await proxy?.close();
    await receiver?.close();
    await sql?.end();
    await database?.drop();
    if (namespace) await deleteBrokerTopology(meshTopology(namespace));
  });

  it("delivers every event once to each consumer after a 10 s outage, and the merchant's webhooks verify", async () => {
    const port = (name: string) => mesh.services.find((service) => service.name === name)!.port;
    const admin = client(AdminService, port("edge"), OPERATOR_TOKEN);
    const tenant = await admin.createTenant({ name: "Events Bakery" }, { headers: { "idempotency-key": "tenant-1" } });
    const key = tenant.apiKeySecret;
    const tenantId = tenant.tenant!.id;
    const wallets = client(WalletsService, port("edge"), key);
    const payments = client(PaymentsService, port("edge"), key);
    const webhooks = client(WebhooksService, port("edge"), key);
    const endpoint = await webhooks.createWebhookEndpoint(
      { url: receiver.url, eventTypes: ["payment.succeeded", "payment.failed"] },
      { headers: { "idempotency-key": "endpoint-1" } },
    );
    const received = () => receiver.requests.map(({ headers, body }) => {
      const envelope = JSON.parse(body.toString("utf8")) as { id: string; type: string; data: { payment?: { id: string } } };
      const verified = verifyWebhook({ secret: endpoint.secret, signatureHeader: headers["cowrie-signature"] as string, body }).ok;
      return { eventId: envelope.id, type: envelope.type, paymentId: envelope.data.payment?.id ?? "", verified };
    });
    const customer = (await wallets.createWallet({ ownerId: "ada", currency: "NGN", kind: WalletKind.CUSTOMER }, { headers: { "idempotency-key": "w-1" } })).wallet!;
    const merchant = (await wallets.createWallet({ ownerId: "shop", currency: "NGN", kind: WalletKind.MERCHANT }, { headers: { "idempotency-key": "w-2" } })).wallet!;
    await wallets.fundWallet({ walletId: customer.id, amountMinor: 1_000_000n, currency: "NGN" }, { headers: { "idempotency-key": "fund-1" } });

    const pay = (n: number, amountMinor: bigint, userId: string) =>
      payments.createPayment(
        { sourceWalletId: customer.id, destinationWalletId: merchant.id, amountMinor, currency: "NGN", reference: `order-${n}`, userId },
        { headers: { "idempotency-key": `pay-${n}` }, timeoutMs: 10_000 },
      );
    const outcomes: { id: string; status: PaymentStatus }[] = [];
    for (let n = 0; n < 5; n++) outcomes.push(((await pay(n, 1_000n + BigInt(n), `u-${n}`)).payment!));

    // RabbitMQ away: refuse new connections and cut the open ones, for 10 seconds of traffic.
    proxy.setMode("refuse");
    proxy.cutAll();
    const outageEndsAt = Date.now() + 10_000;
    let n = 5;
    while (Date.now() < outageEndsAt) {
      // Mostly successes; every fifth too large for the wallet, three of them for one user in a row.
      const failing = n % 5 === 0;
      const batch = await Promise.all([pay(n, failing ? 5_000_000n : 500n + BigInt(n), failing ? "u-streak" : `u-${n}`), pay(n + 1, 700n + BigInt(n), `u-${n + 1}`)]);
      outcomes.push(...batch.map((response) => response.payment!));
      n += 2;
      await pause(200);
    }
    const duringOutage = await sql`select count(*)::int as n from router.outbox where published_at is null`;
    assert.ok((duringOutage[0]?.n ?? 0) > 0, "the Router's outbox held events while RabbitMQ was away");
    proxy.setMode("up");

    const succeeded = outcomes.filter((payment) => payment.status === PaymentStatus.SUCCEEDED);
    const failed = outcomes.filter((payment) => payment.status === PaymentStatus.FAILED);
    assert.equal(succeeded.length + failed.length, outcomes.length, "every payment ended while the broker was away");
    assert.ok(failed.length >= 3, `${failed.length} failed payments`);

    // Every committed event of every service published, and recorded once by the audit consumer:
    // the outbox rows of the Router, Wallet and Risk, and one event per Ledger journal batch.
    const outboxes = ["router", "wallet", "risk"];
    const expected = async (): Promise<Record<string, number>> => {
      const counts: Record<string, number> = {};
      for (const schema of outboxes) counts[schema] = (await sql`select count(*)::int as n from ${sql(schema)}.outbox`)[0]?.n ?? 0;
      counts.ledger = (await sql`select count(*)::int as n from ledger.journal_batches`)[0]?.n ?? 0;
      return counts;
    };
    const total = async () => Object.values(await expected()).reduce((sum, n) => sum + n, 0);
    await until(async () => {
      for (const schema of outboxes) {
        if (((await sql`select count(*)::int as n from ${sql(schema)}.outbox where published_at is null`)[0]?.n ?? 1) > 0) return false;
      }
      const [ledger] = await sql`select (select last_batch from ledger.relay_cursor) = (select last_batch from ledger.journal_head) as done`;
      if (!ledger?.done) return false;
      return ((await sql`select count(*)::int as n from edge.audit_events`)[0]?.n ?? 0) === (await total());
    }, "the backlog to be published and audited");
    const audited = await sql`select source, count(*)::int as n from edge.audit_events group by source order by source`;
    const bySource = Object.fromEntries(audited.map((row) => [row.source, row.n]));
    const counts = await expected();
    for (const schema of [...outboxes, "ledger"]) assert.equal(bySource[schema], counts[schema], `${schema}: audited once per event`);
    const [inboxCount] = await sql`select count(*)::int as n from edge.inbox where consumer = 'edge.audit'`;
    assert.equal(inboxCount?.n, await total());

    // The merchant heard of every payment's ending exactly once, signed.
    await until(() => receiver.requests.length >= outcomes.length, "a webhook per payment");
    await pause(500);
    const endings = received().filter((event) => event.type === "payment.succeeded" || event.type === "payment.failed");
    assert.equal(endings.length, outcomes.length, "one webhook per payment ending, none twice");
    assert.deepEqual(new Set(endings.map((event) => event.paymentId)), new Set(outcomes.map((payment) => payment.id)));
    assert.ok(received().every((event) => event.verified), "every webhook verifies");
    const log = await webhooks.listWebhookDeliveries({ eventId: endings[0]!.eventId });
    assert.equal(log.deliveries.length, 1);
    assert.equal(log.deliveries[0]?.attempts.length, 1);

    // Risk heard of every ending through its feedback consumer: the streak of the failing user.
    const risk = client(RiskService, port("risk"), "");
    await until(async () => {
      const [row] = await sql`select count(*)::int as n from risk.inbox where consumer = 'risk.feedback'`;
      return row?.n === outcomes.length;
    }, "risk feedback for every payment");
    const summary = await risk.getUserRiskSummary({ tenantId, userId: "u-streak" });
    assert.equal(summary.failedStreak, failed.length, "each failed payment counted once");
  });
});
