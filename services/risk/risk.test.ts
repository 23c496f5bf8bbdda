// The Risk service over real sockets on a fresh PostgreSQL database, with real Redis and with the
// in-process cache: the seeds' six rapid payments, a failed streak that fires and resets, reviews
// with their audit trail, blocks and blocklists, settings changed at run time (also seen by a
// second Risk instance), idempotent evaluations, 200 concurrent evaluations of one user, the
// learned-profile rule, bad input, and a Redis cut through a TCP proxy.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Connection } from "rabbitmq-client";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import {
  Action,
  BlocklistKind,
  Decision,
  ReviewStatus,
  RiskService,
  Severity,
  type EvaluateRequest,
  type EvaluateResponse,
} from "../../gen/cowrie/risk/v1/risk_pb.js";
import { startTcpProxy, type TcpProxy } from "../runtime/tcp-proxy.js";
import { consumerQueues, eventsExchange } from "../runtime/events.js";
import { deleteBrokerTopology, freePorts, freshDatabase, rejection, startTestService, TEST_AMQP_URL, TEST_REDIS_URL } from "../runtime/testing.js";
import { FEEDBACK_CONSUMER } from "./feedback.js";
import { riskModule } from "./service.js";
import { deleteRedisKeys } from "./test-support.js";

type Risk = Client<typeof RiskService>;
type Started = Awaited<ReturnType<typeof startTestService>>;

const RUN = randomBytes(4).toString("hex");
let database: Awaited<ReturnType<typeof freshDatabase>>;
const started: Started[] = [];

function clientOf(baseUrl: string): Risk {
  return createClient(RiskService, createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true }));
}

async function startRisk(env: Record<string, string> = {}): Promise<Risk> {
  const service = await startTestService(riskModule, { DATABASE_URL: database.url, REDIS_URL: TEST_REDIS_URL, ...env });
  started.push(service);
  return clientOf(service.baseUrl);
}

before(async () => {
  database = await freshDatabase("risk");
});

after(async () => {
  for (const service of started.reverse()) await service.close();
  await database?.drop();
  await deleteRedisKeys(`cowrie:risk:{ten-${RUN}-*`);
});

let sequence = 0;
/** A tenant of its own per test, so tests (and test files sharing Redis) never see each other. */
const newTenant = () => `ten-${RUN}-${++sequence}`;
const newPayment = () => `pay-${RUN}-${++sequence}`;

type EvaluateFields = Partial<Omit<EvaluateRequest, "$typeName" | "$unknown">>;

/** One evaluation; unless given, every payment has its own amount, so DUPLICATE_AMOUNT stays out of the way. */
function evaluate(risk: Risk, tenantId: string, fields: EvaluateFields = {}): Promise<EvaluateResponse> {
  const paymentId = newPayment();
  return risk.evaluate({ tenantId, paymentId, userId: "alice", amountMinor: 1_000n + BigInt(sequence), currency: "NGN", ...fields });
}

const summaryOf = (response: EvaluateResponse) => ({
  decision: Decision[response.decision],
  reasons: response.reasons,
  severities: response.flags.map((flag) => `${flag.rule}:${Severity[flag.severity]}:${Action[flag.action]}`),
});

async function invalid(promise: Promise<unknown>, field: string): Promise<void> {
  const error = await rejection(promise);
  assert.equal(error.code, Code.InvalidArgument, `expected INVALID_ARGUMENT, got ${Code[error.code]}: ${error.rawMessage}`);
  assert.ok(error.rawMessage.startsWith(`${field}: `), `expected the message to name ${field}: ${error.rawMessage}`);
}

// The behaviour that rests on the counters runs on Redis and on the in-process cache alike.
// A loaded test machine can stall the event loop past the Redis timeout: these tests are about
// counting, not the fallback (which has its own test below), so they give Redis time.
const PATIENT = { COWRIE_RISK_REDIS_TIMEOUT_MS: "5000" };

