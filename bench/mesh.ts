// `npm run bench`: the whole mesh under load, internal payments (issue 9, first version).
//
// Every service runs as its own process against the real PostgreSQL, Redis and RabbitMQ, started
// exactly as production starts it (`node --import tsx services/main.ts <service>`, one fresh
// database, free ports, COWRIE_LOG_LEVEL=warn, a rate limit high enough not to cap the run), with
// the gateway simulator as its own process (every gateway answers after a log-normal latency).
// Setup (not measured): a tenant and API key through AdminService, customer and merchant wallets
// through the public WalletsService, every customer funded generously. The load comes from a
// separate process (bench/mesh-load.ts) through the generated Connect clients, HTTP/2, binary,
// against the public Edge with the API key:
//   baseline   one-row insert transactions from 16 concurrent postgres.js clients (the commit
//              ceiling of this machine, measured first, in the same run, as bench/ledger.ts does);
//   closed     `concurrency` workers, each with one call in flight: CreatePayment customer ->
//              merchant with a 1% fee and a fresh Idempotency-Key, plus a share of retries that
//              reuse an earlier key (must come back replayed with the same payment), a share of
//              partial refunds of earlier payments, and shares of gateway pay-ins (to merchants)
//              and payouts (from customers to a bank account) through the simulator, which the
//              Edge accepts and the Router finishes in the background; a warm-up, then the
//              measured window;
//   open       the same mix started on a fixed schedule at 70% of the closed-loop throughput
//              (latency counted from when each call was due), a short warm-up, then a window.
// At the end, once every accepted pay-in and payout has ended (bounded by --drain-timeout): each is
// in router.payments exactly once (one payment per key), none is left unfinished, the simulator
// charged exactly the SUCCEEDED pay-ins and paid out exactly the SUCCEEDED payouts, once each;
// Ledger VerifyJournal has no findings; customers + merchants + the tenant's fee account + the
// gateways' clearing accounts hold exactly what was funded, the clearing accounts exactly the
// SUCCEEDED payouts minus pay-ins, nothing is left pending, and the merchants and the fee account
// hold what the load saw move.
// Reported: payments/s (internal payments SUCCEEDED, not replays: what issue 9's target counts),
// CreatePayment latency p50/p95/p99/max, accepted pay-ins and payouts and how they ended, errors by
// code, replays checked, CPU and peak RSS of every service process (and, for the measured window,
// CPU per call of each service and of its PostgreSQL backends), the ratio to the baseline and
// issue 9's targets: internal payments >= 25% of the baseline commits/s, and p99 <= 50 ms at 70%
// of that rate. Targets missed do not fail the run; a crash, a setup failure, journal findings,
// money not conserved, or a gateway payment lost, doubled, unfinished or unlike the simulator's
// record do (exit code 1). Every process is stopped with SIGTERM, the database dropped and the
// run's queues (a broker namespace of its own) deleted at the end, also on failure or Ctrl-C.
//
// Human summary lines on stdout, then as the LAST line one JSON object. Progress and the
// services' warnings go to stderr.
//
// Options (flag, or environment variable; flags win):
//   --duration N         BENCH_SECONDS           closed-loop window, seconds (20)
//   --warmup N           BENCH_WARMUP_SECONDS    closed-loop warm-up, seconds (3)
//   --concurrency N      BENCH_CONCURRENCY       closed-loop workers (32)
//   --retry-share X      BENCH_RETRY_SHARE       share of calls that retry an earlier key (0.05)
//   --refund-share X     BENCH_REFUND_SHARE      share of calls that refund part of a payment (0.05)
//   --payin-share X      BENCH_PAYIN_SHARE       share of calls that are gateway pay-ins (0.1)
//   --payout-share X     BENCH_PAYOUT_SHARE      share of calls that are gateway payouts (0.05)
//                        (--payin-share 0 --payout-share 0: internal payments only, as before)
//   --gateway-median-ms N BENCH_GATEWAY_MEDIAN_MS simulated gateway latency, median (30)
//   --gateway-p99-ms N   BENCH_GATEWAY_P99_MS    simulated gateway latency, 99th percentile (150)
//   --drain-timeout N    BENCH_DRAIN_TIMEOUT_SECONDS longest wait for the gateway payments to end (90)
//   --open-duration N    BENCH_OPEN_SECONDS      open-loop window, seconds; 0 skips the phase (10)
//   --open-fraction X    BENCH_OPEN_FRACTION     open-loop rate as a fraction of closed-loop (0.7)
//   --baseline-duration N BENCH_BASELINE_SECONDS postgres.js baseline, seconds (5)
//   --customers N        BENCH_CUSTOMERS         customer wallets (200)
//   --merchants N        BENCH_MERCHANTS         merchant wallets (20)
//   --connections N      BENCH_CONNECTIONS       HTTP/2 connections of the load process (1)
//   --timeout-ms N       BENCH_TIMEOUT_MS        deadline of every call (10000)
//   BENCH_CPU_PROF=<dir>  start every service with --cpu-prof into <dir>/<service>/ (one profile per thread),
//                         and write <dir>/windows.json with the measured windows (monotonic µs);
//                         bench/profile-summary.ts reads them. Profiling slows the services.
//   TEST_DATABASE_URL, TEST_REDIS_URL, TEST_AMQP_URL  the servers (defaults: the local ones).
// Defaults take about 50-60 s in all (under 90 s).
import * as path from "node:path";
import { writeFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { WalletKind } from "../gen/cowrie/edge/v1/wallets_pb.js";
import { PaymentKind, PaymentStatus } from "../gen/cowrie/router/v1/router_pb.js";
import { pause } from "../services/runtime/pause.js";
import { TEST_POSTGRES_URL, freshDatabase } from "../services/runtime/testing.js";
import { simulatorControl, simulatorGatewayEnv, type SimulatorControl } from "../services/simulator/control.js";
import { SIMULATED_GATEWAYS } from "../services/simulator/core.js";
import { clearingAccountId, feeAccountId, fundingAccountId } from "../services/wallet/service.js";
import type { ChildMessage, PhaseMessage, PhaseResult, SetupMessage } from "./mesh-load.js";
import { runLimited } from "../services/runtime/limits.js";
import {
  Accounting,
  BASELINE_CLIENTS,
  BenchMesh,
  FINAL_STATUSES,
  LoadProcess,
  MESH_SERVICES,
  ServiceProcess,
  benchOptions,
  commitBaseline,
  countsText,
  cpuBreakdown,
  createWallets,
  journalLine,
  ms,
  postedMinor,
  processCpuSeconds,
  recordsByPayment,
  processMemoryMb,
  rate,
  round,
  statusLabel,
  runGuarded,
} from "./support.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "..");
const NAME = "bench";

// The header of this file is the manual; --help prints the short form.
const option = benchOptions(NAME, "usage: npm run bench -- [--duration 20] [--warmup 3] [--concurrency 32] [--retry-share 0.05]\n" +
  "  [--refund-share 0.05] [--payin-share 0.1] [--payout-share 0.05] [--gateway-median-ms 30]\n" +
  "  [--gateway-p99-ms 150] [--drain-timeout 90] [--open-duration 10] [--open-fraction 0.7] [--baseline-duration 5]\n" +
  "  [--customers 200] [--merchants 20] [--connections 1] [--timeout-ms 10000]\n" +
  "  (or BENCH_* environment variables; BENCH_CPU_PROF=<dir> profiles the services; see bench/mesh.ts)\n");
const SECONDS = option("duration", "BENCH_SECONDS", 20, 1, 600);
const WARMUP_SECONDS = option("warmup", "BENCH_WARMUP_SECONDS", 3, 0, 120);
const CONCURRENCY = Math.floor(option("concurrency", "BENCH_CONCURRENCY", 32, 1, 4096));
const RETRY_SHARE = option("retry-share", "BENCH_RETRY_SHARE", 0.05, 0, 0.5);
const REFUND_SHARE = option("refund-share", "BENCH_REFUND_SHARE", 0.05, 0, 0.5);
const PAYIN_SHARE = option("payin-share", "BENCH_PAYIN_SHARE", 0.1, 0, 0.95);
const PAYOUT_SHARE = option("payout-share", "BENCH_PAYOUT_SHARE", 0.05, 0, 0.95);
const GATEWAY_MEDIAN_MS = option("gateway-median-ms", "BENCH_GATEWAY_MEDIAN_MS", 30, 0, 10_000);
const GATEWAY_P99_MS = option("gateway-p99-ms", "BENCH_GATEWAY_P99_MS", 150, 0, 30_000);
const DRAIN_TIMEOUT_SECONDS = option("drain-timeout", "BENCH_DRAIN_TIMEOUT_SECONDS", 90, 1, 1_800);
const OPEN_SECONDS = option("open-duration", "BENCH_OPEN_SECONDS", 10, 0, 600);
const OPEN_WARMUP_SECONDS = 1;
const OPEN_FRACTION = option("open-fraction", "BENCH_OPEN_FRACTION", 0.7, 0.01, 2);
const BASELINE_SECONDS = option("baseline-duration", "BENCH_BASELINE_SECONDS", 5, 1, 120);
const CUSTOMERS = Math.floor(option("customers", "BENCH_CUSTOMERS", 200, 2, 7000));
const MERCHANTS = Math.floor(option("merchants", "BENCH_MERCHANTS", 20, 1, 990));
const CONNECTIONS = Math.floor(option("connections", "BENCH_CONNECTIONS", 1, 1, 64));
const TIMEOUT_MS = Math.floor(option("timeout-ms", "BENCH_TIMEOUT_MS", 10_000, 100, 60_000));
const CPU_PROF_DIR = process.env.BENCH_CPU_PROF ? path.resolve(process.env.BENCH_CPU_PROF) : undefined;

const CURRENCY = "NGN";
const COUNTRY = "NG";
const DRAIN_POLL_MS = 250;
const FUND_MINOR = 1_000_000_000_000n; // per customer: far more than the run can spend
const SETUP_CONCURRENCY = 16;
const START_TIMEOUT_MS = 60_000;
const STOP_GRACE_MS = 15_000;
/** Open loop: most calls in flight before due calls are shed (counted as errors). */
const OPEN_MAX_IN_FLIGHT = 2048;
/** Issue 9's targets. */
const TARGET_RATIO = 0.25;
const TARGET_P99_MS = 50;

/** Share of the calls that are fresh internal payments: what is left after the other kinds. */
const PAYMENT_SHARE = 1 - RETRY_SHARE - REFUND_SHARE - PAYIN_SHARE - PAYOUT_SHARE;
if (PAYMENT_SHARE <= 0) {
  console.error(`${NAME}: --retry-share + --refund-share + --payin-share + --payout-share must be below 1`);
  process.exit(2);
}
if (GATEWAY_P99_MS < GATEWAY_MEDIAN_MS) {
  console.error(`${NAME}: --gateway-p99-ms must be at least --gateway-median-ms`);
  process.exit(2);
}

const progress = (line: string): void => {
  process.stderr.write(`${NAME}: ${line}\n`);
};

/** The load generator, bench/mesh-load.ts, in its own process. */
type Load = LoadProcess<SetupMessage | PhaseMessage, ChildMessage>;

/** Runs one load phase and samples the CPU accounting at its window's edges. */
async function runPhase(load: Load, accounting: Accounting, message: PhaseMessage) {
  const boundMs = (message.warmupSeconds + message.seconds) * 1000 + TIMEOUT_MS + 30_000;
  const started = load.next("measure-start", message.id, boundMs);
  const ended = load.next("measure-end", message.id, boundMs + TIMEOUT_MS);
  const resulted = load.next("result", message.id, boundMs + TIMEOUT_MS);
  load.send(message);
  await started;
  const startMs = Date.now();
  const first = await accounting.sample();
  await ended;
  const endMs = Date.now();
  const last = await accounting.sample();
  const result = (await resulted) as PhaseResult;
  return { result, usage: accounting.delta(first, last), window: { startUs: first.monotonicUs, endUs: last.monotonicUs }, wall: { startMs, endMs } };
}

const pad = (text: string, width: number): string => text.padEnd(width);

async function main(): Promise<never> {
  const runStartedMs = performance.now();
  let mesh: BenchMesh<"simulator"> | undefined;
  let load: Load | undefined;
  let database: Awaited<ReturnType<typeof freshDatabase>> | undefined;
  let monitor: postgres.Sql | undefined;
  let routerSql: postgres.Sql | undefined;
  // Whatever goes wrong, the processes this run started stop, its database and queues go.
  const watchdogMs = (BASELINE_SECONDS + WARMUP_SECONDS + SECONDS + OPEN_WARMUP_SECONDS + OPEN_SECONDS + DRAIN_TIMEOUT_SECONDS) * 1000 + 4 * TIMEOUT_MS + 240_000;
  return runGuarded(NAME, watchdogMs, async (timedOut) => {
    ServiceProcess.tearingDown = true;
    await load?.stop(5000).catch(() => undefined);
    await mesh?.stop(timedOut);
    await monitor?.end({ timeout: 5 }).catch(() => undefined);
    await routerSql?.end({ timeout: 5 }).catch(() => undefined);
    await database?.drop().catch((error: unknown) => progress(`could not drop the database: ${String(error)}`));
  }, async (cleanup) => {
    database = await freshDatabase("bench_mesh");
    const databaseName = new URL(database.url).pathname.slice(1);
    progress(`database ${databaseName}`);

    // The load process starts now: its own start-up (tsx) overlaps the baseline.
    load = new LoadProcess(process.execPath, ["--import", "tsx", path.join(HERE, "mesh-load.ts")], ROOT);
    const loadReady = load.next("ready", undefined, START_TIMEOUT_MS);

    progress(`baseline: one-row insert transactions, ${BASELINE_CLIENTS} postgres.js clients, ${BASELINE_SECONDS} s`);
    const base = await commitBaseline(database.url, BASELINE_SECONDS);
    const baselineRate = rate(base);
    progress(`baseline: ${baselineRate} commits/s`);

    mesh = await BenchMesh.create({
      root: ROOT,
      databaseUrl: database.url,
      namespacePrefix: "bench-mesh",
      others: ["simulator"],
      extraEnv: (portOf) => simulatorGatewayEnv(`http://127.0.0.1:${portOf.simulator}`),
      progress,
      cpuProfDir: CPU_PROF_DIR,
      startTimeoutMs: START_TIMEOUT_MS,
      stopGraceMs: STOP_GRACE_MS,
    });
    progress(`starting ${MESH_SERVICES.join(", ")} and the gateway simulator (one process each)`);
    const simulator = mesh.spawn("simulator", ["services/simulator/main.ts"]);
    const control = simulatorControl(mesh.url("simulator"));
    const startupSeconds = await mesh.start([simulator.ready(async () => Object.keys(await control.gateways()).length > 0)]);
    progress(`all SERVING in ${startupSeconds.toFixed(1)} s`);
    for (const gateway of SIMULATED_GATEWAYS) {
      await control.configure(gateway, { latencyMs: { median: GATEWAY_MEDIAN_MS, p99: GATEWAY_P99_MS } });
    }

    // Setup through the public API (not measured).
    const tenant = await mesh.tenant();
    progress(`setup: tenant ${tenant.tenantId}, ${CUSTOMERS} customer and ${MERCHANTS} merchant wallets, customers funded`);
    const owners = [
      ...Array.from({ length: CUSTOMERS }, (_, index) => ({ owner: `customer-${index}`, kind: WalletKind.CUSTOMER })),
      ...Array.from({ length: MERCHANTS }, (_, index) => ({ owner: `merchant-${index}`, kind: WalletKind.MERCHANT })),
    ];
    const walletIds = await createWallets(tenant, owners, CURRENCY, SETUP_CONCURRENCY);
    const customers = walletIds.slice(0, CUSTOMERS);
    const merchants = walletIds.slice(CUSTOMERS);
    await runLimited(customers, SETUP_CONCURRENCY, async (walletId) => {
      await tenant.wallets.fundWallet({ walletId, amountMinor: FUND_MINOR, currency: CURRENCY }, { headers: tenant.auth(`setup-fund-${walletId}`), timeoutMs: 10_000 });
    });
    const fundedMinor = FUND_MINOR * BigInt(CUSTOMERS);

    await loadReady;
    const runTag = `bench-${process.pid}-${Date.now().toString(36)}`;
    load.send({
      type: "setup", edgeUrl: mesh.url("edge"), apiKey: tenant.apiKey, currency: CURRENCY, customers, merchants, connections: CONNECTIONS, timeoutMs: TIMEOUT_MS, retryShare: RETRY_SHARE, refundShare: REFUND_SHARE, payInShare: PAYIN_SHARE, payoutShare: PAYOUT_SHARE, country: COUNTRY, runTag,
    });
    await load.next("setup-done", undefined, 10_000);

    monitor = postgres(TEST_POSTGRES_URL, { max: 1, onnotice: () => {}, connection: { application_name: "cowrie-bench-monitor" } });
    const pidLabels = mesh.pidLabels().set(load.pid, "load generator");
    const accounting = new Accounting(monitor, databaseName, () => pidLabels);

    progress(`closed loop: ${CONCURRENCY} workers, ${WARMUP_SECONDS} s warm-up + ${SECONDS} s (retries ${RETRY_SHARE * 100}%, refunds ${REFUND_SHARE * 100}%)`);
    const closed = await runPhase(load, accounting, {
      type: "run", id: "closed", mode: "closed", warmupSeconds: WARMUP_SECONDS, seconds: SECONDS, concurrency: CONCURRENCY, ratePerSecond: 0, maxInFlight: 0,
    });
    const paymentsPerSecond = closed.result.payments / closed.result.windowSeconds;
    const callsPerSecond = closed.result.operations / closed.result.windowSeconds;
    progress(`closed loop: ${paymentsPerSecond.toFixed(0)} payments/s, p99 ${ms(closed.result.payment.p99Ms)} ms`);

    // Open loop at a fraction of the measured payment rate; the same mix rides on top, so the
    // calls per second are that rate divided by the share of fresh internal payments.
    const openPaymentRate = paymentsPerSecond * OPEN_FRACTION;
    const openCallRate = openPaymentRate / PAYMENT_SHARE;
    let open: Awaited<ReturnType<typeof runPhase>> | undefined;
    if (OPEN_SECONDS > 0 && openCallRate > 0) {
      progress(`open loop: ${openPaymentRate.toFixed(0)} payments/s (${openCallRate.toFixed(0)} calls/s), ${OPEN_WARMUP_SECONDS} s warm-up + ${OPEN_SECONDS} s`);
      open = await runPhase(load, accounting, {
        type: "run", id: "open", mode: "open", warmupSeconds: OPEN_WARMUP_SECONDS, seconds: OPEN_SECONDS, concurrency: 0, ratePerSecond: openCallRate, maxInFlight: OPEN_MAX_IN_FLIGHT,
      });
      progress(`open loop: p50 ${ms(open.result.payment.p50Ms)} ms, p99 ${ms(open.result.payment.p99Ms)} ms`);
    }
    if (CPU_PROF_DIR) {
      writeFileSync(path.join(CPU_PROF_DIR, "windows.json"), JSON.stringify({ closed: closed.window, ...(open ? { open: open.window } : {}), payments: closed.result.payments, calls: closed.result.operations }, null, 2));
    }

    // The pay-ins and payouts accepted during the load end in the background: wait for them all.
    const last = (open ?? closed).result;
    routerSql = postgres(database.url, { max: 1, onnotice: () => {}, connection: { application_name: "cowrie-bench-monitor", statement_timeout: 5_000 } });
    progress(`waiting for ${last.accepted.payIns.length} pay-ins and ${last.accepted.payouts.length} payouts to end (at most ${DRAIN_TIMEOUT_SECONDS} s)`);
    const drainSeconds = await gatewayPaymentsEnded(routerSql, tenant.tenantId, DRAIN_TIMEOUT_SECONDS * 1000);
    const gateway = await checkGatewayPayments(routerSql, control, tenant.tenantId, last.accepted);
    const riskFallbacks = await riskFallbacksOf(routerSql, tenant.tenantId, closed.wall);
    const openRiskFallbacks = open ? await riskFallbacksOf(routerSql, tenant.tenantId, open.wall) : undefined;

    // Conservation: the journal verifies, and the wallets, the fee account and the gateways'
    // clearing accounts hold what was funded.
    progress("verifying the journal and the balances");
    const feeAccount = feeAccountId(tenant.tenantId, CURRENCY);
    const fundingAccount = fundingAccountId(CURRENCY);
    const clearingIds = SIMULATED_GATEWAYS.map((name) => clearingAccountId(name, CURRENCY));
    const ids = [...customers, ...merchants, feeAccount, fundingAccount, ...clearingIds];
    const { verify, accounts } = await mesh.auditLedger(ids);
    const optional = new Set([feeAccount, ...clearingIds]);
    const missing = ids.filter((id) => !optional.has(id) && !accounts.has(id));
    const balance = (id: string): bigint => postedMinor(accounts.get(id));
    const pendingTotal = ids.reduce((sum, id) => sum + (accounts.get(id)?.debitsPending ?? 0n) + (accounts.get(id)?.creditsPending ?? 0n), 0n);
    const customersMinor = customers.reduce((sum, id) => sum + balance(id), 0n);
    const merchantsMinor = merchants.reduce((sum, id) => sum + balance(id), 0n);
    const feesMinor = balance(feeAccount);
    // Credits minus debits: payouts paid into clearing, pay-ins collected out of it.
    const clearingMinor = clearingIds.reduce((sum, id) => sum + balance(id), 0n);
    const sumMinor = customersMinor + merchantsMinor + feesMinor + clearingMinor;
    const fundingOut = -balance(fundingAccount);
    const clearingOk = clearingMinor === gateway.payouts.succeededMinor - gateway.payIns.succeededMinor;
    const conserved = missing.length === 0 && sumMinor === fundedMinor && fundingOut === fundedMinor && pendingTotal === 0n && clearingOk;
    // What the load process saw move (and the pay-ins that succeeded) must be exactly what the
    // Ledger holds, when no outcome was unknown.
    const seen = last.money;
    const clientViewOk = seen.unknownOutcomes > 0
      ? null
      : feesMinor === BigInt(seen.feesMinor) && merchantsMinor === BigInt(seen.toMerchantsMinor) - BigInt(seen.refundedMinor) + gateway.payIns.succeededMinor;

    // Per-process figures, read before the processes stop.
    const perService = Object.fromEntries([...mesh.services].map(([name, service]) =>
      [name, { cpu_s: round(processCpuSeconds(service.pid) ?? NaN, 2), peak_rss_mb: round(processMemoryMb(service.pid, "VmHWM") ?? NaN, 1) }],
    )) as Record<(typeof MESH_SERVICES)[number], { cpu_s: number; peak_rss_mb: number }>;
    const loadPeakMb = round(processMemoryMb(load.pid, "VmHWM") ?? NaN, 1);

    progress("stopping the services (SIGTERM) and dropping the database");
    await cleanup();

    // -------------------------------------------------------------------------------------------
    // Report

    const c = closed.result;
    const ratio = baselineRate > 0 ? paymentsPerSecond / baselineRate : 0;
    const throughputMet = ratio >= TARGET_RATIO;
    // p99 of the payments that succeeded; errors in the open loop are reported next to it.
    const latencyMet = open ? open.result.payment.p99Ms <= TARGET_P99_MS : null;
    const errors: Record<string, number> = { ...c.errors };
    const openErrors = open?.result.errors ?? {};
    const callsInWindow = Math.max(1, c.operations);
    const { rows: usageRows, otherCpu } = cpuBreakdown(closed.usage);
    const windowCpu = Object.fromEntries(usageRows.map(([label, cpu]) => [label, {
      cpu_s: round(cpu, 2),
      pct_of_core: round((cpu / closed.usage.seconds) * 100, 1),
      cpu_ms_per_call: round((cpu * 1000) / callsInWindow, 3),
    }]));

    const lines = [
      "",
      `mesh bench: internal payments through the public Edge; ${CONCURRENCY} workers, ${SECONDS} s after ${WARMUP_SECONDS} s warm-up; ` +
        `retries ${RETRY_SHARE * 100}%, refunds ${REFUND_SHARE * 100}%, gateway pay-ins ${PAYIN_SHARE * 100}% and payouts ${PAYOUT_SHARE * 100}% ` +
        `(gateways median ${GATEWAY_MEDIAN_MS} ms, p99 ${GATEWAY_P99_MS} ms); ${CUSTOMERS} customers -> ${MERCHANTS} merchants; ${CONNECTIONS} HTTP/2 connection(s)`,
      `baseline (postgres.js one-row inserts, ${BASELINE_CLIENTS} clients)  ${String(baselineRate).padStart(7)} commits/s`,
      `closed loop                                        ${paymentsPerSecond.toFixed(0).padStart(7)} payments/s  (${callsPerSecond.toFixed(0)} calls/s incl. retries, refunds and gateway payments)`,
      `  CreatePayment latency  p50 ${ms(c.payment.p50Ms)}  p95 ${ms(c.payment.p95Ms)}  p99 ${ms(c.payment.p99Ms)}  max ${ms(c.payment.maxMs)} ms  (${c.payment.count} payments)`,
      `  retries  ${c.replaysChecked} replays checked (same payment id, replayed=true), p50 ${ms(c.retry.p50Ms)} p99 ${ms(c.retry.p99Ms)} ms`,
      `  refunds  ${c.refunds} partial refunds SUCCEEDED, p50 ${ms(c.refund.p50Ms)} p99 ${ms(c.refund.p99Ms)} ms`,
      `  gateway  ${c.payIns} pay-ins accepted, p50 ${ms(c.payIn.p50Ms)} p99 ${ms(c.payIn.p99Ms)} ms; ${c.payouts} payouts accepted, p50 ${ms(c.payout.p50Ms)} p99 ${ms(c.payout.p99Ms)} ms`,
      `  errors   ${countsText(errors)}`,
      ...c.firstErrors.map((line) => `    e.g. ${line}`),
      open
        ? `open loop at ${(OPEN_FRACTION * 100).toFixed(0)}%                                ${openPaymentRate.toFixed(0).padStart(7)} payments/s offered (${openCallRate.toFixed(0)} calls/s), ${open.result.payments} payments in ${open.result.windowSeconds.toFixed(1)} s`
        : "open loop   skipped",
      ...(open
        ? [
          `  CreatePayment latency  p50 ${ms(open.result.payment.p50Ms)}  p95 ${ms(open.result.payment.p95Ms)}  p99 ${ms(open.result.payment.p99Ms)}  max ${ms(open.result.payment.maxMs)} ms (from when due), most in flight ${open.result.maxInFlightSeen}`,
          `  errors   ${countsText(openErrors)}`,
          ...open.result.firstErrors.map((line) => `    e.g. ${line}`),
        ]
        : []),
      `issue 9 targets: payments/s >= ${TARGET_RATIO * 100}% of baseline: ${(ratio * 100).toFixed(1)}% ${throughputMet ? "MET" : "NOT MET"}; ` +
        `p99 <= ${TARGET_P99_MS} ms at ${(OPEN_FRACTION * 100).toFixed(0)}% load: ${open ? `${ms(open.result.payment.p99Ms)} ms ${latencyMet ? "MET" : "NOT MET"}` : "not measured"}`,
      `CPU in the closed-loop window (${closed.usage.seconds.toFixed(1)} s; 2 cores = 200%), per call = per completed call of any kind:`,
      ...usageRows.map(([label, cpu]) => `  ${pad(label, 34)} ${((cpu / closed.usage.seconds) * 100).toFixed(0).padStart(4)}%  ${((cpu * 1000) / callsInWindow).toFixed(2).padStart(7)} ms/call`),
      `  ${pad("machine, everything else", 34)} ${otherCpu === undefined ? " n/a" : `${((otherCpu / closed.usage.seconds) * 100).toFixed(0).padStart(4)}%`}${otherCpu !== undefined && otherCpu / closed.usage.seconds > 0.15 ? "  WARNING: something else was busy; figures disturbed" : ""}`,
      `  database transactions ≈ ${(closed.usage.xacts / callsInWindow).toFixed(1)} per call (pg_stat_database, approximate)`,
      `processes (whole run): ${MESH_SERVICES.map((name) => `${name} ${perService[name].cpu_s} s CPU / ${perService[name].peak_rss_mb} MB peak RSS`).join("; ")}; ` +
        `load generator ${loadPeakMb} MB; services SERVING ${startupSeconds.toFixed(1)} s after spawn`,
      `gateway payments (whole run): pay-ins ${gateway.payIns.accepted} accepted, ended ${countsText(gateway.payIns.ended)}; ` +
        `payouts ${gateway.payouts.accepted} accepted, ended ${countsText(gateway.payouts.ended)}; ` +
        `${drainSeconds === null ? `NOT all ended within ${DRAIN_TIMEOUT_SECONDS} s` : `all ended ${drainSeconds.toFixed(1)} s after the load`}`,
      `  lost ${gateway.lost}, doubled ${gateway.doubled}, unfinished ${gateway.unfinished}, gateway records not matching their payment ${gateway.mismatched}; ` +
        `clearing accounts ${clearingMinor} = payouts ${gateway.payouts.succeededMinor} - pay-ins ${gateway.payIns.succeededMinor}: ${clearingOk ? "yes" : "NO"}`,
      `risk fallbacks (payments the Router decided by COWRIE_RISK_WHEN_UNAVAILABLE, Risk not answering within COWRIE_RISK_TIMEOUT_MS or its breaker open): ` +
        `closed loop ${riskFallbacks.unavailable} of ${riskFallbacks.payments}` +
        `${openRiskFallbacks ? `, open loop ${openRiskFallbacks.unavailable} of ${openRiskFallbacks.payments}` : ""}` +
        `${riskFallbacks.unavailable + (openRiskFallbacks?.unavailable ?? 0) > 0 ? "; payments that skip Risk cost less, so the rates above are flattered" : ""}`,
      journalLine(verify),
      `money: customers ${customersMinor} + merchants ${merchantsMinor} + fees ${feesMinor} + clearing ${clearingMinor} = ${sumMinor}; funded ${fundedMinor}; ` +
        `${conserved ? "conserved" : "NOT CONSERVED"}${missing.length > 0 ? ` (${missing.length} accounts missing)` : ""}${pendingTotal !== 0n ? ` (pending ${pendingTotal})` : ""}; ` +
        `matches what the load saw: ${clientViewOk === null ? `unknown (${seen.unknownOutcomes} calls with unknown outcome)` : clientViewOk ? "yes" : "NO"}`,
      `run took ${((performance.now() - runStartedMs) / 1000).toFixed(0)} s`,
      "",
    ];
    process.stdout.write(lines.join("\n"));

    const figures = {
      bench: "mesh",
      seconds: SECONDS,
      warmup_seconds: WARMUP_SECONDS,
      concurrency: CONCURRENCY,
      retry_share: RETRY_SHARE,
      refund_share: REFUND_SHARE,
      pay_in_share: PAYIN_SHARE,
      payout_share: PAYOUT_SHARE,
      customers: CUSTOMERS,
      merchants: MERCHANTS,
      connections: CONNECTIONS,
      payments_per_s: round(paymentsPerSecond, 1),
      calls_per_s: round(callsPerSecond, 1),
      p50_ms: round(c.payment.p50Ms),
      p95_ms: round(c.payment.p95Ms),
      p99_ms: round(c.payment.p99Ms),
      max_ms: round(c.payment.maxMs),
      payments: c.payments,
      errors,
      replays_checked: c.replaysChecked,
      replay_p99_ms: round(c.retry.p99Ms),
      refunds: c.refunds,
      refund_p99_ms: round(c.refund.p99Ms),
      pay_ins_accepted: c.payIns,
      pay_in_p99_ms: round(c.payIn.p99Ms),
      payouts_accepted: c.payouts,
      payout_p99_ms: round(c.payout.p99Ms),
      baseline_commits_per_s: baselineRate,
      ratio_to_baseline: round(ratio, 3),
      open_loop_rate_per_s: round(openPaymentRate, 1),
      open_loop_calls_per_s: round(openCallRate, 1),
      open_loop_payments: open?.result.payments ?? null,
      open_loop_p50_ms: open ? round(open.result.payment.p50Ms) : null,
      open_loop_p95_ms: open ? round(open.result.payment.p95Ms) : null,
      open_loop_p99_ms: open ? round(open.result.payment.p99Ms) : null,
      open_loop_max_ms: open ? round(open.result.payment.maxMs) : null,
      open_loop_errors: openErrors,
      targets: {
        ratio_to_baseline_min: TARGET_RATIO,
        throughput_met: throughputMet,
        open_loop_p99_max_ms: TARGET_P99_MS,
        latency_met: latencyMet,
      },
      cpu_s: Object.fromEntries(MESH_SERVICES.map((name) => [name, perService[name].cpu_s])),
      peak_rss_mb: Object.fromEntries(MESH_SERVICES.map((name) => [name, perService[name].peak_rss_mb])),
      window_cpu: windowCpu,
      other_cpu_pct: otherCpu === undefined ? null : round((otherCpu / closed.usage.seconds) * 100, 1),
      db_transactions_per_call: round(closed.usage.xacts / callsInWindow, 2),
      risk_fallbacks: { closed: riskFallbacks, open: openRiskFallbacks ?? null },
      journal_findings: verify.findings.length,
      transfers_verified: Number(verify.transfersChecked),
      conservation: {
        funded_minor: String(fundedMinor),
        customers_minor: String(customersMinor),
        merchants_minor: String(merchantsMinor),
        fees_minor: String(feesMinor),
        clearing_minor: String(clearingMinor),
        ok: conserved,
        matches_load_view: clientViewOk,
      },
      gateway: {
        gateway_latency_ms: { median: GATEWAY_MEDIAN_MS, p99: GATEWAY_P99_MS },
        pay_ins: { accepted: gateway.payIns.accepted, ended: gateway.payIns.ended, succeeded_minor: String(gateway.payIns.succeededMinor) },
        payouts: { accepted: gateway.payouts.accepted, ended: gateway.payouts.ended, succeeded_minor: String(gateway.payouts.succeededMinor) },
        ended_after_s: drainSeconds === null ? null : round(drainSeconds, 1),
        lost: gateway.lost,
        doubled: gateway.doubled,
        unfinished: gateway.unfinished,
        mismatched: gateway.mismatched,
      },
      startup_s: round(startupSeconds, 1),
      run_s: round((performance.now() - runStartedMs) / 1000, 1),
    };
    const gatewayOk = drainSeconds !== null && gateway.lost + gateway.doubled + gateway.unfinished + gateway.mismatched === 0;
    if (verify.findings.length > 0 || !conserved || clientViewOk === false || !gatewayOk) process.exitCode = 1;
    process.stdout.write(`${JSON.stringify(figures)}\n`);
  });
}

/** Waits until none of the tenant's pay-ins and payouts is left unfinished; the seconds it took, or null past `timeoutMs`. */
async function gatewayPaymentsEnded(sql: postgres.Sql, tenantId: string, timeoutMs: number): Promise<number | null> {
  const startedMs = performance.now();
  for (;;) {
    const [row] = await sql<{ open: number }[]>`
      select count(*)::int as open from router.payments
      where tenant_id = ${tenantId} and kind = any(${GATEWAY_KINDS}) and status <> all(${FINAL_STATUSES})`;
    if (row?.open === 0) return (performance.now() - startedMs) / 1000;
    if (performance.now() - startedMs > timeoutMs) return null;
    await pause(DRAIN_POLL_MS);
  }
}

const GATEWAY_KINDS = [PaymentKind.PAY_IN, PaymentKind.PAYOUT];

/**
 * The tenant's payments created in a phase's window, and how many of them the Router decided
 * without Risk's verdict (no answer within COWRIE_RISK_TIMEOUT_MS, or its breaker to Risk open):
 * they cost less, so a rate is only comparable with how many skipped Risk.
 */
async function riskFallbacksOf(sql: postgres.Sql, tenantId: string, wall: { startMs: number; endMs: number }): Promise<{ payments: number; unavailable: number }> {
  const [row] = await sql<{ payments: number; unavailable: number }[]>`
    select count(*)::int as payments, (count(*) filter (where risk_reasons ? 'RISK_UNAVAILABLE'))::int as unavailable
    from router.payments
    where tenant_id = ${tenantId} and created_at >= ${new Date(wall.startMs)} and created_at < ${new Date(wall.endMs)}`;
  return { payments: row?.payments ?? 0, unavailable: row?.unavailable ?? 0 };
}

interface GatewayKindCheck {
  /** Accepted by the Edge during the load (warm-ups included). */
  accepted: number;
  /** The tenant's payments of the kind by how they ended ("FAILED:gateway_declined"...). */
  ended: Record<string, number>;
  succeededMinor: bigint;
}

interface GatewayCheck {
  payIns: GatewayKindCheck;
  payouts: GatewayKindCheck;
  /** Accepted, but not in router.payments. */
  lost: number;
  /** More than one payment for one key, more than one succeeded gateway record for one payment, or a succeeded record of no payment. */
  doubled: number;
  /** Not SUCCEEDED, FAILED or CANCELED. */
  unfinished: number;
  /** A SUCCEEDED payment without exactly one succeeded gateway record of its amount, or another with one. */
  mismatched: number;
}

/** How the tenant's pay-ins and payouts ended, against what the load saw accepted and what the simulator did. */
async function checkGatewayPayments(sql: postgres.Sql, control: SimulatorControl, tenantId: string, accepted: PhaseResult["accepted"]): Promise<GatewayCheck> {
  const rows = await sql<{ id: string; kind: number; status: number; amount_minor: string; failure_code: string; reference: string }[]>`
    select id, kind, status, amount_minor::text, failure_code, reference from router.payments
    where tenant_id = ${tenantId} and kind = any(${GATEWAY_KINDS})`;
  const known = new Set(rows.map((row) => row.id));
  const check: GatewayCheck = {
    payIns: { accepted: accepted.payIns.length, ended: {}, succeededMinor: 0n },
    payouts: { accepted: accepted.payouts.length, ended: {}, succeededMinor: 0n },
    lost: [...accepted.payIns, ...accepted.payouts].filter((id) => !known.has(id)).length,
    // The load sends each key as the payment's reference too.
    doubled: rows.length - new Set(rows.map((row) => row.reference)).size,
    unfinished: rows.filter((row) => !FINAL_STATUSES.includes(row.status)).length,
    mismatched: 0,
  };
  for (const [kind, operation, into] of [[PaymentKind.PAY_IN, "charge", check.payIns], [PaymentKind.PAYOUT, "payout", check.payouts]] as const) {
    const ofKind = rows.filter((row) => row.kind === kind);
    const records = recordsByPayment(await control.records({ operation }), ofKind.map((row) => row.id));
    check.doubled += records.orphans;
    for (const row of ofKind) {
      const label = statusLabel(row.status, row.failure_code);
      into.ended[label] = (into.ended[label] ?? 0) + 1;
      const succeeded = (records.byPayment.get(row.id) ?? []).filter((record) => record.status === "succeeded");
      if (succeeded.length > 1) check.doubled++;
      if (row.status === PaymentStatus.SUCCEEDED) {
        into.succeededMinor += BigInt(row.amount_minor);
        if (succeeded.length !== 1 || succeeded[0]?.amountMinor !== row.amount_minor) check.mismatched++;
      } else if (succeeded.length > 0) {
        check.mismatched++;
      }
    }
  }
  return check;
}

await main();
