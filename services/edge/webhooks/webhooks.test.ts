// Merchant webhooks end to end: an Edge on a fresh database with small retry settings, real HTTP
// receivers on free ports, events enqueued the way the event consumer enqueues them (inside a
// transaction), and the public WebhooksService driven with API keys.
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, it } from "node:test";
import { create, toJsonString } from "@bufbuild/protobuf";
import { anyPack, timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, type Client } from "@connectrpc/connect";
import { eq } from "drizzle-orm";
import postgres from "postgres";
import {
  GetWebhookEndpointResponseSchema,
  ListWebhookEndpointsResponseSchema,
  WebhookDeliveryStatus,
  WebhooksService,
  type WebhookDelivery,
} from "../../../gen/cowrie/edge/v1/webhooks_pb.js";
import { EnvelopeSchema, PaymentStatusChangedSchema, type Envelope } from "../../../gen/cowrie/events/v1/events_pb.js";
import { PaymentStatus } from "../../../gen/cowrie/router/v1/router_pb.js";
import { createPostgresDatabase, type Database, type Tx } from "../../runtime/db.js";
import { capturingLogger, freePorts, freshDatabase, rejection } from "../../runtime/testing.js";
import { webhookEndpoints } from "../schema.js";
import { edgeClient, newTenant, refusingFirstWrite, snapshotRows, startEdgeAlone, startWebhookReceiver, type WebhookReceiver, type WebhookRequest } from "../test-support.js";
import { WebhookDispatcher } from "./dispatcher.js";
import { verifyWebhook } from "./signature.js";
import { enqueueWebhookDeliveries, envelopeJson } from "./store.js";

const RETRY_FOR_MS = 3_000;
const TIMEOUT_MS = 800;
const SETTINGS = {
  COWRIE_WEBHOOK_INTERVAL_MS: "20",
  COWRIE_WEBHOOK_RETRY_BASE_MS: "20",
  COWRIE_WEBHOOK_RETRY_MAX_DELAY_MS: "150",
  COWRIE_WEBHOOK_RETRY_FOR_MS: String(RETRY_FOR_MS),
  COWRIE_WEBHOOK_TIMEOUT_MS: String(TIMEOUT_MS),
  COWRIE_WEBHOOK_CONCURRENCY: "8",
};

let dropDatabase: () => Promise<void>;
let edge: Awaited<ReturnType<typeof startEdgeAlone>>;
let database: Database;
let sql: postgres.Sql;
const receivers: WebhookReceiver[] = [];

before(async () => {
  const fresh = await freshDatabase("edge_webhooks");
  dropDatabase = fresh.drop;
  // The Edge never calls the Wallet or the Router in these tests.
  edge = await startEdgeAlone(fresh.url, "http://127.0.0.1:9", SETTINGS);
  database = createPostgresDatabase(fresh.url, { poolMax: 4, applicationName: "webhooks-test" });
  sql = postgres(fresh.url, { max: 2, onnotice: () => {} });
});

after(async () => {
  await Promise.all(receivers.map((receiver) => receiver.close()));
  await edge?.close();
  await sql?.end();
  await database?.close();
  await dropDatabase?.();
});

/** A merchant's endpoint, closed after the file's tests. */
async function receiver(answer?: (n: number) => number | Promise<number>): Promise<WebhookReceiver> {
  const state = await startWebhookReceiver(answer);
  receivers.push(state);
  return state;
}

let counter = 0;
function keyed(key = `wh-${process.pid}-${++counter}`) {
  return { headers: { "idempotency-key": key }, timeoutMs: 10_000 };
}

async function tenant(name: string, live = false) {
  const created = live ? await edge.admin.createTenant({ name, live: true }) : undefined;
  const { tenantId, apiKey } = created
    ? { tenantId: created.tenant?.id ?? "", apiKey: created.apiKeySecret }
    : await newTenant(edge.admin, name);
  return { tenantId, webhooks: edgeClient(WebhooksService, edge.baseUrl, apiKey) };
}

/** A payment event as the Router publishes it. */
function paymentEvent(tenantId: string, type = "payment.succeeded"): Envelope {
  const payment = { id: `pay_${randomUUID().slice(0, 8)}`, tenantId, status: PaymentStatus.SUCCEEDED, amountMinor: 2500n, currency: "NGN" };
  return create(EnvelopeSchema, {
    id: randomUUID(),
    type,
    source: "router",
    subject: `payment/${payment.id}`,
    time: timestampNow(),
    tenantId,
    data: anyPack(PaymentStatusChangedSchema, create(PaymentStatusChangedSchema, { payment, previousStatus: PaymentStatus.PROCESSING, reason: "paid", version: 3n })),
  });
}

