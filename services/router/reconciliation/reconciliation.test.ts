// Reconciliation against the real PostgreSQL, RabbitMQ, Ledger, Wallet and Router, and the gateway
// simulator. Volume is seeded directly (payment rows inserted, Ledger transfers created in
// batches through the Ledger's RPC, gateway records imported through the simulator's /_sim
// control API) with exactly the ids the Router and Wallet would have used; the matching itself is
// the real engine, through ReconciliationService. Each mismatch is injected on its own payment,
// and each must come back as exactly its finding.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack, timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import postgres from "postgres";
import { EnvelopeSchema, ReconciliationFindingRaisedSchema } from "../../../gen/cowrie/events/v1/events_pb.js";
import { AccountCode, LedgerService, TransferKind, type Transfer } from "../../../gen/cowrie/ledger/v1/ledger_pb.js";
import { FindingStatus, FindingType, ReconciliationService, type Finding, type ReconciliationRun } from "../../../gen/cowrie/router/v1/reconciliation_pb.js";
import { PaymentKind, PaymentStatus } from "../../../gen/cowrie/router/v1/router_pb.js";
import { WalletKind, WalletService } from "../../../gen/cowrie/wallet/v1/wallet_pb.js";
import { meshTopology, startMesh, type Mesh } from "../../mesh.js";
import { metrics } from "../../runtime/metrics.js";
import { capturingLogger, deleteBrokerTopology, freshDatabase, meshEnvironment, rejection, TEST_AMQP_URL, TEST_REDIS_URL, testConfig } from "../../runtime/testing.js";
import { simulatorControl, simulatorGatewayEnv, type ImportRecord, type SimulatorControl } from "../../simulator/control.js";
import { startSimulator } from "../../simulator/simulator.js";
import { captureIdFor, clearingAccountId, holdIdFor, transferIdFor } from "../../wallet/service.js";
import { gatewayReference } from "../gateway-flow.js";
import { newPaymentId } from "../store.js";
import { takeLease } from "./store.js";

const TENANT = "tenant-recon";
const TOKEN = "recon-test-operator-token-0123456789";
const TYPE_NAMES = FindingType as unknown as Record<number, string>;

let database: Awaited<ReturnType<typeof freshDatabase>>;
let namespace: string | undefined;
let simulator: Awaited<ReturnType<typeof startSimulator>>;
let sim: SimulatorControl;
let mesh: Mesh;
let sql: postgres.Sql;
let recon: Client<typeof ReconciliationService>;
let ledger: Client<typeof LedgerService>;
let wallets: Client<typeof WalletService>;
/** walletA pays (funded), walletB receives, walletU receives USD. */
let walletA: string;
let walletB: string;
let walletU: string;
const auth = { headers: { authorization: `Bearer ${TOKEN}` }, timeoutMs: 60_000 };

