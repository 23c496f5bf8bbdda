// `npm run bench:risk`: the Risk service as its own process on the real PostgreSQL and Redis,
// driven with Evaluate from a separate load process (this same file, started as a child), with
// same-run baselines: Redis PING round trips over one connection, and a bare connect-node server
// answering grpc.health.v1.Health/Check, both from the same load process at the same concurrency.
//
// Traffic: 10,000 users, a tenth of the payments from 20 hot users (they trip VELOCITY, so their
// evaluations also write their flags to PostgreSQL), amounts spread from 5 to 5,000 naira, 2% of
// calls a retry of an earlier payment (which must come back replayed).
//
// Phases: (1) baselines, (2) closed loop at BENCH_CONCURRENCY (64) for BENCH_SECONDS (10) after a
// warm-up: the most evaluations per second, (3) open loops at BENCH_OPEN_SHARE (0.6) and
// BENCH_LIGHT_SHARE (0.3) of that rate for BENCH_SECONDS each: latency under load, measured from
// each call's scheduled start, and the service's own handling time from its
// cowrie_rpc_duration_seconds histogram (the budget: p99 at the service ≤ 5 ms), and apart by the
// way Risk decided from cowrie_risk_evaluation_seconds: clean (no write) or flagged (the decision
// committed to PostgreSQL before the answer). The closed loop
// is bounded by the one load process (a connect-node client costs about as much CPU per call as
// the server): the bare server's figure in the same run shows that ceiling. The human summary goes to stdout, then as the last line one JSON object.
// BENCH_CPU_PROF=<dir> writes a CPU profile of the Risk process there.
import * as http2 from "node:http2";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { Http2SessionManager, createConnectTransport } from "@connectrpc/connect-node";
import { Redis } from "ioredis";
import { RiskService } from "../gen/cowrie/risk/v1/risk_pb.js";
import { Health, HealthCheckResponseSchema, HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { startStub } from "../services/edge/test-support.js";
import { deleteRedisKeys } from "../services/risk/test-support.js";
import { freePorts, freshDatabase, TEST_REDIS_URL } from "../services/runtime/testing.js";
import { LoadProcess, numberOption, processCpuSeconds, round, sendToParent, ServiceProcess, summarize } from "./support.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "..");
const PREFIX = "bench:risk";
const argv = process.argv.slice(2);
const SECONDS = numberOption(argv, "seconds", "BENCH_SECONDS", 10, 1, 600, PREFIX);
const WARMUP_SECONDS = numberOption(argv, "warmup", "BENCH_WARMUP_SECONDS", 2, 0, 60, PREFIX);
const BASELINE_SECONDS = numberOption(argv, "baseline-seconds", "BENCH_BASELINE_SECONDS", 3, 1, 60, PREFIX);
const CONCURRENCY = Math.floor(numberOption(argv, "concurrency", "BENCH_CONCURRENCY", 64, 1, 10_000, PREFIX));
const OPEN_SHARE = numberOption(argv, "open-share", "BENCH_OPEN_SHARE", 0.6, 0.05, 1, PREFIX);
const LIGHT_SHARE = numberOption(argv, "light-share", "BENCH_LIGHT_SHARE", 0.3, 0.05, 1, PREFIX);
const CALL_TIMEOUT_MS = 5_000;
const USERS = 10_000;
const HOT_USERS = 20;
const HOT_SHARE = 0.1;
const RETRY_SHARE = 0.02;
const IN_FLIGHT_MAX = 2_000;

// ---------------------------------------------------------------------------------------------
// Messages between this process and its load child

type Target = "evaluate" | "bare" | "ping";

interface RunMessage {
  type: "run";
  id: string;
  target: Target;
  port: number;
  tenantId: string;
  warmupSeconds: number;
  seconds: number;
  /** Closed loop: calls kept in flight. */
  concurrency: number;
  /** Open loop: calls started per second (0: closed loop). */
  ratePerSecond: number;
}

interface RunResult {
  type: "result";
  id: string;
  ok: number;
  errors: number;
  firstError?: string;
  seconds: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  /** Evaluate only: answers with at least one flag, with RISK_UNAVAILABLE, and retries not answered as replayed. */
  flagged: number;
  unavailable: number;
  retries: number;
  retriesNotReplayed: number;
}

type ChildMessage = RunResult | { type: "ready" } | { type: "fatal"; message: string };

// ---------------------------------------------------------------------------------------------
// The load child

interface Caller {
  call(): Promise<void>;
  close(): void;
}

function riskCaller(port: number, tenantId: string, counts: Pick<RunResult, "flagged" | "unavailable" | "retries" | "retriesNotReplayed">): Caller {
  const baseUrl = `http://127.0.0.1:${port}`;
  const session = new Http2SessionManager(baseUrl, { pingIntervalMs: 10_000, pingTimeoutMs: 5_000, idleConnectionTimeoutMs: 60_000 });
  const risk = createClient(RiskService, createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, sessionManager: session }));
  const recent: { paymentId: string; userId: string; amountMinor: bigint; beneficiaryId: string }[] = [];
  let sequence = 0;
  const run = `${process.pid}-${Date.now().toString(36)}`;
  return {
    async call() {
      let payment: (typeof recent)[number];
      const retry = recent.length > 100 && Math.random() < RETRY_SHARE;
      if (retry) payment = recent[Math.floor(Math.random() * recent.length)] as typeof payment;
      else {
        const hot = Math.random() < HOT_SHARE;
        const user = hot ? Math.floor(Math.random() * HOT_USERS) : HOT_USERS + Math.floor(Math.random() * USERS);
        // Log-uniform from 500 to 500,000 minor units.
        payment = {
          paymentId: `pay-${run}-${++sequence}`,
          userId: `user-${user}`,
          amountMinor: BigInt(Math.round(500 * 1000 ** Math.random())),
          beneficiaryId: `ben-${Math.floor(Math.random() * 1_000)}`,
        };
      }
      const response = await risk.evaluate({
        tenantId,
        ...payment,
        currency: "NGN",
        deviceId: `dev-${payment.userId}`,
        ipAddress: `10.0.${Math.floor(Math.random() * 256)}.${Math.floor(Math.random() * 256)}`,
      }, { timeoutMs: CALL_TIMEOUT_MS });
      if (response.flags.length > 0) counts.flagged++;
      if (response.reasons.includes("RISK_UNAVAILABLE")) counts.unavailable++;
      if (retry) {
        counts.retries++;
        if (!response.replayed) counts.retriesNotReplayed++;
      } else if (recent.length < 1_000) {
        // Retries are of answered payments only, as the Router's are.
        recent.push(payment);
      } else {
        recent[sequence % 1_000] = payment;
      }
    },
    close: () => session.abort(),
  };
}