for (const backend of [{ name: "Redis", env: { REDIS_URL: TEST_REDIS_URL, ...PATIENT } }, { name: "the in-process cache", env: { REDIS_URL: "", ...PATIENT } }]) {
  describe(`Evaluate on ${backend.name}`, () => {
    let risk: Risk;
    before(async () => {
      risk = await startRisk(backend.env);
    });

    it("flags the seeds' six rapid payments: the fifth for velocity (high), the sixth for velocity and duplicate amount", async () => {
      const tenantId = newTenant();
      const amounts = [1_000n, 2_000n, 5_000n, 5_000n, 3_000n, 5_000n];
      const responses: EvaluateResponse[] = [];
      for (const amountMinor of amounts) responses.push(await evaluate(risk, tenantId, { userId: "seed-user", amountMinor, beneficiaryId: "shop" }));
      for (const response of responses.slice(0, 4)) assert.deepEqual(summaryOf(response), { decision: "ALLOW", reasons: [], severities: [] });
      assert.deepEqual(summaryOf(responses[4] as EvaluateResponse), { decision: "ALLOW", reasons: ["VELOCITY"], severities: ["VELOCITY:HIGH:FLAG"] });
      assert.deepEqual(summaryOf(responses[5] as EvaluateResponse), {
        decision: "ALLOW",
        reasons: ["VELOCITY", "DUPLICATE_AMOUNT"],
        severities: ["VELOCITY:HIGH:FLAG", "DUPLICATE_AMOUNT:MEDIUM:FLAG"],
      });
      assert.equal(responses[4]?.score, 600);
      assert.equal(responses[5]?.score, 900);
      assert.match(responses[5]?.flags[1]?.detail ?? "", /5000 NGN minor units 3 times in 300 s/);
      // The flags are recorded and queryable by user, newest first.
      const { flags } = await risk.listFlags({ tenantId, userId: "seed-user" });
      assert.deepEqual(flags.map((flag) => flag.rule), ["DUPLICATE_AMOUNT", "VELOCITY", "VELOCITY"]);
    });

    it("answers a repeated Evaluate of a payment with the first decision and counts it once", async () => {
      const tenantId = newTenant();
      const clean = { paymentId: newPayment(), userId: "bob", amountMinor: 700n };
      const first = await evaluate(risk, tenantId, clean);
      const again = await evaluate(risk, tenantId, clean);
      assert.equal(first.replayed, false);
      assert.equal(again.replayed, true);
      assert.deepEqual({ ...again, replayed: false }, first);
      const changed = await rejection(evaluate(risk, tenantId, { ...clean, amountMinor: 9_999n }));
      assert.equal(changed.code, Code.AlreadyExists, "the same payment id with another amount is another payment");
      assert.match(changed.rawMessage, /amount_minor/);
      for (let i = 0; i < 3; i++) await evaluate(risk, tenantId, { userId: "bob" });
      const fifth = { paymentId: newPayment(), userId: "bob", amountMinor: 800n };
      const flagged = await evaluate(risk, tenantId, fifth);
      assert.deepEqual(flagged.reasons, ["VELOCITY"], "the repeated payment counted once: this is the fifth");
      const replay = await evaluate(risk, tenantId, fifth);
      assert.deepEqual({ ...replay, replayed: false }, flagged);
      assert.equal((await risk.listFlags({ tenantId, paymentId: fifth.paymentId })).flags.length, 1);
      assert.equal((await risk.getUserRiskSummary({ tenantId, userId: "bob" })).paymentsInVelocityWindow, 5);
    });

    it("counts 200 concurrent evaluations of one user exactly 200 times", async () => {
      const tenantId = newTenant();
      const responses = await Promise.all(Array.from({ length: 200 }, () => evaluate(risk, tenantId, { userId: "hot" })));
      assert.equal(responses.filter((response) => response.reasons.includes("VELOCITY")).length, 196);
      const summary = await risk.getUserRiskSummary({ tenantId, userId: "hot" });
      assert.equal(summary.paymentsInVelocityWindow, 200);
      assert.ok((summary.currencies[0]?.amountInWindowMinor ?? 0n) > 200_000n);
      const counts = responses.map((response) => Number(/^(\d+) payments/.exec(response.flags[0]?.detail ?? "")?.[1] ?? 0)).filter((count) => count > 0);
      assert.deepEqual(counts.sort((a, b) => a - b), Array.from({ length: 196 }, (_, i) => i + 5), "each evaluation saw its own count");
    });

    it("fires the failed streak after 3 consecutive failures and resets it on a success", async () => {
      const tenantId = newTenant();
      for (let i = 0; i < 3; i++) {
        const failed = await evaluate(risk, tenantId, { userId: "carol" });
        assert.deepEqual(failed.reasons, []);
        const { failedStreak } = await risk.recordPaymentOutcome({ tenantId, paymentId: newPayment(), userId: "carol", succeeded: false });
        assert.equal(failedStreak, i + 1);
      }
      const fourth = { paymentId: newPayment(), userId: "carol" };
      const streaked = await evaluate(risk, tenantId, fourth);
      assert.deepEqual(summaryOf(streaked), { decision: "ALLOW", reasons: ["FAILED_STREAK"], severities: ["FAILED_STREAK:MEDIUM:FLAG"] });
      const success = await risk.recordPaymentOutcome({ tenantId, ...fourth, succeeded: true });
      assert.deepEqual([success.failedStreak, success.replayed, success.learned], [0, false, true]);
      const replay = await risk.recordPaymentOutcome({ tenantId, ...fourth, succeeded: true });
      assert.deepEqual([replay.failedStreak, replay.replayed], [0, true]);
      assert.equal((await rejection(risk.recordPaymentOutcome({ tenantId, ...fourth, succeeded: false }))).code, Code.FailedPrecondition);
      const after = await evaluate(risk, tenantId, { userId: "carol" });
      assert.ok(!after.reasons.includes("FAILED_STREAK"), after.reasons.join());
    });

    it("flags an amount far from the user's learned profile after the learning period, not before", async () => {
      const tenantId = newTenant();
      const learn = async (userId: string, count: number) => {
        for (let i = 0; i < count; i++) {
          const paymentId = newPayment();
          await evaluate(risk, tenantId, { paymentId, userId, amountMinor: BigInt(1_000 + (i % 3) * 100) });
          await risk.recordPaymentOutcome({ tenantId, paymentId, userId, succeeded: true });
        }
      };
      await learn("novice", 5);
      await learn("regular", 10);
      const early = await evaluate(risk, tenantId, { userId: "novice", amountMinor: 100_000n });
      assert.ok(!early.reasons.includes("ANOMALY"), "five payments are not enough to judge");
      const usual = await evaluate(risk, tenantId, { userId: "regular", amountMinor: 1_150n });
      assert.ok(!usual.reasons.includes("ANOMALY"), "a usual amount is no anomaly");
      const outlier = await evaluate(risk, tenantId, { userId: "regular", amountMinor: 100_000n });
      const anomaly = outlier.flags.find((flag) => flag.rule === "ANOMALY");
      assert.ok(anomaly, `expected ANOMALY, got ${outlier.reasons.join()}`);
      assert.equal(anomaly.severity, Severity.HIGH);
      assert.match(anomaly.detail, /amount 100000 is \d+\.\d deviations above the usual 10\d\d/);
      const summary = await risk.getUserRiskSummary({ tenantId, userId: "regular" });
      const ngn = summary.currencies.find((currency) => currency.currency === "NGN");
      assert.equal(ngn?.samples, 10n);
      assert.ok(ngn && ngn.amountMeanMinor > 1_000n && ngn.amountMeanMinor < 1_200n, `mean ${ngn?.amountMeanMinor}`);
      assert.ok(ngn.amountDeviationMinor > 0n && ngn.amountDeviationMinor < 200n, `deviation ${ngn.amountDeviationMinor}`);
      assert.deepEqual(summary.recentFlags.slice(0, 2).map((flag) => flag.rule), ["ANOMALY", "VELOCITY"]);
    });
  });
}