before(async () => {
  database = await freshDatabase("recon");
  simulator = await startSimulator({ port: 0, settings: { paystack: { latencyMs: { median: 0, p99: 0 } }, flutterwave: { latencyMs: { median: 0, p99: 0 } }, stripe: { latencyMs: { median: 0, p99: 0 } } } });
  sim = simulatorControl(simulator.url);
  const config = testConfig(await meshEnvironment({
    DATABASE_URL: database.url,
    AMQP_URL: TEST_AMQP_URL,
    REDIS_URL: TEST_REDIS_URL,
    ...simulatorGatewayEnv(simulator.url),
    COWRIE_OPERATOR_TOKEN: TOKEN,
    // Runs only when a test asks; no completer or resolver racing the engine for stuck payments.
    COWRIE_RECON_INTERVAL_MS: "0",
    COWRIE_COMPLETER_INTERVAL_MS: "600000",
    COWRIE_RECON_STUCK_PENDING_MS: "60000",
    COWRIE_RECON_STUCK_PROCESSING_MS: "60000",
    COWRIE_RECON_BATCH_SIZE: "4000",
    COWRIE_SHUTDOWN_GRACE_MS: "500",
  }));
  namespace = config.brokerNamespace;
  mesh = await startMesh(config, ["ledger", "wallet", "router"], capturingLogger().log);
  const transport = (port: number) => createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "2" });
  recon = createClient(ReconciliationService, transport(config.routerPort));
  ledger = createClient(LedgerService, transport(config.ledgerPort));
  wallets = createClient(WalletService, transport(config.walletPort));
  sql = postgres(database.url, { max: 4, onnotice: () => {} });

  const open = async (owner: string, currency: string) => {
    const { wallet } = await wallets.createWallet({ tenantId: TENANT, ownerId: owner, currency, kind: WalletKind.CUSTOMER });
    assert.ok(wallet);
    return wallet.id;
  };
  walletA = await open("alice", "NGN");
  walletB = await open("bola", "NGN");
  walletU = await open("uma", "USD");
  await wallets.fundWallet({ tenantId: TENANT, walletId: walletA, amountMinor: 10_000_000_000n, currency: "NGN", idempotencyKey: "fund-a" });
  // The clearing accounts, as the Wallet creates them on a gateway's first use.
  await ledger.createAccounts({
    accounts: [["paystack", "NGN"], ["flutterwave", "NGN"], ["stripe", "USD"], ["stripe", "EUR"]].map(([gateway, currency]) => ({
      id: clearingAccountId(gateway as string, currency as string), currency, code: AccountCode.GATEWAY_CLEARING, ownerRef: `gateway:${gateway}`,
    })),
  });
});

after(async () => {
  await sql?.end();
  await mesh?.close();
  await simulator?.close();
  await database?.drop();
  // The mesh declared every event consumer's queues too, not only the Router's work queue.
  if (namespace) await deleteBrokerTopology(meshTopology(namespace));
});

// ---------------------------------------------------------------------------------------------
// Seeding: rows as the Router writes them, Ledger transfers and gateway records as they would be.

interface Seed {
  kind: PaymentKind;
  status?: PaymentStatus;
  amountMinor: bigint;
  currency?: string;
  gateway?: "paystack" | "flutterwave" | "stripe" | "";
  failureCode?: string;
  needsReconciliation?: boolean;
  /** Minutes since the last change (stuck payments). */
  idleMinutes?: number;
}

interface Seeded extends Seed {
  id: string;
  holdId: string;
  reference: string;
}

/** Payment ids one millisecond apart from `startMs`, so a window is a clean id range. */
function seeded(startMs: number, seeds: Seed[]): Seeded[] {
  return seeds.map((seed, index) => {
    const id = newPaymentId(startMs + index);
    const gateway = seed.gateway ?? "";
    const holdId = seed.kind === PaymentKind.PAYOUT && gateway ? holdIdFor(TENANT, `router:${id}:hold:${gateway}`) : "";
    return { ...seed, id, holdId, reference: gateway ? gatewayReference(id, gateway) : "" };
  });
}

async function insertPayments(items: Seeded[]): Promise<void> {
  const now = Date.now();
  const rows = items.map((item) => {
    const at = new Date(now - (item.idleMinutes ?? 0) * 60_000);
    const currency = item.currency ?? "NGN";
    return {
      id: item.id,
      tenant_id: TENANT,
      idempotency_key: item.id,
      fingerprint: "seeded",
      request: sql.json({ operation: "CreatePayment" }),
      kind: item.kind,
      status: item.status ?? PaymentStatus.SUCCEEDED,
      amount_minor: String(item.amountMinor),
      currency,
      source_wallet_id: item.kind === PaymentKind.PAY_IN ? "" : walletA,
      destination_wallet_id: item.kind === PaymentKind.PAYOUT ? "" : currency === "USD" ? walletU : walletB,
      instrument: item.kind === PaymentKind.INTERNAL
        ? null
        : sql.json({ country: "NG", paymentMethod: "AUTH_good", customerEmail: "p@example.com", bankAccount: { bankCode: "058", accountNumber: "0123456789", accountName: "Ada" } }),
      gateway: item.gateway ?? "",
      hold_id: item.holdId,
      transfer_id: item.kind === PaymentKind.PAYOUT ? (item.holdId ? captureIdFor(item.holdId) : "") : transferIdFor(TENANT, `router:${item.id}`),
      failure_code: item.failureCode ?? "",
      needs_reconciliation: item.needsReconciliation ?? false,
      created_at: at,
      updated_at: at,
    };
  });
  for (let start = 0; start < rows.length; start += 2_000) {
    await sql`insert into router.payments ${sql(rows.slice(start, start + 2_000))}`;
  }
}