function bareCaller(port: number): Caller {
  const baseUrl = `http://127.0.0.1:${port}`;
  const session = new Http2SessionManager(baseUrl, { pingIntervalMs: 10_000, pingTimeoutMs: 5_000, idleConnectionTimeoutMs: 60_000 });
  const health = createClient(Health, createConnectTransport({ baseUrl, httpVersion: "2", useBinaryFormat: true, sessionManager: session }));
  return {
    async call() {
      await health.check({}, { timeoutMs: CALL_TIMEOUT_MS });
    },
    close: () => session.abort(),
  };
}

function pingCaller(): Caller {
  const redis = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: 1, commandTimeout: CALL_TIMEOUT_MS });
  redis.on("error", () => {});
  return {
    async call() {
      await redis.ping();
    },
    close: () => redis.disconnect(),
  };
}

async function runLoad(message: RunMessage): Promise<RunResult> {
  const counts = { flagged: 0, unavailable: 0, retries: 0, retriesNotReplayed: 0 };
  const caller = message.target === "evaluate" ? riskCaller(message.port, message.tenantId, counts)
    : message.target === "bare" ? bareCaller(message.port) : pingCaller();
  const startedAtMs = performance.now();
  const measureFromMs = startedAtMs + message.warmupSeconds * 1000;
  const endsAtMs = measureFromMs + message.seconds * 1000;
  const latenciesMs: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  let measuredCounts = { ...counts };
  const record = async (scheduledAtMs: number): Promise<void> => {
    let failed = false;
    try {
      await caller.call();
    } catch (error) {
      failed = true;
      firstError ??= error instanceof Error ? error.message : String(error);
    }
    const doneAtMs = performance.now();
    if (scheduledAtMs < measureFromMs || doneAtMs > endsAtMs) return;
    if (failed) errors++;
    else latenciesMs.push(doneAtMs - scheduledAtMs);
  };
  const warmupTimer = setTimeout(() => {
    measuredCounts = { ...counts };
  }, message.warmupSeconds * 1000);
  try {
    if (message.ratePerSecond === 0) {
      await Promise.all(Array.from({ length: message.concurrency }, async () => {
        while (performance.now() < endsAtMs) await record(performance.now());
      }));
    } else {
      // Open loop: calls start on schedule whether or not earlier ones have answered, and each
      // latency counts from its scheduled start (no coordinated omission), up to a bound in flight.
      const intervalMs = 1000 / message.ratePerSecond;
      const inFlight = new Set<Promise<void>>();
      let next = startedAtMs;
      while (next < endsAtMs) {
        const now = performance.now();
        while (next <= now && next < endsAtMs) {
          if (inFlight.size < IN_FLIGHT_MAX) {
            const call = record(next).finally(() => inFlight.delete(call));
            inFlight.add(call);
          } else if (next >= measureFromMs) errors++;
          next += intervalMs;
        }
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, Math.min(5, next - performance.now()))));
      }
      await Promise.all(inFlight);
    }
  } finally {
    clearTimeout(warmupTimer);
    caller.close();
  }
  const { p50Ms, p99Ms, maxMs } = summarize(latenciesMs);
  return {
    type: "result",
    id: message.id,
    ok: latenciesMs.length,
    errors,
    ...(firstError === undefined ? {} : { firstError }),
    seconds: message.seconds,
    perSecond: Math.round(latenciesMs.length / message.seconds),
    p50Ms,
    p99Ms,
    maxMs,
    flagged: counts.flagged - measuredCounts.flagged,
    unavailable: counts.unavailable - measuredCounts.unavailable,
    retries: counts.retries - measuredCounts.retries,
    retriesNotReplayed: counts.retriesNotReplayed - measuredCounts.retriesNotReplayed,
  };
}

