// The Router against a real PostgreSQL, with the real Ledger and Wallet in the same process:
// payments with a fee leg, declines recorded as FAILED, idempotency under concurrency, listing,
// refunds that never exceed the payment even when raced, and the completer finishing payments a
// crash left behind, exactly once.
import assert from "node:assert/strict";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { after, before, describe, it } from "node:test";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { eq } from "drizzle-orm";
import fc from "fast-check";
import { LedgerService } from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import {
  PaymentKind,
  PaymentStatus,
  RouterService,
  CreatePaymentRequestSchema,
  type Payment,
} from "../../gen/cowrie/router/v1/router_pb.js";
import { WalletKind, WalletService } from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import { startMesh, type Mesh } from "../mesh.js";
import { createPostgresDatabase, type Database } from "../runtime/db.js";
import { startTcpProxy } from "../runtime/tcp-proxy.js";
import { capturingLogger, freshDatabase, meshEnvironment, rejection, startTestService, testConfig } from "../runtime/testing.js";
import { TRANSFER_CODE } from "../wallet/codes.js";
import { STATUSES, isValidHistory } from "./lifecycle.js";
import { walletKeyFor } from "./processor.js";
import { routerModule } from "./service.js";
import { paymentTransitions, payments } from "./schema.js";
import { fingerprintOf, newPaymentId, persistTransition, findById, type PaymentRow } from "./store.js";

const TENANT = "tenant-a";
const OTHER_TENANT = "tenant-b";
const { CREATED, PROCESSING, SUCCEEDED, FAILED } = PaymentStatus;

let database: Awaited<ReturnType<typeof freshDatabase>>;
let mesh: Mesh;
let direct: Database;
let wallets: Client<typeof WalletService>;
let router: Client<typeof RouterService>;
let ledger: Client<typeof LedgerService>;
let walletPort: number;

before(async () => {
  database = await freshDatabase("router");
  const config = testConfig(
    await meshEnvironment({
      DATABASE_URL: database.url,
      COWRIE_LOG_LEVEL: "warn",
      COWRIE_RECOVERY_AFTER_MS: "300",
      COWRIE_COMPLETER_INTERVAL_MS: "100",
    }),
  );
  mesh = await startMesh(config, ["ledger", "wallet", "router"], capturingLogger().log);
  const transport = (port: number) => createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "2" });
  wallets = createClient(WalletService, transport(config.walletPort));
  router = createClient(RouterService, transport(config.routerPort));
  ledger = createClient(LedgerService, transport(config.ledgerPort));
  walletPort = config.walletPort;
  // The tests' own connection, for rows a crash would leave behind.
  direct = createPostgresDatabase(database.url, { poolMax: 4, applicationName: "router-test" });
});

after(async () => {
  await mesh?.close();
  await direct?.close();
  await database?.drop();
});

let counter = 0;
function unique(prefix: string): string {
  counter += 1;
  return `${prefix}-${process.pid}-${counter}`;
}

async function openWallet(options: { kind?: WalletKind; tenantId?: string; fundMinor?: bigint } = {}): Promise<string> {
  const tenantId = options.tenantId ?? TENANT;
  const { wallet } = await wallets.createWallet({
    tenantId,
    ownerId: unique("owner"),
    currency: "NGN",
    kind: options.kind ?? WalletKind.CUSTOMER,
  });
  assert.ok(wallet);
  if (options.fundMinor) await fund(wallet.id, options.fundMinor, tenantId);
  return wallet.id;
}

async function fund(walletId: string, amountMinor: bigint, tenantId = TENANT): Promise<void> {
  await wallets.fundWallet({ tenantId, walletId, amountMinor, currency: "NGN", idempotencyKey: unique("fund") });
}

async function balance(walletId: string, tenantId = TENANT): Promise<bigint> {
  const { wallet } = await wallets.getWallet({ tenantId, walletId });
  return wallet?.postedBalanceMinor ?? -1n;
}

type PayFields = Omit<MessageInitShape<typeof CreatePaymentRequestSchema>, "$typeName">;

async function pay(fields: PayFields): Promise<{ payment: Payment; replayed: boolean }> {
  const { payment, replayed } = await router.createPayment(
    { tenantId: TENANT, idempotencyKey: unique("pay"), kind: PaymentKind.INTERNAL, currency: "NGN", ...fields },
    { timeoutMs: 10_000 },
  );
  assert.ok(payment);
  return { payment, replayed };
}

