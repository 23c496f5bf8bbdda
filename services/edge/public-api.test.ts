// The public API end to end: the Ledger, Wallet, Router and Edge started in this process on a
// fresh database and the real Redis, driven through the public clients with API keys. Tenants
// cannot see or move each other's money; duplicates of a mutation move money once; decided
// refusals replay; and a tenant's whole wallet journey maps cleanly to the public messages.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import postgres from "postgres";
import { PaymentKind, PaymentsService, PaymentStatus } from "../../gen/cowrie/edge/v1/payments_pb.js";
import { EntryType, HoldStatus, WalletKind, WalletsService, WalletStatus, type Wallet } from "../../gen/cowrie/edge/v1/wallets_pb.js";
import { RefusalSchema } from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import { metrics } from "../runtime/metrics.js";
import { rejection } from "../runtime/testing.js";
import { edgeClient, newTenant, snapshotRows, startEdgeMesh } from "./test-support.js";

let mesh: Awaited<ReturnType<typeof startEdgeMesh>>;
let sql: postgres.Sql;

before(async () => {
  mesh = await startEdgeMesh("edge_public");
  sql = postgres(mesh.databaseUrl, { max: 2, onnotice: () => {}, types: { bigint: postgres.BigInt } });
});

after(async () => {
  await sql?.end();
  await mesh?.close();
});

let counter = 0;
/** Call options with a fresh Idempotency-Key (or the one given). */
function keyed(key = `k-${process.pid}-${++counter}`) {
  return { headers: { "idempotency-key": key }, timeoutMs: 10_000 };
}

async function tenantClients(name: string) {
  const tenant = await newTenant(mesh.admin, name);
  return {
    ...tenant,
    wallets: edgeClient(WalletsService, mesh.baseUrl, tenant.apiKey),
    payments: edgeClient(PaymentsService, mesh.baseUrl, tenant.apiKey),
  };
}

async function newWallet(wallets: Client<typeof WalletsService>, ownerId: string, fundMinor = 0n, kind = WalletKind.CUSTOMER): Promise<Wallet> {
  const created = await wallets.createWallet({ ownerId, currency: "USD", kind }, keyed());
  assert.ok(created.wallet);
  if (fundMinor > 0n) await wallets.fundWallet({ walletId: created.wallet.id, amountMinor: fundMinor, currency: "USD" }, keyed());
  return created.wallet;
}

async function ledgerTransfers(accountId: string): Promise<number> {
  const [row] = await sql`select count(*)::int as n from ledger.transfers where debit_account_id = ${accountId} or credit_account_id = ${accountId}`;
  return row?.n as number;
}