function loadMain(): void {
  const send = (message: ChildMessage) => sendToParent(message);
  process.on("message", (raw: unknown) => {
    const message = raw as RunMessage | { type: "exit" };
    if (message.type === "exit") {
      process.disconnect();
      return;
    }
    runLoad(message).then(send, (error: unknown) => {
      send({ type: "fatal", message: error instanceof Error ? error.stack ?? error.message : String(error) });
      process.exitCode = 1;
    });
  });
  process.on("disconnect", () => setTimeout(() => process.exit(process.exitCode ?? 0), 1_000).unref());
  send({ type: "ready" });
}

// ---------------------------------------------------------------------------------------------
// The parent: the Risk process, the bare server, the phases and the report

/** The Risk process, SERVING; its warnings are relayed to stderr (ServiceProcess bounds them). */
async function startRisk(databaseUrl: string, port: number): Promise<ServiceProcess> {
  const risk = new ServiceProcess({
    name: "risk",
    port,
    env: { ...process.env, DATABASE_URL: databaseUrl, REDIS_URL: TEST_REDIS_URL, COWRIE_RISK_PORT: String(port), COWRIE_LOG_LEVEL: "warn" },
    args: ["services/main.ts", "risk"],
    cwd: ROOT,
    progress: (line) => process.stderr.write(`${line}\n`),
    ...(process.env.BENCH_CPU_PROF ? { cpuProfDir: path.resolve(process.env.BENCH_CPU_PROF) } : {}),
    startTimeoutMs: 60_000,
    stopGraceMs: 10_000,
  });
  try {
    await risk.serving();
  } catch (error) {
    await risk.stop();
    throw error;
  }
  return risk;
}

