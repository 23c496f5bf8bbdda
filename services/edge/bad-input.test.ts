// Bad input through the public API, table-driven, over the Connect protocol with JSON and plain
// fetch (what a browser or curl sends), against the whole mesh. Each case checks the error code,
// that the message names the public field (or header), and that no row changed in any table of
// the edge, wallet, router and ledger schemas: a refused request leaves no trace, not even an
// idempotency record (the Edge validates before it claims the key).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import postgres from "postgres";
import { WalletKind, WalletsService, type Wallet } from "../../gen/cowrie/edge/v1/wallets_pb.js";
import { PaymentsService } from "../../gen/cowrie/edge/v1/payments_pb.js";
import { edgeClient, newTenant, snapshotRows, startEdgeMesh } from "./test-support.js";

const SCHEMAS = ["edge", "wallet", "router", "ledger"];

let mesh: Awaited<ReturnType<typeof startEdgeMesh>>;
let sql: postgres.Sql;
let apiKey: string;
let mine: Wallet;
let other: Wallet;
let theirs: Wallet;
let paymentId: string;
let holdId: string;

before(async () => {
  mesh = await startEdgeMesh("edge_bad_input");
  sql = postgres(mesh.databaseUrl, { max: 1, onnotice: () => {} });
  const tenant = await newTenant(mesh.admin, "careful");
  apiKey = tenant.apiKey;
  const wallets = edgeClient(WalletsService, mesh.baseUrl, apiKey);
  const payments = edgeClient(PaymentsService, mesh.baseUrl, apiKey);
  const keyed = (key: string) => ({ headers: { "idempotency-key": key } });
  mine = (await wallets.createWallet({ ownerId: "me", currency: "USD", kind: WalletKind.CUSTOMER }, keyed("setup-1"))).wallet as Wallet;
  other = (await wallets.createWallet({ ownerId: "you", currency: "USD", kind: WalletKind.CUSTOMER }, keyed("setup-2"))).wallet as Wallet;
  await wallets.fundWallet({ walletId: mine.id, amountMinor: 1_000n, currency: "USD" }, keyed("setup-3"));
  paymentId = (await payments.createPayment({ sourceWalletId: mine.id, destinationWalletId: other.id, amountMinor: 100n, currency: "USD" }, keyed("setup-4"))).payment?.id ?? "";
  holdId = (await wallets.placeHold({ walletId: mine.id, destinationWalletId: other.id, amountMinor: 50n, currency: "USD" }, keyed("setup-5"))).hold?.id ?? "";
  const stranger = await newTenant(mesh.admin, "stranger");
  const strangerWallets = edgeClient(WalletsService, mesh.baseUrl, stranger.apiKey);
  theirs = (await strangerWallets.createWallet({ ownerId: "them", currency: "USD", kind: WalletKind.CUSTOMER }, keyed("setup-6"))).wallet as Wallet;
});

after(async () => {
  await sql?.end();
  await mesh?.close();
});

interface Case {
  name: string;
  /** "WalletsService/FundWallet" */
  rpc: string;
  /** The JSON body, or a function of the fixtures (ids exist only once `before` ran). */
  body: () => unknown;
  /** The error code in Connect's JSON error ("invalid_argument"). */
  code?: string;
  /** What the message must name. */
  names: string;
  /** Idempotency-Key header: a fresh one unless given (null: none). */
  idempotencyKey?: string | null;
}

const LONG_129 = "x".repeat(129);
const INT64_OVERFLOW = "9223372036854775808";
const fund = (fields: Record<string, unknown>) => () => ({ walletId: mine.id, amountMinor: "100", currency: "USD", ...fields });
const hold = (fields: Record<string, unknown>) => () => ({ walletId: mine.id, destinationWalletId: other.id, amountMinor: "10", currency: "USD", ...fields });
const pay = (fields: Record<string, unknown>) => () => ({ sourceWalletId: mine.id, destinationWalletId: other.id, amountMinor: "10", currency: "USD", ...fields });
const wallet = (fields: Record<string, unknown>) => () => ({ ownerId: "someone", currency: "USD", kind: "WALLET_KIND_CUSTOMER", ...fields });