type TransferInit = Omit<Partial<Transfer>, "$typeName">;

/** The Ledger transfers of a payment as the Wallet would have made them (amount and currency overridable). */
function transfersOf(item: Seeded, amountMinor = item.amountMinor, currency = item.currency ?? "NGN"): TransferInit[] {
  const metadata = { tenant_id: TENANT };
  if (item.kind === PaymentKind.PAYOUT) {
    return [
      { id: item.holdId, kind: TransferKind.PENDING, debitAccountId: walletA, creditAccountId: clearingAccountId(item.gateway as string, currency), amountMinor, currency, code: 8, metadata },
      { id: captureIdFor(item.holdId), kind: TransferKind.POST_PENDING, pendingId: item.holdId, amountMinor, code: 8, metadata },
    ];
  }
  const id = transferIdFor(TENANT, `router:${item.id}`);
  if (item.kind === PaymentKind.PAY_IN) {
    const credit = currency === "USD" ? walletU : walletB;
    return [{ id, kind: TransferKind.POSTED, debitAccountId: clearingAccountId(item.gateway as string, currency), creditAccountId: credit, amountMinor, currency, code: 7, metadata }];
  }
  return [{ id, kind: TransferKind.POSTED, debitAccountId: walletA, creditAccountId: walletB, amountMinor, currency, code: 3, metadata }];
}

async function createTransfers(transfers: TransferInit[]): Promise<void> {
  for (let start = 0; start < transfers.length; start += 8_000) {
    const { results } = await ledger.createTransfers({ transfers: transfers.slice(start, start + 8_000) }, { timeoutMs: 60_000 });
    const refused = results.filter((result) => result.result !== 1);
    assert.deepEqual(refused, [], "every seeded transfer is created");
  }
}

/** The gateway's record of a payment (amount, currency and status overridable). */
function recordOf(item: Seeded, fields: Partial<ImportRecord> = {}): ImportRecord {
  return {
    gateway: item.gateway as ImportRecord["gateway"],
    operation: item.kind === PaymentKind.PAY_IN ? "charge" : "payout",
    reference: item.reference,
    amountMinor: String(item.amountMinor),
    currency: item.currency ?? "NGN",
    status: "succeeded",
    ...fields,
  };
}

async function runWindow(from: number, to: number): Promise<ReconciliationRun> {
  const { run } = await recon.runReconciliation({ from: timestampFromDate(new Date(from)), to: timestampFromDate(new Date(to)), operator: "test" }, auth);
  assert.ok(run);
  assert.equal(run.status, "completed", run.error);
  return run;
}

async function findingsOf(runId: string): Promise<Finding[]> {
  const found: Finding[] = [];
  for (let pageToken = ""; ;) {
    const page = await recon.listFindings({ pageSize: 100, pageToken }, auth);
    found.push(...page.findings.filter((finding) => finding.runId === runId));
    if (page.nextPageToken === "") return found;
    pageToken = page.nextPageToken;
  }
}

// ---------------------------------------------------------------------------------------------