describe("tenant isolation", () => {
  it("another tenant's wallets, holds and payments are NOT_FOUND, and trying changes nothing", async () => {
    const a = await tenantClients("tenant-a");
    const b = await tenantClients("tenant-b");
    const a1 = await newWallet(a.wallets, "alice", 1_000n);
    const a2 = await newWallet(a.wallets, "shop", 0n, WalletKind.MERCHANT);
    const b1 = await newWallet(b.wallets, "bob", 500n);
    const hold = (await a.wallets.placeHold({ walletId: a1.id, destinationWalletId: a2.id, amountMinor: 100n, currency: "USD" }, keyed())).hold;
    const payment = (await a.payments.createPayment({ sourceWalletId: a1.id, destinationWalletId: a2.id, amountMinor: 200n, feeMinor: 10n, currency: "USD" }, keyed())).payment;
    assert.ok(hold && payment);
    assert.equal(payment.status, PaymentStatus.SUCCEEDED);

    const before = await snapshotRows(sql, ["wallet", "router", "ledger"]);
    const attempts: [string, () => Promise<unknown>][] = [
      ["get wallet", () => b.wallets.getWallet({ walletId: a1.id })],
      ["statement", () => b.wallets.getStatement({ walletId: a1.id })],
      ["fund", () => b.wallets.fundWallet({ walletId: a1.id, amountMinor: 5n, currency: "USD" }, keyed())],
      ["freeze", () => b.wallets.freezeWallet({ walletId: a1.id, reason: "mine now" }, keyed())],
      ["unfreeze", () => b.wallets.unfreezeWallet({ walletId: a1.id }, keyed())],
      ["limits", () => b.wallets.setWalletLimits({ walletId: a1.id, limits: { perTransactionMinor: 1n } }, keyed())],
      ["close", () => b.wallets.closeWallet({ walletId: a2.id }, keyed())],
      ["hold from theirs", () => b.wallets.placeHold({ walletId: a1.id, destinationWalletId: b1.id, amountMinor: 5n, currency: "USD" }, keyed())],
      ["hold to theirs", () => b.wallets.placeHold({ walletId: b1.id, destinationWalletId: a1.id, amountMinor: 5n, currency: "USD" }, keyed())],
      ["get hold", () => b.wallets.getHold({ holdId: hold.id })],
      ["capture hold", () => b.wallets.captureHold({ holdId: hold.id }, keyed())],
      ["release hold", () => b.wallets.releaseHold({ holdId: hold.id }, keyed())],
      ["get payment", () => b.payments.getPayment({ paymentId: payment.id })],
      ["refund payment", () => b.payments.refundPayment({ paymentId: payment.id }, keyed())],
    ];
    for (const [label, attempt] of attempts) {
      const error = await rejection(attempt());
      assert.equal(error.code, Code.NotFound, `${label}: ${error.code} ${error.rawMessage}`);
    }
    assert.deepEqual((await b.wallets.listWallets({})).wallets.map((wallet) => wallet.id), [b1.id]);
    assert.deepEqual((await b.payments.listPayments({})).payments, []);
    assert.deepEqual((await b.payments.listPayments({ walletId: a1.id })).payments, []);
    assert.deepEqual(await snapshotRows(sql, ["wallet", "router", "ledger"]), before);

    // Paying from another tenant's wallet is NOT_FOUND naming the field, and records nothing.
    const crossing = await rejection(b.payments.createPayment({ sourceWalletId: a1.id, destinationWalletId: b1.id, amountMinor: 5n, currency: "USD" }, keyed()));
    assert.equal(crossing.code, Code.NotFound, crossing.rawMessage);
    assert.match(crossing.rawMessage, /^source_wallet_id /);
    assert.deepEqual(await snapshotRows(sql, ["wallet", "router", "ledger"]), before);
    assert.deepEqual((await a.payments.listPayments({})).payments.map((p) => p.id), [payment.id]);
    const a1Now = (await a.wallets.getWallet({ walletId: a1.id })).wallet;
    assert.equal(a1Now?.postedBalanceMinor, 800n);
    assert.equal(a1Now?.availableBalanceMinor, 700n);
  });
});

describe("live and sandbox tenants", () => {
  it("only a sandbox tenant may mint test money with FundWallet", async () => {
    const created = await mesh.admin.createTenant({ name: "live shop", live: true });
    assert.equal(created.tenant?.live, true);
    const wallets = edgeClient(WalletsService, mesh.baseUrl, created.apiKeySecret);
    const wallet = (await wallets.createWallet({ ownerId: "alice", currency: "USD", kind: WalletKind.CUSTOMER }, keyed())).wallet;
    const refused = await rejection(wallets.fundWallet({ walletId: wallet?.id ?? "", amountMinor: 100n, currency: "USD" }, keyed()));
    assert.equal(refused.code, Code.PermissionDenied, refused.rawMessage);
    assert.equal((await wallets.getWallet({ walletId: wallet?.id ?? "" })).wallet?.postedBalanceMinor, 0n);
    const sandbox = await tenantClients("sandbox shop");
    await newWallet(sandbox.wallets, "bob", 100n);
  });
});