async function refund(paymentId: string, amountMinor: bigint, options: { key?: string; tenantId?: string; reason?: string } = {}) {
  const response = await router.refundPayment(
    { tenantId: options.tenantId ?? TENANT, idempotencyKey: options.key ?? unique("refund"), paymentId, amountMinor, reason: options.reason ?? "" },
    { timeoutMs: 10_000 },
  );
  assert.ok(response.refund && response.payment);
  return { refund: response.refund, payment: response.payment, replayed: response.replayed };
}

async function getPayment(paymentId: string, tenantId = TENANT): Promise<Payment> {
  const { payment } = await router.getPayment({ tenantId, paymentId });
  assert.ok(payment);
  return payment;
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, limitMs = 5000): Promise<T> {
  const until = Date.now() + limitMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > until) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** A payment row as a crash would leave it: recorded, maybe processing, never finished. */
async function insertStuck(fields: { status: PaymentStatus; source: string; destination: string; amountMinor: bigint; feeMinor?: bigint; ageMs?: number }): Promise<string> {
  const at = new Date(Date.now() - (fields.ageMs ?? 10_000));
  const id = newPaymentId(at.getTime());
  const request = { operation: "CreatePayment", key: id };
  await direct.db.transaction(async (tx) => {
    await tx.insert(payments).values({
      id,
      tenantId: TENANT,
      idempotencyKey: unique("stuck"),
      fingerprint: fingerprintOf(request),
      request,
      kind: PaymentKind.INTERNAL,
      status: fields.status,
      amountMinor: fields.amountMinor,
      feeMinor: fields.feeMinor ?? 0n,
      currency: "NGN",
      sourceWalletId: fields.source,
      destinationWalletId: fields.destination,
      createdAt: at,
      updatedAt: at,
      version: fields.status === CREATED ? 0 : 1,
    });
    await tx.insert(paymentTransitions).values({ paymentId: id, fromStatus: 0, toStatus: CREATED, at, reason: "created" });
    if (fields.status === PROCESSING) {
      await tx.insert(paymentTransitions).values({ paymentId: id, fromStatus: CREATED, toStatus: PROCESSING, at, reason: "moving funds" });
    }
  });
  return id;
}

