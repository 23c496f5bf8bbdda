// The Wallet service with a real Ledger on a fresh PostgreSQL database, both in this process and
// called over real sockets: limits that hold under concurrency, freeze and close, holds placed,
// captured, released and expired, the double-spend races between holds and spends, fee legs that
// conserve money, replays that return the first outcome, tenancy, statements, and the Refusal
// detail on every FAILED_PRECONDITION.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { sql } from "drizzle-orm";
import { createConnectTransport } from "@connectrpc/connect-node";
import fc from "fast-check";
import { LedgerService } from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import {
  EntryDirection,
  EntryType,
  HoldStatus,
  RefusalSchema,
  WalletKind,
  WalletService,
  WalletStatus,
  type Wallet,
} from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import { startMesh, type Mesh } from "../mesh.js";
import { capturingLogger, freshDatabase, meshEnvironment, rejection, testConfig } from "../runtime/testing.js";
import { TRANSFER_CODE } from "./codes.js";
import { rowsOf } from "../runtime/db.js";
import { feeAccountId, feeTransferIdFor, fundingAccountId, holdIdFor, releaseIdFor, transferIdFor } from "./service.js";

let database: Awaited<ReturnType<typeof freshDatabase>>;
let mesh: Mesh;
let wallet: Client<typeof WalletService>;
let ledger: Client<typeof LedgerService>;

before(async () => {
  database = await freshDatabase("wallet");
  const config = testConfig(await meshEnvironment({ DATABASE_URL: database.url, COWRIE_LOG_LEVEL: "warn" }));
  mesh = await startMesh(config, ["ledger", "wallet"], capturingLogger().log);
  const port = (name: string) => mesh.services.find((service) => service.name === name)?.port;
  wallet = createClient(WalletService, createConnectTransport({ baseUrl: `http://127.0.0.1:${port("wallet")}`, httpVersion: "2" }));
  ledger = createClient(LedgerService, createConnectTransport({ baseUrl: `http://127.0.0.1:${port("ledger")}`, httpVersion: "2" }));
});

after(async () => {
  await mesh?.close();
  await database?.drop();
});