/** The service's /metrics text. */
async function metricsText(port: number): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const client = http2.connect(`http://127.0.0.1:${port}`);
    client.on("error", reject);
    const request = client.request({ ":method": "GET", ":path": "/metrics" });
    let body = "";
    request.setEncoding("utf8");
    request.on("data", (chunk: string) => (body += chunk));
    request.on("end", () => {
      client.close();
      resolve(body);
    });
    request.on("error", reject);
    request.end();
  });
}

/** One histogram's buckets from /metrics text (bucket upper bound in s → count), over the series whose labels include all of `labels`. */
function histogramIn(text: string, name: string, labels: readonly string[]): Map<number, number> {
  const buckets = new Map<number, number>();
  for (const line of text.split("\n")) {
    if (!line.startsWith(`${name}_bucket{`) || !labels.every((label) => line.includes(label))) continue;
    const le = /le="([^"]+)"/.exec(line)?.[1];
    if (le === undefined) continue;
    buckets.set(le === "+Inf" ? Infinity : Number(le), Number(line.slice(line.lastIndexOf(" ") + 1)));
  }
  return buckets;
}

/** Evaluate's handling time at the service: all successful calls (the RPC histogram), and by the way Risk decided. */
const EVALUATE_SERIES = {
  all: ["cowrie_rpc_duration_seconds", ['method="Evaluate"', 'code="ok"']],
  clean: ["cowrie_risk_evaluation_seconds", ['path="clean"']],
  flagged: ["cowrie_risk_evaluation_seconds", ['path="flagged"']],
} as const;
type EvaluateSeries = keyof typeof EVALUATE_SERIES;

async function evaluateHistograms(port: number): Promise<Record<EvaluateSeries, Map<number, number>>> {
  const text = await metricsText(port);
  const entries = Object.entries(EVALUATE_SERIES).map(([series, [name, labels]]) => [series, histogramIn(text, name, labels)]);
  return Object.fromEntries(entries) as Record<EvaluateSeries, Map<number, number>>;
}

/** From two cumulative histograms: the share of calls within `seconds`, and the bucket holding the 99th percentile. */
function histogramBetween(before: Map<number, number>, after: Map<number, number>, seconds: number): { calls: number; withinShare: number; p99AtMostMs: number } {
  const bounds = [...after.keys()].sort((a, b) => a - b);
  const delta = (bound: number) => (after.get(bound) ?? 0) - (before.get(bound) ?? 0);
  const total = delta(Infinity);
  if (total === 0) return { calls: 0, withinShare: 0, p99AtMostMs: 0 };
  const p99Bound = bounds.find((bound) => delta(bound) >= total * 0.99) ?? Infinity;
  return { calls: total, withinShare: delta(seconds) / total, p99AtMostMs: p99Bound * 1000 };
}

type PathFigures = { calls: number; within_5ms_share: number; p99_at_most_ms: number };

/** The clean and the flagged evaluations of a window, apart: a flagged one waits for a PostgreSQL commit. */
function byPath(before: Record<EvaluateSeries, Map<number, number>>, after: Record<EvaluateSeries, Map<number, number>>): Record<"clean" | "flagged", PathFigures> {
  const figures = (series: "clean" | "flagged"): PathFigures => {
    const { calls, withinShare, p99AtMostMs } = histogramBetween(before[series], after[series], 0.005);
    return { calls, within_5ms_share: round(withinShare, 4), p99_at_most_ms: p99AtMostMs };
  };
  return { clean: figures("clean"), flagged: figures("flagged") };
}