describe("CreatePayment", () => {
  it("moves the amount from payer to merchant with a fee leg, and replays without moving again", async () => {
    const payer = await openWallet({ fundMinor: 10_000n });
    const merchant = await openWallet({ kind: WalletKind.MERCHANT });
    const key = unique("pay");
    const first = await pay({ idempotencyKey: key, sourceWalletId: payer, destinationWalletId: merchant, amountMinor: 2_500n, feeMinor: 100n, reference: "order 42" });
    assert.equal(first.replayed, false);
    assert.equal(first.payment.status, SUCCEEDED);
    assert.match(first.payment.id, /^pay_[0-9A-HJKMNP-TV-Z]{26}$/);
    assert.equal(first.payment.feeMinor, 100n);
    assert.equal(first.payment.reference, "order 42");
    assert.notEqual(first.payment.transferId, "");
    assert.equal(await balance(payer), 7_500n);
    assert.equal(await balance(merchant), 2_400n);

    const again = await pay({ idempotencyKey: key, sourceWalletId: payer, destinationWalletId: merchant, amountMinor: 2_500n, feeMinor: 100n, reference: "order 42" });
    assert.equal(again.replayed, true);
    assert.equal(again.payment.id, first.payment.id);
    assert.equal(again.payment.status, SUCCEEDED);
    assert.equal(await balance(payer), 7_500n);
    assert.equal(await balance(merchant), 2_400n);

    const stored = await getPayment(first.payment.id);
    assert.deepEqual(
      stored.history.map((change) => [change.fromStatus, change.toStatus]),
      [[PaymentStatus.UNSPECIFIED, CREATED], [CREATED, PROCESSING], [PROCESSING, SUCCEEDED]],
    );
    assert.ok(stored.history.every((change) => change.time !== undefined && change.reason !== ""));
  });

  it("records a decline as a FAILED payment with its failure code, the same on every replay", async () => {
    const payer = await openWallet({ fundMinor: 100n });
    const merchant = await openWallet({ kind: WalletKind.MERCHANT });
    const fields = { idempotencyKey: unique("pay"), sourceWalletId: payer, destinationWalletId: merchant, amountMinor: 500n };
    const first = await pay(fields);
    assert.equal(first.payment.status, FAILED);
    assert.equal(first.payment.failureCode, "insufficient_funds");
    assert.notEqual(first.payment.failureMessage, "");
    assert.equal(first.payment.transferId, "");
    // Money arriving later changes nothing for this key.
    await fund(payer, 1_000n);
    const again = await pay(fields);
    assert.equal(again.replayed, true);
    assert.equal(again.payment.id, first.payment.id);
    assert.equal(again.payment.status, FAILED);
    assert.equal(again.payment.failureCode, "insufficient_funds");
    assert.equal(await balance(payer), 1_100n);
    assert.equal(await balance(merchant), 0n);
    const history = (await getPayment(first.payment.id)).history;
    assert.equal(history[history.length - 1]?.reason, "insufficient_funds");
  });

  it("refuses a payment naming a wallet the tenant does not have with NOT_FOUND, recording nothing", async () => {
    const payer = await openWallet({ fundMinor: 100n });
    const elsewhere = await openWallet({ tenantId: OTHER_TENANT });
    const idempotencyKey = unique("cross");
    const refused = await rejection(pay({ idempotencyKey, sourceWalletId: payer, destinationWalletId: elsewhere, amountMinor: 10n }));
    assert.equal(refused.code, Code.NotFound);
    assert.match(refused.rawMessage, /^destination_wallet_id /);
    assert.equal((await router.listPayments({ tenantId: TENANT, walletId: payer })).payments.length, 0);
    assert.equal(await balance(payer), 100n);
  });

  it("makes one payment and one ledger movement from twenty concurrent calls with one key", async () => {
    const payer = await openWallet({ fundMinor: 1_000n });
    const merchant = await openWallet({ kind: WalletKind.MERCHANT });
    const fields = { idempotencyKey: unique("pay"), sourceWalletId: payer, destinationWalletId: merchant, amountMinor: 300n };
    const results = await Promise.all(Array.from({ length: 20 }, () => pay(fields)));
    assert.equal(new Set(results.map((result) => result.payment.id)).size, 1);
    assert.equal(results.filter((result) => !result.replayed).length, 1);
    assert.ok(results.every((result) => result.payment.status === SUCCEEDED));
    assert.equal(await balance(payer), 700n);
    assert.equal(await balance(merchant), 300n);
    const { entries } = await ledger.getAccountHistory({ accountId: payer });
    assert.equal(entries.length, 2, "the funding and exactly one payment");
    const { payments: listed } = await router.listPayments({ tenantId: TENANT, walletId: payer });
    assert.equal(listed.length, 1);
  });

  it("refuses the same key with different parameters, naming the field", async () => {
    const payer = await openWallet({ fundMinor: 1_000n });
    const merchant = await openWallet({ kind: WalletKind.MERCHANT });
    const fields = { idempotencyKey: unique("pay"), sourceWalletId: payer, destinationWalletId: merchant, amountMinor: 100n };
    await pay(fields);
    const amount = await rejection(pay({ ...fields, amountMinor: 101n }));
    assert.equal(amount.code, Code.AlreadyExists);
    assert.match(amount.message, /amount_minor/);
    const reference = await rejection(pay({ ...fields, reference: "other" }));
    assert.equal(reference.code, Code.AlreadyExists);
    assert.match(reference.message, /reference/);
    assert.equal(await balance(payer), 900n);
  });

  it("validates every field, naming it, and writes nothing", async () => {
    const tenantId = unique("validation");
    const source = await openWallet({ tenantId, fundMinor: 1_000n });
    const destination = await openWallet({ tenantId });
    const good: PayFields = { tenantId, sourceWalletId: source, destinationWalletId: destination, amountMinor: 100n };
    const cases: [PayFields, string][] = [
      [{ tenantId: "" }, "tenant_id"],
      [{ idempotencyKey: "" }, "idempotency_key"],
      [{ idempotencyKey: "has space" }, "idempotency_key"],
      [{ kind: PaymentKind.UNSPECIFIED }, "kind"],
      [{ kind: 99 as PaymentKind }, "kind"],
      [{ amountMinor: 0n }, "amount_minor"],
      [{ amountMinor: -5n }, "amount_minor"],
      [{ currency: "ngn" }, "currency"],
      [{ currency: "XXY" }, "currency"],
      [{ sourceWalletId: "" }, "source_wallet_id"],
      [{ destinationWalletId: "bad id!" }, "destination_wallet_id"],
      [{ destinationWalletId: source }, "destination_wallet_id"],
      [{ feeMinor: -1n }, "fee_minor"],
      [{ feeMinor: 100n }, "fee_minor"],
      [{ reference: "r".repeat(129) }, "reference"],
    ];
    for (const [bad, field] of cases) {
      const error = await rejection(pay({ ...good, ...bad }));
      assert.equal(error.code, Code.InvalidArgument, `${field}: ${error.message}`);
      assert.ok(error.rawMessage.startsWith(`${field}:`), `${field}: ${error.rawMessage}`);
    }
    const refundKind = await rejection(pay({ ...good, kind: PaymentKind.REFUND }));
    assert.equal(refundKind.code, Code.InvalidArgument);
    assert.match(refundKind.rawMessage, /^kind:.*RefundPayment/);
    const payIn = { ...good, kind: PaymentKind.PAY_IN, sourceWalletId: "", paymentMethod: "AUTH_x", customerEmail: "a@b.co", country: "NG" };
    const bankAccount = { bankCode: "058", accountNumber: "0123456789", accountName: "Ada" };
    const payout = { ...good, kind: PaymentKind.PAYOUT, destinationWalletId: "", country: "NG", bankAccount };
    const gatewayCases: [PayFields, string][] = [
      [{ ...payIn, sourceWalletId: source }, "source_wallet_id"],
      [{ ...payIn, paymentMethod: "" }, "payment_method"],
      [{ ...payIn, customerEmail: "not-an-email" }, "customer_email"],
      [{ ...payIn, country: "ng" }, "country"],
      [{ ...payIn, feeMinor: 1n }, "fee_minor"],
      [{ ...payIn, currency: "XOF" }, "currency"],
      [{ ...payIn, bankAccount }, "bank_account"],
      [{ ...payout, destinationWalletId: source }, "destination_wallet_id"],
      [{ ...payout, bankAccount: undefined }, "bank_account"],
      [{ ...payout, bankAccount: { ...bankAccount, accountNumber: "12 34" } }, "bank_account.account_number"],
      [{ ...payout, bankAccount: { ...bankAccount, accountName: " " } }, "bank_account.account_name"],
      [{ ...payout, paymentMethod: "AUTH_x" }, "payment_method"],
    ];
    for (const [bad, field] of gatewayCases) {
      const error = await rejection(pay(bad));
      assert.equal(error.code, Code.InvalidArgument, `${field}: ${error.message}`);
      assert.ok(error.rawMessage.startsWith(`${field}:`), `${field}: ${error.rawMessage}`);
    }
    const { payments: listed } = await router.listPayments({ tenantId });
    assert.equal(listed.length, 0);
    assert.equal(await balance(source, tenantId), 1_000n);
  });
});

