// `npm run bench:spike`: a flash sale of gateway pay-ins (issue 9, spike mode). Ten times the
// rate the mesh sustains, for ten seconds: the Edge must keep accepting (answers within their
// deadlines, no errors), the backlog must drain afterwards, and nothing may be lost or doubled.
//
// The mesh: ledger, wallet, risk, router and edge, each its own process started as production
// starts it (`node --import tsx services/main.ts <service>`), plus the gateway simulator as its own
// process (`services/simulator/main.ts`), against the real PostgreSQL (a fresh database), Redis
// and RabbitMQ (a broker namespace of this run's own, so no other Router takes its work), on free
// ports, with warnings only and an Edge rate limit high enough not to cap the run. Every gateway
// answers after a log-normal latency (median 60 ms, p99 250 ms by default), so the gateways and
// the Router's per-gateway concurrency and rate limits (COWRIE_GATEWAY_*, passed through from the
// environment) bound what the mesh completes, not the CPU alone. The spike's calls are spread
// over 8 HTTP/2 connections, as a flash sale's come from many clients. Setup (not measured): a tenant
// and API key through AdminService, merchant wallets (NGN) through the public WalletsService. The
// load comes from a separate process (bench/spike-load.ts) through the public Edge:
//   sustain  the sustainable rate, measured: `concurrency` workers in a closed loop, each creating
//            one PAY_IN (without waiting, as in the spike) and waiting until router.payments shows
//            it final (one batched query every 50 ms), a warm-up, then a window; the pay-ins that
//            end SUCCEEDED per second in the window are what the mesh completes end to end, accept
//            and gateway path together, with the backlog bounded by the closed loop. (Not
//            wait_for_outcome: waits that overrun their deadline under load open the Edge's
//            circuit breaker to the Router, which then fails every call for seconds.) Then the
//            backlog is let drain, and the spike waits until the Edge reaches the Router;
//   spike    PAY_IN CreatePayment calls without waiting, open loop on a fixed schedule at
//            `multiplier` x the sustainable rate for `spike-duration` seconds; latency counts from
//            when each call was due; a share of the calls retry an earlier key of the spike and
//            must come back replayed with the same payment id;
//   drain    after the schedule ends, the backlog (payments not yet SUCCEEDED, FAILED or
//            CANCELED, counted in router.payments every 250 ms, beside the work queue's ready
//            messages) is watched until it is empty and every call has been answered, for
//            at most `drain-timeout` seconds.
// Verified at the end (a violation fails the run, exit 1; missed targets do not):
//   - every payment the Edge accepted ended SUCCEEDED (none missing, failed or unfinished:
//     `lost`), and no payment was made twice: at most one succeeded charge per payment in the
//     simulator's records, exactly one for each SUCCEEDED payment, of its amount; no succeeded
//     charge without a payment; at most one payment per Idempotency-Key (the load sends the key as
//     the payment's reference); every retry replayed its key's payment (`doubled` counts these);
//   - money: the merchant wallets' posted balances sum to the SUCCEEDED amounts, the gateways'
//     clearing accounts paid out exactly that, the simulator charged exactly that, nothing is left
//     pending, and Ledger VerifyJournal has no findings (`money_conserved`).
// Targets (reported, not enforced): every spike call accepted, answers within the deadline, the
// backlog drained within the bound.
//
// Human summary lines on stdout, then as the LAST line one JSON object. Progress and the
// services' warnings go to stderr. Every process is stopped with SIGTERM, the database dropped
// and the run's queues deleted at the end, also on failure or Ctrl-C.
//
// Options (flag, or environment variable; flags win):
//   --multiplier X           BENCH_SPIKE_MULTIPLIER     spike rate as a multiple of the sustainable rate (10)
//   --spike-rate N           BENCH_SPIKE_RATE           spike rate in calls/s instead (0: use the multiplier). The
//                                                       sustainable rate of a noisy machine varies by 2x from run to
//                                                       run; a fixed rate makes two versions comparable.
//   --spike-duration N       BENCH_SPIKE_SECONDS        spike length, seconds (10)
//   --retry-share X          BENCH_RETRY_SHARE          share of spike calls that retry an earlier key (0.05)
//   --sustain-duration N     BENCH_SUSTAIN_SECONDS      sustainable-rate window, seconds (8)
//   --sustain-warmup N       BENCH_SUSTAIN_WARMUP_SECONDS  its warm-up, seconds (2)
//   --sustain-concurrency N  BENCH_SUSTAIN_CONCURRENCY  closed-loop workers (64)
//   --gateway-median-ms N    BENCH_GATEWAY_MEDIAN_MS    simulated gateway latency, median (60)
//   --gateway-p99-ms N       BENCH_GATEWAY_P99_MS       simulated gateway latency, 99th percentile (250)
//   --drain-timeout N        BENCH_DRAIN_TIMEOUT_SECONDS  longest wait for the backlog to drain (120)
//   --merchants N            BENCH_MERCHANTS            merchant wallets (10)
//   --connections N          BENCH_CONNECTIONS          HTTP/2 connections of the load process (8)
//   --timeout-ms N           BENCH_TIMEOUT_MS           deadline of every call (10000)
//   COWRIE_GATEWAY_WORKERS, COWRIE_GATEWAY_CONCURRENCY, COWRIE_GATEWAY_RATE_PER_SECOND... reach the Router.
//   BENCH_LOG_DIR=<dir>  also write every process's whole output to <dir>/<name>.log (only warnings
//                        and errors unless COWRIE_LOG_LEVEL is set; a few are relayed to stderr anyway).
//   BENCH_CPU_PROF=<dir> start every service with --cpu-prof into <dir>/<service>/ and write <dir>/windows.json
//                        ("spike" and "drain", monotonic µs); `bench/profile-summary.ts <dir> spike` reads them.
//   TEST_DATABASE_URL, TEST_REDIS_URL, TEST_AMQP_URL  the servers (defaults: the local ones).
// Defaults take about two minutes: the backlog of a 10x spike takes about nine spike-lengths to
// drain at the sustainable rate.
import { writeFileSync } from "node:fs";
import * as path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { Connection } from "rabbitmq-client";
import { WalletKind } from "../gen/cowrie/edge/v1/wallets_pb.js";
import { PaymentStatus } from "../gen/cowrie/router/v1/router_pb.js";
import { COMPLETER_ATTEMPTS_MAX } from "../services/edge/idempotency.js";
import { IDEMPOTENCY_STATE } from "../services/edge/schema.js";
import { workTopology } from "../services/router/service.js";
import { pause } from "../services/runtime/pause.js";
import { TEST_AMQP_URL, freshDatabase } from "../services/runtime/testing.js";
import { simulatorControl, simulatorGatewayEnv } from "../services/simulator/control.js";
import { SIMULATED_GATEWAYS } from "../services/simulator/core.js";
import { clearingAccountId } from "../services/wallet/service.js";
import type { SpikeChildMessage, SpikeMessage, SpikeResult, SpikeSetupMessage, SustainMessage, SustainResult } from "./spike-load.js";
import {
  Accounting,
  BenchMesh,
  FINAL_STATUSES,
  LoadProcess,
  MESH_SERVICES,
  ServiceProcess,
  benchOptions,
  countsText,
  cpuBreakdown,
  createWallets,
  journalLine,
  ms,
  postedMinor,
  recordsByPayment,
  round,
  statusLabel,
  runGuarded,
} from "./support.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "..");
const NAME = "bench:spike";