describe("Reviews, blocks and settings", () => {
  let risk: Risk;
  before(async () => {
    risk = await startRisk();
  });

  it("holds a REVIEW payment in the review queue until an operator resolves it, with the audit trail", async () => {
    const tenantId = newTenant();
    await risk.updateRiskSettings({ tenantId, settings: { largeAmount: { rule: { action: Action.REVIEW } } } });
    const paymentId = newPayment();
    const reviewed = await evaluate(risk, tenantId, { paymentId, userId: "dave", amountMinor: 150_000_000n });
    assert.deepEqual(summaryOf(reviewed), { decision: "REVIEW", reasons: ["LARGE_AMOUNT"], severities: ["LARGE_AMOUNT:MEDIUM:REVIEW"] });
    const other = newPayment();
    await evaluate(risk, tenantId, { paymentId: other, userId: "erin", amountMinor: 600_000_000n });

    const { review } = await risk.getReview({ tenantId, paymentId });
    assert.equal(review?.status, ReviewStatus.PENDING);
    assert.deepEqual(review?.reasons, ["LARGE_AMOUNT"]);
    assert.deepEqual(review?.history.map((event) => [ReviewStatus[event.status], event.actor]), [["PENDING", "risk"]]);
    const queue = await risk.listReviews({ tenantId, status: ReviewStatus.PENDING, pageSize: 1 });
    assert.deepEqual(queue.reviews.map((r) => r.paymentId), [paymentId], "oldest first");
    const rest = await risk.listReviews({ tenantId, status: ReviewStatus.PENDING, pageToken: queue.nextPageToken });
    assert.deepEqual(rest.reviews.map((r) => r.paymentId), [other]);
    assert.equal(rest.nextPageToken, "");

    const approved = await risk.resolveReview({ tenantId, paymentId, approve: true, operator: "ops-ada", reason: "called the customer" });
    assert.equal(approved.replayed, false);
    assert.equal(approved.review?.status, ReviewStatus.APPROVED);
    assert.equal(approved.review?.resolvedBy, "ops-ada");
    assert.equal(approved.review?.resolutionReason, "called the customer");
    assert.ok(approved.review?.resolvedAt);
    assert.deepEqual(approved.review?.history.map((event) => [ReviewStatus[event.status], event.actor, event.reason]), [
      ["PENDING", "risk", "LARGE_AMOUNT"],
      ["APPROVED", "ops-ada", "called the customer"],
    ]);
    const again = await risk.resolveReview({ tenantId, paymentId, approve: true, operator: "ops-bob", reason: "double click" });
    assert.equal(again.replayed, true);
    assert.deepEqual(again.review, approved.review, "the same outcome again changes nothing");
    assert.equal((await rejection(risk.resolveReview({ tenantId, paymentId, approve: false, operator: "ops-bob", reason: "no" }))).code, Code.FailedPrecondition);

    const declined = await risk.resolveReview({ tenantId, paymentId: other, approve: false, operator: "ops-ada", reason: "stolen card" });
    assert.equal(declined.review?.status, ReviewStatus.DECLINED);
    assert.deepEqual((await risk.listReviews({ tenantId, status: ReviewStatus.PENDING })).reviews, []);
    assert.equal((await risk.listReviews({ tenantId })).reviews.length, 2);
    assert.equal((await rejection(risk.getReview({ tenantId, paymentId: "pay-unknown" }))).code, Code.NotFound);
    assert.equal((await rejection(risk.getReview({ tenantId: newTenant(), paymentId }))).code, Code.NotFound, "other tenants see nothing");
  });

  it("blocks on a blocklisted user, device or IP when the blocklist rule blocks, and stops once removed", async () => {
    const tenantId = newTenant();
    await risk.updateRiskSettings({ tenantId, settings: { blocklist: { rule: { action: Action.BLOCK } } } });
    await risk.addBlocklistEntry({ tenantId, kind: BlocklistKind.USER, value: "mallory", reason: "chargebacks" });
    await risk.addBlocklistEntry({ tenantId, kind: BlocklistKind.DEVICE, value: "dev-9", reason: "emulator farm" });
    await risk.addBlocklistEntry({ tenantId, kind: BlocklistKind.IP, value: "2001:DB8:0:0::1", reason: "proxy" });
    const blocked = await evaluate(risk, tenantId, { userId: "mallory" });
    assert.deepEqual(summaryOf(blocked), { decision: "BLOCK", reasons: ["BLOCKLISTED"], severities: ["BLOCKLISTED:HIGH:BLOCK"] });
    assert.match(blocked.flags[0]?.detail ?? "", /user mallory/);
    const byIp = await evaluate(risk, tenantId, { userId: "frank@example.com", ipAddress: "2001:db8::1", deviceId: "dev-9", beneficiaryId: "bank:058:0123456789" });
    assert.equal(byIp.decision, Decision.BLOCK);
    assert.match(byIp.flags[0]?.detail ?? "", /device dev-9, ip 2001:db8::1/);
    const listed = await risk.listBlocklistEntries({ tenantId });
    assert.deepEqual(listed.entries.map((entry) => [BlocklistKind[entry.kind], entry.value]), [["USER", "mallory"], ["DEVICE", "dev-9"], ["IP", "2001:db8::1"]]);
    await risk.removeBlocklistEntry({ tenantId, kind: BlocklistKind.USER, value: "mallory" });
    assert.equal((await evaluate(risk, tenantId, { userId: "mallory" })).decision, Decision.ALLOW);
    assert.equal((await rejection(risk.removeBlocklistEntry({ tenantId, kind: BlocklistKind.USER, value: "mallory" }))).code, Code.NotFound);
  });

  it("blocks on any rule set to BLOCK, with the reason", async () => {
    const tenantId = newTenant();
    await risk.updateRiskSettings({ tenantId, settings: { velocity: { rule: { action: Action.BLOCK }, maxPayments: 2 } } });
    assert.equal((await evaluate(risk, tenantId)).decision, Decision.ALLOW);
    const blocked = await evaluate(risk, tenantId);
    assert.deepEqual(summaryOf(blocked), { decision: "BLOCK", reasons: ["VELOCITY"], severities: ["VELOCITY:HIGH:BLOCK"] });
    assert.equal((await risk.listFlags({ tenantId, userId: "alice" })).flags[0]?.action, Action.BLOCK);
  });

  it("applies settings changed at run time at once, and in a second Risk instance within its cache time", async () => {
    const tenantId = newTenant();
    const second = await startRisk({ COWRIE_RISK_SETTINGS_CACHE_MS: "500" });
    assert.deepEqual((await evaluate(second, tenantId, { userId: "gina", amountMinor: 2_000_000n, currency: "USD" })).reasons, ["LARGE_AMOUNT"]);
    const { settings, version } = await risk.getRiskSettings({ tenantId });
    assert.equal(version, 0n);
    assert.equal(settings?.velocity?.maxPayments, 5);
    assert.equal(settings?.currencies.USD?.largeAmountMinor, 1_000_000n);
    assert.equal(settings?.currencies.USD?.newBeneficiaryAmountMinor, 200_000n);

    const updated = await risk.updateRiskSettings({
      tenantId,
      expectedVersion: 0n,
      settings: { largeAmount: { rule: { disabled: true } }, currencies: { USD: { largeAmountMinor: 5_000_000n }, JPY: { largeAmountMinor: 2_000_000n } } },
    });
    assert.equal(updated.version, 1n);
    assert.equal(updated.settings?.largeAmount?.rule?.disabled, true);
    assert.equal(updated.settings?.currencies.USD?.newBeneficiaryAmountMinor, 200_000n, "unset values keep their defaults");
    assert.equal(updated.settings?.currencies.JPY?.newBeneficiaryAmountMinor, 0n, "a currency without defaults is not checked where unset");
    assert.deepEqual((await evaluate(risk, tenantId, { userId: "gina-2", amountMinor: 2_000_000n, currency: "USD" })).reasons, [], "at once where it was changed");

    const startedAtMs = Date.now();
    let reasons = ["LARGE_AMOUNT"];
    while (reasons.includes("LARGE_AMOUNT")) {
      assert.ok(Date.now() - startedAtMs < 2_000, "the second instance should see the change within its cache time");
      await new Promise((resolve) => setTimeout(resolve, 50));
      reasons = (await evaluate(second, tenantId, { userId: `gina-${Date.now()}`, amountMinor: 2_000_000n, currency: "USD" })).reasons;
    }
    assert.equal((await rejection(risk.updateRiskSettings({ tenantId, expectedVersion: 0n + 5n, settings: {} }))).code, Code.Aborted);
    const reset = await risk.updateRiskSettings({ tenantId, expectedVersion: 1n, settings: {} });
    assert.equal(reset.version, 2n);
    assert.equal(reset.settings?.largeAmount?.rule?.disabled, false);
  });

  it("pages flags by user and time range, newest first", async () => {
    const tenantId = newTenant();
    await risk.updateRiskSettings({ tenantId, settings: { velocity: { maxPayments: 1 } } });
    const before = new Date(Date.now() - 1_000);
    for (let i = 0; i < 5; i++) await evaluate(risk, tenantId, { userId: "hank" });
    await evaluate(risk, tenantId, { userId: "ivy" });
    const first = await risk.listFlags({ tenantId, userId: "hank", pageSize: 3, fromTime: timestampFromDate(before) });
    const second = await risk.listFlags({ tenantId, userId: "hank", pageSize: 3, pageToken: first.nextPageToken, fromTime: timestampFromDate(before) });
    assert.equal(first.flags.length, 3);
    assert.equal(second.flags.length, 2);
    assert.equal(second.nextPageToken, "");
    assert.deepEqual(first.flags.map((flag) => flag.detail), ["5 payments in 60 s (limit 1)", "4 payments in 60 s (limit 1)", "3 payments in 60 s (limit 1)"]);
    assert.equal((await risk.listFlags({ tenantId, toTime: timestampFromDate(before) })).flags.length, 0);
    assert.equal((await risk.listFlags({ tenantId })).flags.length, 6);
  });

  it("refuses bad input with INVALID_ARGUMENT naming the field, and writes nothing", async () => {
    const tenantId = newTenant();
    await invalid(evaluate(risk, tenantId, { amountMinor: 0n }), "amount_minor");
    await invalid(evaluate(risk, tenantId, { amountMinor: -5n }), "amount_minor");
    await invalid(evaluate(risk, tenantId, { currency: "XXX" }), "currency");
    await invalid(evaluate(risk, "", {}), "tenant_id");
    await invalid(evaluate(risk, tenantId, { paymentId: "" }), "payment_id");
    await invalid(evaluate(risk, tenantId, { userId: "a b" }), "user_id");
    await invalid(evaluate(risk, tenantId, { ipAddress: "999.1.1.1" }), "ip_address");
    await invalid(evaluate(risk, tenantId, { beneficiaryId: "x".repeat(129) }), "beneficiary_id");
    await invalid(evaluate(risk, tenantId, { deviceId: "dev 1" }), "device_id");
    const summary = await risk.getUserRiskSummary({ tenantId, userId: "alice" });
    assert.equal(summary.paymentsInVelocityWindow, 0, "nothing was counted");
    assert.deepEqual(summary.currencies, []);
    await invalid(risk.updateRiskSettings({ tenantId, settings: { velocity: { windowSeconds: 100_000 } } }), "settings.velocity.window_seconds");
    await invalid(risk.updateRiskSettings({ tenantId, settings: { anomaly: { rule: { action: 9 as Action } } } }), "settings.anomaly.rule.action");
    await invalid(risk.updateRiskSettings({ tenantId, settings: { currencies: { usd: {} } } }), "settings.currencies[usd]");
    await invalid(risk.updateRiskSettings({ tenantId, settings: { currencies: { USD: { largeAmountMinor: -1n } } } }), "settings.currencies[USD].large_amount_minor");
    await invalid(risk.updateRiskSettings({ tenantId }), "settings");
    assert.equal((await risk.getRiskSettings({ tenantId })).version, 0n, "no settings were stored");
    await invalid(risk.addBlocklistEntry({ tenantId, kind: BlocklistKind.IP, value: "not-an-ip" }), "value");
    await invalid(risk.addBlocklistEntry({ tenantId, kind: BlocklistKind.UNSPECIFIED, value: "x" }), "kind");
    assert.deepEqual((await risk.listBlocklistEntries({ tenantId })).entries, []);
    await invalid(risk.resolveReview({ tenantId, paymentId: "p", approve: true, operator: "", reason: "r" }), "operator");
    await invalid(risk.resolveReview({ tenantId, paymentId: "p", approve: true, operator: "o", reason: "" }), "reason");
    await invalid(risk.listFlags({ tenantId, pageToken: "bm9wZQ" }), "page_token");
    await invalid(risk.listFlags({ tenantId, pageSize: 501 }), "page_size");
    await invalid(risk.recordPaymentOutcome({ tenantId, paymentId: "p", userId: "" }), "user_id");
  });
});