describe("GetPayment and ListPayments", () => {
  it("keeps tenants apart", async () => {
    const payer = await openWallet({ fundMinor: 1_000n });
    const merchant = await openWallet({ kind: WalletKind.MERCHANT });
    const { payment } = await pay({ sourceWalletId: payer, destinationWalletId: merchant, amountMinor: 100n });
    assert.equal((await rejection(router.getPayment({ tenantId: OTHER_TENANT, paymentId: payment.id }))).code, Code.NotFound);
    assert.equal((await rejection(router.getPayment({ tenantId: TENANT, paymentId: "pay_00000000000000000000000000" }))).code, Code.NotFound);
    const refundElsewhere = await rejection(refund(payment.id, 0n, { tenantId: OTHER_TENANT }));
    assert.equal(refundElsewhere.code, Code.NotFound);
    const { payments: theirs } = await router.listPayments({ tenantId: OTHER_TENANT, pageSize: 100 });
    assert.ok(theirs.every((other) => other.id !== payment.id && other.tenantId === OTHER_TENANT));
    assert.equal((await getPayment(payment.id)).refundedMinor, 0n);
  });

  it("lists newest first with filters and keyset pages bound to the filters", async () => {
    const tenantId = unique("listing");
    const a = await openWallet({ tenantId, fundMinor: 10_000n });
    const b = await openWallet({ tenantId, fundMinor: 10_000n });
    const c = await openWallet({ tenantId });
    const made: Payment[] = [];
    for (const [source, destination, amountMinor] of [[a, b, 100n], [a, b, 200n], [b, c, 300n], [a, c, 400n], [b, a, 500n], [c, a, 800n], [a, b, 700n]] as const) {
      made.push((await pay({ tenantId, sourceWalletId: source, destinationWalletId: destination, amountMinor })).payment);
    }
    const newestFirst = [...made].reverse().map((payment) => payment.id);

    const pages: string[][] = [];
    let token = "";
    do {
      const page = await router.listPayments({ tenantId, pageSize: 3, pageToken: token });
      pages.push(page.payments.map((payment) => payment.id));
      assert.ok(page.payments.every((payment) => payment.history.length === 0));
      token = page.nextPageToken;
    } while (token !== "");
    assert.deepEqual(pages.map((page) => page.length), [3, 3, 1]);
    assert.deepEqual(pages.flat(), newestFirst);

    const failed = await router.listPayments({ tenantId, status: FAILED });
    assert.deepEqual(failed.payments.map((payment) => payment.id), [made[5]?.id], "c had nothing to pay with");
    const involvingC = await router.listPayments({ tenantId, walletId: c });
    assert.deepEqual(involvingC.payments.map((payment) => payment.id), [made[5], made[3], made[2]].map((payment) => payment?.id));
    const refunds = await router.listPayments({ tenantId, kind: PaymentKind.REFUND });
    assert.equal(refunds.payments.length, 0);

    const from = made[2]?.createdAt;
    const to = made[5]?.createdAt;
    const window = await router.listPayments({ tenantId, createdFrom: from, createdTo: to });
    const inWindow = made.filter((payment) => {
      const at = Number(payment.createdAt?.seconds) * 1000 + (payment.createdAt?.nanos ?? 0) / 1e6;
      const lo = Number(from?.seconds) * 1000 + (from?.nanos ?? 0) / 1e6;
      const hi = Number(to?.seconds) * 1000 + (to?.nanos ?? 0) / 1e6;
      return at >= lo && at < hi;
    });
    assert.deepEqual(window.payments.map((payment) => payment.id), inWindow.reverse().map((payment) => payment.id));

    const first = await router.listPayments({ tenantId, pageSize: 2 });
    const otherFilters = await rejection(router.listPayments({ tenantId, status: SUCCEEDED, pageSize: 2, pageToken: first.nextPageToken }));
    assert.equal(otherFilters.code, Code.InvalidArgument);
    assert.match(otherFilters.rawMessage, /^page_token:/);
    const otherTenant = await rejection(router.listPayments({ tenantId: OTHER_TENANT, pageSize: 2, pageToken: first.nextPageToken }));
    assert.match(otherTenant.rawMessage, /^page_token:/);
    assert.match((await rejection(router.listPayments({ tenantId, pageToken: "garbage" }))).rawMessage, /^page_token:/);
    assert.match((await rejection(router.listPayments({ tenantId, pageSize: 101 }))).rawMessage, /^page_size:/);
    assert.match((await rejection(router.listPayments({ tenantId, status: 42 as PaymentStatus }))).rawMessage, /^status:/);
    assert.match((await rejection(router.listPayments({ tenantId, createdFrom: to, createdTo: from }))).rawMessage, /^created_to:/);
    assert.equal((await router.listPayments({ tenantId })).payments.length, 7, "page_size 0 means 20");
  });
});

