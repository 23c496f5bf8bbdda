// Gateway payments end to end on the real backends: PostgreSQL, RabbitMQ (the work queue) and
// Redis, the real Ledger, Wallet and Router, and the gateway simulator serving the Paystack,
// Flutterwave and Stripe contracts. The simulator's own records are the gateways' truth: every
// test that moves money checks them against Cowrie's payments and the Ledger.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { after, before, beforeEach, describe, it } from "node:test";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { LedgerService } from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import { CircuitState, PaymentKind, PaymentStatus, RouterService, CreatePaymentRequestSchema, type Payment } from "../../gen/cowrie/router/v1/router_pb.js";
import { HoldStatus, WalletKind, WalletService } from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import { startMesh, type Mesh } from "../mesh.js";
import { loadConfig } from "../runtime/config.js";
import { meshTopology } from "../mesh.js";
import { capturingLogger, deleteBrokerTopology, freshDatabase, meshEnvironment, TEST_AMQP_URL, TEST_REDIS_URL, testConfig } from "../runtime/testing.js";
import { simulatorControl, simulatorGatewayEnv, type SimulatorControl } from "../simulator/control.js";
import { startSimulator } from "../simulator/simulator.js";

const TENANT = "tenant-gw";
const { SUCCEEDED, FAILED, OUTCOME_UNKNOWN } = PaymentStatus;
const BREAKER_FAILURES = 4;
const BREAKER_OPEN_MS = 2_000;

let database: Awaited<ReturnType<typeof freshDatabase>>;
let namespace: string | undefined;
let simulator: Awaited<ReturnType<typeof startSimulator>>;
let sim: SimulatorControl;
let mesh: Mesh;
let router: Client<typeof RouterService>;
let wallets: Client<typeof WalletService>;
let ledger: Client<typeof LedgerService>;
let routerUrl: string;

before(async () => {
  database = await freshDatabase("gateways");
  simulator = await startSimulator({ port: 0 });
  sim = simulatorControl(simulator.url);
  const config = testConfig(await meshEnvironment({
    DATABASE_URL: database.url,
    AMQP_URL: TEST_AMQP_URL,
    REDIS_URL: TEST_REDIS_URL,
    ...simulatorGatewayEnv(simulator.url),
    COWRIE_GATEWAY_TIMEOUT_MS: "400",
    COWRIE_GATEWAY_BREAKER_FAILURES: String(BREAKER_FAILURES),
    COWRIE_GATEWAY_BREAKER_OPEN_MS: String(BREAKER_OPEN_MS),
    COWRIE_ROUTING_EXPLORATION_PERCENT: "0",
    COWRIE_COMPLETER_INTERVAL_MS: "100",
    COWRIE_RECOVERY_AFTER_MS: "3000",
    COWRIE_OUTCOME_UNKNOWN_FLAG_AFTER_MS: "1500",
  }));
  namespace = config.brokerNamespace;
  mesh = await startMesh(config, ["ledger", "wallet", "router"], capturingLogger().log);
  const transport = (port: number) => createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "2" });
  router = createClient(RouterService, transport(config.routerPort));
  wallets = createClient(WalletService, transport(config.walletPort));
  ledger = createClient(LedgerService, transport(config.ledgerPort));
  routerUrl = `http://127.0.0.1:${config.routerPort}`;
});

after(async () => {
  await mesh?.close();
  await simulator?.close();
  await database?.drop();
  if (namespace) await deleteBrokerTopology(meshTopology(namespace));
});

beforeEach(async () => {
  await sim.reset();
});

let counter = 0;
function unique(prefix: string): string {
  counter += 1;
  return `${prefix}-${process.pid}-${counter}`;
}

async function openWallet(fundMinor = 0n): Promise<string> {
  const { wallet } = await wallets.createWallet({ tenantId: TENANT, ownerId: unique("owner"), currency: "NGN", kind: WalletKind.MERCHANT });
  assert.ok(wallet);
  if (fundMinor > 0n) await wallets.fundWallet({ tenantId: TENANT, walletId: wallet.id, amountMinor: fundMinor, currency: "NGN", idempotencyKey: unique("fund") });
  return wallet.id;
}