describe("reconciliation", () => {
  it("a run over 10,000 payments of every kind, consistent on all three sides, reports all matched", async () => {
    const startMs = Date.now() - 30_000;
    const seeds: Seed[] = [];
    for (let index = 0; index < 10_000; index++) {
      const amountMinor = BigInt(1_000 + (index % 97) * 10);
      if (index % 20 < 10) seeds.push({ kind: PaymentKind.PAY_IN, gateway: "paystack", amountMinor });
      else if (index % 20 < 14) seeds.push({ kind: PaymentKind.PAY_IN, gateway: "stripe", currency: "USD", amountMinor });
      else if (index % 20 < 17) seeds.push({ kind: PaymentKind.INTERNAL, amountMinor });
      else seeds.push({ kind: PaymentKind.PAYOUT, gateway: "flutterwave", amountMinor });
    }
    const items = seeded(startMs, seeds);
    await insertPayments(items);
    await createTransfers(items.flatMap((item) => transfersOf(item)));
    await sim.importRecords(items.filter((item) => item.gateway).map((item) => recordOf(item)));

    const run = await runWindow(startMs, Date.now() + 1_000);
    assert.equal(run.paymentsChecked, 10_000n);
    // Every pay-in and payout on the clearing accounts belongs to one of them.
    assert.equal(run.ledgerTransfersChecked, BigInt(items.filter((item) => item.kind === PaymentKind.PAY_IN).length + 2 * items.filter((item) => item.kind === PaymentKind.PAYOUT).length));
    assert.deepEqual(run.findingsByType, []);
    assert.equal(run.matched, run.checked);
    assert.equal(run.matchRatePpm, 1_000_000);
    assert.equal(run.findingsOpened, 0);
    assert.ok(run.durationMs > 0);

    const { run: stored } = await recon.getReconciliationRun({ runId: run.id }, auth);
    assert.equal(stored?.checked, run.checked);
    const exported = await metrics().registry.getSingleMetricAsString("cowrie_recon_runs_total");
    assert.match(exported, /trigger="manual",status="completed"/);
  });

  let injected: Map<string, Seeded>;
  let run: ReconciliationRun;
  let findings: Finding[];

  it("each injected mismatch comes back as exactly its finding, and the safe ones settle themselves", async () => {
    // Stripe's times are whole seconds: the window starts early enough to hold the unknown charge.
    const startMs = Date.now() - 2_000;
    const { PAY_IN, PAYOUT, INTERNAL } = PaymentKind;
    const { FAILED, CREATED, OUTCOME_UNKNOWN } = PaymentStatus;
    const cases: Record<string, Seed> = {
      clean: { kind: PAY_IN, gateway: "paystack", amountMinor: 5_000n },
      noLedger: { kind: INTERNAL, amountMinor: 1_100n },
      ledgerAmount: { kind: INTERNAL, amountMinor: 1_200n },
      failedDebited: { kind: INTERNAL, status: FAILED, failureCode: "insufficient_funds", amountMinor: 1_300n },
      failedCaptured: { kind: PAY_IN, gateway: "paystack", status: FAILED, failureCode: "card_declined", amountMinor: 1_400n },
      gatewayAmount: { kind: PAY_IN, gateway: "paystack", amountMinor: 1_500n },
      gatewayCurrency: { kind: PAY_IN, gateway: "stripe", currency: "USD", amountMinor: 1_600n },
      duplicate: { kind: PAY_IN, gateway: "paystack", amountMinor: 1_700n },
      holdExpired: { kind: PAYOUT, gateway: "flutterwave", status: FAILED, failureCode: "booking_hold_not_held", amountMinor: 1_800n },
      noCapture: { kind: PAY_IN, gateway: "paystack", amountMinor: 1_900n },
      stuckPending: { kind: INTERNAL, status: CREATED, amountMinor: 2_000n, idleMinutes: 30 },
      stuckProcessing: { kind: INTERNAL, status: PaymentStatus.PROCESSING, amountMinor: 2_050n, idleMinutes: 30 },
      unknownFlagged: { kind: PAY_IN, gateway: "paystack", status: OUTCOME_UNKNOWN, needsReconciliation: true, amountMinor: 2_100n, idleMinutes: 30 },
      inFlight: { kind: INTERNAL, status: PaymentStatus.PROCESSING, amountMinor: 2_200n },
    };
    const names = Object.keys(cases);
    const items = seeded(startMs, Object.values(cases));
    injected = new Map(names.map((name, index) => [name, items[index] as Seeded]));
    const item = (name: string) => injected.get(name) as Seeded;
    await insertPayments(items);

    await createTransfers([
      ...transfersOf(item("clean")),
      ...transfersOf(item("ledgerAmount"), 1_199n),
      ...transfersOf(item("failedDebited")),
      ...transfersOf(item("failedCaptured")).filter(() => false),
      ...transfersOf(item("gatewayAmount")),
      ...transfersOf(item("gatewayCurrency")),
      ...transfersOf(item("duplicate")),
      ...transfersOf(item("noCapture")),
      // The payout's hold was placed and then expired (the Ledger journals expire:<hold>).
      { id: item("holdExpired").holdId, kind: TransferKind.PENDING, debitAccountId: walletA, creditAccountId: clearingAccountId("flutterwave", "NGN"), amountMinor: 1_800n, currency: "NGN", code: 8, metadata: { tenant_id: TENANT }, timeoutSeconds: 1 },
    ]);
    await sim.importRecords([
      recordOf(item("clean")),
      recordOf(item("failedCaptured")),
      recordOf(item("gatewayAmount"), { amountMinor: "1600" }),
      recordOf(item("gatewayCurrency"), { currency: "EUR" }),
      recordOf(item("duplicate")),
      // The same payment captured again through another gateway.
      { ...recordOf(item("duplicate")), gateway: "flutterwave", reference: gatewayReference(item("duplicate").id, "flutterwave") },
      recordOf(item("holdExpired")),
      recordOf(item("unknownFlagged")),
      // A charge Cowrie never asked for.
      { gateway: "stripe", operation: "charge", reference: "someone-elses-order-77", amountMinor: "999", currency: "USD", status: "succeeded" },
    ]);
    // Money into a wallet through a gateway's clearing account that no payment accounts for.
    const orphan = await wallets.fundWallet({ tenantId: TENANT, walletId: walletB, amountMinor: 4_242n, currency: "NGN", idempotencyKey: `orphan-${startMs}`, gateway: "paystack" });
    // Let the hold's one-second timeout pass and the Ledger journal its expiry.
    for (let waited = 0; waited < 100; waited++) {
      const { transfers } = await ledger.lookupTransfers({ ids: [`expire:${item("holdExpired").holdId}`] });
      if (transfers.length === 1) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }

    run = await runWindow(startMs, Date.now() + 1_000);
    findings = await findingsOf(run.id);
    const got = findings.map((finding) => `${TYPE_NAMES[finding.type]} ${finding.subject}`).sort();
    const expected = [
      `COMPLETED_WITHOUT_LEDGER_ENTRY payment/${item("noLedger").id}/ledger`,
      `AMOUNT_MISMATCH payment/${item("ledgerAmount").id}/ledger-amount`,
      `FAILED_BUT_DEBITED payment/${item("failedDebited").id}/ledger`,
      `FAILED_BUT_GATEWAY_CAPTURED payment/${item("failedCaptured").id}/gateway`,
      `AMOUNT_MISMATCH payment/${item("gatewayAmount").id}/gateway-amount`,
      `CURRENCY_MISMATCH payment/${item("gatewayCurrency").id}/gateway-currency`,
      `DUPLICATE_CAPTURE payment/${item("duplicate").id}/capture`,
      `HOLD_EXPIRED_BUT_CAPTURED payment/${item("holdExpired").id}/gateway`,
      `COMPLETED_WITHOUT_GATEWAY_CAPTURE payment/${item("noCapture").id}/gateway`,
      `STUCK_PENDING payment/${item("stuckPending").id}`,
      `STUCK_PROCESSING payment/${item("stuckProcessing").id}`,
      `OUTCOME_UNKNOWN payment/${item("unknownFlagged").id}`,
      `GATEWAY_TRANSACTION_UNKNOWN gateway/stripe/charge/`,
      `LEDGER_TRANSFER_WITHOUT_PAYMENT transfer/${orphan.transferId}`,
    ].sort();
    // The unknown Stripe charge's id is the simulator's: compare up to it.
    assert.deepEqual(got.map((line) => line.replace(/gateway\/stripe\/charge\/.*/, "gateway/stripe/charge/")), expected);
    assert.equal(run.deferred, 1n, "the payment in flight is neither matched nor a finding");
    assert.equal(run.findingsOpened, expected.length);

    // The safe ones settled through the Router's own paths: the completer's for the stuck internal
    // payments, the resolver's (the gateway's status) for the unknown outcome.
    const byType = (type: FindingType) => findings.find((finding) => finding.type === type) as Finding;
    for (const type of [FindingType.STUCK_PENDING, FindingType.STUCK_PROCESSING, FindingType.OUTCOME_UNKNOWN]) {
      const { finding } = await recon.getFinding({ findingId: byType(type).id }, auth);
      assert.equal(finding?.status, FindingStatus.AUTO_RESOLVED, `${TYPE_NAMES[type]}: ${finding?.events.map((event) => `${event.action} ${event.note}`).join("; ")}`);
      assert.deepEqual(finding?.events.map((event) => [event.actor, event.action]), [["reconciliation", "opened"], ["reconciliation", "auto_resolved"]]);
    }
    const [settled] = await sql`select status from router.payments where id = ${item("unknownFlagged").id}`;
    assert.equal(settled?.status, PaymentStatus.SUCCEEDED);
    assert.equal(run.autoResolved, 3);
    const autoResolvable = [FindingType.STUCK_PENDING, FindingType.STUCK_PROCESSING, FindingType.OUTCOME_UNKNOWN];
    for (const finding of findings.filter((finding) => !autoResolvable.includes(finding.type))) {
      assert.equal(finding.status, FindingStatus.OPEN, TYPE_NAMES[finding.type]);
    }
  });

  it("critical findings are written to the outbox as reconciliation.finding.raised, in the finding's transaction", async () => {
    const critical = findings.filter((finding) => finding.severity === 4);
    assert.equal(critical.length, 4);
    const rows = await sql`select subject, event_type, payload from router.outbox where event_type = 'reconciliation.finding.raised'`;
    const raised = rows.map((row) => {
      const envelope = fromBinary(EnvelopeSchema, row.payload as Uint8Array);
      assert.equal(envelope.source, "router");
      assert.equal(envelope.subject, row.subject);
      const data = envelope.data && anyUnpack(envelope.data, ReconciliationFindingRaisedSchema);
      assert.ok(data);
      return data.findingId;
    });
    assert.deepEqual(raised.sort(), critical.map((finding) => finding.id).sort());
  });

  it("a second run over the same window raises nothing new; the payment once in flight is checked when final", async () => {
    await sql`update router.payments set status = ${PaymentStatus.SUCCEEDED}, version = version + 1 where id = ${injected.get("inFlight")?.id as string}`;
    await createTransfers(transfersOf(injected.get("inFlight") as Seeded));
    const again = await runWindow(timestampDate(run.windowFrom as Timestamp).getTime(), timestampDate(run.windowTo as Timestamp).getTime());
    assert.equal(again.findingsOpened, 0);
    assert.equal(again.deferred, 0n);
    const [pending] = await sql`select count(*)::int as n from router.recon_pending`;
    assert.equal(pending?.n, 0);
  });

  it("an operator resolves a finding with a correcting transfer made once, with who, when and why kept", async () => {
    const debited = findings.find((finding) => finding.type === FindingType.FAILED_BUT_DEBITED) as Finding;
    const correction = { debitAccountId: walletB, creditAccountId: walletA, amountMinor: 1_300n, currency: "NGN" };
    const request = { findingId: debited.id, operator: "ada@ops", reason: "payment failed after the transfer; money returned to the payer", correction };

    const unauthenticated = await rejection(recon.resolveFinding(request, { timeoutMs: 5_000 }));
    assert.equal(unauthenticated.code, Code.Unauthenticated);
    const wrongToken = await rejection(recon.resolveFinding(request, { headers: { authorization: "Bearer not-the-operator-token" } }));
    assert.equal(wrongToken.code, Code.Unauthenticated);
    const bad = await rejection(recon.resolveFinding({ ...request, correction: { ...correction, amountMinor: 0n } }, auth));
    assert.equal(bad.code, Code.InvalidArgument);
    assert.match(bad.rawMessage, /^correction\.amount_minor:/);

    const first = await recon.resolveFinding(request, auth);
    assert.equal(first.replayed, false);
    assert.equal(first.finding?.status, FindingStatus.RESOLVED);
    assert.equal(first.finding?.resolvedBy, "ada@ops");
    assert.equal(first.finding?.correctionTransferId, `rcn:${debited.id}`);
    assert.deepEqual(first.finding?.events.map((event) => [event.actor, event.action, event.transferId]), [
      ["reconciliation", "opened", ""],
      ["ada@ops", "resolved", `rcn:${debited.id}`],
    ]);
    const before = (await ledger.lookupAccounts({ ids: [walletA] })).accounts[0]?.creditsPosted;

    const retry = await recon.resolveFinding(request, auth);
    assert.equal(retry.replayed, true);
    assert.equal((await ledger.lookupAccounts({ ids: [walletA] })).accounts[0]?.creditsPosted, before, "a retry moves no money");
    const { transfers } = await ledger.lookupTransfers({ ids: [`rcn:${debited.id}`] });
    assert.equal(transfers[0]?.amountMinor, 1_300n);

    const changed = await rejection(recon.resolveFinding({ ...request, reason: "something else" }, auth));
    assert.equal(changed.code, Code.FailedPrecondition);
    const settled = await rejection(recon.resolveFinding({ findingId: findings.find((finding) => finding.type === FindingType.OUTCOME_UNKNOWN)?.id as string, operator: "ada@ops", reason: "x" }, auth));
    assert.equal(settled.code, Code.FailedPrecondition);
    assert.equal((await rejection(recon.getFinding({ findingId: "rcf_missing" }, auth))).code, Code.NotFound);

    // Without a correction: an accepted explanation.
    const unknown = findings.find((finding) => finding.type === FindingType.GATEWAY_TRANSACTION_UNKNOWN) as Finding;
    const accepted = await recon.resolveFinding({ findingId: unknown.id, operator: "tunde@ops", reason: "a test charge made from the dashboard" }, auth);
    assert.equal(accepted.finding?.correctionTransferId, "");
    const open = await recon.listFindings({ status: FindingStatus.OPEN, pageSize: 100 }, auth);
    assert.ok(!open.findings.some((finding) => finding.id === debited.id || finding.id === unknown.id));
  });

  it("refuses a second run of a window another process is running, and bad windows naming the field", async () => {
    const from = new Date(Date.now() - 60_000);
    const to = new Date();
    assert.ok(await takeLease(mesh.backends.database("router").db, `window:${from.toISOString()}/${to.toISOString()}`, "another-router", 60_000));
    const busy = await rejection(recon.runReconciliation({ from: timestampFromDate(from), to: timestampFromDate(to), operator: "test" }, auth));
    assert.equal(busy.code, Code.Aborted);
    const backwards = await rejection(recon.runReconciliation({ from: timestampFromDate(to), to: timestampFromDate(from), operator: "test" }, auth));
    assert.equal(backwards.code, Code.InvalidArgument);
    assert.match(backwards.rawMessage, /^to:/);
    const noOperator = await rejection(recon.runReconciliation({ from: timestampFromDate(from), to: timestampFromDate(new Date(to.getTime() + 1)) }, auth));
    assert.match(noOperator.rawMessage, /^operator:/);
  });
});