describe("RefundPayment", () => {
  async function succeededPayment(amountMinor: bigint, options: { fundMinor?: bigint; feeMinor?: bigint } = {}) {
    const payer = await openWallet({ fundMinor: options.fundMinor ?? amountMinor });
    const merchant = await openWallet({ kind: WalletKind.MERCHANT });
    const { payment } = await pay({ sourceWalletId: payer, destinationWalletId: merchant, amountMinor, feeMinor: options.feeMinor ?? 0n });
    assert.equal(payment.status, SUCCEEDED);
    return { payer, merchant, payment };
  }

  it("refunds everything with amount 0, then refuses more, the same on every retry", async () => {
    const { payer, merchant, payment } = await succeededPayment(1_000n);
    const key = unique("refund");
    const full = await refund(payment.id, 0n, { key, reason: "customer asked" });
    assert.equal(full.replayed, false);
    assert.equal(full.refund.kind, PaymentKind.REFUND);
    assert.equal(full.refund.status, SUCCEEDED);
    assert.equal(full.refund.amountMinor, 1_000n);
    assert.equal(full.refund.refundedPaymentId, payment.id);
    assert.equal(full.refund.sourceWalletId, merchant);
    assert.equal(full.refund.destinationWalletId, payer);
    assert.equal(full.refund.reference, "customer asked");
    assert.equal(full.payment.refundedMinor, 1_000n);
    assert.equal(await balance(payer), 1_000n);
    assert.equal(await balance(merchant), 0n);

    const replayed = await refund(payment.id, 0n, { key, reason: "customer asked" });
    assert.equal(replayed.replayed, true);
    assert.equal(replayed.refund.id, full.refund.id);
    assert.equal(await balance(payer), 1_000n);

    const refusedKey = unique("refund");
    const more = await rejection(refund(payment.id, 1n, { key: refusedKey }));
    assert.equal(more.code, Code.FailedPrecondition);
    assert.match(more.rawMessage, /0 of 1000 left/);
    const again = await rejection(refund(payment.id, 1n, { key: refusedKey }));
    assert.equal(again.code, Code.FailedPrecondition);
    assert.equal(again.rawMessage, more.rawMessage);
    const changed = await rejection(refund(payment.id, 2n, { key: refusedKey }));
    assert.equal(changed.code, Code.AlreadyExists);
    assert.match(changed.rawMessage, /amount_minor/);

    const listed = await router.listPayments({ tenantId: TENANT, kind: PaymentKind.REFUND, walletId: payer });
    assert.deepEqual(listed.payments.map((item) => item.id), [full.refund.id]);
  });

  it("refunds in parts and refuses what exceeds the rest, saying how much is left", async () => {
    const { payer, merchant, payment } = await succeededPayment(1_000n);
    const part = await refund(payment.id, 400n);
    assert.equal(part.refund.amountMinor, 400n);
    assert.equal(part.payment.refundedMinor, 400n);
    const tooMuch = await rejection(refund(payment.id, 601n));
    assert.equal(tooMuch.code, Code.FailedPrecondition);
    assert.match(tooMuch.rawMessage, /600 of 1000/);
    const rest = await refund(payment.id, 0n);
    assert.equal(rest.refund.amountMinor, 600n);
    assert.equal(rest.payment.refundedMinor, 1_000n);
    assert.equal(await balance(payer), 1_000n);
    assert.equal(await balance(merchant), 0n);
    const history = await getPayment(part.refund.id);
    assert.ok(isValidHistory(history.history.map((change) => ({ from: change.fromStatus, to: change.toStatus, reason: change.reason }))));
  });

  it("refuses refunds of payments that did not succeed, of refunds, and reuse of a payment's key", async () => {
    const poor = await openWallet({ fundMinor: 1n });
    const merchant = await openWallet({ kind: WalletKind.MERCHANT });
    const { payment: failed } = await pay({ sourceWalletId: poor, destinationWalletId: merchant, amountMinor: 50n });
    assert.equal(failed.status, FAILED);
    const notSucceeded = await rejection(refund(failed.id, 0n));
    assert.equal(notSucceeded.code, Code.FailedPrecondition);
    assert.match(notSucceeded.rawMessage, /FAILED/);

    const { payment } = await succeededPayment(100n);
    const { refund: first } = await refund(payment.id, 10n);
    const ofRefund = await rejection(refund(first.id, 0n));
    assert.equal(ofRefund.code, Code.FailedPrecondition);
    assert.match(ofRefund.rawMessage, /INTERNAL/);

    const paymentKey = unique("pay");
    const payer = await openWallet({ fundMinor: 100n });
    await pay({ idempotencyKey: paymentKey, sourceWalletId: payer, destinationWalletId: merchant, amountMinor: 10n });
    const reused = await rejection(refund(payment.id, 0n, { key: paymentKey }));
    assert.equal(reused.code, Code.AlreadyExists);
    assert.match(reused.rawMessage, /CreatePayment/);
    assert.equal((await rejection(refund(payment.id, -1n))).code, Code.InvalidArgument);
    assert.match((await rejection(refund(payment.id, 0n, { reason: "x".repeat(129) }))).rawMessage, /^reason:/);
  });

  it("never refunds more than the payment under ten parallel refunds, and conserves money", async () => {
    const { payer, merchant, payment } = await succeededPayment(1_000n, { fundMinor: 5_000n });
    const outcomes = await Promise.allSettled(Array.from({ length: 10 }, () => refund(payment.id, 300n)));
    const succeeded = outcomes.filter((outcome) => outcome.status === "fulfilled");
    const refused = outcomes.filter((outcome) => outcome.status === "rejected");
    assert.equal(succeeded.length, 3);
    for (const outcome of succeeded) assert.equal(outcome.value.refund.status, SUCCEEDED);
    for (const outcome of refused) {
      const error = await rejection(Promise.reject(outcome.reason));
      assert.equal(error.code, Code.FailedPrecondition);
      assert.match(error.rawMessage, /100 of 1000/);
    }
    assert.equal((await getPayment(payment.id)).refundedMinor, 900n);
    assert.equal(await balance(payer), 5_000n - 1_000n + 900n);
    assert.equal(await balance(merchant), 100n);
  });

  it("gives the reserved amount back when the refund itself fails", async () => {
    const { payer, merchant, payment } = await succeededPayment(1_000n);
    // The merchant spends most of it before the refund.
    const elsewhere = await openWallet();
    await wallets.transferFunds({ tenantId: TENANT, sourceWalletId: merchant, destinationWalletId: elsewhere, amountMinor: 800n, currency: "NGN", idempotencyKey: unique("spend") });
    const failing = await refund(payment.id, 500n);
    assert.equal(failing.refund.status, FAILED);
    assert.equal(failing.refund.failureCode, "insufficient_funds");
    assert.equal(failing.payment.refundedMinor, 0n);
    assert.equal(await balance(payer), 0n);
    const small = await refund(payment.id, 0n);
    assert.equal(small.refund.status, FAILED, "1000 is left to refund but the merchant holds 200");
    const fits = await refund(payment.id, 200n);
    assert.equal(fits.refund.status, SUCCEEDED);
    assert.equal(fits.payment.refundedMinor, 200n);
    assert.equal(await balance(payer), 200n);
  });
});