describe("on npm start's defaults: embedded PGlite and the in-process cache", () => {
  it("evaluates, records flags and reviews, and resolves them", async () => {
    const dataDir = await mkdtemp(path.join(tmpdir(), "cowrie-risk-"));
    const service = await startTestService(riskModule, { DATABASE_URL: "", REDIS_URL: "", COWRIE_DATA_DIR: dataDir });
    try {
      const risk = clientOf(service.baseUrl);
      const tenantId = newTenant();
      await risk.updateRiskSettings({ tenantId, settings: { largeAmount: { rule: { action: Action.REVIEW } } } });
      const paymentId = newPayment();
      const reviewed = await evaluate(risk, tenantId, { paymentId, amountMinor: 100_000_000n });
      assert.equal(reviewed.decision, Decision.REVIEW);
      assert.equal((await evaluate(risk, tenantId, { paymentId, amountMinor: 100_000_000n })).replayed, true);
      assert.deepEqual((await risk.listFlags({ tenantId })).flags.map((flag) => flag.rule), ["LARGE_AMOUNT"]);
      const resolved = await risk.resolveReview({ tenantId, paymentId, approve: false, operator: "ops", reason: "no" });
      assert.equal(resolved.review?.history.length, 2);
    } finally {
      await service.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

describe("when Redis is cut off", () => {
  let proxy: TcpProxy;
  let allowing: Risk;
  let reviewing: Risk;

  before(async () => {
    const redis = new URL(TEST_REDIS_URL);
    proxy = await startTcpProxy({ host: redis.hostname, port: Number(redis.port || 6379) });
    const viaProxy = `redis://127.0.0.1:${proxy.port}`;
    allowing = await startRisk({ REDIS_URL: viaProxy });
    reviewing = await startRisk({ REDIS_URL: viaProxy, COWRIE_RISK_WHEN_UNAVAILABLE: "review", ...PATIENT });
  });

  after(async () => {
    proxy.setMode("up");
    await proxy.close();
  });

  it("applies COWRIE_RISK_WHEN_UNAVAILABLE with a recorded RISK_UNAVAILABLE flag, and counts again once Redis is back", async () => {
    const tenantId = newTenant();
    assert.deepEqual((await evaluate(allowing, tenantId, { userId: "jo" })).reasons, [], "Redis reachable: counted normally");
    proxy.setMode("refuse");
    proxy.cutAll();

    const paymentId = newPayment();
    const startedAtMs = performance.now();
    const allowed = await evaluate(allowing, tenantId, { paymentId, userId: "jo", amountMinor: 4_242n });
    assert.ok(performance.now() - startedAtMs < 1_000, "the fallback does not wait for Redis");
    assert.deepEqual(summaryOf(allowed), { decision: "ALLOW", reasons: ["RISK_UNAVAILABLE"], severities: ["RISK_UNAVAILABLE:LOW:FLAG"] });
    assert.match(allowed.flags[0]?.detail ?? "", /Redis unavailable/);
    const retried = await evaluate(allowing, tenantId, { paymentId, userId: "jo", amountMinor: 4_242n });
    assert.deepEqual({ ...retried, replayed: false }, allowed, "a retry meets the recorded decision");
    assert.deepEqual((await allowing.listFlags({ tenantId, paymentId })).flags.map((flag) => flag.rule), ["RISK_UNAVAILABLE"]);

    // The rules that need no window still decide.
    assert.deepEqual((await evaluate(allowing, tenantId, { userId: "jo", amountMinor: 200_000_000n })).reasons, ["LARGE_AMOUNT", "RISK_UNAVAILABLE"]);

    const held = newPayment();
    const reviewed = await evaluate(reviewing, tenantId, { paymentId: held, userId: "kim", amountMinor: 4_343n });
    assert.deepEqual(summaryOf(reviewed), { decision: "REVIEW", reasons: ["RISK_UNAVAILABLE"], severities: ["RISK_UNAVAILABLE:LOW:REVIEW"] });
    assert.equal((await reviewing.getReview({ tenantId, paymentId: held })).review?.status, ReviewStatus.PENDING);

    assert.equal((await rejection(allowing.recordPaymentOutcome({ tenantId, paymentId, userId: "jo", succeeded: true }))).code, Code.Unavailable);

    proxy.setMode("blackhole");
    const blackholedAtMs = performance.now();
    assert.deepEqual((await evaluate(allowing, tenantId, { userId: "jo" })).reasons, ["RISK_UNAVAILABLE"]);
    assert.ok(performance.now() - blackholedAtMs < 1_000, "a silent Redis costs at most COWRIE_RISK_REDIS_TIMEOUT_MS");

    proxy.setMode("up");
    proxy.cutAll();
    const recoveredAtMs = Date.now();
    let back: EvaluateResponse | undefined;
    while (!back || back.reasons.includes("RISK_UNAVAILABLE")) {
      assert.ok(Date.now() - recoveredAtMs < 5_000, "Risk should use Redis again once it is back");
      await new Promise((resolve) => setTimeout(resolve, 100));
      back = await evaluate(allowing, tenantId, { userId: `lee-${Date.now()}` });
    }
    assert.deepEqual(back.reasons, []);
    // A retry of a payment decided during the outage: under "review" (or "block") the recorded
    // decision stands; under "allow" the decision is ALLOW either way (the flag stays recorded).
    const heldAgain = await evaluate(reviewing, tenantId, { paymentId: held, userId: "kim", amountMinor: 4_343n });
    assert.deepEqual([heldAgain.decision, heldAgain.reasons, heldAgain.replayed], [Decision.REVIEW, ["RISK_UNAVAILABLE"], true]);
    assert.equal((await evaluate(allowing, tenantId, { paymentId, userId: "jo", amountMinor: 4_242n })).decision, Decision.ALLOW);
  });
});

describe("when RabbitMQ is away at start", () => {
  const rabbit = new URL(TEST_AMQP_URL);
  const upstream = { host: rabbit.hostname, port: Number(rabbit.port || 5672) };
  const namespace = `test-risk-late-${RUN}`;
  const via = (port: number) => Object.assign(new URL(TEST_AMQP_URL), { host: `127.0.0.1:${port}` }).toString();

  after(async () => {
    await deleteBrokerTopology({ queues: consumerQueues(namespace, FEEDBACK_CONSUMER), exchanges: [eventsExchange(namespace)] });
  });

  it("waits for it (COWRIE_STARTUP_WAIT_MS) and starts its event consumer once it is there", async () => {
    // Nothing listens on the port at first (ECONNREFUSED); the proxy to RabbitMQ opens on it later
    // than rabbitmq-client's own 5 s wait for a channel, which used to end the start.
    const [port] = (await freePorts(1)) as [number];
    const startedAtMs = Date.now();
    const starting = startTestService(riskModule, { DATABASE_URL: database.url, AMQP_URL: via(port), COWRIE_BROKER_NAMESPACE: namespace, COWRIE_STARTUP_WAIT_MS: "30000" });
    await new Promise((resolve) => setTimeout(resolve, 6000));
    const late = await startTcpProxy(upstream, port);
    try {
      const service = await starting;
      started.push(service);
      assert.ok(Date.now() - startedAtMs >= 6000, "it started only once RabbitMQ answered");
      assert.deepEqual((await evaluate(clientOf(service.baseUrl), newTenant(), { userId: "ann" })).reasons, []);
      const connection = new Connection({ url: TEST_AMQP_URL, connectionName: `cowrie-test-${RUN}` });
      try {
        const [queue] = consumerQueues(namespace, FEEDBACK_CONSUMER) as [string];
        assert.equal((await connection.queueDeclare({ queue, passive: true })).consumerCount, 1, "the feedback consumer is attached");
      } finally {
        await connection.close();
      }
      await service.close();
    } finally {
      await late.close();
    }
  });

  it("gives up once COWRIE_STARTUP_WAIT_MS has passed, naming it", async () => {
    const [port] = (await freePorts(1)) as [number];
    const startedAtMs = Date.now();
    await assert.rejects(
      startTestService(riskModule, { DATABASE_URL: database.url, AMQP_URL: via(port), COWRIE_BROKER_NAMESPACE: namespace, COWRIE_STARTUP_WAIT_MS: "500" }),
      /RabbitMQ could not be reached within COWRIE_STARTUP_WAIT_MS \(500 ms\)/,
    );
    assert.ok(Date.now() - startedAtMs < 5000, `gave up after ${Date.now() - startedAtMs} ms`);
  });
});
