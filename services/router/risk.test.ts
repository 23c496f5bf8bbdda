// The Router with Risk inline, on the real backends (PostgreSQL, Redis) and the real Ledger,
// Wallet and Risk services: the seeds' scenario flags without blocking; a rule set to REVIEW holds
// the payment's money until an operator approves or declines it at Risk; a blocklisted user's
// payment fails before any money moves; and Risk's verdict is kept on the payment.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { Action, BlocklistKind, RiskService } from "../../gen/cowrie/risk/v1/risk_pb.js";
import { PaymentKind, PaymentStatus, RouterService, type Payment } from "../../gen/cowrie/router/v1/router_pb.js";
import { sql } from "drizzle-orm";
import { HoldStatus, WalletKind, WalletService } from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import { rowsOf } from "../runtime/db.js";
import { releaseIdFor } from "../wallet/service.js";
import { startMesh, type Mesh } from "../mesh.js";
import { capturingLogger, freshDatabase, meshEnvironment, TEST_REDIS_URL, testConfig } from "../runtime/testing.js";

let database: Awaited<ReturnType<typeof freshDatabase>>;
let mesh: Mesh;
let router: Client<typeof RouterService>;
let wallets: Client<typeof WalletService>;
let risk: Client<typeof RiskService>;

before(async () => {
  database = await freshDatabase("router_risk");
  const config = testConfig(await meshEnvironment({
    DATABASE_URL: database.url,
    REDIS_URL: TEST_REDIS_URL,
    COWRIE_COMPLETER_INTERVAL_MS: "100",
  }));
  mesh = await startMesh(config, ["ledger", "wallet", "risk", "router"], capturingLogger().log);
  const transport = (port: number) => createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "2" });
  router = createClient(RouterService, transport(config.routerPort));
  wallets = createClient(WalletService, transport(config.walletPort));
  risk = createClient(RiskService, transport(config.riskPort));
});

after(async () => {
  await mesh?.close();
  await database?.drop();
});

let counter = 0;
const unique = (prefix: string) => `${prefix}-${process.pid}-${Date.now()}-${++counter}`;

async function tenantWithWallets(fundMinor: bigint, payerDailyOutflowMinor = 0n) {
  const tenantId = unique("tenant");
  const open = async (ownerId: string, dailyOutflowMinor = 0n) => {
    const { wallet } = await wallets.createWallet({ tenantId, ownerId, currency: "NGN", kind: WalletKind.CUSTOMER, limits: { dailyOutflowMinor } });
    assert.ok(wallet);
    return wallet.id;
  };
  const payer = await open("payer", payerDailyOutflowMinor);
  const shop = await open("shop");
  await wallets.fundWallet({ tenantId, walletId: payer, amountMinor: fundMinor, currency: "NGN", idempotencyKey: unique("fund") });
  return { tenantId, payer, shop };
}

async function pay(tenantId: string, from: string, to: string, amountMinor: bigint, userId = "ada"): Promise<Payment> {
  const { payment } = await router.createPayment({ tenantId, idempotencyKey: unique("pay"), kind: PaymentKind.INTERNAL, amountMinor, currency: "NGN", sourceWalletId: from, destinationWalletId: to, userId }, { timeoutMs: 10_000 });
  assert.ok(payment);
  return payment;
}

async function available(tenantId: string, walletId: string): Promise<bigint> {
  return (await wallets.getWallet({ tenantId, walletId })).wallet?.availableBalanceMinor ?? -1n;
}