describe("the completer", () => {
  it("finishes a payment left PROCESSING by a crash, exactly once", async () => {
    const payer = await openWallet({ fundMinor: 1_000n });
    const merchant = await openWallet({ kind: WalletKind.MERCHANT });
    const id = await insertStuck({ status: PROCESSING, source: payer, destination: merchant, amountMinor: 250n, feeMinor: 50n });
    const done = await waitFor("the completer", async () => {
      const payment = await getPayment(id);
      return payment.status === PROCESSING ? undefined : payment;
    });
    assert.equal(done.status, SUCCEEDED);
    assert.equal(done.history[done.history.length - 1]?.reason, "completer");
    await new Promise((resolve) => setTimeout(resolve, 500));
    const later = await getPayment(id);
    assert.equal(later.history.filter((change) => change.toStatus === SUCCEEDED).length, 1);
    assert.equal(await balance(payer), 750n);
    assert.equal(await balance(merchant), 200n);
  });

  it("finishes a payment whose money moved before the crash without moving it again", async () => {
    const payer = await openWallet({ fundMinor: 1_000n });
    const merchant = await openWallet({ kind: WalletKind.MERCHANT });
    const id = await insertStuck({ status: PROCESSING, source: payer, destination: merchant, amountMinor: 400n, ageMs: 60_000 });
    // The Wallet call went through; the process died before recording it.
    const moved = await wallets.transferFunds({
      tenantId: TENANT, sourceWalletId: payer, destinationWalletId: merchant, amountMinor: 400n, currency: "NGN",
      idempotencyKey: walletKeyFor(id), reference: "", feeMinor: 0n, code: TRANSFER_CODE.payment,
    });
    const done = await waitFor("the completer", async () => {
      const payment = await getPayment(id);
      return payment.status === SUCCEEDED ? payment : undefined;
    });
    assert.equal(done.transferId, moved.transferId);
    assert.equal(await balance(payer), 600n);
    assert.equal(await balance(merchant), 400n);
  });

  it("drives a payment left CREATED through PROCESSING, and records declines", async () => {
    const payer = await openWallet({ fundMinor: 100n });
    const merchant = await openWallet({ kind: WalletKind.MERCHANT });
    const ok = await insertStuck({ status: CREATED, source: payer, destination: merchant, amountMinor: 60n });
    const declined = await insertStuck({ status: CREATED, source: payer, destination: merchant, amountMinor: 1_000n });
    const finished = await waitFor("the completer", async () => {
      const both = await Promise.all([getPayment(ok), getPayment(declined)]);
      return both.every((payment) => payment.status === SUCCEEDED || payment.status === FAILED) ? both : undefined;
    });
    const [good, bad] = finished as [Payment, Payment];
    assert.equal(good.status, SUCCEEDED);
    assert.deepEqual(good.history.slice(1).map((change) => [change.toStatus, change.reason]), [[PROCESSING, "completer"], [SUCCEEDED, "completer"]]);
    assert.equal(bad.status, FAILED);
    assert.equal(bad.failureCode, "insufficient_funds");
    assert.equal(await balance(payer), 40n);
  });

  it("leaves a fresh unfinished payment to its own caller", async () => {
    const payer = await openWallet({ fundMinor: 100n });
    const merchant = await openWallet({ kind: WalletKind.MERCHANT });
    const id = await insertStuck({ status: PROCESSING, source: payer, destination: merchant, amountMinor: 10n, ageMs: -60_000 });
    await new Promise((resolve) => setTimeout(resolve, 400));
    assert.equal((await getPayment(id)).status, PROCESSING);
    assert.equal(await balance(payer), 100n);
  });
});