function pathLine(paths: Record<"clean" | "flagged", PathFigures>): string {
  const one = (name: string, path: PathFigures) => `${name} ${path.calls} calls, ${round(path.within_5ms_share * 100, 2)}% within 5 ms, p99 ≤ ${path.p99_at_most_ms} ms`;
  return `  by path: ${one("clean", paths.clean)}; ${one("flagged (a PostgreSQL commit)", paths.flagged)}`;
}

async function main(): Promise<void> {
  const database = await freshDatabase("bench_risk");
  const [riskPort] = (await freePorts(1)) as [number];
  const serving = create(HealthCheckResponseSchema, { status: ServingStatus.SERVING });
  const bare = await startStub((router) => router.service(Health, { check: () => serving }));
  const barePort = Number(new URL(bare.baseUrl).port);
  let risk: ServiceProcess | undefined;
  const load = new LoadProcess<RunMessage, ChildMessage>(process.execPath, ["--import", "tsx", path.join(HERE, "risk.ts")]);
  const tenantId = `bench-${Date.now().toString(36)}`;
  let runs = 0;
  const run = async (target: Target, port: number, fields: Partial<RunMessage>): Promise<RunResult> => {
    const id = `${target}-${++runs}`;
    const message: RunMessage = { type: "run", id, target, port, tenantId, warmupSeconds: WARMUP_SECONDS, seconds: SECONDS, concurrency: CONCURRENCY, ratePerSecond: 0, ...fields };
    load.send(message);
    return (await load.next("result", id, (message.warmupSeconds + message.seconds) * 1000 + 60_000)) as RunResult;
  };
  const say = (line: string) => process.stdout.write(`${line}\n`);
  try {
    await load.next("ready", undefined, 30_000);
    say(`baselines: Redis PING and a bare connect-node Health/Check, ${CONCURRENCY} in flight, ${BASELINE_SECONDS} s each`);
    const ping = await run("ping", 0, { warmupSeconds: 1, seconds: BASELINE_SECONDS });
    const bareRpc = await run("bare", barePort, { warmupSeconds: 1, seconds: BASELINE_SECONDS });

    risk = await startRisk(database.url, riskPort);
    say(`closed loop: Evaluate, ${CONCURRENCY} in flight, ${WARMUP_SECONDS} s warm-up, ${SECONDS} s measured`);
    const cpuBefore = processCpuSeconds(risk.pid) ?? 0;
    const closed = await run("evaluate", riskPort, {});
    const cpuAfter = processCpuSeconds(risk.pid) ?? 0;
    const openLoop = async (share: number) => {
      const rate = Math.max(1, Math.round(closed.perSecond * share));
      say(`open loop: Evaluate at ${rate}/s (${share} of the closed loop), ${SECONDS} s measured`);
      const before = await evaluateHistograms(riskPort);
      const result = await run("evaluate", riskPort, { ratePerSecond: rate, warmupSeconds: 1 });
      const after = await evaluateHistograms(riskPort);
      return { rate, result, atService: histogramBetween(before.all, after.all, 0.005), paths: byPath(before, after) };
    };
    const { rate: openRate, result: open, atService, paths } = await openLoop(OPEN_SHARE);
    const light = await openLoop(LIGHT_SHARE);

    const evaluations = closed.ok;
    const figures = {
      bench: "risk",
      seconds: SECONDS,
      concurrency: CONCURRENCY,
      users: USERS,
      evaluations_per_s: closed.perSecond,
      closed_p50_ms: round(closed.p50Ms),
      closed_p99_ms: round(closed.p99Ms),
      open_rate_per_s: openRate,
      p50_ms: round(open.p50Ms),
      p99_ms: round(open.p99Ms),
      max_ms: round(open.maxMs),
      service_within_5ms_share: round(atService.withinShare, 4),
      service_p99_at_most_ms: atService.p99AtMostMs,
      service_by_path: paths,
      light_rate_per_s: light.rate,
      light_p50_ms: round(light.result.p50Ms),
      light_p99_ms: round(light.result.p99Ms),
      light_service_within_5ms_share: round(light.atService.withinShare, 4),
      light_service_p99_at_most_ms: light.atService.p99AtMostMs,
      light_service_by_path: light.paths,
      risk_cpu_ms_per_evaluation: evaluations > 0 ? round(((cpuAfter - cpuBefore) * 1000) / (evaluations * (1 + WARMUP_SECONDS / SECONDS)), 3) : 0,
      flagged_share: round((closed.flagged + open.flagged + light.result.flagged) / Math.max(1, closed.ok + open.ok + light.result.ok), 3),
      unavailable: closed.unavailable + open.unavailable + light.result.unavailable,
      retries: closed.retries + open.retries + light.result.retries,
      retries_not_replayed: closed.retriesNotReplayed + open.retriesNotReplayed + light.result.retriesNotReplayed,
      baseline_redis_ping_per_s: ping.perSecond,
      baseline_redis_ping_p99_ms: round(ping.p99Ms),
      baseline_bare_rpc_per_s: bareRpc.perSecond,
      baseline_bare_rpc_p99_ms: round(bareRpc.p99Ms),
      evaluations_vs_bare_rpc: round(closed.perSecond / Math.max(1, bareRpc.perSecond)),
      errors: closed.errors + open.errors + light.result.errors + ping.errors + bareRpc.errors,
      first_error: closed.firstError ?? open.firstError ?? light.result.firstError ?? ping.firstError ?? bareRpc.firstError ?? null,
    };
    say([
      "",
      `baseline Redis PING (one connection)     ${String(figures.baseline_redis_ping_per_s).padStart(7)}/s  p99 ${figures.baseline_redis_ping_p99_ms} ms`,
      `baseline bare connect-node Health/Check  ${String(figures.baseline_bare_rpc_per_s).padStart(7)}/s  p99 ${figures.baseline_bare_rpc_p99_ms} ms`,
      `closed loop Evaluate                     ${String(figures.evaluations_per_s).padStart(7)}/s  p50 ${figures.closed_p50_ms} ms  p99 ${figures.closed_p99_ms} ms  (${figures.evaluations_vs_bare_rpc}× the bare RPC server)`,
      `open loop Evaluate at ${String(openRate).padStart(5)}/s          client p50 ${figures.p50_ms} ms  p99 ${figures.p99_ms} ms  max ${figures.max_ms} ms`,
      `  at the service: ${round(figures.service_within_5ms_share * 100, 2)}% handled within 5 ms, p99 ≤ ${figures.service_p99_at_most_ms} ms (budget: p99 ≤ 5 ms)`,
      pathLine(figures.service_by_path),
      `open loop Evaluate at ${String(light.rate).padStart(5)}/s          client p50 ${figures.light_p50_ms} ms  p99 ${figures.light_p99_ms} ms`,
      `  at the service: ${round(figures.light_service_within_5ms_share * 100, 2)}% handled within 5 ms, p99 ≤ ${figures.light_service_p99_at_most_ms} ms (budget: p99 ≤ 5 ms)`,
      pathLine(figures.light_service_by_path),
      `Risk CPU ${figures.risk_cpu_ms_per_evaluation} ms per evaluation; ${round(figures.flagged_share * 100, 1)}% flagged; ${figures.unavailable} RISK_UNAVAILABLE fallbacks; ${figures.retries} retries, ${figures.retries_not_replayed} not replayed; ${figures.errors} errors`,
      "",
    ].join("\n"));
    process.stdout.write(`${JSON.stringify(figures)}\n`);
  } finally {
    await load.stop(5_000);
    await risk?.stop();
    await bare.close();
    await database.drop();
    await deleteRedisKeys(`cowrie:risk:{${tenantId}}:*`);
  }
}

if (process.send) loadMain();
else await main();