describe("exactly once through the mesh", () => {
  it("20 concurrent FundWallet calls with one key move money once; every answer is the outcome or ABORTED", async () => {
    const { wallets } = await tenantClients("race-fund");
    const wallet = await newWallet(wallets, "racer");
    const options = keyed();
    const outcomes = await Promise.allSettled(Array.from({ length: 20 }, () =>
      wallets.fundWallet({ walletId: wallet.id, amountMinor: 2_500n, currency: "USD" }, options)));
    const transferIds = new Set<string>();
    for (const outcome of outcomes) {
      if (outcome.status === "fulfilled") {
        transferIds.add(outcome.value.transferId);
        assert.equal(outcome.value.wallet?.postedBalanceMinor, 2_500n);
      } else {
        assert.equal(ConnectError.from(outcome.reason).code, Code.Aborted, String(outcome.reason));
      }
    }
    assert.equal(transferIds.size, 1);
    assert.equal(await ledgerTransfers(wallet.id), 1);
    assert.equal((await wallets.getWallet({ walletId: wallet.id })).wallet?.postedBalanceMinor, 2_500n);
    let replayedHeader: string | null = null;
    const replay = await wallets.fundWallet({ walletId: wallet.id, amountMinor: 2_500n, currency: "USD" },
      { ...options, onHeader: (headers) => (replayedHeader = headers.get("idempotent-replayed")) });
    assert.equal(replay.replayed, true);
    assert.equal(replayedHeader, "true");
    const changed = await rejection(wallets.fundWallet({ walletId: wallet.id, amountMinor: 2_501n, currency: "USD" }, options));
    assert.equal(changed.code, Code.AlreadyExists);
    assert.match(changed.rawMessage, /^Idempotency-Key was used for a different request \(amount_minor differs\)$/);
    assert.equal(await ledgerTransfers(wallet.id), 1);
  });

  it("20 concurrent CreatePayment calls with one key make one payment", async () => {
    const { tenantId, wallets, payments } = await tenantClients("race-pay");
    const source = await newWallet(wallets, "payer", 1_000n);
    const destination = await newWallet(wallets, "payee", 0n, WalletKind.MERCHANT);
    const options = keyed();
    const request = { sourceWalletId: source.id, destinationWalletId: destination.id, amountMinor: 300n, feeMinor: 0n, currency: "USD" };
    const outcomes = await Promise.allSettled(Array.from({ length: 20 }, () => payments.createPayment(request, options)));
    const paymentIds = new Set<string>();
    for (const outcome of outcomes) {
      if (outcome.status === "fulfilled") paymentIds.add(outcome.value.payment?.id ?? "");
      else assert.equal(ConnectError.from(outcome.reason).code, Code.Aborted, String(outcome.reason));
    }
    assert.equal(paymentIds.size, 1);
    const [row] = await sql`select count(*)::int as n from router.payments where tenant_id = ${tenantId}`;
    assert.equal(row?.n, 1);
    assert.equal((await wallets.getWallet({ walletId: source.id })).wallet?.postedBalanceMinor, 700n);
    assert.equal((await wallets.getWallet({ walletId: destination.id })).wallet?.postedBalanceMinor, 300n);
  });

  it("replays a decided refusal (a hold larger than the balance) as the same error, moving nothing", async () => {
    const { wallets } = await tenantClients("refused");
    const source = await newWallet(wallets, "small", 100n);
    const destination = await newWallet(wallets, "big", 0n, WalletKind.MERCHANT);
    const options = keyed();
    const request = { walletId: source.id, destinationWalletId: destination.id, amountMinor: 101n, currency: "USD" };
    const first = await rejection(wallets.placeHold(request, options));
    const second = await rejection(wallets.placeHold(request, options));
    for (const error of [first, second]) {
      assert.equal(error.code, Code.FailedPrecondition);
      assert.equal(error.findDetails(RefusalSchema)[0]?.code, "insufficient_funds");
    }
    assert.equal(second.rawMessage, first.rawMessage);
    assert.equal(first.metadata.get("idempotent-replayed"), null);
    assert.equal(second.metadata.get("idempotent-replayed"), "true");
    // Money arriving later does not turn the decided refusal into a success.
    await wallets.fundWallet({ walletId: source.id, amountMinor: 1_000n, currency: "USD" }, keyed());
    assert.equal((await rejection(wallets.placeHold(request, options))).code, Code.FailedPrecondition);
    assert.equal(await ledgerTransfers(source.id), 2); // the two fundings, no reservation
    assert.equal((await wallets.getWallet({ walletId: source.id })).wallet?.pendingDebitsMinor, 0n);
  });

  it("replays a declined payment (recorded as FAILED) with replayed = true", async () => {
    const { wallets, payments } = await tenantClients("declined");
    const source = await newWallet(wallets, "poor", 10n);
    const destination = await newWallet(wallets, "rich", 0n, WalletKind.MERCHANT);
    const options = keyed();
    const request = { sourceWalletId: source.id, destinationWalletId: destination.id, amountMinor: 11n, currency: "USD" };
    const first = await payments.createPayment(request, options);
    const again = await payments.createPayment(request, options);
    assert.equal(first.payment?.status, PaymentStatus.FAILED);
    assert.equal(first.payment?.failureCode, "insufficient_funds");
    assert.equal(first.replayed, false);
    assert.equal(again.payment?.id, first.payment?.id);
    assert.equal(again.replayed, true);
  });
});

