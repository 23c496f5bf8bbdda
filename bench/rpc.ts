// npm run bench:rpc: what one internal hop costs on this machine, measured rather than assumed.
//
// Servers run in this process (pinned to core 0 when taskset is available); the load comes from
// a child process (bench/rpc-load.ts, pinned to core 1) that keeps BENCH_CONCURRENCY unary
// grpc.health.v1.Health/Check calls in flight. Cases, each a warm-up and then a measured window:
//   a   bare @grpc/grpc-js server          <- grpc-js client
//   b   bare connect-node server (h2c)     <- connect-node, Connect protocol, binary, HTTP/2
//   c   Cowrie runtime server, silent log  <- connect-node, Connect protocol, binary, HTTP/2
//   c2  c with per-RPC logging at info to /dev/null (production logs every RPC)
//   d   Cowrie runtime server, silent log  <- connect-node, gRPC protocol
//   e   Cowrie runtime server, silent log  <- grpc-js client
// Per case: requests/s, client-side p50/p99 latency, errors, and the CPU each side spent per call
// (which side saturates tells whether the figure is a server capacity or a client limit).
// The summary table goes to stdout, then, as the last line, one JSON object with the figures.
//
// Environment: BENCH_SECONDS (5), BENCH_WARMUP_SECONDS (1), BENCH_CONCURRENCY (64),
// BENCH_PREWARM_SECONDS (2; unmeasured run of each library pairing before the cases),
// BENCH_CONNECTIONS (1; HTTP/2 connections the calls are spread over),
// BENCH_TIMEOUT_MS (5000; deadline on every call, 0 for none), BENCH_CASES (e.g. "b,c"),
// BENCH_PIN (1 = server on core 0 and load on core 1; "S,C" picks the cores; 0 pins nothing),
// BENCH_TRACE=1 (the child prints completed calls/s per 500 ms on stderr).
//
// Reading the figures: with one Node client process the closed loop mostly alternates (the
// server answers a batch while the client waits, then the other way round), so req/s reflects
// client + server cost and moves ±30% between runs. CPU µs per call on each side is the steadier
// measure of what a hop costs; "other load" says whether something else disturbed the run.
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import * as http2 from "node:http2";
import { fileURLToPath } from "node:url";
import * as path from "node:path";
import { pino } from "pino";
import * as grpc from "@grpc/grpc-js";
import { create } from "@bufbuild/protobuf";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import {
  Health,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
} from "../gen/grpc/health/v1/health_pb.js";
import { loadConfig } from "../services/runtime/config.js";
import { grpcServiceDefinition } from "../services/runtime/grpc-js.js";
import { HealthState } from "../services/runtime/health.js";
import type { Logger } from "../services/runtime/log.js";
import { startServer } from "../services/runtime/server.js";
import { type CaseResult, type ChildMessage, type ClientKind, type RunMessage } from "./rpc-load.js";
import { LoadProcess } from "./support.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const HOST = "127.0.0.1";

function numberFromEnv(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === "") return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < min || value > max) {
    console.error(`bench:rpc: ${name} must be a number between ${min} and ${max}, got '${raw}'`);
    process.exit(2);
  }
  return value;
}

const SECONDS = numberFromEnv("BENCH_SECONDS", 5, 0.1, 600);
const WARMUP_SECONDS = numberFromEnv("BENCH_WARMUP_SECONDS", 1, 0, 60);
const CONCURRENCY = Math.floor(numberFromEnv("BENCH_CONCURRENCY", 64, 1, 10_000));
const CONNECTIONS = Math.floor(numberFromEnv("BENCH_CONNECTIONS", 1, 1, 64));
const PREWARM_SECONDS = numberFromEnv("BENCH_PREWARM_SECONDS", 2, 0, 60);
const TIMEOUT_MS = Math.floor(numberFromEnv("BENCH_TIMEOUT_MS", 5000, 0, 60_000));
/** Cores for the server (this process) and the load child; undefined leaves both unpinned. */
const PIN = ((): [number, number] | undefined => {
  const raw = (process.env.BENCH_PIN ?? "1").trim();
  if (raw === "0") return undefined;
  if (raw === "1" || raw === "") return [0, 1];
  const match = /^(\d+),(\d+)$/.exec(raw);
  if (!match) {
    console.error(`bench:rpc: BENCH_PIN must be 0, 1 or 'serverCore,clientCore', got '${raw}'`);
    process.exit(2);
  }
  return [Number(match[1]), Number(match[2])];
})();