/** What the event consumer does: enqueue inside its transaction. */
async function enqueue(envelope: Envelope, alsoInTx?: (tx: Tx) => Promise<unknown>): Promise<number> {
  return database.db.transaction(async (tx) => {
    const added = await enqueueWebhookDeliveries(tx, [envelope]);
    await alsoInTx?.(tx);
    return added;
  });
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** The delivery of an event, once its status is `status`. */
async function deliveryOf(webhooks: Client<typeof WebhooksService>, eventId: string, status: WebhookDeliveryStatus): Promise<WebhookDelivery> {
  return waitFor(`delivery of ${eventId} to be ${WebhookDeliveryStatus[status]}`, async () => {
    const [delivery] = (await webhooks.listWebhookDeliveries({ eventId })).deliveries;
    return delivery?.status === status ? delivery : undefined;
  });
}

/**
 * The given tenants' webhook rows (endpoints, deliveries, attempts), as md5s: other tests'
 * deliveries may still be retrying in the background and must not disturb a comparison.
 */
async function tenantWebhookRows(...tenantIds: string[]): Promise<Record<string, string>> {
  const [row] = await sql`
    select
      (select coalesce(md5(string_agg(e::text, '|' order by e.id)), '') from edge.webhook_endpoints e where e.tenant_id in ${sql(tenantIds)}) as endpoints,
      (select coalesce(md5(string_agg(d::text, '|' order by d.id)), '') from edge.webhook_deliveries d where d.tenant_id in ${sql(tenantIds)}) as deliveries,
      (select coalesce(md5(string_agg(a::text, '|' order by a.id)), '') from edge.webhook_attempts a
         join edge.webhook_deliveries d on d.id = a.delivery_id where d.tenant_id in ${sql(tenantIds)}) as attempts`;
  return { ...row };
}

/** Every Edge table but the shared delivery log, plus this tenant's part of it. */
async function edgeRows(tenantId: string): Promise<Record<string, string>> {
  const all = await snapshotRows(sql, ["edge"]);
  delete all["edge.webhook_deliveries"];
  delete all["edge.webhook_attempts"];
  return { ...all, ...(await tenantWebhookRows(tenantId)) };
}

describe("delivery", () => {
  it("a receiver that fails five times then succeeds: one delivery, six attempts logged, a valid signature", async () => {
    const { tenantId, webhooks } = await tenant("retrying shop");
    const endpoint = await receiver((n) => (n <= 5 ? 500 : 200));
    const created = await webhooks.createWebhookEndpoint({ url: endpoint.url, eventTypes: ["payment.succeeded"] }, keyed());
    const event = paymentEvent(tenantId);
    assert.equal(await enqueue(event), 1);
    // The consumer may see the event again (at least once): nothing more is enqueued.
    assert.equal(await enqueue(event), 0);

    const delivery = await deliveryOf(webhooks, event.id, WebhookDeliveryStatus.DELIVERED);
    assert.equal(endpoint.requests.length, 6);
    assert.deepEqual(delivery.attempts.map((attempt) => attempt.httpStatus), [500, 500, 500, 500, 500, 200]);
    assert.deepEqual(delivery.attempts.map((attempt) => attempt.error), ["HTTP 500", "HTTP 500", "HTTP 500", "HTTP 500", "HTTP 500", ""]);
    assert.ok(delivery.attempts.every((attempt) => !attempt.manual));
    assert.equal(delivery.endpointId, created.endpoint?.id);
    assert.ok(delivery.deliveredAt);
    assert.equal(delivery.nextAttemptAt, undefined);

    // Every attempt sent the same frozen body, the event as JSON with its typed data.
    const bodies = new Set(endpoint.requests.map((request) => request.body.toString("utf8")));
    assert.deepEqual([...bodies], [envelopeJson(event)]);
    assert.equal(delivery.payload, envelopeJson(event));
    const json = JSON.parse(delivery.payload) as { id: string; type: string; tenantId: string; data: Record<string, unknown> };
    assert.equal(json.id, event.id);
    assert.equal(json.type, "payment.succeeded");
    assert.equal(json.tenantId, tenantId);
    assert.equal(json.data["@type"], "type.googleapis.com/cowrie.events.v1.PaymentStatusChanged");
    assert.equal((json.data.payment as { amountMinor: string }).amountMinor, "2500");

    const last = endpoint.requests[5] as WebhookRequest;
    assert.equal(last.headers["content-type"], "application/json");
    assert.equal(last.headers["cowrie-event-id"], event.id);
    assert.equal(last.headers["cowrie-event-type"], "payment.succeeded");
    assert.equal(last.headers["cowrie-delivery-id"], delivery.id);
    const signatureHeader = last.headers["cowrie-signature"] as string;
    assert.deepEqual(verifyWebhook({ secret: created.secret, signatureHeader, body: last.body }).ok, true);
    // The merchant's helper refuses the same request tampered with, or replayed too late.
    const tampered = Buffer.from(last.body.toString("utf8").replace('"2500"', '"9999"'));
    assert.deepEqual(verifyWebhook({ secret: created.secret, signatureHeader, body: tampered }), { ok: false, reason: "no_matching_signature" });
    const signedAt = Number(/t=(\d+)/.exec(signatureHeader)?.[1]);
    assert.deepEqual(verifyWebhook({ secret: created.secret, signatureHeader, body: last.body, nowSeconds: signedAt + 301 }), { ok: false, reason: "stale_timestamp" });
  });

  it("an attempt the database does not take at first is recorded by the same process once it does: no second request", async () => {
    const { tenantId, webhooks } = await tenant("shop behind a failover");
    const endpoint = await receiver(() => 200);
    await webhooks.createWebhookEndpoint({ url: endpoint.url, eventTypes: ["*"] }, keyed());
    // The database refuses the first record of this tenant's attempt, as when it restarts
    // between the POST and its record.
    const event = paymentEvent(tenantId);
    const started = Date.now();
    const { result: delivery, refusedFirst } = await refusingFirstWrite(
      sql,
      "insert",
      "webhook_attempts",
      `exists (select 1 from edge.webhook_deliveries d where d.id = new.delivery_id and d.tenant_id = '${tenantId}')`,
      async () => {
        await enqueue(event);
        // Left to the lease, it would be sent again after the timeout plus 30 s.
        return deliveryOf(webhooks, event.id, WebhookDeliveryStatus.DELIVERED);
      },
    );
    assert.ok(refusedFirst, "the first record was refused");
    assert.ok(Date.now() - started < TIMEOUT_MS + 10_000);
    assert.equal(endpoint.requests.length, 1, "one request");
    assert.deepEqual(delivery.attempts.map((attempt) => attempt.httpStatus), [200], "one attempt logged");
  });

  it("the retry window passing marks the delivery failed; nothing is sent after that", async () => {
    const { tenantId, webhooks } = await tenant("broken shop");
    const endpoint = await receiver(() => 503);
    await webhooks.createWebhookEndpoint({ url: endpoint.url, eventTypes: ["*"] }, keyed());
    const event = paymentEvent(tenantId, "payment.failed");
    const started = Date.now();
    await enqueue(event);
    const failed = await deliveryOf(webhooks, event.id, WebhookDeliveryStatus.FAILED);
    assert.ok(Date.now() - started >= RETRY_FOR_MS - 500, "failed before its retry window ran out");
    assert.ok(failed.attempts.length >= 5, `only ${failed.attempts.length} attempts`);
    assert.ok(failed.attempts.every((attempt) => attempt.httpStatus === 503));
    assert.equal(endpoint.requests.length, failed.attempts.length);
    // Attempts spread out (backoff), rather than hammering the endpoint every pass.
    assert.ok(failed.attempts.length < RETRY_FOR_MS / 20 / 2, `${failed.attempts.length} attempts`);
    const sent = endpoint.requests.length;
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(endpoint.requests.length, sent);

    // The endpoint is fixed: a redelivery delivers it.
    endpoint.answer = () => 204;
    const redelivered = await webhooks.redeliverWebhook({ deliveryId: failed.id }, keyed());
    assert.equal(redelivered.attempt?.httpStatus, 204);
    assert.equal(redelivered.delivery?.status, WebhookDeliveryStatus.DELIVERED);
  });

  it("logs what went wrong: refused connections, redirects (not followed) and timeouts", async () => {
    const { tenantId, webhooks } = await tenant("misconfigured shop");
    const [closedPort] = await freePorts(1);
    const redirecting = await receiver(() => 302);
    const slow = await receiver(() => new Promise((resolve) => setTimeout(() => resolve(200), TIMEOUT_MS + 400)));
    const urls = [`http://127.0.0.1:${closedPort}/hook`, redirecting.url, slow.url];
    for (const url of urls) await webhooks.createWebhookEndpoint({ url, eventTypes: ["payment.*"] }, keyed());
    const event = paymentEvent(tenantId);
    assert.equal(await enqueue(event), 3);
    const byUrl = await waitFor("a first attempt at every endpoint", async () => {
      const { deliveries } = await webhooks.listWebhookDeliveries({ eventId: event.id });
      return deliveries.every((delivery) => delivery.attempts.length > 0) ? deliveries : undefined;
    });
    const endpoints = (await webhooks.listWebhookEndpoints({})).endpoints;
    const firstAttempt = (url: string) => {
      const endpointId = endpoints.find((endpoint) => endpoint.url === url)?.id;
      return byUrl.find((delivery) => delivery.endpointId === endpointId)?.attempts[0];
    };
    assert.equal(firstAttempt(urls[0] as string)?.httpStatus, 0);
    assert.match(firstAttempt(urls[0] as string)?.error ?? "", /ECONNREFUSED/);
    assert.equal(firstAttempt(redirecting.url)?.httpStatus, 302);
    assert.match(firstAttempt(redirecting.url)?.error ?? "", /redirect not followed/);
    assert.equal(firstAttempt(slow.url)?.httpStatus, 0);
    assert.equal(firstAttempt(slow.url)?.error, `no answer within ${TIMEOUT_MS} ms`);
    assert.ok((firstAttempt(slow.url)?.durationMs ?? 0) >= TIMEOUT_MS - 50);
    for (const delivery of byUrl) assert.equal(delivery.status, WebhookDeliveryStatus.PENDING);
    // Deleted, they stop retrying: their deliveries fail when next due, unsent.
    for (const endpoint of endpoints) await webhooks.deleteWebhookEndpoint({ endpointId: endpoint.id }, keyed());
    await waitFor("the three deliveries failed", async () => {
      const { deliveries } = await webhooks.listWebhookDeliveries({ eventId: event.id, status: WebhookDeliveryStatus.FAILED });
      return deliveries.length === 3 ? true : undefined;
    });
  });

  it("several dispatchers share the work: each event reaches the endpoint once", async () => {
    const { tenantId, webhooks } = await tenant("busy shop");
    const endpoint = await receiver(() => 200);
    await webhooks.createWebhookEndpoint({ url: endpoint.url, eventTypes: ["payment.succeeded"] }, keyed());
    // A second Edge process's dispatcher, on the same database.
    const other = new WebhookDispatcher({
      db: database.db,
      log: capturingLogger().log,
      timeoutMs: TIMEOUT_MS,
      retryBaseMs: 20,
      retryMaxDelayMs: 150,
      retryForMs: RETRY_FOR_MS,
      concurrency: 4,
      intervalMs: 10,
    });
    other.start();
    try {
      const events = Array.from({ length: 40 }, () => paymentEvent(tenantId));
      await Promise.all(events.map((event) => enqueue(event)));
      await waitFor("40 requests", async () => (endpoint.requests.length >= 40 ? true : undefined));
      await new Promise((resolve) => setTimeout(resolve, 200));
      const ids = endpoint.requests.map((request) => request.headers["cowrie-event-id"]);
      assert.equal(ids.length, 40);
      assert.equal(new Set(ids).size, 40);
      const [row] = await sql`select count(*)::int as n from edge.webhook_deliveries where tenant_id = ${tenantId} and status = 2`;
      assert.equal(row?.n, 40);
    } finally {
      await other.stop();
    }
  });
});

describe("endpoints and filters", () => {
  it("an event goes to the enabled endpoints whose filter matches: exact, prefix.* and *", async () => {
    const { tenantId, webhooks } = await tenant("filtering shop");
    const sink = await receiver(() => 200);
    const make = async (eventTypes: string[], disabled = false) =>
      (await webhooks.createWebhookEndpoint({ url: `${sink.url}?${eventTypes.join("&")}`, eventTypes, disabled }, keyed())).endpoint?.id ?? "";
    const exact = await make(["payment.succeeded"]);
    const prefix = await make(["payment.*"]);
    const ledger = await make(["ledger.batch.committed"]);
    const everything = await make(["*"]);
    const disabled = await make(["*"], true);

    const cases: [string, string[]][] = [
      ["payment.succeeded", [exact, prefix, everything]],
      ["payment.failed", [prefix, everything]],
      ["risk.flagged", [everything]],
      ["ledger.batch.committed", [ledger, everything]],
    ];
    for (const [type, expected] of cases) {
      const event = paymentEvent(tenantId, type);
      assert.equal(await enqueue(event), expected.length, type);
      const rows = await sql`select endpoint_id from edge.webhook_deliveries where event_id = ${event.id} order by endpoint_id`;
      assert.deepEqual(rows.map((row) => row.endpoint_id), [...expected].sort(), type);
    }
    // Platform events (no tenant) go to no merchant.
    assert.equal(await enqueue(paymentEvent("", "ledger.batch.committed")), 0);
    // The disabled endpoint received nothing at all.
    const [none] = await sql`select count(*)::int as n from edge.webhook_deliveries where endpoint_id = ${disabled}`;
    assert.equal(none?.n, 0);
    await waitFor("every delivery sent", async () => (sink.requests.length >= 8 ? true : undefined));
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(sink.requests.length, 8);
  });

  it("a batch of events from several tenants is enqueued at once, each to its own tenant's endpoints; a repeat adds nothing", async () => {
    const first = await tenant("batch shop one");
    const second = await tenant("batch shop two");
    const sink = await receiver(() => 200);
    const one = (await first.webhooks.createWebhookEndpoint({ url: `${sink.url}?one`, eventTypes: ["payment.*"] }, keyed())).endpoint?.id ?? "";
    const two = (await second.webhooks.createWebhookEndpoint({ url: `${sink.url}?two`, eventTypes: ["payment.failed"] }, keyed())).endpoint?.id ?? "";
    const events = [
      paymentEvent(first.tenantId, "payment.succeeded"),
      paymentEvent(second.tenantId, "payment.succeeded"),
      paymentEvent(second.tenantId, "payment.failed"),
      paymentEvent("", "ledger.batch.committed"),
    ];
    const batch = (list: Envelope[]) => database.db.transaction((tx) => enqueueWebhookDeliveries(tx, list));
    assert.equal(await batch(events), 2);
    const rows = await sql`select endpoint_id, event_id from edge.webhook_deliveries where event_id in ${sql(events.map((event) => event.id))}`;
    const pairs = rows.map((row) => `${row.endpoint_id} ${row.event_id}`).sort();
    assert.deepEqual(pairs, [`${one} ${events[0]!.id}`, `${two} ${events[2]!.id}`].sort());
    assert.equal(await batch(events), 0, "the same events again add nothing");
  });

  it("the secret is shown once: Get and List never return it; a rotation signs with both during its grace", async () => {
    const { tenantId, webhooks } = await tenant("secretive shop");
    const endpoint = await receiver(() => 200);
    const created = await webhooks.createWebhookEndpoint({ url: endpoint.url, eventTypes: ["payment.*"], description: "orders" }, keyed());
    assert.match(created.secret, /^whsec_[A-Za-z0-9_-]{43}$/);
    const id = created.endpoint?.id ?? "";
    const got = await webhooks.getWebhookEndpoint({ endpointId: id });
    const listed = await webhooks.listWebhookEndpoints({});
    assert.equal(got.endpoint?.description, "orders");
    assert.ok(!toJsonString(GetWebhookEndpointResponseSchema, got).includes(created.secret));
    assert.ok(!toJsonString(ListWebhookEndpointsResponseSchema, listed).includes(created.secret));
    assert.ok(!toJsonString(GetWebhookEndpointResponseSchema, got).includes("whsec_"));

    const rotated = await webhooks.rotateWebhookSecret({ endpointId: id, gracePeriodSeconds: 3600 }, keyed());
    assert.notEqual(rotated.secret, created.secret);
    assert.ok(rotated.endpoint?.previousSecretExpiresAt);
    assert.ok(!toJsonString(GetWebhookEndpointResponseSchema, await webhooks.getWebhookEndpoint({ endpointId: id })).includes("whsec_"));
    const during = paymentEvent(tenantId);
    await enqueue(during);
    await deliveryOf(webhooks, during.id, WebhookDeliveryStatus.DELIVERED);
    const signed = endpoint.requests.at(-1) as WebhookRequest;
    const header = signed.headers["cowrie-signature"] as string;
    assert.equal(header.split(",").filter((part) => part.startsWith("v1=")).length, 2);
    assert.equal(verifyWebhook({ secret: rotated.secret, signatureHeader: header, body: signed.body }).ok, true);
    assert.equal(verifyWebhook({ secret: created.secret, signatureHeader: header, body: signed.body }).ok, true);

    // A rotation without grace: the old secrets stop signing at once.
    const abrupt = await webhooks.rotateWebhookSecret({ endpointId: id, gracePeriodSeconds: 0 }, keyed());
    assert.equal(abrupt.endpoint?.previousSecretExpiresAt, undefined);
    const after = paymentEvent(tenantId);
    await enqueue(after);
    await deliveryOf(webhooks, after.id, WebhookDeliveryStatus.DELIVERED);
    const latest = endpoint.requests.at(-1) as WebhookRequest;
    const latestHeader = latest.headers["cowrie-signature"] as string;
    assert.equal(verifyWebhook({ secret: abrupt.secret, signatureHeader: latestHeader, body: latest.body }).ok, true);
    assert.equal(verifyWebhook({ secrets: [created.secret, rotated.secret], signatureHeader: latestHeader, body: latest.body }).ok, false);

    // A retry of the same rotation replays it: the same secret, no third rotation.
    const key = keyed();
    const once = await webhooks.rotateWebhookSecret({ endpointId: id }, key);
    const again = await webhooks.rotateWebhookSecret({ endpointId: id }, key);
    assert.equal(again.secret, once.secret);
  });

  it("update changes url, filter and enabled; a disabled endpoint's pending deliveries fail unsent; delete hides it but keeps the log", async () => {
    const { tenantId, webhooks } = await tenant("changing shop");
    const first = await receiver(() => 200);
    const second = await receiver(() => 200);
    const id = (await webhooks.createWebhookEndpoint({ url: first.url, eventTypes: ["payment.succeeded"] }, keyed())).endpoint?.id ?? "";
    const updated = await webhooks.updateWebhookEndpoint({ endpointId: id, url: second.url, eventTypes: { eventTypes: ["risk.*"] } }, keyed());
    assert.equal(updated.endpoint?.url, second.url);
    assert.deepEqual(updated.endpoint?.eventTypes, ["risk.*"]);
    assert.equal(updated.endpoint?.enabled, true);
    assert.equal(await enqueue(paymentEvent(tenantId, "payment.succeeded")), 0);
    const risky = paymentEvent(tenantId, "risk.flagged");
    assert.equal(await enqueue(risky), 1);
    await deliveryOf(webhooks, risky.id, WebhookDeliveryStatus.DELIVERED);
    assert.equal(first.requests.length, 0);
    assert.equal(second.requests.length, 1);

    // Disabled in the same transaction that enqueued: the dispatcher finds it disabled.
    const pending = paymentEvent(tenantId, "risk.flagged");
    await enqueue(pending, (tx) => tx.update(webhookEndpoints).set({ enabled: false }).where(eq(webhookEndpoints.id, id)));
    const failed = await deliveryOf(webhooks, pending.id, WebhookDeliveryStatus.FAILED);
    assert.equal(failed.attempts.length, 0);
    assert.equal(second.requests.length, 1);
    assert.equal(await enqueue(paymentEvent(tenantId, "risk.flagged")), 0);
    const refused = await rejection(webhooks.redeliverWebhook({ deliveryId: failed.id }, keyed()));
    assert.equal(refused.code, Code.FailedPrecondition, refused.rawMessage);
    assert.equal(second.requests.length, 1);

    const enabled = await webhooks.updateWebhookEndpoint({ endpointId: id, enabled: true }, keyed());
    assert.equal(enabled.endpoint?.enabled, true);
    assert.deepEqual(enabled.endpoint?.eventTypes, ["risk.*"]);

    await webhooks.deleteWebhookEndpoint({ endpointId: id }, keyed());
    assert.equal((await rejection(webhooks.getWebhookEndpoint({ endpointId: id }))).code, Code.NotFound);
    assert.equal((await rejection(webhooks.deleteWebhookEndpoint({ endpointId: id }, keyed()))).code, Code.NotFound);
    assert.deepEqual((await webhooks.listWebhookEndpoints({})).endpoints, []);
    assert.equal(await enqueue(paymentEvent(tenantId, "risk.flagged")), 0);
    assert.equal((await webhooks.listWebhookDeliveries({ eventId: risky.id })).deliveries.length, 1);
  });

  it("redelivery sends the same event again now, logged as a manual attempt, once per Idempotency-Key", async () => {
    const { tenantId, webhooks } = await tenant("forgetful shop");
    const endpoint = await receiver(() => 200);
    const { secret } = await webhooks.createWebhookEndpoint({ url: endpoint.url, eventTypes: ["payment.succeeded"] }, keyed());
    const event = paymentEvent(tenantId);
    await enqueue(event);
    const delivered = await deliveryOf(webhooks, event.id, WebhookDeliveryStatus.DELIVERED);
    assert.equal(endpoint.requests.length, 1);

    const key = keyed();
    const redelivered = await webhooks.redeliverWebhook({ deliveryId: delivered.id }, key);
    assert.equal(endpoint.requests.length, 2);
    assert.equal(redelivered.attempt?.manual, true);
    assert.equal(redelivered.attempt?.httpStatus, 200);
    assert.deepEqual(redelivered.delivery?.attempts.map((attempt) => attempt.manual), [false, true]);
    const again = endpoint.requests[1] as WebhookRequest;
    assert.equal(again.headers["cowrie-event-id"], event.id);
    assert.equal(again.headers["cowrie-delivery-id"], delivered.id);
    assert.deepEqual(again.body, endpoint.requests[0]?.body);
    assert.equal(verifyWebhook({ secret, signatureHeader: again.headers["cowrie-signature"] as string, body: again.body }).ok, true);

    const replayed = await webhooks.redeliverWebhook({ deliveryId: delivered.id }, key);
    assert.equal(endpoint.requests.length, 2);
    assert.equal(replayed.attempt?.httpStatus, 200);
    const log = (await webhooks.listWebhookDeliveries({ endpointId: delivered.endpointId })).deliveries;
    assert.equal(log.length, 1);
    assert.equal(log[0]?.attempts.length, 2);
  });

  it("lists deliveries newest first, by endpoint and status, a page at a time", async () => {
    const { tenantId, webhooks } = await tenant("paging shop");
    const endpoint = await receiver(() => 200);
    const endpointId = (await webhooks.createWebhookEndpoint({ url: endpoint.url, eventTypes: ["*"] }, keyed())).endpoint?.id ?? "";
    const events = [paymentEvent(tenantId), paymentEvent(tenantId), paymentEvent(tenantId)];
    for (const event of events) await enqueue(event);
    await waitFor("three delivered", async () => {
      const { deliveries } = await webhooks.listWebhookDeliveries({ endpointId, status: WebhookDeliveryStatus.DELIVERED });
      return deliveries.length === 3 ? true : undefined;
    });
    const first = await webhooks.listWebhookDeliveries({ endpointId, pageSize: 2 });
    assert.equal(first.deliveries.length, 2);
    assert.ok(first.nextPageToken);
    const second = await webhooks.listWebhookDeliveries({ endpointId, pageSize: 2, pageToken: first.nextPageToken });
    assert.equal(second.deliveries.length, 1);
    assert.equal(second.nextPageToken, "");
    const ids = [...first.deliveries, ...second.deliveries].map((delivery) => delivery.eventId);
    assert.deepEqual(ids, events.map((event) => event.id).reverse());
    assert.deepEqual((await webhooks.listWebhookDeliveries({ endpointId, status: WebhookDeliveryStatus.FAILED })).deliveries, []);
  });
});

describe("refusals", () => {
  it("another tenant's endpoints and deliveries are NOT_FOUND, and trying changes nothing", async () => {
    const a = await tenant("tenant a");
    const b = await tenant("tenant b");
    const endpoint = await receiver(() => 200);
    const endpointId = (await a.webhooks.createWebhookEndpoint({ url: endpoint.url, eventTypes: ["*"] }, keyed())).endpoint?.id ?? "";
    const event = paymentEvent(a.tenantId);
    await enqueue(event);
    const delivery = await deliveryOf(a.webhooks, event.id, WebhookDeliveryStatus.DELIVERED);
    const before = await tenantWebhookRows(a.tenantId, b.tenantId);
    const attempts: [string, () => Promise<unknown>][] = [
      ["get", () => b.webhooks.getWebhookEndpoint({ endpointId })],
      ["update", () => b.webhooks.updateWebhookEndpoint({ endpointId, enabled: false }, keyed())],
      ["delete", () => b.webhooks.deleteWebhookEndpoint({ endpointId }, keyed())],
      ["rotate", () => b.webhooks.rotateWebhookSecret({ endpointId }, keyed())],
      ["deliveries of the endpoint", () => b.webhooks.listWebhookDeliveries({ endpointId })],
      ["redeliver", () => b.webhooks.redeliverWebhook({ deliveryId: delivery.id }, keyed())],
    ];
    for (const [label, attempt] of attempts) {
      const error = await rejection(attempt());
      assert.equal(error.code, Code.NotFound, `${label}: ${error.code} ${error.rawMessage}`);
    }
    assert.deepEqual((await b.webhooks.listWebhookDeliveries({ eventId: event.id })).deliveries, []);
    assert.deepEqual((await b.webhooks.listWebhookEndpoints({})).endpoints, []);
    assert.deepEqual(await tenantWebhookRows(a.tenantId, b.tenantId), before);
    assert.equal(endpoint.requests.length, 1);
    // An event of tenant B never reaches tenant A's endpoint.
    assert.equal(await enqueue(paymentEvent(b.tenantId)), 0);
  });

  it("bad input is INVALID_ARGUMENT naming the field, and writes nothing (not even the Idempotency-Key)", async () => {
    const { tenantId, webhooks } = await tenant("careless shop");
    const endpoint = await receiver(() => 200);
    const created = await webhooks.createWebhookEndpoint({ url: endpoint.url, eventTypes: ["*"] }, keyed());
    const endpointId = created.endpoint?.id ?? "";
    const create = (fields: Record<string, unknown>) => () => webhooks.createWebhookEndpoint({ url: endpoint.url, eventTypes: ["*"], ...fields }, keyed());
    const cases: [string, () => Promise<unknown>][] = [
      ["url", create({ url: "" })],
      ["url", create({ url: "not a url" })],
      ["url", create({ url: "ftp://example.com/hook" })],
      ["url", create({ url: "https://user:pass@example.com/hook" })],
      ["url", create({ url: "https://example.com/hook#part" })],
      ["url", create({ url: `https://example.com/${"x".repeat(2048)}` })],
      ["event_types", create({ eventTypes: [] })],
      ["event_types[0]", create({ eventTypes: ["Payment.Succeeded"] })],
      ["event_types[1]", create({ eventTypes: ["payment.*", "payment.*.x"] })],
      ["event_types", create({ eventTypes: Array.from({ length: 33 }, (_, i) => `type.n${i}`) })],
      ["description", create({ description: "d".repeat(257) })],
      ["endpoint_id", () => webhooks.getWebhookEndpoint({ endpointId: "" })],
      ["endpoint_id", () => webhooks.getWebhookEndpoint({ endpointId: "no spaces allowed" })],
      ["endpoint_id", () => webhooks.updateWebhookEndpoint({ endpointId: "", enabled: false }, keyed())],
      ["url", () => webhooks.updateWebhookEndpoint({ endpointId, url: "mailto:ops@example.com" }, keyed())],
      ["event_types.event_types", () => webhooks.updateWebhookEndpoint({ endpointId, eventTypes: { eventTypes: [] } }, keyed())],
      ["endpoint_id", () => webhooks.deleteWebhookEndpoint({ endpointId: "" }, keyed())],
      ["grace_period_seconds", () => webhooks.rotateWebhookSecret({ endpointId, gracePeriodSeconds: 604_801 }, keyed())],
      ["page_size", () => webhooks.listWebhookDeliveries({ pageSize: 101 })],
      ["page_token", () => webhooks.listWebhookDeliveries({ pageToken: "garbage" })],
      ["status", () => webhooks.listWebhookDeliveries({ status: 9 as WebhookDeliveryStatus })],
      ["event_id", () => webhooks.listWebhookDeliveries({ eventId: "x".repeat(65) })],
      ["delivery_id", () => webhooks.redeliverWebhook({ deliveryId: "" }, keyed())],
      ["Idempotency-Key header", () => webhooks.createWebhookEndpoint({ url: endpoint.url, eventTypes: ["*"] })],
    ];
    const before = await edgeRows(tenantId);
    for (const [field, attempt] of cases) {
      const error = await rejection(attempt());
      assert.equal(error.code, Code.InvalidArgument, `${field}: ${error.code} ${error.rawMessage}`);
      assert.ok(error.rawMessage.startsWith(`${field}: `), `expected the message to name ${field}: ${error.rawMessage}`);
    }
    assert.deepEqual(await edgeRows(tenantId), before);
  });

  it("live tenants must use https; sandbox tenants may use http", async () => {
    const live = await tenant("live shop", true);
    const empty = await tenantWebhookRows(live.tenantId);
    const refused = await rejection(live.webhooks.createWebhookEndpoint({ url: "http://example.com/hook", eventTypes: ["*"] }, keyed()));
    assert.equal(refused.code, Code.InvalidArgument);
    assert.match(refused.rawMessage, /^url: must use https/);
    assert.deepEqual(await tenantWebhookRows(live.tenantId), empty);
    const created = await live.webhooks.createWebhookEndpoint({ url: "https://example.com/hook", eventTypes: ["*"] }, keyed());
    assert.equal(created.endpoint?.url, "https://example.com/hook");
    const before = await tenantWebhookRows(live.tenantId);
    const downgrade = await rejection(live.webhooks.updateWebhookEndpoint({ endpointId: created.endpoint?.id ?? "", url: "http://example.com/hook" }, keyed()));
    assert.match(downgrade.rawMessage, /^url: must use https/);
    assert.deepEqual(await tenantWebhookRows(live.tenantId), before);
    const sandbox = await tenant("sandbox shop");
    assert.equal((await sandbox.webhooks.createWebhookEndpoint({ url: "http://example.com/hook", eventTypes: ["*"] }, keyed())).endpoint?.url, "http://example.com/hook");
  });

  it("a tenant has at most 16 endpoints", async () => {
    const { webhooks } = await tenant("greedy shop");
    for (let i = 0; i < 16; i++) await webhooks.createWebhookEndpoint({ url: `http://example.com/${i}`, eventTypes: ["*"] }, keyed());
    const refused = await rejection(webhooks.createWebhookEndpoint({ url: "http://example.com/17", eventTypes: ["*"] }, keyed()));
    assert.equal(refused.code, Code.FailedPrecondition, refused.rawMessage);
    assert.equal((await webhooks.listWebhookEndpoints({})).endpoints.length, 16);
  });
});