describe("gateway payments through the public API", () => {
  it("accepts a pay-in at once as CREATED, echoing how it reaches the gateway", async () => {
    const a = await tenantClients("tenant-gateway");
    const shop = await newWallet(a.wallets, "shop", 0n, WalletKind.MERCHANT);
    const request = { kind: PaymentKind.PAY_IN, destinationWalletId: shop.id, amountMinor: 5_000n, currency: "USD", paymentMethod: "pm_card_visa", customerEmail: "ada@example.com", country: "US" };
    const { payment } = await a.payments.createPayment(request, keyed());
    assert.equal(payment?.kind, PaymentKind.PAY_IN);
    assert.equal(payment?.status, PaymentStatus.CREATED);
    assert.equal(payment?.paymentMethod, "pm_card_visa");
    assert.equal(payment?.country, "US");
    assert.equal(payment?.sourceWalletId, "");
    for (const [bad, field] of [[{ country: "" }, "country"], [{ sourceWalletId: shop.id }, "source_wallet_id"], [{ kind: PaymentKind.REFUND }, "kind"], [{ currency: "XOF", country: "SN" }, "currency"]] as const) {
      const error = await rejection(a.payments.createPayment({ ...request, ...bad }, keyed()));
      assert.equal(error.code, Code.InvalidArgument, error.message);
      assert.ok(error.rawMessage.startsWith(`${field}:`), error.rawMessage);
    }
  });
});

describe("payments waited for", () => {
  it("reach the Router in a lane of their own (wait_for_outcome), beside the calls that do not wait", async () => {
    const a = await tenantClients("tenant-waiting");
    const payer = await newWallet(a.wallets, "payer", 10_000n);
    const payee = await newWallet(a.wallets, "payee");
    const sent = async (target: string): Promise<number> => {
      const values = (await metrics().clientRequests.get()).values;
      return values.find((value) => value.labels.service === "edge" && value.labels.target === target && value.labels.method === "CreatePayment")?.value ?? 0;
    };
    const [lane, plain] = [await sent("router/waiting"), await sent("router")];
    const request = { sourceWalletId: payer.id, destinationWalletId: payee.id, amountMinor: 100n, currency: "USD" };
    const waited = await a.payments.createPayment({ ...request, waitForOutcome: true }, keyed());
    assert.equal(waited.payment?.status, PaymentStatus.SUCCEEDED);
    await a.payments.createPayment(request, keyed());
    assert.deepEqual([await sent("router/waiting") - lane, await sent("router") - plain], [1, 1]);
  });
});