const CASES: Case[] = [
  // Amounts: zero and negative are refused by the Edge; values that are not int64 fail to decode.
  { name: "fund zero", rpc: "WalletsService/FundWallet", body: fund({ amountMinor: "0" }), names: "amount_minor" },
  { name: "fund negative", rpc: "WalletsService/FundWallet", body: fund({ amountMinor: "-5" }), names: "amount_minor" },
  { name: "fund beyond int64", rpc: "WalletsService/FundWallet", body: fund({ amountMinor: INT64_OVERFLOW }), names: "amount_minor" },
  { name: "fund far beyond int64", rpc: "WalletsService/FundWallet", body: fund({ amountMinor: "99999999999999999999999" }), names: "amount_minor" },
  { name: "fund fractional", rpc: "WalletsService/FundWallet", body: fund({ amountMinor: "10.5" }), names: "amount_minor" },
  { name: "fund fractional number", rpc: "WalletsService/FundWallet", body: fund({ amountMinor: 10.5 }), names: "amount_minor" },
  { name: "fund not a number", rpc: "WalletsService/FundWallet", body: fund({ amountMinor: "ten" }), names: "amount_minor" },
  { name: "hold zero", rpc: "WalletsService/PlaceHold", body: hold({ amountMinor: "0" }), names: "amount_minor" },
  { name: "hold beyond int64", rpc: "WalletsService/PlaceHold", body: hold({ amountMinor: INT64_OVERFLOW }), names: "amount_minor" },
  { name: "capture negative", rpc: "WalletsService/CaptureHold", body: () => ({ holdId, amountMinor: "-1" }), names: "amount_minor" },
  { name: "pay zero", rpc: "PaymentsService/CreatePayment", body: pay({ amountMinor: "0" }), names: "amount_minor" },
  { name: "pay negative", rpc: "PaymentsService/CreatePayment", body: pay({ amountMinor: "-10" }), names: "amount_minor" },
  { name: "pay beyond int64", rpc: "PaymentsService/CreatePayment", body: pay({ amountMinor: INT64_OVERFLOW }), names: "amount_minor" },
  { name: "pay fractional", rpc: "PaymentsService/CreatePayment", body: pay({ amountMinor: "10.5" }), names: "amount_minor" },
  { name: "fee negative", rpc: "PaymentsService/CreatePayment", body: pay({ feeMinor: "-1" }), names: "fee_minor" },
  { name: "fee the whole amount", rpc: "PaymentsService/CreatePayment", body: pay({ feeMinor: "10" }), names: "fee_minor" },
  { name: "refund negative", rpc: "PaymentsService/RefundPayment", body: () => ({ paymentId, amountMinor: "-1" }), names: "amount_minor" },
  { name: "limit negative", rpc: "WalletsService/SetWalletLimits", body: () => ({ walletId: mine.id, limits: { dailyOutflowMinor: "-1" } }), names: "limits.daily_outflow_minor" },
  { name: "limits missing", rpc: "WalletsService/SetWalletLimits", body: () => ({ walletId: mine.id }), names: "limits" },
  { name: "initial limit negative", rpc: "WalletsService/CreateWallet", body: wallet({ limits: { perTransactionMinor: "-1" } }), names: "limits.per_transaction_minor" },
  // Currencies: only ISO 4217 codes in use, upper case.
  { name: "unknown currency", rpc: "WalletsService/FundWallet", body: fund({ currency: "XYZ" }), names: "currency" },
  { name: "lower-case currency", rpc: "WalletsService/FundWallet", body: fund({ currency: "usd" }), names: "currency" },
  { name: "empty currency", rpc: "WalletsService/FundWallet", body: fund({ currency: "" }), names: "currency" },
  { name: "wallet in XYZ", rpc: "WalletsService/CreateWallet", body: wallet({ currency: "XYZ" }), names: "currency" },
  { name: "wallet in usd", rpc: "WalletsService/CreateWallet", body: wallet({ currency: "usd" }), names: "currency" },
  { name: "hold in XYZ", rpc: "WalletsService/PlaceHold", body: hold({ currency: "XYZ" }), names: "currency" },
  { name: "payment in usd", rpc: "PaymentsService/CreatePayment", body: pay({ currency: "usd" }), names: "currency" },
  // Texts: required ones empty, and every one over its limit.
  { name: "empty owner", rpc: "WalletsService/CreateWallet", body: wallet({ ownerId: "" }), names: "owner_id" },
  { name: "oversized owner", rpc: "WalletsService/CreateWallet", body: wallet({ ownerId: LONG_129 }), names: "owner_id" },
  { name: "kind unspecified", rpc: "WalletsService/CreateWallet", body: wallet({ kind: "WALLET_KIND_UNSPECIFIED" }), names: "kind" },
  { name: "kind unknown name", rpc: "WalletsService/CreateWallet", body: wallet({ kind: "WALLET_KIND_ROBOT" }), names: "kind" },
  { name: "oversized hold reference", rpc: "WalletsService/PlaceHold", body: hold({ reference: LONG_129 }), names: "reference" },
  { name: "oversized payment reference", rpc: "PaymentsService/CreatePayment", body: pay({ reference: LONG_129 }), names: "reference" },
  { name: "NUL in a payment reference", rpc: "PaymentsService/CreatePayment", body: pay({ reference: "order\u00001" }), names: "reference" },
  { name: "oversized refund reason", rpc: "PaymentsService/RefundPayment", body: () => ({ paymentId, reason: LONG_129 }), names: "reason" },
  { name: "oversized freeze reason", rpc: "WalletsService/FreezeWallet", body: () => ({ walletId: mine.id, reason: "r".repeat(257) }), names: "reason" },
  { name: "oversized owner filter", rpc: "WalletsService/ListWallets", body: () => ({ ownerId: LONG_129 }), names: "owner_id", idempotencyKey: null },
  // Ids: malformed, and the same wallet on both sides.
  { name: "empty wallet id", rpc: "WalletsService/FundWallet", body: fund({ walletId: "" }), names: "wallet_id" },
  { name: "wallet id with spaces", rpc: "WalletsService/FundWallet", body: fund({ walletId: "wal 123" }), names: "wallet_id" },
  { name: "wallet id too long", rpc: "WalletsService/GetWallet", body: () => ({ walletId: `wal_${"a".repeat(61)}` }), names: "wallet_id", idempotencyKey: null },
  { name: "malformed destination", rpc: "WalletsService/PlaceHold", body: hold({ destinationWalletId: "../etc" }), names: "destination_wallet_id" },
  { name: "hold to itself", rpc: "WalletsService/PlaceHold", body: hold({ destinationWalletId: "" }), names: "destination_wallet_id" },
  { name: "hold to the same wallet", rpc: "WalletsService/PlaceHold", body: () => ({ ...hold({})(), destinationWalletId: mine.id }), names: "destination_wallet_id" },
  { name: "malformed source", rpc: "PaymentsService/CreatePayment", body: pay({ sourceWalletId: "wal;drop" }), names: "source_wallet_id" },
  { name: "pay to itself", rpc: "PaymentsService/CreatePayment", body: () => ({ ...pay({})(), destinationWalletId: mine.id }), names: "destination_wallet_id" },
  { name: "empty hold id", rpc: "WalletsService/CaptureHold", body: () => ({ holdId: "" }), names: "hold_id" },
  { name: "malformed payment id", rpc: "PaymentsService/GetPayment", body: () => ({ paymentId: "pay/1" }), names: "payment_id", idempotencyKey: null },
  { name: "empty refund payment id", rpc: "PaymentsService/RefundPayment", body: () => ({ paymentId: "" }), names: "payment_id" },
  // Paging, ranges and enums.
  { name: "page too big", rpc: "WalletsService/ListWallets", body: () => ({ pageSize: 101 }), names: "page_size", idempotencyKey: null },
  { name: "statement page too big", rpc: "WalletsService/GetStatement", body: () => ({ walletId: mine.id, pageSize: 501 }), names: "page_size", idempotencyKey: null },
  { name: "time range backwards", rpc: "WalletsService/GetStatement", body: () => ({ walletId: mine.id, fromTime: "2030-01-02T00:00:00Z", toTime: "2030-01-01T00:00:00Z" }), names: "to_time", idempotencyKey: null },
  { name: "negative page size", rpc: "PaymentsService/ListPayments", body: () => ({ pageSize: -1 }), names: "page_size", idempotencyKey: null },
  { name: "unknown status filter", rpc: "PaymentsService/ListPayments", body: () => ({ status: 99 }), names: "status", idempotencyKey: null },
  { name: "hold timeout too long", rpc: "WalletsService/PlaceHold", body: hold({ timeoutSeconds: 31_536_001 }), names: "timeout_seconds" },
  // The Idempotency-Key header.
  { name: "no Idempotency-Key", rpc: "WalletsService/FundWallet", body: fund({}), names: "Idempotency-Key header", idempotencyKey: null },
  { name: "empty Idempotency-Key", rpc: "PaymentsService/CreatePayment", body: pay({}), names: "Idempotency-Key header", idempotencyKey: "" },
  { name: "Idempotency-Key too long", rpc: "WalletsService/CreateWallet", body: wallet({}), names: "Idempotency-Key header", idempotencyKey: "k".repeat(256) },
  // Another tenant's wallet: it does not exist for this tenant (read-only, so nothing is recorded).
  { name: "another tenant's wallet", rpc: "WalletsService/GetWallet", body: () => ({ walletId: theirs.id }), code: "not_found", names: "wallet", idempotencyKey: null },
  { name: "another tenant's statement", rpc: "WalletsService/GetStatement", body: () => ({ walletId: theirs.id }), code: "not_found", names: "wallet", idempotencyKey: null },
];