async function balances(walletId: string) {
  const { wallet } = await wallets.getWallet({ tenantId: TENANT, walletId });
  assert.ok(wallet);
  return { posted: wallet.postedBalanceMinor, available: wallet.availableBalanceMinor };
}

type Fields = Omit<MessageInitShape<typeof CreatePaymentRequestSchema>, "$typeName">;

async function payIn(walletId: string, amountMinor: bigint, fields: Fields = {}): Promise<Payment> {
  const { payment } = await router.createPayment({
    tenantId: TENANT,
    idempotencyKey: unique("payin"),
    kind: PaymentKind.PAY_IN,
    amountMinor,
    currency: "NGN",
    destinationWalletId: walletId,
    paymentMethod: "AUTH_good",
    customerEmail: "payer@example.com",
    country: "NG",
    ...fields,
  }, { timeoutMs: 10_000 });
  assert.ok(payment);
  return payment;
}

async function payout(walletId: string, amountMinor: bigint, accountNumber = "0123456789", fields: Fields = {}): Promise<Payment> {
  const { payment } = await router.createPayment({
    tenantId: TENANT,
    idempotencyKey: unique("payout"),
    kind: PaymentKind.PAYOUT,
    amountMinor,
    currency: "NGN",
    sourceWalletId: walletId,
    country: "NG",
    bankAccount: { bankCode: "058", accountNumber, accountName: "Ada Obi" },
    ...fields,
  }, { timeoutMs: 10_000 });
  assert.ok(payment);
  return payment;
}

/**
 * A first payout to the test's bank account, so that Paystack's connector knows its transfer
 * recipient: with the recipient still to create, a gateway that hangs fails the recipient call,
 * which proves no transfer was made, and the payout fails over instead of becoming unknown.
 */
/**
 * Keeps Flutterwave answering 503 (proof it did nothing) while `body` runs, so that every payout
 * ends at Paystack whichever gateway ranks first after earlier tests' random outcomes.
 */
async function onlyPaystackPays(body: () => Promise<void>): Promise<void> {
  // An earlier test's outage may have left Paystack's circuit open for a while.
  for (let tries = 0; tries < 100 && (await circuit("paystack")) === CircuitState.OPEN; tries++) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  await sim.configure("flutterwave", { outage: "unavailable" });
  try {
    await body();
  } finally {
    await sim.configure("flutterwave", { outage: "none" });
  }
}

