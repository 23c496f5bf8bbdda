// `npm run bench:recon`: how long one reconciliation run over 100,000 payments takes, against a
// baseline measured in the same run on the same rows: reading them through postgres.js (a
// count, and a full scan of the window's rows in id order in the engine's batch size).
//
// The Ledger, Wallet and Router run in this process on the real PostgreSQL, Redis and RabbitMQ,
// with the gateway simulator. The payments (half Paystack pay-ins in NGN, a fifth Stripe pay-ins
// in USD, 15% internal, 15% Flutterwave payouts with their holds) are seeded directly: rows
// inserted, their Ledger transfers created through the Ledger's RPC in batches of 8,000, their
// gateway records imported through the simulator's /_sim API, all with the ids the Router and
// Wallet would have used. The run is the real engine through RunReconciliation.
//
// Prints a human summary, then as the last line one JSON object with the figures.
// BENCH_PAYMENTS (default 100000) sets the volume; TEST_DATABASE_URL the server.
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import postgres from "postgres";
import { AccountCode, LedgerService, TransferKind, type Transfer } from "../gen/cowrie/ledger/v1/ledger_pb.js";
import { ReconciliationService, type ReconciliationRun } from "../gen/cowrie/router/v1/reconciliation_pb.js";
import { PaymentKind, PaymentStatus } from "../gen/cowrie/router/v1/router_pb.js";
import { WalletKind, WalletService } from "../gen/cowrie/wallet/v1/wallet_pb.js";
import { startMesh } from "../services/mesh.js";
import { gatewayReference } from "../services/router/gateway-flow.js";
import { paymentIdFloor } from "../services/router/reconciliation/store.js";
import { meshTopology } from "../services/mesh.js";
import { newPaymentId } from "../services/router/store.js";
import { capturingLogger, deleteBrokerTopology, freshDatabase, meshEnvironment, TEST_AMQP_URL, TEST_REDIS_URL, testConfig } from "../services/runtime/testing.js";
import { simulatorControl, simulatorGatewayEnv, type ImportRecord } from "../services/simulator/control.js";
import { startSimulator } from "../services/simulator/simulator.js";
import { captureIdFor, clearingAccountId, holdIdFor, transferIdFor } from "../services/wallet/service.js";
import { round } from "./support.js";

const PAYMENTS = Number(process.env.BENCH_PAYMENTS ?? 100_000);
const TENANT = "bench-recon";
const TOKEN = "bench-recon-operator-token-0123456789";
const BATCH_SIZE = 4_000;
type TransferInit = Omit<Partial<Transfer>, "$typeName">;