let counter = 0;
function unique(prefix: string): string {
  counter += 1;
  return `${prefix}-${process.pid}-${counter}`;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function newWallet(tenantId: string, options: { currency?: string; kind?: WalletKind; perTransaction?: bigint; daily?: bigint; owner?: string } = {}): Promise<Wallet> {
  const { wallet: created } = await wallet.createWallet({
    tenantId,
    ownerId: options.owner ?? unique("owner"),
    currency: options.currency ?? "NGN",
    kind: options.kind ?? WalletKind.CUSTOMER,
    limits: { perTransactionMinor: options.perTransaction ?? 0n, dailyOutflowMinor: options.daily ?? 0n },
  });
  assert.ok(created);
  return created;
}

async function fund(tenantId: string, walletId: string, amountMinor: bigint, currency = "NGN"): Promise<void> {
  await wallet.fundWallet({ tenantId, walletId, amountMinor, currency, idempotencyKey: unique("fund") });
}

async function funded(tenantId: string, amountMinor: bigint, options: Parameters<typeof newWallet>[1] = {}): Promise<Wallet> {
  const created = await newWallet(tenantId, options);
  if (amountMinor > 0n) await fund(tenantId, created.id, amountMinor, options.currency);
  return created;
}

async function get(tenantId: string, walletId: string): Promise<Wallet> {
  const { wallet: found } = await wallet.getWallet({ tenantId, walletId });
  assert.ok(found);
  return found;
}

function transfer(tenantId: string, source: string, destination: string, amountMinor: bigint, fields: { key?: string; feeMinor?: bigint; code?: number; reference?: string } = {}) {
  return wallet.transferFunds({
    tenantId,
    sourceWalletId: source,
    destinationWalletId: destination,
    amountMinor,
    currency: "NGN",
    idempotencyKey: fields.key ?? unique("move"),
    feeMinor: fields.feeMinor ?? 0n,
    code: fields.code ?? 0,
    reference: fields.reference ?? "",
  });
}

function placeHold(tenantId: string, source: string, destination: string, amountMinor: bigint, fields: { key?: string; timeoutSeconds?: number; reference?: string } = {}) {
  return wallet.placeHold({
    tenantId,
    walletId: source,
    destinationWalletId: destination,
    amountMinor,
    currency: "NGN",
    idempotencyKey: fields.key ?? unique("hold"),
    timeoutSeconds: fields.timeoutSeconds ?? 0,
    reference: fields.reference ?? "",
  });
}

/** FAILED_PRECONDITION carrying the Refusal detail with this code. */
async function refused(promise: Promise<unknown>, code: string): Promise<ConnectError> {
  const error = await rejection(promise);
  assert.equal(error.code, Code.FailedPrecondition, `expected FAILED_PRECONDITION, got ${Code[error.code]}: ${error.rawMessage}`);
  assert.deepEqual(error.findDetails(RefusalSchema).map((detail) => detail.code), [code], error.rawMessage);
  return error;
}

async function invalid(promise: Promise<unknown>, field: string): Promise<void> {
  const error = await rejection(promise);
  assert.equal(error.code, Code.InvalidArgument, error.rawMessage);
  assert.ok(error.rawMessage.startsWith(`${field}:`), `"${error.rawMessage}" should name ${field}`);
}

async function notFound(promise: Promise<unknown>): Promise<void> {
  assert.equal((await rejection(promise)).code, Code.NotFound);
}

async function until<T>(probe: () => Promise<T | undefined>, limitMs: number, what: string): Promise<T> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

function settled<T>(results: PromiseSettledResult<T>[]): { ok: T[]; errors: ConnectError[] } {
  return {
    ok: results.flatMap((result) => (result.status === "fulfilled" ? [result.value] : [])),
    errors: results.flatMap((result) => (result.status === "rejected" ? [ConnectError.from(result.reason)] : [])),
  };
}

function refusalCode(error: ConnectError): string | undefined {
  return error.findDetails(RefusalSchema)[0]?.code;
}

function assertBalanced(found: Wallet): void {
  assert.equal(found.availableBalanceMinor, found.postedBalanceMinor - found.pendingDebitsMinor);
  assert.ok(found.availableBalanceMinor >= 0n, `available ${found.availableBalanceMinor} went negative`);
}

describe("CreateWallet, GetWallet, ListWallets", () => {
  it("creates with limits and exponent, is idempotent, and validates without writing", async () => {
    const tenantId = unique("t");
    const created = await newWallet(tenantId, { owner: "alice", currency: "JPY", perTransaction: 500n, daily: 2000n });
    assert.match(created.id, /^wal_.{26}$/);
    assert.equal(created.status, WalletStatus.ACTIVE);
    assert.equal(created.minorUnitExponent, 0);
    assert.equal(created.limits?.perTransactionMinor, 500n);
    assert.equal(created.limits?.dailyOutflowMinor, 2000n);
    assert.equal(created.outflowTodayMinor, 0n);
    const again = await wallet.createWallet({ tenantId, ownerId: "alice", currency: "JPY", kind: WalletKind.CUSTOMER });
    assert.equal(again.created, false);
    assert.equal(again.wallet?.id, created.id);
    assert.equal((await newWallet(tenantId, { currency: "KWD" })).minorUnitExponent, 3);
    assert.equal((await newWallet(tenantId, { currency: "USD" })).minorUnitExponent, 2);

    const other = unique("t");
    await invalid(wallet.createWallet({ tenantId: other, ownerId: "bob", currency: "NGN", kind: WalletKind.CUSTOMER, limits: { dailyOutflowMinor: -1n } }), "limits.daily_outflow_minor");
    await invalid(wallet.createWallet({ tenantId: other, ownerId: "bob", currency: "XTS", kind: WalletKind.CUSTOMER }), "currency");
    await invalid(wallet.createWallet({ tenantId: other, ownerId: "", currency: "NGN", kind: WalletKind.CUSTOMER }), "owner_id");
    await invalid(wallet.createWallet({ tenantId: other, ownerId: "bob", currency: "NGN", kind: WalletKind.UNSPECIFIED }), "kind");
    await invalid(wallet.createWallet({ tenantId: "bad tenant", ownerId: "bob", currency: "NGN", kind: WalletKind.CUSTOMER }), "tenant_id");
    assert.equal((await wallet.listWallets({ tenantId: other })).wallets.length, 0);
  });

  it("lists a tenant's wallets newest first with keyset pages, filtered by owner", async () => {
    const tenantId = unique("t");
    const made: string[] = [];
    const currencies = ["NGN", "KES", "USD"];
    for (let index = 0; index < 5; index++) {
      const options = index % 2 === 0 ? { owner: "even", currency: currencies[index / 2] as string } : { owner: `odd-${index}` };
      made.push((await newWallet(tenantId, options)).id);
    }
    await newWallet(unique("t")); // another tenant's wallet never shows
    const seen: string[] = [];
    let pageToken = "";
    do {
      const page = await wallet.listWallets({ tenantId, pageSize: 2, pageToken });
      assert.ok(page.wallets.length <= 2);
      seen.push(...page.wallets.map((found) => found.id));
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    assert.deepEqual(seen, [...made].reverse());
    const evens = await wallet.listWallets({ tenantId, ownerId: "even" });
    assert.deepEqual(evens.wallets.map((found) => found.id), [made[4], made[2], made[0]]);
    assert.equal(evens.nextPageToken, "");
    await invalid(wallet.listWallets({ tenantId, pageSize: 101 }), "page_size");
    await invalid(wallet.listWallets({ tenantId, pageToken: "garbage!" }), "page_token");
  });

  it("keeps tenants apart: another tenant's wallet or hold is NOT_FOUND everywhere", async () => {
    const tenantId = unique("t");
    const intruder = unique("t");
    const source = await funded(tenantId, 1000n);
    const destination = await newWallet(tenantId);
    const theirs = await newWallet(intruder);
    const { hold } = await placeHold(tenantId, source.id, destination.id, 100n);
    assert.ok(hold);
    await notFound(wallet.getWallet({ tenantId: intruder, walletId: source.id }));
    await notFound(wallet.fundWallet({ tenantId: intruder, walletId: source.id, amountMinor: 1n, currency: "NGN", idempotencyKey: "k" }));
    // Both wallets are read in one query; the one named is the other tenant's.
    assert.match((await rejection(transfer(intruder, source.id, theirs.id, 1n))).rawMessage, new RegExp(`wallet ${source.id} not found`));
    assert.match((await rejection(transfer(intruder, theirs.id, source.id, 1n))).rawMessage, new RegExp(`wallet ${source.id} not found`));
    await notFound(transfer(intruder, source.id, theirs.id, 1n));
    await notFound(placeHold(intruder, theirs.id, source.id, 1n));
    await notFound(wallet.freezeWallet({ tenantId: intruder, walletId: source.id }));
    await notFound(wallet.closeWallet({ tenantId: intruder, walletId: destination.id }));
    await notFound(wallet.setWalletLimits({ tenantId: intruder, walletId: source.id, limits: {} }));
    await notFound(wallet.getStatement({ tenantId: intruder, walletId: source.id }));
    await notFound(wallet.getHold({ tenantId: intruder, holdId: hold.id }));
    await notFound(wallet.captureHold({ tenantId: intruder, holdId: hold.id }));
    await notFound(wallet.releaseHold({ tenantId: intruder, holdId: hold.id }));
    // The same key in another tenant is another operation.
    assert.notEqual(holdIdFor(tenantId, "k"), holdIdFor(intruder, "k"));
    assert.equal((await get(tenantId, source.id)).postedBalanceMinor, 1000n);
  });
});

describe("FreezeWallet, UnfreezeWallet, CloseWallet", () => {
  it("a frozen wallet takes money in but lets none out, and unfreezes", async () => {
    const tenantId = unique("t");
    const source = await funded(tenantId, 1000n);
    const other = await funded(tenantId, 1000n);
    const frozen = (await wallet.freezeWallet({ tenantId, walletId: source.id, reason: "chargeback review" })).wallet;
    assert.equal(frozen?.status, WalletStatus.FROZEN);
    assert.equal(frozen?.frozenReason, "chargeback review");
    assert.equal((await wallet.freezeWallet({ tenantId, walletId: source.id, reason: "again" })).wallet?.frozenReason, "chargeback review");
    await refused(transfer(tenantId, source.id, other.id, 10n), "wallet_frozen");
    await refused(placeHold(tenantId, source.id, other.id, 10n), "wallet_frozen");
    await transfer(tenantId, other.id, source.id, 10n);
    await fund(tenantId, source.id, 5n);
    assert.equal((await get(tenantId, source.id)).postedBalanceMinor, 1015n);
    const active = (await wallet.unfreezeWallet({ tenantId, walletId: source.id })).wallet;
    assert.equal(active?.status, WalletStatus.ACTIVE);
    assert.equal(active?.frozenReason, "");
    assert.equal((await wallet.unfreezeWallet({ tenantId, walletId: source.id })).wallet?.status, WalletStatus.ACTIVE);
    await transfer(tenantId, source.id, other.id, 15n);
    await invalid(wallet.freezeWallet({ tenantId, walletId: source.id, reason: "x".repeat(257) }), "reason");
  });

  it("closes only an empty wallet with no open hold, for good, and idempotently", async () => {
    const tenantId = unique("t");
    const closing = await funded(tenantId, 1000n);
    const other = await funded(tenantId, 1000n);
    await refused(wallet.closeWallet({ tenantId, walletId: closing.id }), "wallet_not_empty");
    await transfer(tenantId, closing.id, other.id, 1000n);
    // An open hold into the wallet blocks the close too: money may still arrive.
    const { hold: incoming } = await placeHold(tenantId, other.id, closing.id, 100n);
    await refused(wallet.closeWallet({ tenantId, walletId: closing.id }), "wallet_not_empty");
    await wallet.releaseHold({ tenantId, holdId: incoming?.id as string });
    const closed = (await wallet.closeWallet({ tenantId, walletId: closing.id })).wallet;
    assert.equal(closed?.status, WalletStatus.CLOSED);
    assert.equal((await wallet.closeWallet({ tenantId, walletId: closing.id })).wallet?.status, WalletStatus.CLOSED);
    const [account] = (await ledger.lookupAccounts({ ids: [closing.id] })).accounts;
    assert.equal(account?.closed, true);
    await refused(transfer(tenantId, other.id, closing.id, 1n), "wallet_closed");
    await refused(wallet.fundWallet({ tenantId, walletId: closing.id, amountMinor: 1n, currency: "NGN", idempotencyKey: unique("k") }), "wallet_closed");
    await refused(placeHold(tenantId, other.id, closing.id, 1n), "wallet_closed");
    await refused(wallet.unfreezeWallet({ tenantId, walletId: closing.id }), "wallet_closed");
    await refused(wallet.freezeWallet({ tenantId, walletId: closing.id }), "wallet_closed");
    await refused(wallet.setWalletLimits({ tenantId, walletId: closing.id, limits: {} }), "wallet_closed");

    // An open hold out of the wallet blocks it as well.
    const holder = await funded(tenantId, 100n);
    const { hold } = await placeHold(tenantId, holder.id, other.id, 100n);
    await wallet.captureHold({ tenantId, holdId: hold?.id as string });
    assert.equal((await get(tenantId, holder.id)).postedBalanceMinor, 0n);
    await wallet.closeWallet({ tenantId, walletId: holder.id });
  });

  it("never closes a wallet that money is racing into", async () => {
    const tenantId = unique("t");
    const source = await funded(tenantId, 100_000n);
    for (let round = 0; round < 6; round++) {
      const target = await newWallet(tenantId);
      const inflows = Array.from({ length: 6 }, (_, index) =>
        index % 2 === 0 ? transfer(tenantId, source.id, target.id, 7n) : wallet.fundWallet({ tenantId, walletId: target.id, amountMinor: 3n, currency: "NGN", idempotencyKey: unique("f") }),
      );
      const [close, ...moves] = await Promise.allSettled([wallet.closeWallet({ tenantId, walletId: target.id }), ...inflows]);
      const after = await get(tenantId, target.id);
      const { errors } = settled(moves);
      assert.ok(errors.every((error) => refusalCode(error) === "wallet_closed"), errors.map((error) => error.rawMessage).join("; "));
      if (close?.status === "fulfilled") {
        assert.equal(after.status, WalletStatus.CLOSED);
        assert.equal(after.postedBalanceMinor, 0n, "a closed wallet holds no money");
      } else {
        assert.equal(refusalCode(ConnectError.from(close?.reason)), "wallet_not_empty");
        assert.notEqual(after.status, WalletStatus.CLOSED);
        assert.ok(after.postedBalanceMinor > 0n);
        assert.equal(errors.length, 0, "nothing is refused when the close was");
      }
    }
  });
});

describe("limits", () => {
  it("per-transaction: a transfer or hold over the limit is refused, at the limit accepted", async () => {
    const tenantId = unique("t");
    const source = await funded(tenantId, 10_000n, { perTransaction: 500n });
    const destination = await newWallet(tenantId);
    await refused(transfer(tenantId, source.id, destination.id, 501n), "limit_exceeded");
    await refused(placeHold(tenantId, source.id, destination.id, 501n), "limit_exceeded");
    await transfer(tenantId, source.id, destination.id, 500n);
    const updated = (await wallet.setWalletLimits({ tenantId, walletId: source.id, limits: { perTransactionMinor: 0n, dailyOutflowMinor: 0n } })).wallet;
    assert.equal(updated?.limits?.perTransactionMinor, 0n);
    await transfer(tenantId, source.id, destination.id, 5000n);
    await invalid(wallet.setWalletLimits({ tenantId, walletId: source.id, limits: { perTransactionMinor: -5n } }), "limits.per_transaction_minor");
    await invalid(wallet.setWalletLimits({ tenantId, walletId: source.id }), "limits");
  });

  it("daily outflow: 20 concurrent transfers against the limit admit exactly floor(limit / amount), holds included", async () => {
    const tenantId = unique("t");
    const source = await funded(tenantId, 100_000n, { daily: 5_500n });
    const destination = await newWallet(tenantId);
    const { ok, errors } = settled(await Promise.allSettled(Array.from({ length: 20 }, () => transfer(tenantId, source.id, destination.id, 1000n))));
    assert.equal(ok.length, 5);
    assert.ok(errors.every((error) => refusalCode(error) === "limit_exceeded"), errors.map((error) => error.rawMessage).join("; "));
    const before = await get(tenantId, source.id);
    assert.equal(before.outflowTodayMinor, 5000n);
    assert.equal(before.postedBalanceMinor, 95_000n);
    assert.equal((await get(tenantId, destination.id)).postedBalanceMinor, 5_000n);
    // A hold counts against the same allowance: 500 is left.
    await refused(placeHold(tenantId, source.id, destination.id, 501n), "limit_exceeded");
    await placeHold(tenantId, source.id, destination.id, 500n);
    assert.equal((await get(tenantId, source.id)).outflowTodayMinor, 5_500n);
    await refused(transfer(tenantId, source.id, destination.id, 1n), "limit_exceeded");
  });

  it("a declined attempt does not eat the allowance, and its retry is declined the same way", async () => {
    const tenantId = unique("t");
    const source = await funded(tenantId, 1000n, { daily: 3000n });
    const destination = await newWallet(tenantId);
    await refused(transfer(tenantId, source.id, destination.id, 2000n, { key: "too-much" }), "insufficient_funds");
    assert.equal((await get(tenantId, source.id)).outflowTodayMinor, 0n);
    await fund(tenantId, source.id, 5000n);
    // Decided by the Ledger and recorded: the same key stays declined even though funds arrived.
    await refused(transfer(tenantId, source.id, destination.id, 2000n, { key: "too-much" }), "insufficient_funds");
    assert.equal((await get(tenantId, source.id)).outflowTodayMinor, 0n, "a retry of a refusal gives nothing back twice");
    await transfer(tenantId, source.id, destination.id, 3000n);
    assert.equal((await get(tenantId, source.id)).outflowTodayMinor, 3000n);
  });
});

describe("TransferFunds", () => {
  it("replays the first outcome after the wallet was frozen, and refuses a changed request under the key", async () => {
    const tenantId = unique("t");
    const source = await funded(tenantId, 1000n, { perTransaction: 800n });
    const destination = await newWallet(tenantId);
    const first = await transfer(tenantId, source.id, destination.id, 600n, { key: "pay-1" });
    assert.equal(first.replayed, false);
    assert.equal(first.transferId, transferIdFor(tenantId, "pay-1"));
    await refused(transfer(tenantId, source.id, destination.id, 600n, { key: "broke-1" }), "insufficient_funds");
    await wallet.freezeWallet({ tenantId, walletId: source.id, reason: "review" });
    await wallet.setWalletLimits({ tenantId, walletId: source.id, limits: { perTransactionMinor: 1n } });
    const again = await transfer(tenantId, source.id, destination.id, 600n, { key: "pay-1" });
    assert.equal(again.replayed, true);
    assert.equal(again.transferId, first.transferId);
    await refused(transfer(tenantId, source.id, destination.id, 600n, { key: "broke-1" }), "insufficient_funds");
    await refused(transfer(tenantId, source.id, destination.id, 600n, { key: "pay-2" }), "wallet_frozen");
    const changed = await rejection(transfer(tenantId, source.id, destination.id, 601n, { key: "pay-1" }));
    assert.equal(changed.code, Code.AlreadyExists);
    // A key used for a top-up is not a transfer.
    await wallet.fundWallet({ tenantId, walletId: destination.id, amountMinor: 5n, currency: "NGN", idempotencyKey: "shared" });
    await wallet.unfreezeWallet({ tenantId, walletId: source.id });
    await wallet.setWalletLimits({ tenantId, walletId: source.id, limits: {} });
    // The Wallet's own refusal is final for its key too: unfrozen, the same key is still refused.
    await refused(transfer(tenantId, source.id, destination.id, 600n, { key: "pay-2" }), "wallet_frozen");
    assert.equal((await rejection(transfer(tenantId, source.id, destination.id, 5n, { key: "shared" }))).code, Code.AlreadyExists);
    const after = await get(tenantId, source.id);
    assert.equal(after.postedBalanceMinor, 400n);
    assert.equal(after.outflowTodayMinor, 600n);
  });

  it("a key whose first attempt was admitted for another wallet or amount is refused, not waved through", async () => {
    // The first attempt was admitted (its outflow recorded) but never reached the Ledger, as
    // after an outage; the retry names another, frozen wallet and a larger amount.
    const tenantId = unique("t");
    const first = await funded(tenantId, 100n);
    const frozen = await funded(tenantId, 1000n, { perTransaction: 10n });
    const destination = await newWallet(tenantId);
    await wallet.freezeWallet({ tenantId, walletId: frozen.id, reason: "review" });
    await mesh.backends.database("wallet").db.execute(sql`
      insert into wallet.outflows (operation_id, wallet_id, day, amount_minor)
      values (${transferIdFor(tenantId, "k")}, ${first.id}, current_date, 5)`);
    const reused = await rejection(transfer(tenantId, frozen.id, destination.id, 500n, { key: "k" }));
    assert.equal(reused.code, Code.AlreadyExists);
    assert.match(reused.rawMessage, /source wallet differs/);
    const otherAmount = await rejection(transfer(tenantId, first.id, destination.id, 6n, { key: "k" }));
    assert.match(otherAmount.rawMessage, /amount_minor differs/);
    assert.equal((await get(tenantId, frozen.id)).postedBalanceMinor, 1000n);
  });

  it("takes a fee as a linked leg to the tenant's fee account: all legs or none, nothing created or lost", async () => {
    const tenantId = unique("t");
    const source = await funded(tenantId, 1000n);
    const destination = await newWallet(tenantId);
    const moved = await transfer(tenantId, source.id, destination.id, 1000n, { feeMinor: 30n, code: TRANSFER_CODE.payment, key: "fee-1" });
    assert.equal(moved.feeTransferId, feeTransferIdFor(moved.transferId));
    assert.ok(moved.feeTransferId.length <= 64);
    assert.equal(moved.sourceWallet?.postedBalanceMinor, 0n);
    assert.equal(moved.destinationWallet?.postedBalanceMinor, 970n);
    const feeAccount = feeAccountId(tenantId, "NGN");
    assert.equal(feeAccount, `fees:${tenantId}:NGN`);
    const [fees] = (await ledger.lookupAccounts({ ids: [feeAccount] })).accounts;
    assert.equal((fees?.creditsPosted ?? 0n) - (fees?.debitsPosted ?? 0n), 30n);
    const legs = (await ledger.lookupTransfers({ ids: [moved.transferId, moved.feeTransferId] })).transfers;
    assert.deepEqual(legs.map((leg) => [leg.amountMinor, leg.code]), [[970n, TRANSFER_CODE.payment], [30n, TRANSFER_CODE.fee]]);
    assert.equal((await transfer(tenantId, source.id, destination.id, 1000n, { feeMinor: 30n, code: TRANSFER_CODE.payment, key: "fee-1" })).replayed, true);
    assert.equal((await rejection(transfer(tenantId, source.id, destination.id, 1000n, { feeMinor: 31n, code: TRANSFER_CODE.payment, key: "fee-1" }))).code, Code.AlreadyExists);

    // Not enough for both legs: neither moves.
    await fund(tenantId, source.id, 100n);
    await refused(transfer(tenantId, source.id, destination.id, 101n, { feeMinor: 1n }), "insufficient_funds");
    assert.equal((await get(tenantId, source.id)).postedBalanceMinor, 100n);
    assert.equal((await ledger.lookupAccounts({ ids: [feeAccount] })).accounts[0]?.creditsPosted, 30n);

    // A 64-character tenant still gets a fee account id within the Ledger's 64 characters.
    const longTenant = `T${"x".repeat(63)}`;
    const longSource = await funded(longTenant, 50n);
    const longDestination = await newWallet(longTenant);
    await transfer(longTenant, longSource.id, longDestination.id, 50n, { feeMinor: 5n });
    const longFees = feeAccountId(longTenant, "NGN");
    assert.ok(longFees.length <= 64 && longFees.startsWith("fees_"));
    assert.equal((await ledger.lookupAccounts({ ids: [longFees] })).accounts[0]?.creditsPosted, 5n);

    await invalid(transfer(tenantId, source.id, destination.id, 10n, { feeMinor: 10n }), "fee_minor");
    await invalid(transfer(tenantId, source.id, destination.id, 10n, { feeMinor: -1n }), "fee_minor");
    await invalid(transfer(tenantId, source.id, destination.id, 10n, { code: TRANSFER_CODE.funding }), "code");
    await invalid(transfer(tenantId, source.id, source.id, 10n), "destination_wallet_id");
    await invalid(transfer(tenantId, source.id, destination.id, 0n), "amount_minor");
    await invalid(transfer(tenantId, source.id, destination.id, 10n, { key: "" }), "idempotency_key");
    await invalid(transfer(tenantId, source.id, destination.id, 10n, { reference: "r".repeat(129) }), "reference");
    const other = await funded(tenantId, 10n, { currency: "KES" });
    await refused(wallet.transferFunds({ tenantId, sourceWalletId: other.id, destinationWalletId: destination.id, amountMinor: 1n, currency: "KES", idempotencyKey: unique("k") }), "currency_mismatch");
    const { errors } = settled(await Promise.allSettled([wallet.fundWallet({ tenantId, walletId: destination.id, amountMinor: 1n, currency: "KES", idempotencyKey: unique("k") })]));
    assert.equal(refusalCode(errors[0] as ConnectError), "currency_mismatch");
    assert.equal((await get(tenantId, source.id)).outflowTodayMinor, 1000n, "invalid and refused calls reserve nothing");
  });
});

describe("holds", () => {
  it("place, partial capture, release, replays and refusals", async () => {
    const tenantId = unique("t");
    const source = await funded(tenantId, 5000n);
    const merchant = await newWallet(tenantId, { kind: WalletKind.MERCHANT });
    const placed = await placeHold(tenantId, source.id, merchant.id, 1000n, { key: "order-1", reference: "order 1" });
    const hold = placed.hold;
    assert.ok(hold);
    assert.equal(placed.replayed, false);
    assert.equal(hold.id, holdIdFor(tenantId, "order-1"));
    assert.match(hold.id, /^hld_.{40}$/);
    assert.equal(hold.status, HoldStatus.HELD);
    const lifetime = Number((hold.expiresAt?.seconds ?? 0n) - (hold.createdAt?.seconds ?? 0n));
    assert.ok(Math.abs(lifetime - 604_800) <= 1, `default lifetime ${lifetime}`);
    let found = await get(tenantId, source.id);
    assert.deepEqual([found.postedBalanceMinor, found.pendingDebitsMinor, found.availableBalanceMinor], [5000n, 1000n, 4000n]);
    assert.equal(found.outflowTodayMinor, 1000n);

    const replay = await placeHold(tenantId, source.id, merchant.id, 1000n, { key: "order-1", reference: "order 1" });
    assert.equal(replay.replayed, true);
    assert.equal(replay.hold?.id, hold.id);
    assert.equal((await rejection(placeHold(tenantId, source.id, merchant.id, 999n, { key: "order-1", reference: "order 1" }))).code, Code.AlreadyExists);

    await refused(wallet.captureHold({ tenantId, holdId: hold.id, amountMinor: 1001n }), "exceeds_hold_amount");
    const captured = (await wallet.captureHold({ tenantId, holdId: hold.id, amountMinor: 600n })).hold;
    assert.equal(captured?.status, HoldStatus.CAPTURED);
    assert.equal(captured?.capturedMinor, 600n);
    assert.equal((await wallet.captureHold({ tenantId, holdId: hold.id, amountMinor: 600n })).hold?.capturedMinor, 600n);
    await refused(wallet.captureHold({ tenantId, holdId: hold.id, amountMinor: 700n }), "hold_not_held");
    await refused(wallet.captureHold({ tenantId, holdId: hold.id }), "hold_not_held");
    await refused(wallet.releaseHold({ tenantId, holdId: hold.id }), "hold_not_held");
    found = await get(tenantId, source.id);
    assert.deepEqual([found.postedBalanceMinor, found.pendingDebitsMinor, found.availableBalanceMinor], [4400n, 0n, 4400n]);
    assert.equal((await get(tenantId, merchant.id)).postedBalanceMinor, 600n);

    // Frozen: no new holds, but the existing one can be released (or captured).
    const second = (await placeHold(tenantId, source.id, merchant.id, 300n)).hold;
    const third = (await placeHold(tenantId, source.id, merchant.id, 200n)).hold;
    await wallet.freezeWallet({ tenantId, walletId: source.id });
    await refused(placeHold(tenantId, source.id, merchant.id, 1n), "wallet_frozen");
    const released = (await wallet.releaseHold({ tenantId, holdId: second?.id as string })).hold;
    assert.equal(released?.status, HoldStatus.RELEASED);
    assert.equal((await wallet.releaseHold({ tenantId, holdId: second?.id as string })).hold?.status, HoldStatus.RELEASED);
    await refused(wallet.captureHold({ tenantId, holdId: second?.id as string }), "hold_not_held");
    assert.equal((await wallet.captureHold({ tenantId, holdId: third?.id as string })).hold?.capturedMinor, 200n);
    assert.equal((await wallet.getHold({ tenantId, holdId: third?.id as string })).hold?.status, HoldStatus.CAPTURED);
    found = await get(tenantId, source.id);
    assert.deepEqual([found.postedBalanceMinor, found.pendingDebitsMinor], [4200n, 0n]);
    // Released and partly captured amounts stay counted in the day's outflow.
    assert.equal(found.outflowTodayMinor, 1500n);

    await notFound(wallet.getHold({ tenantId, holdId: "hld_unknown" }));
    await invalid(placeHold(tenantId, source.id, merchant.id, 1n, { timeoutSeconds: 31_536_001 }), "timeout_seconds");
    await invalid(placeHold(tenantId, source.id, source.id, 1n), "destination_wallet_id");
    await invalid(wallet.captureHold({ tenantId, holdId: hold.id, amountMinor: -1n }), "amount_minor");
    await invalid(wallet.getHold({ tenantId, holdId: "" }), "hold_id");
  });

  it("a transfer paid by a hold releases it and moves the money in one Ledger commit, within the hold's own admission", async () => {
    const tenantId = unique("t");
    // The daily limit has room for the hold once, not for the hold and the transfer counted twice.
    const source = await funded(tenantId, 10_000n, { daily: 10_000n });
    const merchant = await newWallet(tenantId, { kind: WalletKind.MERCHANT });
    const hold = (await placeHold(tenantId, source.id, merchant.id, 6_000n)).hold;
    assert.ok(hold);
    const pay = (fields: { key?: string; amountMinor?: bigint; source?: string } = {}) =>
      wallet.transferFunds({
        tenantId, sourceWalletId: fields.source ?? source.id, destinationWalletId: merchant.id, amountMinor: fields.amountMinor ?? 6_000n, currency: "NGN",
        idempotencyKey: fields.key ?? "approved-1", feeMinor: 60n, releaseHoldId: hold.id,
      });
    const other = await funded(tenantId, 10_000n);
    await invalid(pay({ source: other.id, key: unique("wrong-wallet") }), "release_hold_id");
    await invalid(pay({ amountMinor: 5_000n, key: unique("wrong-amount") }), "release_hold_id");
    await notFound(wallet.transferFunds({ tenantId, sourceWalletId: source.id, destinationWalletId: merchant.id, amountMinor: 6_000n, currency: "NGN", idempotencyKey: unique("k"), releaseHoldId: "hld_unknown" }));

    // The rest of the balance and of the day's allowance is spent meanwhile; the held money is not.
    await transfer(tenantId, source.id, other.id, 4_000n);
    await refused(transfer(tenantId, source.id, other.id, 1n), "limit_exceeded");
    const paid = await pay();
    assert.equal(paid.replayed, false);
    assert.equal((await wallet.getHold({ tenantId, holdId: hold.id })).hold?.status, HoldStatus.RELEASED);
    const found = await get(tenantId, source.id);
    assert.deepEqual([found.postedBalanceMinor, found.pendingDebitsMinor, found.availableBalanceMinor, found.outflowTodayMinor], [0n, 0n, 0n, 10_000n]);
    assert.equal((await get(tenantId, merchant.id)).postedBalanceMinor, 5_940n);
    const { transfers } = await ledger.lookupTransfers({ ids: [releaseIdFor(hold.id), paid.transferId, paid.feeTransferId] });
    assert.equal(transfers.length, 3);
    const batches = rowsOf(await mesh.backends.database("ledger").db.execute(sql`
      select distinct batch from ledger.transfers where id in (${sql.join(transfers.map((item) => sql`${item.id}`), sql`, `)})`));
    assert.equal(batches.length, 1, "the release and both legs committed together");

    // A retry replays; the hold cannot pay a second transfer.
    assert.equal((await pay()).replayed, true);
    await refused(pay({ key: "approved-2" }), "hold_not_held");
    assert.equal((await get(tenantId, source.id)).postedBalanceMinor, 0n);
  });

  it("expires a hold whose timeout passed: EXPIRED, the money available again, no capture", async () => {
    const tenantId = unique("t");
    const source = await funded(tenantId, 1000n);
    const merchant = await newWallet(tenantId);
    const hold = (await placeHold(tenantId, source.id, merchant.id, 700n, { timeoutSeconds: 1 })).hold;
    assert.ok(hold);
    assert.equal((await get(tenantId, source.id)).availableBalanceMinor, 300n);
    await until(async () => ((await get(tenantId, source.id)).pendingDebitsMinor === 0n ? true : undefined), 4000, "the Ledger to expire the hold");
    assert.equal((await wallet.getHold({ tenantId, holdId: hold.id })).hold?.status, HoldStatus.EXPIRED);
    await refused(wallet.captureHold({ tenantId, holdId: hold.id }), "hold_not_held");
    await refused(wallet.releaseHold({ tenantId, holdId: hold.id }), "hold_not_held");
    const after = await get(tenantId, source.id);
    assert.deepEqual([after.postedBalanceMinor, after.availableBalanceMinor], [1000n, 1000n]);
    assert.equal((await get(tenantId, merchant.id)).postedBalanceMinor, 0n);
  });

  it("six concurrent 1,000 holds against 5,000: exactly five, and available never negative", async () => {
    const tenantId = unique("t");
    const source = await funded(tenantId, 5000n);
    const merchant = await newWallet(tenantId);
    const { ok, errors } = settled(await Promise.allSettled(Array.from({ length: 6 }, () => placeHold(tenantId, source.id, merchant.id, 1000n))));
    assert.equal(ok.length, 5);
    assert.deepEqual(errors.map(refusalCode), ["insufficient_funds"]);
    const found = await get(tenantId, source.id);
    assertBalanced(found);
    assert.deepEqual([found.postedBalanceMinor, found.pendingDebitsMinor, found.availableBalanceMinor], [5000n, 5000n, 0n]);
    assert.equal(found.outflowTodayMinor, 5000n, "the declined hold gave its allowance back");
  });

  it("spends racing holds never spend the same money twice", async () => {
    const tenantId = unique("t");
    for (let round = 0; round < 3; round++) {
      const source = await funded(tenantId, 5000n);
      const merchant = await newWallet(tenantId);
      const calls = Array.from({ length: 12 }, (_, index) =>
        index % 2 === 0 ? placeHold(tenantId, source.id, merchant.id, 1000n) : transfer(tenantId, source.id, merchant.id, 1000n),
      );
      const { ok, errors } = settled(await Promise.allSettled<unknown>(calls));
      assert.equal(ok.length, 5);
      assert.ok(errors.every((error) => refusalCode(error) === "insufficient_funds"));
      const found = await get(tenantId, source.id);
      assertBalanced(found);
      assert.equal(found.availableBalanceMinor, 0n);
      assert.equal(found.postedBalanceMinor + (await get(tenantId, merchant.id)).postedBalanceMinor, 5000n);
    }
  });

  it("property: any sequence of holds, captures, releases, spends and top-ups keeps available = posted - pending >= 0", async () => {
    const tenantId = unique("t");
    const merchant = await newWallet(tenantId);
    const op = fc.oneof(
      fc.record({ kind: fc.constant("hold" as const), amount: fc.bigInt(1n, 700n) }),
      fc.record({ kind: fc.constant("capture" as const), pick: fc.nat(), amount: fc.bigInt(0n, 700n) }),
      fc.record({ kind: fc.constant("release" as const), pick: fc.nat() }),
      fc.record({ kind: fc.constant("spend" as const), amount: fc.bigInt(1n, 900n) }),
      fc.record({ kind: fc.constant("fund" as const), amount: fc.bigInt(1n, 500n) }),
    );
    await fc.assert(
      fc.asyncProperty(fc.bigInt(0n, 1500n), fc.array(op, { minLength: 1, maxLength: 8 }), async (initial, ops) => {
        const source = await funded(tenantId, initial);
        // The model: posted balance and open holds (id -> amount).
        let posted = initial;
        const open = new Map<string, bigint>();
        const pendingTotal = () => [...open.values()].reduce((sum, amount) => sum + amount, 0n);
        for (const step of ops) {
          const available = posted - pendingTotal();
          if (step.kind === "hold") {
            const result = await placeHold(tenantId, source.id, merchant.id, step.amount).then((r) => r.hold, (e) => ConnectError.from(e));
            if (step.amount <= available) open.set((result as { id: string }).id, step.amount);
            else assert.equal(refusalCode(result as ConnectError), "insufficient_funds");
          } else if (step.kind === "capture" || step.kind === "release") {
            const ids = [...open.keys()];
            if (ids.length === 0) continue;
            const holdId = ids[step.pick % ids.length] as string;
            const held = open.get(holdId) as bigint;
            if (step.kind === "capture") {
              const amount = step.amount > held ? held : step.amount;
              const hold = (await wallet.captureHold({ tenantId, holdId, amountMinor: amount })).hold;
              assert.equal(hold?.capturedMinor, amount === 0n ? held : amount);
              posted -= hold?.capturedMinor ?? 0n;
            } else {
              assert.equal((await wallet.releaseHold({ tenantId, holdId })).hold?.status, HoldStatus.RELEASED);
            }
            open.delete(holdId);
          } else if (step.kind === "spend") {
            const result = await transfer(tenantId, source.id, merchant.id, step.amount).then(() => undefined, (e) => ConnectError.from(e));
            if (step.amount <= available) {
              assert.equal(result, undefined);
              posted -= step.amount;
            } else {
              assert.equal(refusalCode(result as ConnectError), "insufficient_funds");
            }
          } else {
            await fund(tenantId, source.id, step.amount);
            posted += step.amount;
          }
          const found = await get(tenantId, source.id);
          assertBalanced(found);
          assert.equal(found.postedBalanceMinor, posted);
          assert.equal(found.pendingDebitsMinor, pendingTotal());
        }
      }),
      { numRuns: 12 },
    );
  });
});

describe("GetStatement", () => {
  it("lists posted movements oldest first with the balance after each, across pages", async () => {
    const tenantId = unique("t");
    const customer = await newWallet(tenantId);
    const merchant = await newWallet(tenantId, { kind: WalletKind.MERCHANT });
    const startedAt = new Date(Date.now() - 1000);
    await fund(tenantId, customer.id, 10_000n);
    const paid = await transfer(tenantId, customer.id, merchant.id, 2_000n, { feeMinor: 50n, code: TRANSFER_CODE.payment, reference: "order-9" });
    await transfer(tenantId, merchant.id, customer.id, 500n, { code: TRANSFER_CODE.refund, reference: "order-9" });
    const hold = (await placeHold(tenantId, customer.id, merchant.id, 1_000n)).hold;
    const released = (await placeHold(tenantId, customer.id, merchant.id, 100n)).hold;
    await wallet.releaseHold({ tenantId, holdId: released?.id as string });
    await wallet.captureHold({ tenantId, holdId: hold?.id as string, amountMinor: 400n });
    await transfer(tenantId, customer.id, merchant.id, 1n);

    const entries = [];
    let pageToken = "";
    let pages = 0;
    do {
      const page = await wallet.getStatement({ tenantId, walletId: customer.id, pageSize: 2, pageToken });
      assert.ok(page.entries.length <= 2);
      assert.equal(page.wallet?.id, customer.id);
      entries.push(...page.entries);
      pageToken = page.nextPageToken;
      pages += 1;
    } while (pageToken !== "" && pages < 20);
    assert.equal(pageToken, "");
    const summary = entries.map((entry) => [EntryType[entry.type], EntryDirection[entry.direction], entry.amountMinor, entry.balanceAfterMinor]);
    assert.deepEqual(summary, [
      ["FUNDING", "CREDIT", 10_000n, 10_000n],
      ["PAYMENT", "DEBIT", 1_950n, 8_050n],
      ["FEE", "DEBIT", 50n, 8_000n],
      ["REFUND", "CREDIT", 500n, 8_500n],
      ["HOLD_CAPTURE", "DEBIT", 400n, 8_100n],
      ["TRANSFER", "DEBIT", 1n, 8_099n],
    ]);
    assert.equal(entries[0]?.counterparty, fundingAccountId("NGN"));
    assert.equal(entries[1]?.counterparty, merchant.id);
    assert.equal(entries[1]?.transferId, paid.transferId);
    assert.equal(entries[1]?.reference, "order-9");
    assert.equal(entries[2]?.counterparty, feeAccountId(tenantId, "NGN"));
    assert.equal((await get(tenantId, customer.id)).postedBalanceMinor, 8_099n);

    const merchantView = (await wallet.getStatement({ tenantId, walletId: merchant.id })).entries;
    assert.deepEqual(merchantView.map((entry) => [EntryType[entry.type], EntryDirection[entry.direction], entry.balanceAfterMinor]), [
      ["PAYMENT", "CREDIT", 1_950n],
      ["REFUND", "DEBIT", 1_450n],
      ["HOLD_CAPTURE", "CREDIT", 1_850n],
      ["TRANSFER", "CREDIT", 1_851n],
    ]);
    const none = await wallet.getStatement({ tenantId, walletId: customer.id, toTime: timestampFromDate(startedAt) });
    assert.equal(none.entries.length, 0);
    await invalid(wallet.getStatement({ tenantId, walletId: customer.id, pageSize: 501 }), "page_size");
  });
});

describe("the journal", () => {
  it("is consistent after everything above", async () => {
    const { findings } = await ledger.verifyJournal({});
    assert.deepEqual(findings, []);
  });
});