/** Polls until every payment is SUCCEEDED or FAILED. */
async function settled(ids: string[], timeoutMs = 20_000): Promise<Payment[]> {
  const untilMs = Date.now() + timeoutMs;
  for (;;) {
    const payments = await Promise.all(ids.map(async (paymentId) => (await router.getPayment({ tenantId: TENANT, paymentId })).payment as Payment));
    const open = payments.filter((payment) => payment.status !== SUCCEEDED && payment.status !== FAILED);
    if (open.length === 0) return payments;
    if (Date.now() > untilMs) assert.fail(`${open.length} payments still open: ${open.map((p) => `${p.id} ${PaymentStatus[p.status]}`).join(", ")}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function circuit(gateway: string): Promise<CircuitState> {
  const { gateways } = await router.listGateways({});
  return gateways.find((item) => item.name === gateway)?.circuitState ?? CircuitState.UNSPECIFIED;
}

/** Succeeded gateway records per Cowrie payment id (the reference is "<payment id>.<gateway>"). */
async function successesByPayment(operation: "charge" | "payout"): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  for (const record of await sim.records({ operation })) {
    if (record.status !== "succeeded") continue;
    const paymentId = record.reference.split(".")[0]!.replace("pay-", "pay_");
    counts.set(paymentId, (counts.get(paymentId) ?? 0) + 1);
  }
  return counts;
}

async function clearingDebits(gateway: string): Promise<bigint> {
  const { accounts } = await ledger.lookupAccounts({ ids: [`clearing:${gateway}:NGN`] });
  const account = accounts[0];
  return account ? account.debitsPosted - account.creditsPosted : 0n;
}

describe("pay-ins and payouts", () => {
  it("credits a pay-in from the gateway's clearing account, routed by rules to Paystack, and records why", async () => {
    const walletId = await openWallet();
    const before = await clearingDebits("paystack");
    const payment = await payIn(walletId, 250_000n, { waitForOutcome: true });
    assert.equal(payment.status, SUCCEEDED, payment.failureMessage);
    assert.equal(payment.gateway, "paystack");
    assert.ok(payment.gatewayTransactionId !== "");
    assert.equal((await balances(walletId)).posted, 250_000n);
    assert.equal((await clearingDebits("paystack")) - before, 250_000n);
    const { calls } = await router.getRoutingDecisions({ tenantId: TENANT, paymentId: payment.id });
    assert.equal(calls.length, 1);
    const [call] = calls;
    assert.equal(call?.operation, "charge");
    assert.equal(call?.outcome, "succeeded");
    assert.equal(call?.reason, "best score");
    const stripe = call?.candidates.find((candidate) => candidate.gateway === "stripe");
    assert.equal(stripe?.eligible, false);
    assert.match(stripe?.excludedReason ?? "", /does not serve NGN/);
    assert.deepEqual((await sim.records({ operation: "charge" })).map((record) => record.status), ["succeeded"]);
  });

  it("accepts at once (CREATED), then a worker from the queue finishes it", async () => {
    const walletId = await openWallet();
    const payment = await payIn(walletId, 1_000n);
    assert.equal(payment.status, PaymentStatus.CREATED);
    const [done] = await settled([payment.id]);
    assert.equal(done?.status, SUCCEEDED);
  });

  it("holds a payout's money, pays the bank account, then captures the hold", async () => {
    const walletId = await openWallet(10_000n);
    const payment = await payout(walletId, 4_000n, "0123456789", { waitForOutcome: true });
    assert.equal(payment.status, SUCCEEDED, payment.failureMessage);
    assert.ok(payment.holdId !== "");
    const { hold } = await wallets.getHold({ tenantId: TENANT, holdId: payment.holdId });
    assert.equal(hold?.status, HoldStatus.CAPTURED);
    assert.equal(hold?.destinationWalletId, `clearing:${payment.gateway}:NGN`);
    assert.deepEqual(await balances(walletId), { posted: 6_000n, available: 6_000n });
  });

  it("releases the hold of a declined payout, records the decline, and never retries it", async () => {
    const walletId = await openWallet(10_000n);
    const payment = await payout(walletId, 4_000n, "decline_invalid_account", { waitForOutcome: true });
    assert.equal(payment.status, FAILED);
    assert.equal(payment.failureCode, "invalid_account");
    assert.deepEqual(await balances(walletId), { posted: 10_000n, available: 10_000n });
    const { calls } = await router.getRoutingDecisions({ tenantId: TENANT, paymentId: payment.id });
    assert.equal(calls.filter((call) => call.operation === "payout").length, 1);
  });

  it("fails a payout the wallet cannot cover without calling any gateway", async () => {
    const walletId = await openWallet(1_000n);
    const payment = await payout(walletId, 4_000n, "0123456789", { waitForOutcome: true });
    assert.equal(payment.status, FAILED);
    assert.equal(payment.failureCode, "insufficient_funds");
    assert.equal((await router.getRoutingDecisions({ tenantId: TENANT, paymentId: payment.id })).calls.length, 0);
    assert.equal((await sim.records({ operation: "payout" })).length, 0);
  });

  it("refunds a pay-in through the gateway that took it, out of the wallet it credited", async () => {
    const walletId = await openWallet();
    const payment = await payIn(walletId, 5_000n, { waitForOutcome: true });
    assert.equal(payment.status, SUCCEEDED);
    const { refund } = await router.refundPayment({ tenantId: TENANT, idempotencyKey: unique("refund"), paymentId: payment.id, amountMinor: 2_000n });
    assert.ok(refund);
    const [done] = await settled([refund.id]);
    assert.equal(done?.status, SUCCEEDED, done?.failureMessage);
    assert.equal(done?.gateway, payment.gateway);
    assert.deepEqual(await balances(walletId), { posted: 3_000n, available: 3_000n });
    const refunds = await sim.records({ operation: "refund" });
    assert.equal(refunds.filter((record) => record.status === "succeeded").length, 1);
  });
});

describe("routing and resilience", () => {
  it("never retries a decline and never opens a circuit for one", async () => {
    const walletId = await openWallet();
    const payments = [];
    for (let index = 0; index < BREAKER_FAILURES * 2; index++) {
      payments.push(await payIn(walletId, 100n, { paymentMethod: "decline_insufficient_funds", waitForOutcome: true }));
    }
    for (const payment of payments) {
      assert.equal(payment.status, FAILED);
      assert.equal(payment.failureCode, "insufficient_funds");
      assert.equal((await router.getRoutingDecisions({ tenantId: TENANT, paymentId: payment.id })).calls.length, 1);
    }
    assert.equal(await circuit("paystack"), CircuitState.CLOSED);
    assert.equal((await balances(walletId)).posted, 0n);
  });

  it("moves traffic off a gateway that goes down, and closes its circuit again when it recovers", async () => {
    const walletId = await openWallet();
    await sim.configure("paystack", { outage: "unavailable", latencyMs: { median: 300, p99: 350 } });
    // A burst first: every payment in it is routed before any answer comes back, so each tries
    // Paystack once, gets 503 (certainly not processed) and fails over; the faults open the circuit.
    const burst = await Promise.all(Array.from({ length: 8 }, () => payIn(walletId, 100n, { waitForOutcome: true })));
    assert.equal(await circuit("paystack"), CircuitState.OPEN);
    const after: Payment[] = [];
    for (let index = 0; index < 6; index++) after.push(await payIn(walletId, 100n, { waitForOutcome: true }));
    for (const payment of [...burst, ...after]) {
      assert.equal(payment.status, SUCCEEDED, payment.failureMessage);
      assert.equal(payment.gateway, "flutterwave");
    }
    // Once open, Paystack is not even tried: the switch took at most the burst.
    for (const payment of after) {
      const { calls } = await router.getRoutingDecisions({ tenantId: TENANT, paymentId: payment.id });
      assert.deepEqual(calls.map((call) => call.gateway), ["flutterwave"]);
      const paystack = calls[0]?.candidates.find((candidate) => candidate.gateway === "paystack");
      assert.equal(paystack?.excludedReason, "circuit open");
    }
    assert.equal((await sim.records({ gateway: "paystack" })).length, 0);

    await sim.configure("paystack", { outage: "none", latencyMs: { median: 5, p99: 30 } });
    await new Promise((resolve) => setTimeout(resolve, BREAKER_OPEN_MS + 50));
    assert.equal(await circuit("paystack"), CircuitState.HALF_OPEN);
    const probe = await payIn(walletId, 100n, { waitForOutcome: true });
    assert.equal(probe.gateway, "paystack");
    assert.equal((await router.getRoutingDecisions({ tenantId: TENANT, paymentId: probe.id })).calls[0]?.reason, "half-open probe");
    await payIn(walletId, 100n, { waitForOutcome: true });
    assert.equal(await circuit("paystack"), CircuitState.CLOSED);
    assert.equal((await balances(walletId)).posted, 1_600n);
  });

  it("retries a rate-limited gateway with the same reference, then fails over when it keeps refusing", async () => {
    const walletId = await openWallet();
    await sim.configure("paystack", { rateLimitRate: 1, retryAfterSeconds: 0 });
    const payment = await payIn(walletId, 700n, { waitForOutcome: true });
    assert.equal(payment.status, SUCCEEDED, payment.failureMessage);
    assert.equal(payment.gateway, "flutterwave");
    const { calls } = await router.getRoutingDecisions({ tenantId: TENANT, paymentId: payment.id });
    const paystack = calls.filter((call) => call.gateway === "paystack");
    assert.deepEqual(paystack.map((call) => call.reason), ["best score", "retry 1", "retry 2"]);
    assert.ok(paystack.every((call) => call.code === "rate_limited" && call.reference === paystack[0]?.reference));
    assert.equal(calls.at(-1)?.gateway, "flutterwave");
    assert.equal((await sim.records({ gateway: "paystack" })).length, 0);
  });

  it("under ambiguous timeouts charges each payment at most once across all gateways, and the ledger matches", async () => {
    const walletId = await openWallet();
    await sim.configure("paystack", { ambiguousRate: 0.3, ambiguousHoldMs: 1_500 });
    await sim.configure("flutterwave", { ambiguousRate: 0.2, ambiguousHoldMs: 1_500 });
    const accepted = await Promise.all(Array.from({ length: 40 }, (_, index) => payIn(walletId, BigInt(100 + index))));
    const payments = await settled(accepted.map((payment) => payment.id), 30_000);
    const charges = await successesByPayment("charge");
    let expected = 0n;
    for (const payment of payments) {
      const charged = charges.get(payment.id) ?? 0;
      assert.ok(charged <= 1, `${payment.id} was charged ${charged} times`);
      assert.equal(charged, payment.status === SUCCEEDED ? 1 : 0, `${payment.id} is ${PaymentStatus[payment.status]} but charged ${charged} times`);
      if (payment.status === SUCCEEDED) expected += payment.amountMinor;
    }
    assert.equal((await balances(walletId)).posted, expected);
    const timedOut = await Promise.all(payments.map(async (payment) =>
      (await router.getRoutingDecisions({ tenantId: TENANT, paymentId: payment.id })).calls.some((call) => call.code === "gateway_timeout")));
    assert.ok(timedOut.some(Boolean), "no call timed out; the test did not exercise ambiguity");
  });

  it("keeps a payout's money held while its outcome is unknown, and settles it when the gateway answers", async () => {
    const walletId = await openWallet(10_500n);
    await onlyPaystackPays(async () => {
      // Paystack learns the recipient while it still answers.
      const warm = await payout(walletId, 500n, "0123456789", { waitForOutcome: true });
      assert.equal(warm.status, SUCCEEDED, warm.failureMessage);
      assert.equal(warm.gateway, "paystack");

      // Then it stops answering: the payout's call times out after it was sent, and the status
      // query cannot settle it either.
      await sim.configure("paystack", { outage: "hang", ambiguousHoldMs: 2_000 });
      const accepted = await payout(walletId, 3_000n);
      const untilMs = Date.now() + 10_000;
      let unknown: Payment | undefined;
      while (Date.now() < untilMs) {
        unknown = (await router.getPayment({ tenantId: TENANT, paymentId: accepted.id })).payment;
        if (unknown?.status === OUTCOME_UNKNOWN) break;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.equal(unknown?.status, OUTCOME_UNKNOWN, `${unknown?.id} is ${PaymentStatus[unknown?.status ?? 0]} at ${unknown?.gateway}`);
      assert.deepEqual(await balances(walletId), { posted: 10_000n, available: 7_000n }, "the money stays held");

      await sim.configure("paystack", { outage: "none" });
      const [done] = await settled([accepted.id]);
      assert.equal(done?.status, SUCCEEDED, done?.failureMessage);
      // Paystack had no record of it (it hung before processing): once that answer is older than
      // any request still in flight could be, the payout is routed again, and Paystack pays it.
      assert.deepEqual(done?.history.map((change) => PaymentStatus[change.toStatus]), ["CREATED", "PROCESSING", "OUTCOME_UNKNOWN", "PROCESSING", "SUCCEEDED"]);
      assert.deepEqual(await balances(walletId), { posted: 7_000n, available: 7_000n });
      const reference = `${accepted.id.replace("pay_", "pay-")}.paystack`;
      assert.equal((await sim.records({ operation: "payout", reference })).filter((record) => record.status === "succeeded").length, 1);
    });
  });

  it("flags a payment whose outcome stays unknown past the limit for reconciliation, and keeps asking", async () => {
    const walletId = await openWallet();
    await sim.configure("paystack", { outage: "hang", ambiguousHoldMs: 2_000 });
    await sim.configure("flutterwave", { outage: "hang", ambiguousHoldMs: 2_000 });
    const accepted = await payIn(walletId, 900n);
    const untilMs = Date.now() + 15_000;
    let payment: Payment | undefined;
    while (Date.now() < untilMs && !payment?.needsReconciliation) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      payment = (await router.getPayment({ tenantId: TENANT, paymentId: accepted.id })).payment;
    }
    assert.equal(payment?.status, OUTCOME_UNKNOWN);
    assert.equal(payment?.needsReconciliation, true);
    await sim.configure("paystack", { outage: "none" });
    await sim.configure("flutterwave", { outage: "none" });
    const [done] = await settled([accepted.id]);
    assert.equal(done?.status, SUCCEEDED);
    assert.equal(done?.needsReconciliation, true, "the flag stays for reconciliation to see");
  });

  it("lists every gateway with its circuit, window and currencies", async () => {
    const { gateways } = await router.listGateways({});
    assert.deepEqual(gateways.map((gateway) => gateway.name).sort(), ["flutterwave", "paystack", "stripe"]);
    assert.ok(gateways.every((gateway) => gateway.concurrencyMax > 0 && gateway.currencies.length > 0));
  });
});

describe("gateway webhooks", () => {
  const post = (gateway: string, body: string, headers: Record<string, string>) =>
    fetch(`${routerUrl}/webhooks/${gateway}`, { method: "POST", body, headers: { "content-type": "application/json", ...headers } });

  it("refuses a notification with a bad signature, or for a gateway Cowrie does not have", async () => {
    const body = JSON.stringify({ event: "transfer.success", data: { reference: "pay-01M8000000000000000000000.paystack", status: "success" } });
    assert.equal((await post("paystack", body, { "x-paystack-signature": "0".repeat(128) })).status, 401);
    assert.equal((await post("paystack", body, {})).status, 401);
    assert.equal((await post("acmepay", body, {})).status, 404);
  });

  it("drives a payment whose outcome is unknown when the gateway's signed notification arrives, settling it by status", async () => {
    const config = loadConfig({});
    const walletId = await openWallet();
    // Both NGN gateways stop answering, so whichever the ranking picks, the charge's outcome
    // becomes unknown (a pay-in is one call; nothing about it can fail over).
    await sim.configure("paystack", { outage: "hang", ambiguousHoldMs: 2_000 });
    await sim.configure("flutterwave", { outage: "hang", ambiguousHoldMs: 2_000 });
    const accepted = await payIn(walletId, 2_500n);
    let unknown: Payment | undefined;
    for (let tries = 0; tries < 200 && unknown?.status !== OUTCOME_UNKNOWN; tries++) {
      await new Promise((resolve) => setTimeout(resolve, 25));
      unknown = (await router.getPayment({ tenantId: TENANT, paymentId: accepted.id })).payment;
    }
    assert.equal(unknown?.status, OUTCOME_UNKNOWN);
    await sim.configure("paystack", { outage: "none" });
    await sim.configure("flutterwave", { outage: "none" });
    // Let the worker's drive that recorded OUTCOME_UNKNOWN end (a drive still running would be
    // joined, not repeated); the resolver's first check is not due for another 800 ms.
    await new Promise((resolve) => setTimeout(resolve, 100));
    const reference = `${accepted.id.replace("pay_", "pay-")}.${unknown?.gateway}`;
    const response = unknown?.gateway === "paystack"
      ? await (async () => {
          const body = JSON.stringify({ event: "charge.success", data: { reference, status: "success" } });
          return post("paystack", body, { "x-paystack-signature": createHmac("sha512", config.paystackSecretKey).update(body).digest("hex") });
        })()
      : await post("flutterwave", JSON.stringify({ event: "charge.completed", data: { tx_ref: reference, status: "successful" } }), { "verif-hash": config.flutterwaveWebhookSecret });
    assert.equal(response.status, 200);
    const [done] = await settled([accepted.id]);
    assert.equal(done?.status, SUCCEEDED);
    const { calls } = await router.getRoutingDecisions({ tenantId: TENANT, paymentId: accepted.id });
    assert.ok(calls.some((call) => call.operation === "status" && call.reason === "status after a gateway webhook"), "the webhook did not drive the payment");
    assert.equal((await balances(walletId)).posted, 2_500n);
  });
});