async function main(): Promise<void> {
  const database = await freshDatabase("bench_recon");
  const simulator = await startSimulator({ port: 0, settings: Object.fromEntries(["paystack", "flutterwave", "stripe"].map((gateway) => [gateway, { latencyMs: { median: 0, p99: 0 } }])) });
  const config = testConfig(await meshEnvironment({
    DATABASE_URL: database.url,
    AMQP_URL: TEST_AMQP_URL,
    REDIS_URL: TEST_REDIS_URL,
    ...simulatorGatewayEnv(simulator.url),
    COWRIE_OPERATOR_TOKEN: TOKEN,
    COWRIE_RECON_INTERVAL_MS: "0",
    COWRIE_COMPLETER_INTERVAL_MS: "600000",
    COWRIE_RECON_BATCH_SIZE: String(BATCH_SIZE),
    COWRIE_SHUTDOWN_GRACE_MS: "500",
  }));
  const mesh = await startMesh(config, ["ledger", "wallet", "router"], capturingLogger().log);
  const sql = postgres(database.url, { max: 4, onnotice: () => {} });
  try {
    const transport = (port: number) => createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "2", useBinaryFormat: true });
    const recon = createClient(ReconciliationService, transport(config.routerPort));
    const ledger = createClient(LedgerService, transport(config.ledgerPort));
    const wallets = createClient(WalletService, transport(config.walletPort));
    const auth = { headers: { authorization: `Bearer ${TOKEN}` }, timeoutMs: 30_000 };
    const sim = simulatorControl(simulator.url);

    const open = async (owner: string, currency: string) => (await wallets.createWallet({ tenantId: TENANT, ownerId: owner, currency, kind: WalletKind.CUSTOMER })).wallet?.id as string;
    const walletA = await open("payer", "NGN");
    const walletB = await open("payee", "NGN");
    const walletU = await open("payee-usd", "USD");
    await wallets.fundWallet({ tenantId: TENANT, walletId: walletA, amountMinor: 1_000_000_000_000n, currency: "NGN", idempotencyKey: "fund" });
    await ledger.createAccounts({
      accounts: [["paystack", "NGN"], ["flutterwave", "NGN"], ["stripe", "USD"]].map(([gateway, currency]) => ({
        id: clearingAccountId(gateway as string, currency as string), currency, code: AccountCode.GATEWAY_CLEARING, ownerRef: `gateway:${gateway}`,
      })),
    });

    process.stdout.write(`seeding ${PAYMENTS} payments with their Ledger transfers and gateway records\n`);
    const seedStartedMs = Date.now();
    const startMs = Date.now() - PAYMENTS - 60_000;
    const rows: Record<string, unknown>[] = [];
    const transfers: TransferInit[] = [];
    const records: ImportRecord[] = [];
    const metadata = { tenant_id: TENANT };
    for (let index = 0; index < PAYMENTS; index++) {
      const id = newPaymentId(startMs + index);
      const amountMinor = BigInt(1_000 + (index % 97) * 10);
      const slot = index % 20;
      const kind = slot < 14 ? PaymentKind.PAY_IN : slot < 17 ? PaymentKind.INTERNAL : PaymentKind.PAYOUT;
      const gateway = slot < 10 ? "paystack" : slot < 14 ? "stripe" : slot < 17 ? "" : "flutterwave";
      const currency = gateway === "stripe" ? "USD" : "NGN";
      const holdId = kind === PaymentKind.PAYOUT ? holdIdFor(TENANT, `router:${id}:hold:${gateway}`) : "";
      const mainId = transferIdFor(TENANT, `router:${id}`);
      const at = new Date(startMs + index);
      rows.push({
        id, tenant_id: TENANT, idempotency_key: id, fingerprint: "seeded", request: sql.json({ operation: "CreatePayment" }), kind, status: PaymentStatus.SUCCEEDED,
        amount_minor: String(amountMinor), currency,
        source_wallet_id: kind === PaymentKind.PAY_IN ? "" : walletA,
        destination_wallet_id: kind === PaymentKind.PAYOUT ? "" : currency === "USD" ? walletU : walletB,
        instrument: kind === PaymentKind.INTERNAL ? null : sql.json({ country: "NG", paymentMethod: "AUTH_good", customerEmail: "p@example.com" }),
        gateway, hold_id: holdId, transfer_id: holdId ? captureIdFor(holdId) : mainId, created_at: at, updated_at: at,
      });
      if (kind === PaymentKind.PAYOUT) {
        transfers.push(
          { id: holdId, kind: TransferKind.PENDING, debitAccountId: walletA, creditAccountId: clearingAccountId(gateway, currency), amountMinor, currency, code: 8, metadata },
          { id: captureIdFor(holdId), kind: TransferKind.POST_PENDING, pendingId: holdId, amountMinor, code: 8, metadata },
        );
      } else if (kind === PaymentKind.PAY_IN) {
        transfers.push({ id: mainId, kind: TransferKind.POSTED, debitAccountId: clearingAccountId(gateway, currency), creditAccountId: currency === "USD" ? walletU : walletB, amountMinor, currency, code: 7, metadata });
      } else {
        transfers.push({ id: mainId, kind: TransferKind.POSTED, debitAccountId: walletA, creditAccountId: walletB, amountMinor, currency, code: 3, metadata });
      }
      if (gateway) records.push({ gateway, operation: kind === PaymentKind.PAY_IN ? "charge" : "payout", reference: gatewayReference(id, gateway), amountMinor: String(amountMinor), currency, status: "succeeded" });
    }
    for (let start = 0; start < rows.length; start += 2_000) await sql`insert into router.payments ${sql(rows.slice(start, start + 2_000))}`;
    for (let start = 0; start < transfers.length; start += 8_000) {
      const { results } = await ledger.createTransfers({ transfers: transfers.slice(start, start + 8_000) }, { timeoutMs: 120_000 });
      const refused = results.filter((result) => result.result !== 1).length;
      if (refused > 0) throw new Error(`${refused} seeded transfers refused`);
    }
    await sim.importRecords(records);
    const seedSeconds = (Date.now() - seedStartedMs) / 1000;
    const windowFrom = new Date(startMs);
    const windowTo = new Date(Date.now() + 1_000);

    // Baseline: the same rows read through postgres.js, with nothing compared.
    const lower = paymentIdFloor(windowFrom.getTime());
    const upper = paymentIdFloor(windowTo.getTime());
    let startedMs = performance.now();
    const [counted] = await sql`select count(*)::int as n from router.payments where id >= ${lower} and id < ${upper}`;
    const countMs = performance.now() - startedMs;
    startedMs = performance.now();
    let scanned = 0;
    for (let after = ""; ;) {
      const batch = after === ""
        ? await sql`select * from router.payments where id >= ${lower} and id < ${upper} order by id limit ${BATCH_SIZE}`
        : await sql`select * from router.payments where id > ${after} and id < ${upper} order by id limit ${BATCH_SIZE}`;
      scanned += batch.length;
      if (batch.length < BATCH_SIZE) break;
      after = batch.at(-1)?.id as string;
    }
    const scanMs = performance.now() - startedMs;

    process.stdout.write(`reconciling ${PAYMENTS} payments\n`);
    startedMs = performance.now();
    let { run } = await recon.runReconciliation({ from: timestampFromDate(windowFrom), to: timestampFromDate(windowTo), operator: "bench" }, auth);
    while (run?.status === "running") {
      await new Promise((resolve) => setTimeout(resolve, 200));
      run = (await recon.getReconciliationRun({ runId: run.id }, auth)).run;
    }
    const wallMs = performance.now() - startedMs;
    const result = run as ReconciliationRun;
    if (result.status !== "completed") throw new Error(`run ${result.id} ${result.status}: ${result.error}`);

    const figures = {
      bench: "recon",
      payments: PAYMENTS,
      ledger_transfers: transfers.length,
      gateway_records: records.length,
      seed_seconds: round(seedSeconds),
      run_ms: result.durationMs,
      run_wall_ms: round(wallMs),
      payments_per_s: Math.round(PAYMENTS / (result.durationMs / 1000)),
      checked: Number(result.checked),
      matched: Number(result.matched),
      match_rate: result.matchRatePpm / 1_000_000,
      findings: result.findingsOpened,
      baseline_count_ms: round(countMs),
      baseline_scan_ms: round(scanMs),
      baseline_rows: scanned,
      ratios: { run_vs_scan: round(result.durationMs / scanMs), run_vs_count: round(result.durationMs / countMs) },
    };
    if (counted?.n !== PAYMENTS || scanned !== PAYMENTS) throw new Error(`baseline read ${counted?.n} / ${scanned} rows, not ${PAYMENTS}`);
    process.stdout.write(
      [
        "",
        `seeded ${PAYMENTS} payments, ${transfers.length} Ledger transfers, ${records.length} gateway records in ${figures.seed_seconds} s`,
        `baseline: count(*) of the window ${figures.baseline_count_ms} ms; scan of its rows in batches of ${BATCH_SIZE} ${figures.baseline_scan_ms} ms`,
        `reconciliation run ${result.id}: ${figures.run_ms} ms (${figures.payments_per_s} payments/s, ${figures.ratios.run_vs_scan}× the scan)`,
        `  checked ${figures.checked} (payments ${result.paymentsChecked}, gateway ${result.gatewayTransactionsChecked}, ledger ${result.ledgerTransfersChecked}), matched ${figures.matched}, match rate ${figures.match_rate}, findings ${figures.findings}`,
        "",
      ].join("\n"),
    );
    process.stdout.write(`${JSON.stringify(figures)}\n`);
  } finally {
    await sql.end();
    await mesh.close();
    await simulator.close();
    await database.drop();
    await deleteBrokerTopology(meshTopology(config.brokerNamespace));
  }
}

await main();