describe("when the Wallet cannot be reached", () => {
  it("answers the payment PROCESSING, and a replay or the completer finishes it once", async () => {
    const payer = await openWallet({ fundMinor: 1_000n });
    const merchant = await openWallet({ kind: WalletKind.MERCHANT });
    // A second Router on the same database whose way to the Wallet goes through a proxy; its own
    // completer waits an hour, so only the main mesh's completer finishes anything.
    const proxy = await startTcpProxy({ host: "127.0.0.1", port: walletPort });
    const cutOff = await startTestService(routerModule, {
      DATABASE_URL: database.url,
      COWRIE_WALLET_URL: `http://127.0.0.1:${proxy.port}`,
      COWRIE_RECOVERY_AFTER_MS: "3600000",
    });
    try {
      const isolated = createClient(RouterService, createConnectTransport({ baseUrl: cutOff.baseUrl, httpVersion: "2" }));
      const request = { tenantId: TENANT, kind: PaymentKind.INTERNAL, currency: "NGN", sourceWalletId: payer, destinationWalletId: merchant };
      proxy.setMode("blackhole");
      const startedAt = Date.now();
      const hung = await isolated.createPayment({ ...request, idempotencyKey: unique("pay"), amountMinor: 100n }, { timeoutMs: 1_000 });
      assert.ok(Date.now() - startedAt < 1_000, "answered before the deadline");
      assert.equal(hung.payment?.status, PROCESSING);
      proxy.setMode("refuse");
      proxy.cutAll();
      const refusedKey = unique("pay");
      const refused = await isolated.createPayment({ ...request, idempotencyKey: refusedKey, amountMinor: 200n }, { timeoutMs: 2_000 });
      assert.equal(refused.payment?.status, PROCESSING);

      // The caller retries through a Router that reaches the Wallet: the replay finishes it.
      const retried = await pay({ ...request, idempotencyKey: refusedKey, amountMinor: 200n });
      assert.equal(retried.replayed, true);
      assert.equal(retried.payment.status, SUCCEEDED);
      // Nobody retries the other one: the completer finishes it (here its 300 ms threshold is
      // shorter than the call's deadline, so it may have done so already).
      const finished = await waitFor("the completer", async () => {
        const payment = await getPayment(hung.payment?.id ?? "");
        return payment.status === PROCESSING ? undefined : payment;
      });
      assert.equal(finished.status, SUCCEEDED);
      assert.equal(finished.history[finished.history.length - 1]?.reason, "completer");
      assert.equal(await balance(payer), 700n);
      assert.equal(await balance(merchant), 300n);
    } finally {
      await cutOff.close();
      await proxy.close();
    }
  });
});