// ---------------------------------------------------------------------------------------------
// Servers

interface BenchServer {
  readonly port: number;
  close(): Promise<void>;
}

const SERVING = create(HealthCheckResponseSchema, { status: ServingStatus.SERVING });

async function startGrpcJsBaseline(): Promise<BenchServer> {
  const server = new grpc.Server();
  server.addService(grpcServiceDefinition(Health), {
    check: (_call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => callback(null, SERVING),
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${HOST}:0`, grpc.ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 2000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}

async function startConnectBaseline(): Promise<BenchServer> {
  const handler = connectNodeAdapter({
    routes: (router) => router.service(Health, { check: () => SERVING }),
  });
  const server = http2.createServer({}, handler);
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => {
    sessions.add(session);
    session.on("close", () => sessions.delete(session));
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, HOST, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as { port: number }).port;
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const session of sessions) session.close();
        const force = setTimeout(() => {
          for (const session of sessions) session.destroy();
        }, 1000);
        server.close(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}

/** Cowrie's runtime server serving only health and reflection, with no dependencies: SERVING. */
async function startCowrie(log: Logger): Promise<BenchServer> {
  const config = loadConfig({
    COWRIE_HOST: HOST,
    COWRIE_SHUTDOWN_GRACE_MS: "1000",
    COWRIE_HEALTH_INTERVAL_MS: "60000",
  } as NodeJS.ProcessEnv);
  const health = new HealthState("bench", [], [], log);
  await health.start(config.healthIntervalMs, 1000);
  if (health.status !== ServingStatus.SERVING) throw new Error("the bench's HealthState is not SERVING");
  const server = await startServer({
    name: "bench",
    host: HOST,
    port: 0,
    config,
    log,
    services: [],
    routes: () => {},
    health,
  });
  return server;
}

/** The production logger's shape (services/runtime/log.ts, a per-service child) writing to /dev/null. */
function devNullLogger(): { log: Logger; flush(): void } {
  // pino's default destination (stdout) is an asynchronous SonicBoom; this is the same on /dev/null.
  const destination = pino.destination({ dest: "/dev/null", sync: false });
  const root = pino(
    {
      level: "info",
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
  return {
    log: root.child({ service: "bench" }),
    flush: () => {
      try {
        destination.flushSync();
      } catch {
        // nothing buffered, or still opening: nothing to lose on /dev/null
      }
      destination.end();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Cases

interface CaseSpec {
  id: string;
  key: string;
  label: string;
  client: ClientKind;
  start(): Promise<BenchServer>;
}

const silent = pino({ level: "silent" });
let logged: ReturnType<typeof devNullLogger> | undefined;

// The bare baselines run first: the runtime's call context is an AsyncLocalStorage, and on
// Node 20 the first storage.run() turns on promise hooks for the rest of the process.
const CASES: CaseSpec[] = [
  { id: "a", key: "grpcjs_baseline", label: "bare grpc-js server <- grpc-js client", client: "grpcjs", start: startGrpcJsBaseline },
  { id: "b", key: "connect_baseline", label: "bare connect-node server <- Connect binary h2", client: "connect", start: startConnectBaseline },
  { id: "c", key: "cowrie_connect", label: "Cowrie server <- Connect binary h2", client: "connect", start: () => startCowrie(silent) },
  {
    id: "c2",
    key: "cowrie_connect_logged",
    label: "Cowrie server, info logs to /dev/null <- Connect",
    client: "connect",
    start: () => {
      logged = devNullLogger();
      return startCowrie(logged.log);
    },
  },
  { id: "d", key: "cowrie_grpc", label: "Cowrie server <- connect-node gRPC", client: "connect-grpc", start: () => startCowrie(silent) },
  { id: "e", key: "cowrie_grpcjs_client", label: "Cowrie server <- grpc-js client", client: "grpcjs", start: () => startCowrie(silent) },
];

// V8 needs a few thousand calls before connect-node and grpc-js run optimised code (a cold
// connect-node pair climbs from ~500 to ~2,000 calls/s over its first ~4 s here), far more than
// one 1 s warm-up. Before the measured cases, every library code path (grpc-js server and client,
// connect-node server and client with both protocols) runs once, unmeasured, on the bare servers
// only, so that the baselines still run before anything enables the runtime's AsyncLocalStorage.
const PREWARM: CaseSpec[] = [
  { id: "w1", key: "prewarm", label: "grpc-js server <- grpc-js client", client: "grpcjs", start: startGrpcJsBaseline },
  { id: "w2", key: "prewarm", label: "connect-node server <- Connect", client: "connect", start: startConnectBaseline },
  { id: "w3", key: "prewarm", label: "connect-node server <- connect-node gRPC", client: "connect-grpc", start: startConnectBaseline },
];

interface Measured {
  spec: CaseSpec;
  result: CaseResult;
  serverCpuUs: number;
  serverWallSeconds: number;
  /** CPU the rest of the machine used during the window (% of one core), when /proc/stat exists. */
  otherCpuPct: number | undefined;
}

/** Busy CPU seconds of the whole machine so far (all cores), from /proc/stat; undefined elsewhere. */
function machineBusySeconds(): number | undefined {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n", 1)[0] ?? "";
    const [, user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).map(Number);
    const busy = [user, nice, system, irq, softirq, steal].reduce<number>((sum, value) => sum + (value ?? 0), 0);
    return Number.isFinite(busy) ? busy / 100 : undefined; // USER_HZ is 100 on Linux
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// The load child

function hasTaskset(): boolean {
  try {
    execFileSync("taskset", ["-V"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** The load generator, bench/rpc-load.ts, in its own process, pinned to a core when asked. */
type Load = LoadProcess<RunMessage, ChildMessage>;

function startLoad(pinTo: number | undefined): Load {
  const nodeArgs = ["--import", "tsx", path.join(HERE, "rpc-load.ts")];
  return pinTo === undefined
    ? new LoadProcess(process.execPath, nodeArgs)
    : new LoadProcess("taskset", ["-c", String(pinTo), process.execPath, ...nodeArgs]);
}

function cpuMicros(): number {
  const usage = process.cpuUsage();
  return usage.user + usage.system;
}

async function runCase(child: Load, spec: CaseSpec, warmupSeconds = WARMUP_SECONDS, seconds = SECONDS): Promise<Measured> {
  const server = await spec.start();
  try {
    const message: RunMessage = {
      type: "run",
      id: spec.id,
      client: spec.client,
      port: server.port,
      warmupSeconds,
      seconds,
      concurrency: CONCURRENCY,
      connections: CONNECTIONS,
      timeoutMs: TIMEOUT_MS,
    };
    // Bounds: the window, plus the last calls' deadline, plus slack for start-up.
    const boundMs = (warmupSeconds + seconds) * 1000 + Math.max(TIMEOUT_MS, 1000) + 10_000;
    const started = child.next("measure-start", spec.id, boundMs);
    const ended = child.next("measure-end", spec.id, boundMs);
    const resulted = child.next("result", spec.id, boundMs);
    child.send(message);
    await started;
    const cpuStart = cpuMicros();
    const machineStart = machineBusySeconds();
    const wallStart = process.hrtime.bigint();
    await ended;
    const serverCpuUs = cpuMicros() - cpuStart;
    const machineEnd = machineBusySeconds();
    const serverWallSeconds = Number(process.hrtime.bigint() - wallStart) / 1e9;
    const result = (await resulted) as CaseResult;
    // Whatever else ran on the machine meanwhile (other processes, and the kernel's softirq work
    // for our own sockets): the figures are only comparable when this stays small.
    const otherCpuPct = machineStart === undefined || machineEnd === undefined
      ? undefined
      : Math.max(0, ((machineEnd - machineStart) - (serverCpuUs + result.clientCpuUs) / 1e6) / serverWallSeconds) * 100;
    return { spec, result, serverCpuUs, serverWallSeconds, otherCpuPct };
  } finally {
    await server.close();
    if (spec.id === "c2") logged?.flush();
  }
}

// ---------------------------------------------------------------------------------------------
// Report

const round = (value: number, digits: number): number => {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
};

function table(rows: Measured[], pin: [number, number] | undefined): string {
  const header = ["case", "what", "req/s", "p50 ms", "p99 ms", "errors", "server CPU", "client CPU", "server µs/call", "client µs/call", "server core cap/s", "other load"];
  const body = rows.map(({ spec, result, serverCpuUs, serverWallSeconds, otherCpuPct }) => {
    const calls = Math.max(1, result.calls);
    return [
      spec.id,
      spec.label,
      result.rps.toFixed(0),
      result.p50Ms.toFixed(2),
      result.p99Ms.toFixed(2),
      String(result.errors),
      `${((serverCpuUs / 1e6 / serverWallSeconds) * 100).toFixed(0)}%`,
      `${((result.clientCpuUs / 1e6 / result.windowSeconds) * 100).toFixed(0)}%`,
      (serverCpuUs / calls).toFixed(0),
      (result.clientCpuUs / calls).toFixed(0),
      (1e6 / Math.max(1, serverCpuUs / calls)).toFixed(0),
      otherCpuPct === undefined ? "n/a" : `${otherCpuPct.toFixed(0)}%`,
    ];
  });
  const widths = header.map((title, column) => Math.max(title.length, ...body.map((row) => (row[column] as string).length)));
  const line = (cells: string[]): string =>
    cells.map((cell, column) => (column <= 1 ? cell.padEnd(widths[column] as number) : cell.padStart(widths[column] as number))).join("  ");
  const lines = [
    `rpc bench: ${SECONDS} s per case after ${WARMUP_SECONDS} s warm-up, ${CONCURRENCY} calls in flight ` +
      `over ${CONNECTIONS} connection${CONNECTIONS === 1 ? "" : "s"}, ` +
      `${TIMEOUT_MS > 0 ? `${TIMEOUT_MS} ms deadline on every call` : "no deadline"}, ` +
      (pin ? `server process on core ${pin[0]}, load process on core ${pin[1]}` : "processes not pinned"),
    line(header),
    line(header.map((title) => "-".repeat(title.length))),
    ...body.map(line),
    "CPU columns are % of one core over the measured window (GC threads included); µs/call is CPU time per completed call;",
    "server core cap/s = 1e6 / server µs/call, the calls/s one saturated server core would answer at that cost.",
    "A side at ~100% is the bottleneck: if it is the client, req/s is the client's limit, not the server's capacity.",
    "other load: CPU the rest of the machine used meanwhile (other processes, kernel network work), % of one core.",
  ];
  const busiest = Math.max(0, ...rows.map((row) => row.otherCpuPct ?? 0));
  if (busiest > 15) {
    lines.push(`WARNING: something else used up to ${busiest.toFixed(0)}% of a core during the run; these figures are disturbed.`);
  }
  for (const { spec, result } of rows) {
    if (result.firstError !== undefined) lines.push(`case ${spec.id}: first error: ${result.firstError}`);
  }
  return lines.join("\n");
}

function summary(rows: Measured[], pin: [number, number] | undefined): Record<string, unknown> {
  const byKey = new Map(rows.map((row) => [row.spec.key, row]));
  const rps = (key: string): number | null => {
    const row = byKey.get(key);
    return row ? round(row.result.rps, 1) : null;
  };
  const ratio = (a: string, b: string): number | null => {
    const x = rps(a);
    const y = rps(b);
    return x !== null && y !== null && y > 0 ? round(x / y, 3) : null;
  };
  const c = byKey.get("cowrie_connect");
  const cases: Record<string, unknown> = {};
  for (const { spec, result, serverCpuUs, serverWallSeconds, otherCpuPct } of rows) {
    const calls = Math.max(1, result.calls);
    cases[spec.key] = {
      case: spec.id,
      rps: round(result.rps, 1),
      p50_ms: round(result.p50Ms, 3),
      p99_ms: round(result.p99Ms, 3),
      errors: result.errors,
      server_cpu_pct: round((serverCpuUs / 1e6 / serverWallSeconds) * 100, 1),
      client_cpu_pct: round((result.clientCpuUs / 1e6 / result.windowSeconds) * 100, 1),
      server_us_per_call: round(serverCpuUs / calls, 1),
      client_us_per_call: round(result.clientCpuUs / calls, 1),
      server_core_capacity_rps: round(1e6 / Math.max(1, serverCpuUs / calls), 0),
      other_cpu_pct: otherCpuPct === undefined ? null : round(otherCpuPct, 1),
    };
  }
  const serverUs = (key: string): number | null => {
    const row = byKey.get(key);
    return row ? row.serverCpuUs / Math.max(1, row.result.calls) : null;
  };
  const usRatio = (a: string, b: string): number | null => {
    const x = serverUs(a);
    const y = serverUs(b);
    return x !== null && y !== null && y > 0 ? round(x / y, 3) : null;
  };
  return {
    bench: "rpc",
    seconds: SECONDS,
    warmup_seconds: WARMUP_SECONDS,
    concurrency: CONCURRENCY,
    connections: CONNECTIONS,
    timeout_ms: TIMEOUT_MS,
    pinned: pin ? { server_core: pin[0], client_core: pin[1] } : false,
    grpcjs_baseline_rps: rps("grpcjs_baseline"),
    connect_baseline_rps: rps("connect_baseline"),
    cowrie_connect_rps: rps("cowrie_connect"),
    cowrie_connect_logged_rps: rps("cowrie_connect_logged"),
    cowrie_grpc_rps: rps("cowrie_grpc"),
    cowrie_grpcjs_client_rps: rps("cowrie_grpcjs_client"),
    cowrie_connect_p50_ms: c ? round(c.result.p50Ms, 3) : null,
    cowrie_connect_p99_ms: c ? round(c.result.p99Ms, 3) : null,
    errors: rows.reduce((sum, row) => sum + row.result.errors, 0),
    ratios: {
      cowrie_connect_vs_connect_baseline: ratio("cowrie_connect", "connect_baseline"),
      cowrie_connect_vs_cowrie_grpc: ratio("cowrie_connect", "cowrie_grpc"),
      cowrie_connect_logged_vs_cowrie_connect: ratio("cowrie_connect_logged", "cowrie_connect"),
      connect_baseline_vs_grpcjs_baseline: ratio("connect_baseline", "grpcjs_baseline"),
      server_us_per_call_cowrie_connect_vs_connect_baseline: usRatio("cowrie_connect", "connect_baseline"),
      server_us_per_call_cowrie_grpc_vs_cowrie_connect: usRatio("cowrie_grpc", "cowrie_connect"),
    },
    cases,
  };
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  // BENCH_CASES picks cases and their order.
  const selected = process.env.BENCH_CASES?.split(",").map((id) => id.trim()).filter(Boolean);
  const cases = selected && selected.length > 0
    ? selected.flatMap((id) => CASES.filter((spec) => spec.id === id))
    : CASES;
  if (cases.length === 0) {
    console.error(`bench:rpc: BENCH_CASES selects nothing; cases are ${CASES.map((spec) => spec.id).join(", ")}`);
    process.exit(2);
  }
  // Whole-run watchdog: every phase is bounded anyway; this only stops a wedged run.
  const perCaseSlackMs = Math.max(TIMEOUT_MS, 1000) + 15_000;
  const watchdogMs = cases.length * ((WARMUP_SECONDS + SECONDS) * 1000 + perCaseSlackMs) +
    PREWARM.length * (PREWARM_SECONDS * 1000 + perCaseSlackMs) + 30_000;
  const watchdog = setTimeout(() => {
    console.error(`bench:rpc: still running after ${watchdogMs} ms; giving up`);
    process.exit(1);
  }, watchdogMs);
  watchdog.unref();

  const pin = PIN && hasTaskset() ? PIN : undefined;
  if (pin) execFileSync("taskset", ["-a", "-p", "-c", String(pin[0]), String(process.pid)], { stdio: "ignore" });
  const child = startLoad(pin?.[1]);
  const rows: Measured[] = [];
  try {
    await child.next("ready", undefined, 30_000);
    if (PREWARM_SECONDS > 0) {
      for (const spec of PREWARM) {
        process.stderr.write(`bench:rpc: pre-warming ${spec.label} for ${PREWARM_SECONDS} s (not measured)...\n`);
        await runCase(child, spec, 0, PREWARM_SECONDS);
      }
    }
    for (const spec of cases) {
      process.stderr.write(`bench:rpc: case ${spec.id} (${spec.label})...\n`);
      rows.push(await runCase(child, spec));
    }
  } finally {
    const code = await child.stop(5000);
    if (code !== 0) process.exitCode = 1;
  }
  console.log(table(rows, pin));
  console.log(JSON.stringify(summary(rows, pin)));
}

main().catch((error: unknown) => {
  console.error("bench:rpc failed:", error instanceof Error ? error.stack ?? error.message : error);
  process.exit(1);
});