async function until(tenantId: string, paymentId: string, done: (payment: Payment) => boolean): Promise<Payment> {
  for (let tries = 0; tries < 150; tries++) {
    const { payment } = await router.getPayment({ tenantId, paymentId });
    if (payment && done(payment)) return payment;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.fail(`payment ${paymentId} never got there`);
}

describe("Risk inline on every payment", () => {
  it("flags the seeds' six rapid payments without blocking them, and keeps the verdict on each", async () => {
    const { tenantId, payer, shop } = await tenantWithWallets(100_000n);
    const payments: Payment[] = [];
    for (let index = 0; index < 6; index++) payments.push(await pay(tenantId, payer, shop, 1_000n));
    assert.ok(payments.every((payment) => payment.status === PaymentStatus.SUCCEEDED && payment.risk?.decision === "allow"));
    assert.ok(payments[4]?.risk?.reasons.includes("VELOCITY"), `fifth: ${payments[4]?.risk?.reasons}`);
    assert.ok(payments[5]?.risk?.reasons.includes("VELOCITY") && payments[5]?.risk?.reasons.includes("DUPLICATE_AMOUNT"), `sixth: ${payments[5]?.risk?.reasons}`);
    assert.equal(payments[0]?.risk?.userId, "ada");
    const { flags } = await risk.listFlags({ tenantId, userId: "ada" });
    assert.ok(flags.some((flag) => flag.paymentId === payments[4]?.id && flag.rule === "VELOCITY"));
  });

  it("holds the money of a payment sent to review until an operator approves it, then pays it with that very money", async () => {
    // A daily limit with room for the payment once: the approval spends the hold's admission.
    const { tenantId, payer, shop } = await tenantWithWallets(10_000n, 10_000n);
    await risk.updateRiskSettings({ tenantId, settings: { largeAmount: { rule: { action: Action.REVIEW } }, currencies: { NGN: { largeAmountMinor: 5_000n } } } });
    const payment = await pay(tenantId, payer, shop, 6_000n);
    assert.equal(payment.status, PaymentStatus.IN_REVIEW);
    assert.equal(payment.risk?.decision, "review");
    assert.ok(payment.risk?.reasons.includes("LARGE_AMOUNT"));
    assert.equal(await available(tenantId, payer), 4_000n, "the money is held while in review");
    await risk.resolveReview({ tenantId, paymentId: payment.id, approve: true, operator: "olu", reason: "known customer" });
    const done = await until(tenantId, payment.id, (current) => current.status === PaymentStatus.SUCCEEDED);
    assert.match(done.history.map((change) => change.reason).join(" | "), /review approved by olu: known customer/);
    assert.equal(await available(tenantId, payer), 4_000n);
    assert.equal(await available(tenantId, shop), 6_000n);
    // The hold was released and the payment made in one Ledger commit: no moment when the held
    // money was free for another spend.
    assert.equal((await wallets.getHold({ tenantId, holdId: done.holdId })).hold?.status, HoldStatus.RELEASED);
    const batches = rowsOf(await mesh.backends.database("ledger").db.execute(sql`
      select distinct batch from ledger.transfers where id = ${releaseIdFor(done.holdId)} or id = ${done.transferId}`));
    assert.equal(batches.length, 1);
  });

  it("releases the money of a payment declined in review, and fails it", async () => {
    const { tenantId, payer, shop } = await tenantWithWallets(10_000n);
    await risk.updateRiskSettings({ tenantId, settings: { largeAmount: { rule: { action: Action.REVIEW } }, currencies: { NGN: { largeAmountMinor: 5_000n } } } });
    const payment = await pay(tenantId, payer, shop, 7_000n);
    assert.equal(payment.status, PaymentStatus.IN_REVIEW);
    await risk.resolveReview({ tenantId, paymentId: payment.id, approve: false, operator: "olu", reason: "card testing" });
    const done = await until(tenantId, payment.id, (current) => current.status === PaymentStatus.FAILED);
    assert.equal(done.failureCode, "risk_declined");
    assert.equal(await available(tenantId, payer), 10_000n);
    assert.equal(await available(tenantId, shop), 0n);
  });

  it("does not evaluate a refund, which gives back money a payment took, and keeps no verdict on it", async () => {
    const { tenantId, payer, shop } = await tenantWithWallets(10_000n);
    const payment = await pay(tenantId, payer, shop, 2_000n);
    const { refund } = await router.refundPayment({ tenantId, idempotencyKey: unique("refund"), paymentId: payment.id, amountMinor: 500n, reason: "returned" }, { timeoutMs: 10_000 });
    assert.equal(refund?.status, PaymentStatus.SUCCEEDED);
    // Evaluating it would have sent Risk a refund without a user, refused, and applied the
    // fallback verdict (RISK_UNAVAILABLE; with COWRIE_RISK_WHEN_UNAVAILABLE=block, a failed refund).
    assert.deepEqual({ decision: refund?.risk?.decision, reasons: refund?.risk?.reasons }, { decision: "", reasons: [] });
    assert.equal(await available(tenantId, payer), 8_500n);
  });

  it("fails a blocklisted user's payment before any money moves", async () => {
    const { tenantId, payer, shop } = await tenantWithWallets(10_000n);
    await risk.updateRiskSettings({ tenantId, settings: { blocklist: { rule: { action: Action.BLOCK } } } });
    await risk.addBlocklistEntry({ tenantId, kind: BlocklistKind.USER, value: "mallory", reason: "chargebacks" });
    const payment = await pay(tenantId, payer, shop, 1_000n, "mallory");
    assert.equal(payment.status, PaymentStatus.FAILED);
    assert.equal(payment.failureCode, "risk_blocked");
    assert.ok(payment.risk?.reasons.includes("BLOCKLISTED"));
    assert.equal(await available(tenantId, payer), 10_000n);
  });
});