describe("compare-and-set transitions on PostgreSQL", () => {
  it("keep a valid history whatever concurrent drivers attempt", async () => {
    const payer = await openWallet();
    const merchant = await openWallet();
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.array(fc.constantFrom(...STATUSES), { minLength: 1, maxLength: 6 }), { minLength: 2, maxLength: 5 }),
        async (drivers) => {
          // Young enough that the completer leaves it alone.
          const id = await insertStuck({ status: CREATED, source: payer, destination: merchant, amountMinor: 1n, ageMs: -60_000 });
          // Each driver tries its own sequence; on a lost CAS it re-reads and tries its next step.
          await Promise.all(drivers.map(async (attempts) => {
            for (const to of attempts) {
              const current = (await findById(direct.db, id)) as PaymentRow;
              await persistTransition(direct.db, current, to, "property", {}, false).catch((error: Error) => {
                if (error.name !== "IllegalTransition") throw error;
              });
            }
          }));
          const row = (await findById(direct.db, id)) as PaymentRow;
          const history = await direct.db.select().from(paymentTransitions).where(eq(paymentTransitions.paymentId, id)).orderBy(paymentTransitions.id);
          const changes = history.map((change) => ({ from: change.fromStatus, to: change.toStatus, reason: change.reason }));
          assert.ok(isValidHistory(changes), JSON.stringify(changes));
          assert.equal(changes[changes.length - 1]?.to, row.status);
          assert.equal(row.version, changes.length - 1);
        },
      ),
      { numRuns: 25 },
    );
  });
});