describe("a tenant's wallet journey", () => {
  it("creates, limits, freezes, holds, captures, releases, refunds and reads statements through the public API", async () => {
    const { wallets, payments } = await tenantClients("journey");
    const created = await wallets.createWallet({ ownerId: "carol", currency: "JPY", kind: WalletKind.CUSTOMER, limits: { perTransactionMinor: 5_000n } }, keyed());
    assert.equal(created.created, true);
    assert.equal(created.wallet?.minorUnitExponent, 0);
    const carol = created.wallet as Wallet;
    const again = await wallets.createWallet({ ownerId: "carol", currency: "JPY", kind: WalletKind.CUSTOMER }, keyed());
    assert.equal(again.created, false);
    assert.equal(again.wallet?.id, carol.id);
    const shop = (await wallets.createWallet({ ownerId: "shop", currency: "JPY", kind: WalletKind.MERCHANT }, keyed())).wallet as Wallet;
    await wallets.fundWallet({ walletId: carol.id, amountMinor: 10_000n, currency: "JPY" }, keyed());

    const limited = await rejection(wallets.placeHold({ walletId: carol.id, destinationWalletId: shop.id, amountMinor: 6_000n, currency: "JPY" }, keyed()));
    assert.equal(limited.findDetails(RefusalSchema)[0]?.code, "limit_exceeded");
    const limits = await wallets.setWalletLimits({ walletId: carol.id, limits: { perTransactionMinor: 0n, dailyOutflowMinor: 0n } }, keyed());
    assert.equal(limits.wallet?.limits?.perTransactionMinor, 0n);

    const frozen = await wallets.freezeWallet({ walletId: carol.id, reason: "checking" }, keyed());
    assert.equal(frozen.wallet?.status, WalletStatus.FROZEN);
    assert.equal(frozen.wallet?.frozenReason, "checking");
    const refused = await rejection(wallets.placeHold({ walletId: carol.id, destinationWalletId: shop.id, amountMinor: 1n, currency: "JPY" }, keyed()));
    assert.equal(refused.findDetails(RefusalSchema)[0]?.code, "wallet_frozen");
    assert.equal((await wallets.unfreezeWallet({ walletId: carol.id }, keyed())).wallet?.status, WalletStatus.ACTIVE);

    const held = (await wallets.placeHold({ walletId: carol.id, destinationWalletId: shop.id, amountMinor: 3_000n, currency: "JPY", reference: "booking", timeoutSeconds: 600 }, keyed())).hold;
    assert.equal(held?.status, HoldStatus.HELD);
    assert.ok(held?.expiresAt);
    assert.equal((await wallets.getWallet({ walletId: carol.id })).wallet?.availableBalanceMinor, 7_000n);
    const captured = (await wallets.captureHold({ holdId: held.id, amountMinor: 2_000n }, keyed())).hold;
    assert.equal(captured?.status, HoldStatus.CAPTURED);
    assert.equal(captured?.capturedMinor, 2_000n);
    const second = (await wallets.placeHold({ walletId: carol.id, destinationWalletId: shop.id, amountMinor: 500n, currency: "JPY" }, keyed())).hold;
    assert.equal((await wallets.releaseHold({ holdId: second?.id ?? "" }, keyed())).hold?.status, HoldStatus.RELEASED);
    assert.equal((await wallets.getHold({ holdId: second?.id ?? "" })).hold?.status, HoldStatus.RELEASED);

    const paid = (await payments.createPayment({ sourceWalletId: carol.id, destinationWalletId: shop.id, amountMinor: 1_000n, feeMinor: 50n, currency: "JPY", reference: "order-7" }, keyed())).payment;
    assert.equal(paid?.status, PaymentStatus.SUCCEEDED);
    const refund = await payments.refundPayment({ paymentId: paid?.id ?? "", amountMinor: 400n, reason: "damaged" }, keyed());
    assert.equal(refund.refund?.status, PaymentStatus.SUCCEEDED);
    assert.equal(refund.payment?.refundedMinor, 400n);
    const history = (await payments.getPayment({ paymentId: paid?.id ?? "" })).payment?.history ?? [];
    assert.ok(history.length >= 2);
    assert.equal(history.at(-1)?.toStatus, PaymentStatus.SUCCEEDED);

    const statement = await wallets.getStatement({ walletId: carol.id });
    assert.deepEqual(statement.entries.map((entry) => [entry.type, entry.balanceAfterMinor]), [
      [EntryType.FUNDING, 10_000n],
      [EntryType.HOLD_CAPTURE, 8_000n],
      [EntryType.PAYMENT, 7_050n],
      [EntryType.FEE, 7_000n],
      [EntryType.REFUND, 7_400n],
    ]);
    const listed = await wallets.listWallets({ ownerId: "carol" });
    assert.deepEqual(listed.wallets.map((wallet) => wallet.id), [carol.id]);
    const closable = await newWallet(wallets, "empty");
    assert.equal((await wallets.closeWallet({ walletId: closable.id }, keyed())).wallet?.status, WalletStatus.CLOSED);
  });
});