// The header of this file is the manual; --help prints the short form.
const option = benchOptions(NAME, "usage: npm run bench:spike -- [--multiplier 10 | --spike-rate N] [--spike-duration 10] [--retry-share 0.05]\n" +
  "  [--sustain-duration 8] [--sustain-warmup 2] [--sustain-concurrency 64] [--gateway-median-ms 60]\n" +
  "  [--gateway-p99-ms 250] [--drain-timeout 120] [--merchants 10] [--connections 8] [--timeout-ms 10000]\n" +
  "  (or BENCH_* environment variables; see bench/spike.ts)\n");
const MULTIPLIER = option("multiplier", "BENCH_SPIKE_MULTIPLIER", 10, 0.1, 100);
const SPIKE_RATE = option("spike-rate", "BENCH_SPIKE_RATE", 0, 0, 100_000);
const SPIKE_SECONDS = option("spike-duration", "BENCH_SPIKE_SECONDS", 10, 1, 120);
const RETRY_SHARE = option("retry-share", "BENCH_RETRY_SHARE", 0.05, 0, 0.5);
const SUSTAIN_SECONDS = option("sustain-duration", "BENCH_SUSTAIN_SECONDS", 8, 1, 120);
const SUSTAIN_WARMUP_SECONDS = option("sustain-warmup", "BENCH_SUSTAIN_WARMUP_SECONDS", 2, 0, 60);
const SUSTAIN_CONCURRENCY = Math.floor(option("sustain-concurrency", "BENCH_SUSTAIN_CONCURRENCY", 64, 1, 1024));
const GATEWAY_MEDIAN_MS = option("gateway-median-ms", "BENCH_GATEWAY_MEDIAN_MS", 60, 0, 10_000);
const GATEWAY_P99_MS = option("gateway-p99-ms", "BENCH_GATEWAY_P99_MS", 250, 0, 30_000);
const DRAIN_TIMEOUT_SECONDS = option("drain-timeout", "BENCH_DRAIN_TIMEOUT_SECONDS", 120, 5, 1800);
const MERCHANTS = Math.floor(option("merchants", "BENCH_MERCHANTS", 10, 1, 990));
// A flash sale comes from many clients: its calls are spread over several connections by default.
const CONNECTIONS = Math.floor(option("connections", "BENCH_CONNECTIONS", 8, 1, 64));
const TIMEOUT_MS = Math.floor(option("timeout-ms", "BENCH_TIMEOUT_MS", 10_000, 100, 60_000));
const LOG_DIR = process.env.BENCH_LOG_DIR ? path.resolve(process.env.BENCH_LOG_DIR) : undefined;
const CPU_PROF_DIR = process.env.BENCH_CPU_PROF ? path.resolve(process.env.BENCH_CPU_PROF) : undefined;
const monotonicUs = (): number => Number(process.hrtime.bigint() / 1000n);