let keyCounter = 0;

async function call(testCase: Case): Promise<{ status: number; body: { code?: string; message?: string } }> {
  const headers: Record<string, string> = { "content-type": "application/json", authorization: `Bearer ${apiKey}` };
  const key = testCase.idempotencyKey === undefined ? `bad-input-${++keyCounter}` : testCase.idempotencyKey;
  if (key !== null) headers["idempotency-key"] = key;
  const response = await fetch(`${mesh.baseUrl}/cowrie.edge.v1.${testCase.rpc}`, {
    method: "POST",
    headers,
    body: JSON.stringify(testCase.body()),
  });
  return { status: response.status, body: (await response.json()) as { code?: string; message?: string } };
}

describe("bad input through the public API", () => {
  for (const testCase of CASES) {
    it(`${testCase.rpc}: ${testCase.name} → ${testCase.code ?? "invalid_argument"} naming ${testCase.names}, nothing written`, async () => {
      const before = await snapshotRows(sql, SCHEMAS);
      const { status, body } = await call(testCase);
      const code = testCase.code ?? "invalid_argument";
      assert.equal(body.code, code, `${status} ${JSON.stringify(body)}`);
      assert.equal(status, code === "invalid_argument" ? 400 : 404);
      assert.ok(body.message?.includes(testCase.names), `message does not name ${testCase.names}: ${body.message}`);
      assert.deepEqual(await snapshotRows(sql, SCHEMAS), before);
    });
  }

  it("a mutation naming another tenant's wallet is NOT_FOUND and moves nothing; only its decided outcome is kept", async () => {
    const before = await snapshotRows(sql, ["wallet", "router", "ledger"]);
    const [{ n: recordsBefore }] = (await sql`select count(*)::int as n from edge.idempotency_keys`) as unknown as [{ n: number }];
    const { status, body } = await call({ name: "fund theirs", rpc: "WalletsService/FundWallet", body: fund({ walletId: theirs.id }), names: "wallet" });
    assert.equal(status, 404);
    assert.equal(body.code, "not_found");
    assert.deepEqual(await snapshotRows(sql, ["wallet", "router", "ledger"]), before);
    // NOT_FOUND is decided by the Wallet, after the key was claimed: it is stored for replay.
    const [{ n: recordsAfter }] = (await sql`select count(*)::int as n from edge.idempotency_keys`) as unknown as [{ n: number }];
    assert.equal(recordsAfter, recordsBefore + 1);
  });
});