if (GATEWAY_P99_MS < GATEWAY_MEDIAN_MS) {
  console.error(`${NAME}: --gateway-p99-ms must be at least --gateway-median-ms`);
  process.exit(2);
}

const CURRENCY = "NGN";
const COUNTRY = "NG";
const SETUP_CONCURRENCY = 8;
const START_TIMEOUT_MS = 60_000;
const STOP_GRACE_MS = 15_000;
/** How often the backlog is counted. */
const SAMPLE_INTERVAL_MS = 250;
/** Longest wait for a fresh backlog sample; the counts themselves time out sooner (statement_timeout). */
const SAMPLE_WAIT_MAX_MS = 15_000;
/** Longest wait for the sustain phase's own backlog to clear before the spike starts. */
const SETTLE_TIMEOUT_MS = 30_000;
/**
 * Longest wait after the drain for the Edge to finish the calls its clients gave up on: their
 * lease (deadline + 1 s), then COWRIE_RECOVERY_AFTER_MS (35 s), then its completer's next pass.
 */
const QUIESCE_TIMEOUT_MS = 90_000;
/** Spike: most calls in flight before due calls are shed (counted as errors). */
const SPIKE_MAX_IN_FLIGHT = 8192;

/** Final payment statuses; every other one (CREATED, PROCESSING, OUTCOME_UNKNOWN...) is backlog. */

const progress = (line: string): void => {
  process.stderr.write(`${NAME}: ${line}\n`);
};

// ---------------------------------------------------------------------------------------------
// The backlog, sampled

interface BacklogSample {
  /** performance.now() of the sample. */
  atMs: number;
  /** Payments not final: CREATED, PROCESSING, OUTCOME_UNKNOWN... */
  backlog: number;
  /** Payments SUCCEEDED, FAILED or CANCELED. */
  final: number;
  /** Ready messages in the work queue (taken but unacknowledged ones are not counted); -1: unknown. */
  queued: number;
  /**
   * Public calls the Edge still owes an outcome (idempotency keys in progress that its completer
   * will run again): a call given up by its client may still record a payment later.
   */
  edgeInProgress: number;
}

/** Counts the backlog every SAMPLE_INTERVAL_MS until stopped; keeps every sample. */
class BacklogMonitor {
  readonly samples: BacklogSample[] = [];
  private running = false;
  private loop: Promise<void> | undefined;

  constructor(
    private readonly sql: postgres.Sql,
    private readonly amqp: Connection,
    private readonly workQueue: string,
  ) {}

  start(): void {
    this.running = true;
    this.loop = (async () => {
      while (this.running) {
        const startedMs = performance.now();
        // A failed count is skipped, not fatal: the next one comes SAMPLE_INTERVAL_MS later.
        const sample = await this.sample().catch(() => undefined);
        if (sample) this.samples.push(sample);
        await pause(Math.max(0, SAMPLE_INTERVAL_MS - (performance.now() - startedMs)));
      }
    })();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.loop;
  }

  /** The latest sample taken at or after `atMs` (waits for one, at most SAMPLE_WAIT_MAX_MS). */
  async after(atMs: number): Promise<BacklogSample> {
    for (const untilMs = performance.now() + SAMPLE_WAIT_MAX_MS; ;) {
      const latest = this.samples[this.samples.length - 1];
      if (latest && latest.atMs >= atMs) return latest;
      if (!this.running || performance.now() > untilMs) throw new Error(`no backlog sample within ${SAMPLE_WAIT_MAX_MS} ms`);
      await pause(SAMPLE_INTERVAL_MS / 5);
    }
  }

  /** Waits until a sample shows no backlog and `also(sample)` holds, or `timeoutMs` passes. */
  async drained(timeoutMs: number, also: (sample: BacklogSample) => boolean = () => true): Promise<BacklogSample | undefined> {
    const untilMs = performance.now() + timeoutMs;
    while (performance.now() < untilMs) {
      const sample = await this.after(performance.now());
      if (sample.backlog === 0 && also(sample)) return sample;
    }
    return undefined;
  }

  private async sample(): Promise<BacklogSample> {
    const [[counts], [edge], queued] = await Promise.all([
      this.sql<{ backlog: number; final: number }[]>`
        select count(*) filter (where status <> all(${FINAL_STATUSES}))::int as backlog, count(*) filter (where status = any(${FINAL_STATUSES}))::int as final
        from router.payments`,
      this.sql<{ inProgress: number }[]>`
        select count(*)::int as "inProgress" from edge.idempotency_keys
        where state = ${IDEMPOTENCY_STATE.inProgress} and attempts < ${COMPLETER_ATTEMPTS_MAX}`,
      Promise.race([
        this.amqp.queueDeclare({ queue: this.workQueue, passive: true }).then((ok) => ok.messageCount, () => -1),
        new Promise<number>((resolve) => setTimeout(() => resolve(-1), SAMPLE_INTERVAL_MS * 4).unref()),
      ]),
    ]);
    return { atMs: performance.now(), backlog: counts?.backlog ?? 0, final: counts?.final ?? 0, queued, edgeInProgress: edge?.inProgress ?? 0 };
  }
}

// ---------------------------------------------------------------------------------------------

type Load = LoadProcess<SpikeSetupMessage | SustainMessage | SpikeMessage, SpikeChildMessage>;

/** Checks of the load process whose failure means a payment was doubled, not merely refused. */
const DOUBLING_CHECKS = ["retry:replay_mismatch", "retry:replay_not_flagged", "fresh:unexpected_replay", "sustain:unexpected_replay"];

async function main(): Promise<never> {
  const runStartedMs = performance.now();
  let mesh: BenchMesh<"simulator"> | undefined;
  let load: Load | undefined;
  let database: Awaited<ReturnType<typeof freshDatabase>> | undefined;
  let monitorSql: postgres.Sql | undefined;
  let amqp: Connection | undefined;
  let backlog: BacklogMonitor | undefined;
  // Whatever goes wrong, the processes this run started stop, its database and queues go.
  const watchdogMs = (SUSTAIN_WARMUP_SECONDS + SUSTAIN_SECONDS + SPIKE_SECONDS + DRAIN_TIMEOUT_SECONDS) * 1000 + SETTLE_TIMEOUT_MS + QUIESCE_TIMEOUT_MS + 4 * TIMEOUT_MS + 240_000;
  return runGuarded(NAME, watchdogMs, async (timedOut) => {
    ServiceProcess.tearingDown = true;
    await backlog?.stop().catch(() => undefined);
    await load?.stop(5000).catch(() => undefined);
    // The gateway simulator stops after the services.
    await mesh?.stop(timedOut);
    await monitorSql?.end({ timeout: 5 }).catch(() => undefined);
    await amqp?.close().catch(() => undefined);
    await database?.drop().catch((error: unknown) => progress(`could not drop the database: ${String(error)}`));
  }, async (cleanup) => {
    database = await freshDatabase("bench_spike");
    const databaseName = new URL(database.url).pathname.slice(1);

    // The load process starts now: its own start-up (tsx) overlaps the services'.
    load = new LoadProcess(process.execPath, ["--import", "tsx", path.join(HERE, "spike-load.ts")], ROOT);
    const loadReady = load.next("ready", undefined, START_TIMEOUT_MS);

    mesh = await BenchMesh.create({
      root: ROOT,
      databaseUrl: database.url,
      namespacePrefix: "bench-spike",
      others: ["simulator"],
      extraEnv: (portOf) => ({
        ...simulatorGatewayEnv(`http://127.0.0.1:${portOf.simulator}`),
        ...(process.env.COWRIE_LOG_LEVEL ? { COWRIE_LOG_LEVEL: process.env.COWRIE_LOG_LEVEL } : {}),
      }),
      progress,
      logDir: LOG_DIR,
      cpuProfDir: CPU_PROF_DIR,
      startTimeoutMs: START_TIMEOUT_MS,
      stopGraceMs: STOP_GRACE_MS,
    });
    progress(`database ${databaseName}, broker namespace ${mesh.namespace}`);
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
    progress(`setup: tenant ${tenant.tenantId}, ${MERCHANTS} merchant wallets (${CURRENCY})`);
    const owners = Array.from({ length: MERCHANTS }, (_, index) => ({ owner: `merchant-${index}`, kind: WalletKind.MERCHANT }));
    const merchants = await createWallets(tenant, owners, CURRENCY, SETUP_CONCURRENCY);

    await loadReady;
    const runTag = `spike-${process.pid}-${Date.now().toString(36)}`;
    load.send({ type: "setup", edgeUrl: mesh.url("edge"), apiKey: tenant.apiKey, currency: CURRENCY, country: COUNTRY, merchants, connections: CONNECTIONS, timeoutMs: TIMEOUT_MS, runTag, databaseUrl: database.url });
    await load.next("setup-done", undefined, 10_000);

    monitorSql = postgres(database.url, { max: 1, onnotice: () => {}, connection: { application_name: "cowrie-bench-monitor", statement_timeout: 5_000 } });
    amqp = new Connection({ url: TEST_AMQP_URL, connectionName: `cowrie-bench-spike-${process.pid}` });
    amqp.on("error", () => {}); // the queue depth is a second figure; never crash the run for it
    const [workQueue] = workTopology(mesh.namespace).queues as [string];
    backlog = new BacklogMonitor(monitorSql, amqp, workQueue);
    backlog.start();

    // 1. The sustainable rate: a closed loop of pay-ins, each followed until it is final.
    progress(`sustainable rate: ${SUSTAIN_CONCURRENCY} workers, each with one pay-in until it is final, ${SUSTAIN_WARMUP_SECONDS} s warm-up + ${SUSTAIN_SECONDS} s`);
    const sustainMessage: SustainMessage = { type: "sustain", id: "sustain", warmupSeconds: SUSTAIN_WARMUP_SECONDS, seconds: SUSTAIN_SECONDS, concurrency: SUSTAIN_CONCURRENCY };
    load.send(sustainMessage);
    const sustain = (await load.next("result", "sustain", (SUSTAIN_WARMUP_SECONDS + SUSTAIN_SECONDS) * 1000 + TIMEOUT_MS + 60_000)) as SustainResult;
    const sustainableRate = sustain.completed / sustain.windowSeconds;
    progress(`sustainable rate: ${sustainableRate.toFixed(1)} pay-ins/s completed end to end (p50 ${ms(sustain.latency.p50Ms)} ms, p99 ${ms(sustain.latency.p99Ms)} ms)`);
    if (!(sustainableRate > 0)) throw new Error(`no pay-in completed in the sustainable-rate window (errors: ${countsText(sustain.errors)}; ${sustain.firstErrors.join("; ")})`);
    const settled = await backlog.drained(SETTLE_TIMEOUT_MS);
    if (!settled) progress(`the sustain phase's backlog had not cleared after ${SETTLE_TIMEOUT_MS} ms; the spike starts anyway`);
    // Calls that overran their deadline may have opened the Edge's circuit breaker to the Router:
    // the spike starts once an Edge -> Router call goes through again.
    const probeFailures = await edgeReachesRouter(() => tenant.payments.getPayment({ paymentId: sustain.accepted[0]?.id ?? "" }, { headers: { authorization: `Bearer ${tenant.apiKey}` }, timeoutMs: 2_000 }));
    if (probeFailures > 0) progress(`the Edge could not reach the Router for ${probeFailures} probes after the sustain phase (circuit breaker open)`);

    // 2. The spike, open loop, while the backlog is sampled.
    const spikeRate = SPIKE_RATE > 0 ? SPIKE_RATE : sustainableRate * MULTIPLIER;
    const multiplier = spikeRate / sustainableRate;
    progress(`spike: ${spikeRate.toFixed(0)} calls/s (${multiplier.toFixed(1)}x) for ${SPIKE_SECONDS} s, ${RETRY_SHARE * 100}% retries of earlier keys`);
    const spikeMessage: SpikeMessage = { type: "spike", id: "spike", ratePerSecond: spikeRate, seconds: SPIKE_SECONDS, retryShare: RETRY_SHARE, maxInFlight: SPIKE_MAX_IN_FLIGHT };
    const boundMs = SPIKE_SECONDS * 1000 + 30_000;
    const spikeEnded = load.next("spike-end", "spike", boundMs);
    const spikeResulted = load.next("result", "spike", boundMs + TIMEOUT_MS);
    const pidLabels = mesh.pidLabels().set(load.pid, "load generator");
    const accounting = new Accounting(monitorSql, databaseName, () => pidLabels);
    const cpuAtStart = await accounting.sample();
    const spikeStart = await backlog.after(performance.now());
    const spikeStartUs = monotonicUs();
    load.send(spikeMessage);
    await spikeEnded;
    const spikeEndMs = performance.now();
    const spikeEndUs = monotonicUs();
    let spike: SpikeResult | undefined;
    void spikeResulted.then((result) => (spike = result as SpikeResult), () => undefined);
    const atSpikeEnd = await backlog.after(spikeEndMs);
    progress(`spike over: backlog ${atSpikeEnd.backlog} payments (${atSpikeEnd.queued} messages ready in the work queue); waiting for it to drain (at most ${DRAIN_TIMEOUT_SECONDS} s)`);

    // 3. The drain: no backlog, and every call of the spike answered.
    const drainedSample = await backlog.drained(DRAIN_TIMEOUT_SECONDS * 1000, () => spike !== undefined);
    const spikeResult = (await spikeResulted) as SpikeResult;
    const cpu = accounting.delta(cpuAtStart, await accounting.sample());
    const drainEndUs = monotonicUs();
    // Then quiescence, before anything is verified: the calls that clients gave up on are still the
    // Edge's to finish (its completer runs them again COWRIE_RECOVERY_AFTER_MS after their lease),
    // and a payment they record then moves money like any other. Verified while one of them was
    // still PROCESSING, a run reported it unfinished and its money as not conserved.
    const quietFromMs = performance.now();
    const quiet = await backlog.drained(QUIESCE_TIMEOUT_MS, (sample) => sample.edgeInProgress === 0);
    progress(quiet
      ? `quiet ${((quiet.atMs - quietFromMs) / 1000).toFixed(1)} s after the drain (the Edge owes no call an outcome)`
      : `NOT quiet within ${QUIESCE_TIMEOUT_MS} ms of the drain; verifying anyway`);
    await backlog.stop();
    if (CPU_PROF_DIR) {
      const windows = { spike: { startUs: spikeStartUs, endUs: spikeEndUs }, drain: { startUs: spikeEndUs, endUs: drainEndUs } };
      writeFileSync(path.join(CPU_PROF_DIR, "windows.json"), JSON.stringify(windows, null, 2));
    }
    const drainSeconds = drainedSample ? (drainedSample.atMs - spikeEndMs) / 1000 : null;
    const window = backlog.samples.filter((sample) => sample.atMs >= spikeStart.atMs);
    const peak = window.reduce((best, sample) => (sample.backlog > best.backlog ? sample : best), spikeStart);
    const queuedPeak = window.reduce((most, sample) => Math.max(most, sample.queued), 0);
    const finishedDuringSpike = atSpikeEnd.final - spikeStart.final;
    const spikeWallSeconds = (atSpikeEnd.atMs - spikeStart.atMs) / 1000;
    const drainRate = drainedSample && drainSeconds ? (drainedSample.final - atSpikeEnd.final) / drainSeconds : null;
    progress(drainSeconds === null ? `NOT drained within ${DRAIN_TIMEOUT_SECONDS} s` : `drained ${drainSeconds.toFixed(1)} s after the spike (peak backlog ${peak.backlog})`);

    // 4. Verification: every accepted payment, the gateways' records, the money, the journal.
    progress("verifying payments, gateway charges, balances and the journal");
    const accepted = [...sustain.accepted, ...spikeResult.accepted];
    const keysSent = sustain.keysSent + spikeResult.keysSent;
    // The load sends each pay-in's Idempotency-Key as its reference too: one payment per key at most.
    const rows = await monitorSql<{ id: string; status: number; amount_minor: string; failure_code: string; reference: string }[]>`
      select id, status, amount_minor::text, failure_code, reference from router.payments where tenant_id = ${tenant.tenantId}`;
    const rowById = new Map(rows.map((row) => [row.id, row]));
    const acceptedIds = new Set(accepted.map((payment) => payment.id));
    const acceptedEnded: Record<string, number> = {};
    for (const payment of accepted) {
      const row = rowById.get(payment.id);
      const label = row ? statusLabel(row.status, row.failure_code) : "MISSING";
      acceptedEnded[label] = (acceptedEnded[label] ?? 0) + 1;
    }
    const acceptedSucceeded = acceptedEnded.SUCCEEDED ?? 0;
    const lost = accepted.length - acceptedSucceeded;
    const unfinished = rows.filter((row) => !FINAL_STATUSES.includes(row.status)).length;
    const amountMismatch = accepted.filter((payment) => rowById.has(payment.id) && rowById.get(payment.id)?.amount_minor !== payment.amountMinor).length;
    // Payments recorded although their call failed (the outcome was unknown to the client).
    const unacknowledged: Record<string, number> = {};
    for (const row of rows) if (!acceptedIds.has(row.id)) unacknowledged[statusLabel(row.status)] = (unacknowledged[statusLabel(row.status)] ?? 0) + 1;
    const unacknowledgedCount = Object.values(unacknowledged).reduce((sum, count) => sum + count, 0);
    const succeededRows = rows.filter((row) => row.status === PaymentStatus.SUCCEEDED);
    const succeededMinor = succeededRows.reduce((sum, row) => sum + BigInt(row.amount_minor), 0n);

    const charges = await control.records({ operation: "charge" });
    const charged = recordsByPayment(charges, rows.map((row) => row.id));
    const doubleCharged = [...charged.byPayment.values()].filter((list) => list.filter((record) => record.status === "succeeded").length > 1).length;
    const succeededUncharged = succeededRows.filter((row) => (charged.byPayment.get(row.id) ?? []).filter((record) => record.status === "succeeded").length !== 1).length;
    const chargeAmountMismatch = succeededRows.filter((row) => (charged.byPayment.get(row.id) ?? []).some((record) => record.status === "succeeded" && record.amountMinor !== row.amount_minor)).length;
    const chargedMinor = charges.filter((record) => record.status === "succeeded").reduce((sum, record) => sum + BigInt(record.amountMinor), 0n);
    const extraPayments = rows.length - new Set(rows.map((row) => row.reference)).size;
    const replayFailures = DOUBLING_CHECKS.reduce((sum, code) => sum + (spikeResult.errors[code] ?? 0) + (sustain.errors[code] ?? 0), 0);
    const duplicateIds = accepted.length - acceptedIds.size;
    const doubled = doubleCharged + extraPayments + replayFailures + duplicateIds + charged.orphans;

    const clearingIds = SIMULATED_GATEWAYS.map((gateway) => clearingAccountId(gateway, CURRENCY));
    const { verify, accounts } = await mesh.auditLedger([...merchants, ...clearingIds]);
    const merchantsMinor = merchants.reduce((sum, id) => sum + postedMinor(accounts.get(id)), 0n);
    const clearingMinor = -clearingIds.reduce((sum, id) => sum + postedMinor(accounts.get(id)), 0n);
    const pendingMinor = [...accounts.values()].reduce((sum, account) => sum + account.debitsPending + account.creditsPending, 0n);
    const moneyConserved = verify.findings.length === 0 && merchantsMinor === succeededMinor && clearingMinor === succeededMinor && chargedMinor === succeededMinor && pendingMinor === 0n;

    const deadLettered = await amqp.queueDeclare({ queue: `${workQueue}.dead`, passive: true }).then((ok) => ok.messageCount, () => -1);
    progress("stopping the processes (SIGTERM), deleting the queues and dropping the database");
    await cleanup();

    // -------------------------------------------------------------------------------------------
    // Report

    const s = spikeResult;
    const spikeErrors = Object.values(s.errors).reduce((sum, count) => sum + count, 0);
    const allAccepted = spikeErrors === 0;
    const withinDeadline = s.accept.maxMs < TIMEOUT_MS;
    const violations = [
      ...(lost > 0 ? [`${lost} accepted payments did not end SUCCEEDED (${countsText(acceptedEnded)})`] : []),
      ...(unfinished > 0 ? [`${unfinished} payments still unfinished at the end`] : []),
      ...(doubled > 0 ? [`doubled: ${doubleCharged} charged twice, ${extraPayments} more payments than Idempotency-Keys, ${replayFailures} retries not replaying their payment, ${duplicateIds} ids given to two keys, ${charged.orphans} charges without a payment`] : []),
      ...(succeededUncharged > 0 ? [`${succeededUncharged} SUCCEEDED payments without exactly one succeeded charge`] : []),
      ...(amountMismatch + chargeAmountMismatch > 0 ? [`${amountMismatch} payments and ${chargeAmountMismatch} charges with another amount than asked`] : []),
      ...(!moneyConserved ? ["money not conserved"] : []),
    ];
    const { rows: cpuRows, otherCpu } = cpuBreakdown(cpu);
    const otherCpuPct = otherCpu === undefined ? null : (otherCpu / cpu.seconds) * 100;
    const pct = (seconds: number): number => (seconds / cpu.seconds) * 100;
    const lines = [
      "",
      `spike bench: gateway pay-ins (${CURRENCY}) through the public Edge; gateways median ${GATEWAY_MEDIAN_MS} ms, p99 ${GATEWAY_P99_MS} ms; ${MERCHANTS} merchants; ${CONNECTIONS} HTTP/2 connection(s)`,
      `sustainable rate   ${sustainableRate.toFixed(1).padStart(7)} pay-ins/s completed end to end (closed loop, ${SUSTAIN_CONCURRENCY} workers each with one pay-in until final, ${SUSTAIN_SECONDS} s after ${SUSTAIN_WARMUP_SECONDS} s warm-up)`,
      `  create-to-final latency  p50 ${ms(sustain.latency.p50Ms)}  p99 ${ms(sustain.latency.p99Ms)}  max ${ms(sustain.latency.maxMs)} ms; errors ${countsText(sustain.errors)}` +
        (sustain.notFinalInTime > 0 ? `; ${sustain.notFinalInTime} not final within 30 s` : "") +
        (probeFailures > 0 ? `; the Edge failed ${probeFailures} probes of the Router afterwards` : ""),
      `spike              ${spikeRate.toFixed(1).padStart(7)} calls/s offered (${multiplier.toFixed(1)}x) for ${SPIKE_SECONDS} s: ${s.due} calls due, ${s.acceptedFresh} payments accepted, ${s.replaysChecked} retries replayed`,
      `  accept latency (from when due)  p50 ${ms(s.accept.p50Ms)}  p95 ${ms(s.accept.p95Ms)}  p99 ${ms(s.accept.p99Ms)}  max ${ms(s.accept.maxMs)} ms; most in flight ${s.maxInFlightSeen}`,
      `  p99 by second of the spike  ${s.acceptP99BySecondMs.join(" ")} ms`,
      `  errors   ${countsText(s.errors)}`,
      ...s.firstErrors.map((line) => `    e.g. ${line}`),
      `  processed during the spike: ${finishedDuringSpike} payments final in ${spikeWallSeconds.toFixed(1)} s (${(finishedDuringSpike / Math.max(spikeWallSeconds, 0.001)).toFixed(1)}/s)`,
      `backlog            peak ${peak.backlog} payments ${((peak.atMs - spikeStart.atMs) / 1000).toFixed(1)} s after the spike began (work queue: at most ${queuedPeak} ready); ${atSpikeEnd.backlog} at the spike's end`,
      `  drain    ${drainSeconds === null ? `NOT drained within ${DRAIN_TIMEOUT_SECONDS} s` : `${drainSeconds.toFixed(1)} s from the spike's end to empty, ${drainRate?.toFixed(1)} payments/s`}` +
        `${deadLettered > 0 ? `; ${deadLettered} work messages dead-lettered` : ""}`,
      `CPU over the spike and the drain (${cpu.seconds.toFixed(1)} s; 2 cores = 200%): ` +
        cpuRows.filter(([, seconds]) => pct(seconds) >= 1).map(([label, seconds]) => `${label} ${pct(seconds).toFixed(0)}%`).join(", ") +
        `; machine, everything else ${otherCpuPct === null ? "n/a" : `${otherCpuPct.toFixed(0)}%`}${otherCpuPct !== null && otherCpuPct > 15 ? " WARNING: something else was busy; figures disturbed" : ""}`,
      `targets: every spike call accepted: ${allAccepted ? "MET" : "NOT MET"}; answers within the ${TIMEOUT_MS} ms deadline: ${withinDeadline ? "MET" : "NOT MET"}; ` +
        `backlog drained within ${DRAIN_TIMEOUT_SECONDS} s: ${drainSeconds === null ? "NOT MET" : "MET"}`,
      `payments: ${accepted.length} accepted (${countsText(acceptedEnded)}), ${unacknowledgedCount} more recorded for calls that failed${unacknowledgedCount > 0 ? ` (${countsText(unacknowledged)})` : ""}; ` +
        `lost ${lost}, doubled ${doubled}; ${charges.length} gateway charges (${charges.filter((record) => record.status === "succeeded").length} succeeded)`,
      journalLine(verify),
      `money: SUCCEEDED ${succeededMinor}; merchants ${merchantsMinor}; clearing paid ${clearingMinor}; gateways charged ${chargedMinor}; pending ${pendingMinor}; ${moneyConserved ? "conserved" : "NOT CONSERVED"}`,
      violations.length === 0 ? "verdict: nothing lost, nothing doubled, money conserved" : `verdict: VIOLATED: ${violations.join("; ")}`,
      `run took ${((performance.now() - runStartedMs) / 1000).toFixed(0)} s (services SERVING ${startupSeconds.toFixed(1)} s after spawn)`,
      "",
    ];
    process.stdout.write(lines.join("\n"));

    const figures = {
      bench: "spike",
      gateway_latency_ms: { median: GATEWAY_MEDIAN_MS, p99: GATEWAY_P99_MS },
      sustain_concurrency: SUSTAIN_CONCURRENCY,
      sustainable_payments_per_s: round(sustainableRate, 1),
      sustain_p50_ms: round(sustain.latency.p50Ms),
      sustain_p99_ms: round(sustain.latency.p99Ms),
      sustain_errors: sustain.errors,
      multiplier: round(multiplier, 2),
      spike_rate_per_s: round(spikeRate, 1),
      spike_seconds: SPIKE_SECONDS,
      calls_due: s.due,
      accepted: s.acceptedFresh,
      replays_checked: s.replaysChecked,
      errors: s.errors,
      errors_total: spikeErrors,
      accept_p50_ms: round(s.accept.p50Ms),
      accept_p95_ms: round(s.accept.p95Ms),
      accept_p99_ms: round(s.accept.p99Ms),
      accept_max_ms: round(s.accept.maxMs),
      accept_p99_by_second_ms: s.acceptP99BySecondMs,
      max_in_flight: s.maxInFlightSeen,
      processed_during_spike_per_s: round(finishedDuringSpike / Math.max(spikeWallSeconds, 0.001), 1),
      backlog_peak: peak.backlog,
      backlog_at_spike_end: atSpikeEnd.backlog,
      queue_ready_peak: queuedPeak,
      drained: drainSeconds !== null,
      drain_seconds: drainSeconds === null ? null : round(drainSeconds, 1),
      drain_rate_per_s: drainRate === null ? null : round(drainRate, 1),
      dead_lettered: deadLettered,
      payments_accepted_total: accepted.length,
      payments_recorded: rows.length,
      keys_sent: keysSent,
      lost,
      unfinished,
      doubled,
      double_charged: doubleCharged,
      succeeded_without_one_charge: succeededUncharged,
      journal_findings: verify.findings.length,
      money_conserved: moneyConserved,
      money: {
        succeeded_minor: String(succeededMinor),
        merchants_minor: String(merchantsMinor),
        clearing_paid_minor: String(clearingMinor),
        charged_minor: String(chargedMinor),
        pending_minor: String(pendingMinor),
      },
      targets: { all_accepted: allAccepted, within_deadline: withinDeadline, drained: drainSeconds !== null },
      violations,
      breaker_probe_failures: probeFailures,
      window_cpu_pct: Object.fromEntries(cpuRows.map(([label, seconds]) => [label, round(pct(seconds), 1)])),
      other_cpu_pct: otherCpuPct === null ? null : round(otherCpuPct, 1),
      startup_s: round(startupSeconds, 1),
      run_s: round((performance.now() - runStartedMs) / 1000, 1),
    };
    if (violations.length > 0) process.exitCode = 1;
    process.stdout.write(`${JSON.stringify(figures)}\n`);
  });
}

/** Calls `probe` every 500 ms until it succeeds (at most 20 s); returns how many failed. */
async function edgeReachesRouter(probe: () => Promise<unknown>): Promise<number> {
  let failures = 0;
  for (const untilMs = performance.now() + 20_000; performance.now() < untilMs; failures++) {
    if (await probe().then(() => true, () => false)) return failures;
    await pause(500);
  }
  return failures;
}

await main();
