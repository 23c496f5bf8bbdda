// Small pieces shared by the benchmarks: the postgres.js commit baseline (the same measurement
// bench/ledger.ts makes: one-row insert transactions from 16 concurrent clients on an empty
// table, this machine's commit ceiling), percentiles, what /proc says about processes and the
// machine, the two sides of a load process (LoadProcess, serveLoad) and the machinery of the
// whole-mesh benchmarks (bench/mesh.ts, bench/spike.ts): the mesh's processes and environment
// (BenchMesh), the bench tenant, CPU accounting, the summary's shared lines, and teardown on
// failure or Ctrl-C (runGuarded).
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createWriteStream, mkdirSync, readFileSync } from "node:fs";
import * as path from "node:path";
import { performance } from "node:perf_hooks";
import { createInterface } from "node:readline";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { Http2SessionManager, createConnectTransport } from "@connectrpc/connect-node";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import postgres from "postgres";
import { AdminService } from "../gen/cowrie/edge/v1/admin_pb.js";
import { PaymentsService } from "../gen/cowrie/edge/v1/payments_pb.js";
import { WalletsService, type WalletKind } from "../gen/cowrie/edge/v1/wallets_pb.js";
import { FindingKind, LedgerService, type Account, type VerifyJournalResponse } from "../gen/cowrie/ledger/v1/ledger_pb.js";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { deleteRedisKeys } from "../services/risk/test-support.js";
import { PaymentStatus as RouterPaymentStatus } from "../gen/cowrie/router/v1/router_pb.js";
import { meshTopology } from "../services/mesh.js";
import { gatewayReference } from "../services/router/gateway-flow.js";
import type { RecordView } from "../services/simulator/control.js";
import { SIMULATED_GATEWAYS } from "../services/simulator/core.js";
import { pause } from "../services/runtime/pause.js";
import { runLimited } from "../services/runtime/limits.js";
import { TEST_AMQP_URL, TEST_REDIS_URL, deleteBrokerTopology, freePorts, meshEnvironment } from "../services/runtime/testing.js";

export const BASELINE_CLIENTS = 16;

export interface PhaseResult {
  operations: number;
  units: number;
  seconds: number;
  latenciesMs: number[];
  errors: number;
}

/** Runs `work` from `concurrency` loops until the time is up; each call returns how many units it did. */
export async function runFor(seconds: number, concurrency: number, work: () => Promise<number>): Promise<PhaseResult> {
  const endsAtMs = Date.now() + seconds * 1000;
  const latenciesMs: number[] = [];
  let units = 0;
  let errors = 0;
  const startedAtMs = Date.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (Date.now() < endsAtMs) {
        const callStartedMs = performance.now();
        try {
          // Not `units += await work()`: that reads `units` before the await and loses the
          // other loops' additions.
          const done = await work();
          units += done;
          latenciesMs.push(performance.now() - callStartedMs);
        } catch {
          errors++;
        }
      }
    }),
  );
  return { operations: latenciesMs.length, units, seconds: (Date.now() - startedAtMs) / 1000, latenciesMs, errors };
}

/** Units per second of a phase, rounded. */
export const rate = (result: PhaseResult): number => Math.round(result.units / result.seconds);

/**
 * One-row insert transactions (autocommit) from BASELINE_CLIENTS concurrent postgres.js
 * connections for `seconds`, into a new table `bench_baseline` of the database at `url`.
 */
export async function commitBaseline(url: string, seconds: number, clients = BASELINE_CLIENTS): Promise<PhaseResult> {
  const sql = postgres(url, { max: clients, onnotice: () => {} });
  await sql`create table bench_baseline (id bigserial primary key, amount_minor bigint not null, created_at timestamptz not null default now())`;
  try {
    return await runFor(seconds, clients, async () => {
      await sql`insert into bench_baseline (amount_minor) values (${1})`;
      return 1;
    });
  } finally {
    await sql.end();
  }
}

export interface LatencySummary {
  count: number;
  p50Ms: number;
  p95Ms: number;
  p99Ms: number;
  maxMs: number;
}

/** Count, nearest-rank p50/p95/p99 and maximum of latencies in ms, in any order. */
export function summarize(values: readonly number[]): LatencySummary {
  const sorted = Float64Array.from(values).sort();
  return {
    count: sorted.length,
    p50Ms: percentileSorted(sorted, 0.5),
    p95Ms: percentileSorted(sorted, 0.95),
    p99Ms: percentileSorted(sorted, 0.99),
    maxMs: sorted.length > 0 ? (sorted[sorted.length - 1] as number) : 0,
  };
}

/** Nearest-rank percentile of an ascending array (0 when empty). */
export function percentileSorted(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank] as number;
}

export const round = (value: number, digits = 2): number => {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
};

// ---------------------------------------------------------------------------------------------
// /proc (Linux). Every reader returns undefined where /proc or the process is not there.

const CLOCK_TICKS_PER_SECOND = 100; // USER_HZ on Linux

/** CPU seconds (user + system, all threads) a process has used so far. */
export function processCpuSeconds(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name is in parentheses and may contain spaces: count fields after the last ")".
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    return Number.isFinite(utime) && Number.isFinite(stime) ? (utime + stime) / CLOCK_TICKS_PER_SECOND : undefined;
  } catch {
    return undefined;
  }
}

/** A `kB` field of /proc/<pid>/status (VmHWM: peak resident set; VmRSS: current) in MiB. */
export function processMemoryMb(pid: number, field: "VmHWM" | "VmRSS" = "VmHWM"): number | undefined {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status);
    return match ? Number(match[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Busy CPU seconds of the whole machine so far (all cores), from /proc/stat. */
export function machineBusySeconds(): number | undefined {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n", 1)[0] ?? "";
    const [, user, nice, system, , , irq, softirq, steal] = line.trim().split(/\s+/).map(Number);
    const busy = [user, nice, system, irq, softirq, steal].reduce<number>((sum, value) => sum + (value ?? 0), 0);
    return Number.isFinite(busy) ? busy / CLOCK_TICKS_PER_SECOND : undefined;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Options: `--name value` flags override BENCH_* environment variables.

/** Reads `--flag value` / `--flag=value` from argv, else the environment variable, else the default. */
export function numberOption(
  argv: readonly string[],
  flag: string,
  envName: string,
  fallback: number,
  min: number,
  max: number,
  prefix: string,
): number {
  let raw: string | undefined;
  for (let index = 0; index < argv.length; index++) {
    const arg = argv[index] as string;
    if (arg === `--${flag}`) raw = argv[index + 1];
    else if (arg.startsWith(`--${flag}=`)) raw = arg.slice(flag.length + 3);
  }
  if (raw === undefined) raw = process.env[envName];
  if (raw === undefined || raw.trim() === "") return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < min || value > max) {
    console.error(`${prefix}: --${flag} / ${envName} must be a number between ${min} and ${max}, got '${raw}'`);
    process.exit(2);
  }
  return value;
}

/**
 * A bench's option reader: prints `usage` and exits on --help or -h; otherwise reads numbers from
 * `--flag value` (or `--flag=value`), else the environment variable, else the default, exiting
 * with code 2 on a value out of range.
 */
export function benchOptions(name: string, usage: string): (flag: string, envName: string, fallback: number, min: number, max: number) => number {
  const argv = process.argv.slice(2);
  if (argv.includes("--help") || argv.includes("-h")) {
    process.stdout.write(usage);
    process.exit(0);
  }
  return (flag, envName, fallback, min, max) => numberOption(argv, flag, envName, fallback, min, max, name);
}

/** A message from a load process: its own kinds, tagged by `type` and, per phase, `id`. */
export type LoadMessage = { type: string; id?: string } | { type: "fatal"; message: string };

/**
 * A load generator in its own process, spoken to over IPC: `next` waits for one message of a type
 * (and phase id), failing on the child's fatal message, its exit or a timeout. The child's stdout
 * goes to our stderr, so the JSON line stays the last line of our stdout.
 */
export class LoadProcess<In, Out extends LoadMessage> {
  readonly #child: ChildProcess;
  readonly #waiters = new Map<string, (message: Out | { type: "fatal"; message: string }) => void>();
  readonly exited: Promise<number | null>;
  #failure: string | undefined;

  constructor(command: string, args: string[], cwd?: string) {
    this.#child = spawn(command, args, { cwd, stdio: ["ignore", "pipe", "inherit", "ipc"] });
    this.#child.stdout?.pipe(process.stderr);
    this.exited = new Promise((resolve) => this.#child.once("exit", (code) => resolve(code)));
    this.#child.on("message", (raw: unknown) => {
      const message = raw as Out;
      if (message.type === "fatal" && "message" in message) {
        this.#failure = message.message;
        for (const waiter of [...this.#waiters.values()]) waiter(message);
        return;
      }
      const key = "id" in message && message.id !== undefined ? `${message.type}:${message.id}` : message.type;
      this.#waiters.get(key)?.(message);
    });
    void this.exited.then(() => {
      for (const waiter of [...this.#waiters.values()]) waiter({ type: "fatal", message: this.#failure ?? "load process exited" });
    });
  }

  get pid(): number {
    return this.#child.pid as number;
  }

  /**
   * The next message of `type` (and phase `id`). The promise never counts as an unhandled
   * rejection: a caller may wait for several messages at once and await them in turn.
   */
  next(type: string, id: string | undefined, timeoutMs: number): Promise<Out> {
    const key = id === undefined ? type : `${type}:${id}`;
    const waiting = new Promise<Out>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(key);
        reject(new Error(`no '${type}' from the load process within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiters.set(key, (message) => {
        clearTimeout(timer);
        this.#waiters.delete(key);
        if (message.type === "fatal" && "message" in message) reject(new Error(`load process failed: ${message.message}`));
        else resolve(message as Out);
      });
    });
    waiting.catch(() => undefined);
    return waiting;
  }

  send(message: In | { type: "exit" }): void {
    this.#child.send(message as object);
  }

  /** Asks the process to leave, and kills it if it has not within the grace period. */
  async stop(graceMs: number): Promise<number | null> {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return this.#child.exitCode;
    if (this.#child.connected) this.send({ type: "exit" });
    const timer = setTimeout(() => this.#child.kill("SIGKILL"), graceMs);
    const code = await this.exited;
    clearTimeout(timer);
    return code;
  }
}

/** Sends a message to the parent process while it listens; once it has gone, the message is dropped. */
export function sendToParent(message: object): void {
  if (process.connected) process.send?.(message, undefined, undefined, () => {});
}

/**
 * The child side of a LoadProcess: says "ready", builds its load from the "setup" message, runs
 * one phase at a time (`run` answers undefined for a message that is no phase; a phase that fails
 * is sent as "fatal" and ends the process), and leaves on "exit" or when the parent goes.
 */
export function serveLoad<Setup extends { type: "setup" }, Phase extends { type: string }, Worker extends { close(): void }>(
  notStartedHint: string,
  create: (setup: Setup) => Worker,
  run: (worker: Worker, phase: Phase) => Promise<object> | undefined,
): void {
  if (!process.send) {
    console.error(notStartedHint);
    process.exit(2);
  }
  let worker: Worker | undefined;
  let busy = false;
  const fatal = (error: unknown): void => {
    sendToParent({ type: "fatal", message: error instanceof Error ? error.stack ?? error.message : String(error) });
    process.exitCode = 1;
    worker?.close();
    if (process.connected) process.disconnect();
  };
  process.on("message", (raw: unknown) => {
    const message = raw as Setup | Phase | { type: "exit" };
    if (message.type === "exit") {
      worker?.close();
      if (process.connected) process.disconnect();
      return;
    }
    if (message.type === "setup") {
      worker = create(message as Setup);
      sendToParent({ type: "setup-done" });
      return;
    }
    if (busy || !worker) return;
    const phase = run(worker, message as Phase);
    if (!phase) return;
    busy = true;
    phase.then(
      (result) => {
        busy = false;
        sendToParent(result);
      },
      fatal,
    );
  });
  // Without a parent there is nothing to do: leave instead of lingering.
  process.on("disconnect", () => {
    worker?.close();
    const timer = setTimeout(() => process.exit(process.exitCode ?? 0), 2000);
    timer.unref();
  });
  sendToParent({ type: "ready" });
}

/**
 * Starts `call(dueAt)` on a fixed schedule, one every `intervalMs` from `startMs` until `endMs`,
 * whatever the answers do, so that each call can be timed from when it was due (no coordinated
 * omission). A call due while `maxInFlight` are running is not started: `shed(dueAt)` is told
 * instead. Resolves once the schedule is over, with how many calls were due, the most in flight
 * at once, and `running`: settles when the calls started have (each bounded by its deadline).
 */
export async function openLoop(
  schedule: { startMs: number; endMs: number; intervalMs: number; maxInFlight: number },
  call: (dueAt: number) => Promise<void>,
  shed: (dueAt: number) => void,
): Promise<{ due: number; maxInFlightSeen: number; running: Promise<unknown> }> {
  const { startMs, endMs, intervalMs, maxInFlight } = schedule;
  const running = new Set<Promise<void>>();
  let due = 0;
  let maxInFlightSeen = 0;
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const now = performance.now();
      // Start every call that is due by now.
      for (let dueAt = startMs + due * intervalMs; dueAt <= now && dueAt < endMs; dueAt = startMs + due * intervalMs) {
        due++;
        if (running.size >= maxInFlight) {
          shed(dueAt);
          continue;
        }
        const started = call(dueAt).finally(() => running.delete(started));
        running.add(started);
        maxInFlightSeen = Math.max(maxInFlightSeen, running.size);
      }
      if (startMs + due * intervalMs >= endMs) {
        clearInterval(timer);
        resolve();
      }
    };
    const timer = setInterval(tick, 1);
  });
  return { due, maxInFlightSeen, running: Promise.allSettled([...running]) };
}

// ---------------------------------------------------------------------------------------------
// Calls of a load process to the public Edge

/** PaymentsService clients of the public Edge, one per HTTP/2 connection, used in turn. */
export class EdgePayments {
  private readonly sessions: Http2SessionManager[];
  private readonly clients: Client<typeof PaymentsService>[];
  private next = 0;

  constructor(edgeUrl: string, connections: number) {
    this.sessions = Array.from({ length: Math.max(1, connections) }, () =>
      new Http2SessionManager(edgeUrl, { pingIntervalMs: 10_000, pingTimeoutMs: 5_000, idleConnectionTimeoutMs: 60_000 }),
    );
    this.clients = this.sessions.map((sessionManager) =>
      createClient(PaymentsService, createConnectTransport({ baseUrl: edgeUrl, httpVersion: "2", useBinaryFormat: true, sessionManager })),
    );
  }

  /** The client of the next connection. */
  client(): Client<typeof PaymentsService> {
    this.next = (this.next + 1) % this.clients.length;
    return this.clients[this.next] as Client<typeof PaymentsService>;
  }

  close(): void {
    for (const session of this.sessions) session.abort();
  }
}

/** A check of a bench failed (as opposed to an RPC error): `code` names it in the report. */
export class BenchCheck extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Connect codes whose outcome is decided (nothing was done, or it is recorded); the rest are unknown. */
const DECIDED = new Set([Code.InvalidArgument, Code.NotFound, Code.FailedPrecondition, Code.AlreadyExists, Code.PermissionDenied, Code.Unauthenticated, Code.ResourceExhausted]);

/**
 * What a failed call says: the BenchCheck's code or the Connect code ("deadline_exceeded"...), its
 * message, and whether its outcome is unknown (the call may still have taken effect).
 */
export function describeFailure(error: unknown): { code: string; detail: string; outcomeUnknown: boolean } {
  if (error instanceof BenchCheck) return { code: error.code, detail: error.message, outcomeUnknown: false };
  const connectError = ConnectError.from(error);
  return { code: codeToString(connectError.code), detail: connectError.rawMessage, outcomeUnknown: !DECIDED.has(connectError.code) };
}

// ---------------------------------------------------------------------------------------------
// Service processes of a whole-mesh benchmark

/** Start-up banners and shutdown notes the services and the simulator print; not worth relaying. */
const ROUTINE_LINE = /^(cowrie: (\d+ service\(s\) up|try |SIGTERM received)|\s+\w+( simulator)?\s+http:\/\/|cowrie-simulator: (listening|SIGTERM))/;
const RELAYED_LINES_MAX = 20;
const RELAYED_LINE_CHARS = 400;

export interface ServiceProcessOptions {
  /** The label of its relayed log lines and of errors. */
  name: string;
  port: number;
  env: NodeJS.ProcessEnv;
  /** The script and its arguments, run as `node --import tsx <args>` in `cwd`. */
  args: string[];
  cwd: string;
  /** Writes one progress line (to stderr). */
  progress: (line: string) => void;
  /** Starts the process with --cpu-prof into this folder. */
  cpuProfDir?: string;
  /** Also writes every line of its output, unabridged, to this file. */
  logFile?: string;
  startTimeoutMs: number;
  stopGraceMs: number;
}

/**
 * One process of the mesh (a service, or the gateway simulator). Its output is kept (the last 30
 * lines, for errors) and, past the routine lines, relayed to stderr up to a bound.
 */
export class ServiceProcess {
  /** Set once the run is being torn down: what the processes log while stopping is expected. */
  static tearingDown = false;
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
  readonly recent: string[] = [];
  warnings = 0;
  private relayed = 0;

  constructor(private readonly options: ServiceProcessOptions) {
    const args = ["--import", "tsx"];
    if (options.cpuProfDir) args.unshift("--cpu-prof", `--cpu-prof-dir=${options.cpuProfDir}`);
    this.child = spawn(process.execPath, [...args, ...options.args], { cwd: options.cwd, env: options.env, stdio: ["ignore", "pipe", "pipe"] });
    this.exited = new Promise((resolve) => this.child.once("exit", (code) => resolve(code)));
    const log = options.logFile ? createWriteStream(options.logFile, { flags: "a" }) : undefined;
    if (log) void this.exited.then(() => log.end());
    for (const stream of [this.child.stdout, this.child.stderr]) {
      if (!stream) continue;
      createInterface({ input: stream }).on("line", (line) => {
        log?.write(`${line}\n`);
        this.line(line);
      });
    }
  }

  get name(): string {
    return this.options.name;
  }

  get port(): number {
    return this.options.port;
  }

  get pid(): number {
    return this.child.pid as number;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  private line(line: string): void {
    this.recent.push(line);
    if (this.recent.length > 30) this.recent.shift();
    if (ROUTINE_LINE.test(line)) return;
    this.warnings++;
    if (this.relayed < RELAYED_LINES_MAX && !ServiceProcess.tearingDown) {
      this.relayed++;
      process.stderr.write(`[${this.name}] ${line.length > RELAYED_LINE_CHARS ? `${line.slice(0, RELAYED_LINE_CHARS)}...` : line}\n`);
    }
  }

  /** Waits until `probe` says yes, failing if the process exits or the start timeout passes. */
  async ready(probe: () => Promise<boolean>): Promise<void> {
    const startedAtMs = Date.now();
    for (;;) {
      if (await probe().catch(() => false)) return;
      if (!this.running) throw new Error(`${this.name} exited during start-up:\n${this.recent.join("\n")}`);
      if (Date.now() - startedAtMs > this.options.startTimeoutMs) {
        throw new Error(`${this.name} was not ready within ${this.options.startTimeoutMs} ms:\n${this.recent.join("\n")}`);
      }
      await pause(100);
    }
  }

  /** Waits until grpc.health.v1.Health/Check answers SERVING. */
  async serving(): Promise<void> {
    const baseUrl = `http://127.0.0.1:${this.port}`;
    const session = new Http2SessionManager(baseUrl);
    const health = createClient(Health, createConnectTransport({ baseUrl, httpVersion: "2", sessionManager: session }));
    try {
      await this.ready(async () => (await health.check({}, { timeoutMs: 500 })).status === ServingStatus.SERVING);
    } finally {
      session.abort();
    }
  }

  /** SIGTERM, then SIGKILL if it has not exited within the grace period. */
  async stop(): Promise<number | null> {
    if (!this.running) return this.child.exitCode;
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => {
      this.options.progress(`${this.name} did not stop within ${this.options.stopGraceMs} ms of SIGTERM; killing it`);
      this.child.kill("SIGKILL");
    }, this.options.stopGraceMs);
    const code = await this.exited;
    clearTimeout(timer);
    if (this.relayed < this.warnings) {
      process.stderr.write(`[${this.name}] (${this.warnings - this.relayed} more log lines not shown${ServiceProcess.tearingDown ? ", most while stopping" : ""})\n`);
    }
    return code;
  }
}

/** The services of a bench mesh, in start order: dependencies first. They start together; the order is for stopping in reverse, the Edge first, so nothing new comes in while the services behind it drain. */
export const MESH_SERVICES = ["ledger", "wallet", "risk", "router", "edge"] as const;
export type MeshServiceName = (typeof MESH_SERVICES)[number];

export interface BenchMeshOptions<Other extends string> {
  /** The repository: the processes run there. */
  root: string;
  databaseUrl: string;
  /** The run's broker namespace is `<namespacePrefix>-<pid>-<time>`: no other Router takes its work. */
  namespacePrefix: string;
  /** Other processes of the run that need a port of their own (the gateway simulator). */
  others: readonly Other[];
  /** More environment for every process, given every port; it wins over the defaults. */
  extraEnv?: (portOf: Readonly<Record<MeshServiceName | Other, number>>) => Record<string, string>;
  /** Writes one progress line (to stderr). */
  progress: (line: string) => void;
  /** Starts every service with --cpu-prof into <cpuProfDir>/<service>/ (one profile per thread). */
  cpuProfDir?: string;
  /** Also writes every process's whole output to <logDir>/<name>.log. */
  logDir?: string;
  startTimeoutMs: number;
  stopGraceMs: number;
}

/**
 * The mesh of a whole-mesh benchmark: the five services, each its own process started as
 * production starts it (`node --import tsx services/main.ts <service>`), and any other process of
 * the run, on free ports, against the bench database, the test Redis and RabbitMQ (a broker
 * namespace of the run's own), with warnings only, an operator token of the run's own, no
 * COWRIE_<NAME>_URL inherited from the caller (so that the services find each other on these
 * ports), and a rate limit high enough not to cap a run. `stop` undoes all of it.
 */
export class BenchMesh<Other extends string = never> {
  readonly services = new Map<MeshServiceName, ServiceProcess>();
  /** The other processes, stopped after the services. */
  readonly others: ServiceProcess[] = [];
  readonly #sessions: Http2SessionManager[] = [];
  #tenant: BenchTenant | undefined;
  #served = false;

  private constructor(
    private readonly options: BenchMeshOptions<Other>,
    readonly portOf: Readonly<Record<MeshServiceName | Other, number>>,
    readonly namespace: string,
    readonly operatorToken: string,
    readonly env: NodeJS.ProcessEnv,
  ) {}

  /** Ports, environment and folders of a new mesh; nothing is started yet. */
  static async create<Other extends string = never>(options: BenchMeshOptions<Other>): Promise<BenchMesh<Other>> {
    const namespace = `${options.namespacePrefix}-${process.pid}-${Date.now().toString(36)}`;
    const base = await meshEnvironment({ COWRIE_BROKER_NAMESPACE: namespace });
    const servicePorts = MESH_SERVICES.map((name) => Number(base[`COWRIE_${name.toUpperCase()}_PORT`]));
    // freePorts does not hold the ports it finds: leave out any the services already have.
    const otherPorts = (await freePorts(options.others.length + servicePorts.length)).filter((port) => !servicePorts.includes(port));
    const portOf = Object.fromEntries([
      ...MESH_SERVICES.map((name, index) => [name, servicePorts[index]]),
      ...options.others.map((name, index) => [name, otherPorts[index]]),
    ]) as Record<MeshServiceName | Other, number>;
    const operatorToken = `bench-operator-${randomBytes(16).toString("hex")}`;
    const env: NodeJS.ProcessEnv = { ...process.env };
    for (const name of MESH_SERVICES) delete env[`COWRIE_${name.toUpperCase()}_URL`];
    Object.assign(env, base, {
      DATABASE_URL: options.databaseUrl,
      REDIS_URL: TEST_REDIS_URL,
      AMQP_URL: TEST_AMQP_URL,
      COWRIE_HOST: "127.0.0.1",
      ...Object.fromEntries(options.others.map((name) => [`COWRIE_${name.toUpperCase()}_PORT`, String(portOf[name])])),
      COWRIE_OPERATOR_TOKEN: operatorToken,
      COWRIE_RATE_LIMIT_PER_SECOND: "1000000",
      COWRIE_RATE_LIMIT_BURST: "1000000",
      ...options.extraEnv?.(portOf),
    });
    for (const dir of [options.cpuProfDir, options.logDir]) if (dir) mkdirSync(dir, { recursive: true });
    return new BenchMesh(options, portOf, namespace, operatorToken, env);
  }

  url(name: MeshServiceName | Other): string {
    return `http://127.0.0.1:${this.portOf[name]}`;
  }

  /** Starts another process of the run (`node --import tsx <args>`) with the services' environment. */
  spawn(name: Other, args: string[]): ServiceProcess {
    const other = this.#process(name, this.portOf[name], args);
    this.others.push(other);
    return other;
  }

  /**
   * Starts the services, all together as compose starts them (migrations serialize on one
   * advisory lock), and waits until every one answers SERVING and `alsoReady` has; returns the
   * seconds that took. Clients between the services connect on first use.
   */
  async start(alsoReady: readonly Promise<void>[] = []): Promise<number> {
    const startedAtMs = Date.now();
    for (const name of MESH_SERVICES) {
      // One folder per service: the main thread and tsx's module-loader thread each write a profile.
      const cpuProfDir = this.options.cpuProfDir ? path.join(this.options.cpuProfDir, name) : undefined;
      this.services.set(name, this.#process(name, this.portOf[name], ["services/main.ts", name], cpuProfDir));
    }
    await Promise.all([...[...this.services.values()].map((service) => service.serving()), ...alsoReady]);
    this.#served = true;
    return (Date.now() - startedAtMs) / 1000;
  }

  /**
   * Starts a service's process again (after it exited or was killed), as `start` started it, and
   * puts it in `services` in place of the old one; the caller waits for `serving()`.
   */
  respawn(name: MeshServiceName): ServiceProcess {
    const cpuProfDir = this.options.cpuProfDir ? path.join(this.options.cpuProfDir, name) : undefined;
    const fresh = this.#process(name, this.portOf[name], ["services/main.ts", name], cpuProfDir);
    this.services.set(name, fresh);
    return fresh;
  }

  /** Every process of the mesh by pid, labelled with its name (for Accounting). */
  pidLabels(): Map<number, string> {
    return new Map([...this.services.values(), ...this.others].map((child) => [child.pid, child.name]));
  }

  /** A sandbox tenant through the public Edge; its Redis keys are deleted when the mesh stops. */
  async tenant(): Promise<BenchTenant> {
    const session = new Http2SessionManager(this.url("edge"));
    this.#sessions.push(session);
    this.#tenant = await createBenchTenant(this.url("edge"), session, this.operatorToken);
    return this.#tenant;
  }

  /** Ledger VerifyJournal, and the Ledger accounts of `accountIds` (absent ones left out). */
  async auditLedger(accountIds: readonly string[]): Promise<{ verify: VerifyJournalResponse; accounts: Map<string, Account> }> {
    const session = new Http2SessionManager(this.url("ledger"));
    try {
      const ledger = createClient(LedgerService, createConnectTransport({ baseUrl: this.url("ledger"), httpVersion: "2", useBinaryFormat: true, sessionManager: session }));
      const verify = await ledger.verifyJournal({}, { timeoutMs: 120_000 });
      return { verify, accounts: await lookupAccounts(ledger, accountIds) };
    } finally {
      session.abort();
    }
  }

  /**
   * Stops every process with SIGTERM (the Edge first, the other processes last), saying which
   * exited with another code than 0 unless `quiet`; then deletes the run's queues and the
   * tenant's Redis keys.
   */
  async stop(quiet: boolean): Promise<void> {
    ServiceProcess.tearingDown = true;
    for (const session of this.#sessions) session.abort();
    for (const child of [...[...MESH_SERVICES].reverse().map((name) => this.services.get(name)), ...this.others]) {
      if (!child) continue;
      const code = await child.stop();
      if (code !== 0 && !quiet) this.options.progress(`${child.name} exited with code ${code}`);
    }
    // Only once the services were up: then RabbitMQ was there to delete from.
    if (this.#served) {
      await deleteBrokerTopology(meshTopology(this.namespace)).catch((error: unknown) => this.options.progress(`could not delete the run's queues: ${String(error)}`));
    }
    await cleanRedis(this.#tenant).catch(() => undefined);
  }

  #process(name: string, port: number, args: string[], cpuProfDir?: string): ServiceProcess {
    const { root, progress, logDir, startTimeoutMs, stopGraceMs } = this.options;
    const logFile = logDir ? path.join(logDir, `${name}.log`) : undefined;
    return new ServiceProcess({ name, port, env: this.env, args, cwd: root, progress, cpuProfDir, logFile, startTimeoutMs, stopGraceMs });
  }
}


export interface BenchTenant {
  tenantId: string;
  keyId: string;
  apiKey: string;
  /** Headers of a mutating call with the tenant's key. */
  auth(idempotencyKey: string): Record<string, string>;
  wallets: Client<typeof WalletsService>;
  payments: Client<typeof PaymentsService>;
}

/**
 * A sandbox tenant and its API key through AdminService, and WalletsService and PaymentsService
 * clients on the same HTTP/2 session (which the caller aborts at the end).
 */
async function createBenchTenant(edgeUrl: string, session: Http2SessionManager, operatorToken: string): Promise<BenchTenant> {
  const transport = createConnectTransport({ baseUrl: edgeUrl, httpVersion: "2", useBinaryFormat: true, sessionManager: session });
  const created = await createClient(AdminService, transport).createTenant({ name: "bench tenant" }, { headers: { authorization: `Bearer ${operatorToken}` }, timeoutMs: 10_000 });
  const apiKey = created.apiKeySecret;
  return {
    tenantId: created.tenant?.id ?? "",
    keyId: created.apiKey?.id ?? "",
    apiKey,
    auth: (idempotencyKey) => ({ authorization: `Bearer ${apiKey}`, "idempotency-key": idempotencyKey }),
    wallets: createClient(WalletsService, transport),
    payments: createClient(PaymentsService, transport),
  };
}

/** Creates one wallet per owner through the public API, `concurrency` at a time; returns their ids in order. */
export async function createWallets(tenant: BenchTenant, owners: readonly { owner: string; kind: WalletKind }[], currency: string, concurrency: number): Promise<string[]> {
  const walletIds: string[] = new Array(owners.length);
  await runLimited(owners, concurrency, async ({ owner, kind }, index) => {
    const response = await tenant.wallets.createWallet({ ownerId: owner, currency, kind }, { headers: tenant.auth(`setup-wallet-${owner}`), timeoutMs: 10_000 });
    if (!response.wallet) throw new Error(`CreateWallet ${owner} returned no wallet`);
    walletIds[index] = response.wallet.id;
  });
  return walletIds;
}

/** Ledger accounts by id (absent ones are left out), in pages the Ledger accepts. */
async function lookupAccounts(ledger: Client<typeof LedgerService>, ids: readonly string[]): Promise<Map<string, Account>> {
  const accounts = new Map<string, Account>();
  for (let start = 0; start < ids.length; start += 8000) {
    const { accounts: found } = await ledger.lookupAccounts({ ids: ids.slice(start, start + 8000) }, { timeoutMs: 30_000 });
    for (const account of found) accounts.set(account.id, account);
  }
  return accounts;
}

/** Posted balance of a Ledger account (credits - debits), in minor units; 0 for an absent one. */
export const postedMinor = (account: Account | undefined): bigint => (account ? account.creditsPosted - account.debitsPosted : 0n);

/** Deletes a bench tenant's keys from Redis: the idempotency replay cache and the rate-limit bucket. */
async function cleanRedis(tenant: { tenantId: string; keyId: string } | undefined): Promise<void> {
  if (!tenant?.tenantId) return;
  await deleteRedisKeys(`cowrie:edge:idem:${tenant.tenantId}:*`);
  if (tenant.keyId) await deleteRedisKeys(`cowrie:edge:rate:${tenant.keyId}`);
}

/**
 * Runs a bench: `body`, and `cleanup` exactly once whatever ends the run (the body's end or
 * failure, an uncaught error or rejection, SIGINT or SIGTERM, the watchdog after `watchdogMs`);
 * then exits: with process.exitCode as the body left it, 1 on a failure, 130 on a signal. The body
 * may run the cleanup itself, before its report; `cleanup` is told whether the watchdog fired
 * (then the processes' exit codes are no news). Open handles (HTTP/2 sessions, timers) must not
 * keep a finished run alive, hence the exit.
 */
export async function runGuarded(
  name: string,
  watchdogMs: number,
  cleanup: (timedOut: boolean) => Promise<void>,
  body: (cleanup: () => Promise<void>) => Promise<void>,
): Promise<never> {
  let cleaning: Promise<void> | undefined;
  const cleanupOnce = (): Promise<void> => (cleaning ??= cleanup(guard.timedOut));
  const guard = guardRun(name, cleanupOnce, watchdogMs);
  try {
    await body(cleanupOnce);
  } catch (error) {
    if (!guard.interrupted) {
      console.error(`${name} failed:`, error instanceof Error ? error.stack ?? error.message : error);
      process.exitCode = 1;
    }
  } finally {
    await cleanupOnce();
    guard.clear();
  }
  process.exit(process.exitCode ?? 0);
}

/**
 * Makes `cleanup` run whatever ends the run: an uncaught error or rejection (exit 1), SIGINT or
 * SIGTERM (exit 130), or the watchdog after `watchdogMs` (exit 1). Returns what happened, for the
 * caller's own error handling.
 */
function guardRun(name: string, cleanup: () => Promise<void>, watchdogMs: number): { interrupted: boolean; timedOut: boolean; clear(): void } {
  const state = { interrupted: false, timedOut: false, clear: () => clearTimeout(watchdog) };
  // Every phase is bounded anyway; the watchdog only ends a wedged run (cleanup runs).
  const watchdog = setTimeout(() => {
    state.timedOut = true;
    process.stderr.write(`${name}: still running after ${watchdogMs} ms; giving up\n`);
    void cleanup().finally(() => process.exit(1));
  }, watchdogMs);
  watchdog.unref();
  for (const event of ["uncaughtException", "unhandledRejection"] as const) {
    process.on(event, (error: unknown) => {
      console.error(`${name} failed (${event}):`, error instanceof Error ? error.stack ?? error.message : error);
      void cleanup().finally(() => process.exit(1));
    });
  }
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => {
      state.interrupted = true;
      process.stderr.write(`${name}: ${signal}: stopping the services and dropping the database\n`);
      void cleanup().finally(() => process.exit(130));
    });
  }
  return state;
}

// ---------------------------------------------------------------------------------------------
// CPU accounting for a measured window: every service process, the load process, this process,
// the PostgreSQL backends of the bench database (by application_name: cowrie-edge...), the
// PostgreSQL background processes (WAL writer...; shared with anything else on the server) and
// the whole machine, so that what is left ("other") says whether something else disturbed it.

export interface Sample {
  wallMs: number;
  monotonicUs: number;
  machine: number | undefined;
  pids: Map<number, number>;
  /** pid -> group label for the PostgreSQL processes seen. */
  pgGroups: Map<number, string>;
  xacts: number;
  /** CPU this process (the bench) has used so far, microseconds. */
  selfCpuUs: number;
}

/** CPU seconds by label over a window, the whole machine's busy seconds, and the window's transactions. */
export interface WindowUsage {
  byLabel: Map<string, number>;
  machine: number | undefined;
  seconds: number;
  xacts: number;
}

export class Accounting {
  constructor(
    private readonly monitor: postgres.Sql,
    private readonly databaseName: string,
    private readonly processes: () => Map<number, string>,
  ) {}

  async sample(): Promise<Sample> {
    const rows = await this.monitor<{ pid: number; datname: string | null; application_name: string; backend_type: string }[]>`
      select pid, datname, application_name, backend_type from pg_stat_activity
      where (datname = ${this.databaseName} and pid <> pg_backend_pid()) or datname is null`;
    const [xacts] = await this.monitor<{ xacts: string }[]>`
      select (xact_commit + xact_rollback)::text as xacts from pg_stat_database where datname = ${this.databaseName}`;
    const pgGroups = new Map<number, string>();
    for (const row of rows) {
      const label = row.datname === null
        ? "postgres background (shared)"
        : row.backend_type === "client backend" ? `postgres ${row.application_name.replace(/^cowrie-/, "") || "other"}` : `postgres ${row.backend_type}`;
      pgGroups.set(row.pid, label);
    }
    const pids = new Map<number, number>();
    for (const pid of [...this.processes().keys(), ...pgGroups.keys()]) {
      const cpu = processCpuSeconds(pid);
      if (cpu !== undefined) pids.set(pid, cpu);
    }
    const self = process.cpuUsage();
    return {
      selfCpuUs: self.user + self.system,
      wallMs: Date.now(),
      monotonicUs: Number(process.hrtime.bigint() / 1000n),
      machine: machineBusySeconds(),
      pids,
      pgGroups,
      xacts: Number(xacts?.xacts ?? 0),
    };
  }

  /** CPU seconds per label between two samples (this process as "bench (this process)"); processes born in between count from zero. */
  delta(start: Sample, end: Sample): WindowUsage {
    const labels = this.processes();
    const byLabel = new Map<string, number>();
    for (const [pid, cpu] of end.pids) {
      const label = labels.get(pid) ?? end.pgGroups.get(pid) ?? start.pgGroups.get(pid);
      if (!label) continue;
      byLabel.set(label, (byLabel.get(label) ?? 0) + Math.max(0, cpu - (start.pids.get(pid) ?? 0)));
    }
    byLabel.set("bench (this process)", (end.selfCpuUs - start.selfCpuUs) / 1e6);
    const machine = start.machine === undefined || end.machine === undefined ? undefined : end.machine - start.machine;
    return { byLabel, machine, seconds: (end.wallMs - start.wallMs) / 1000, xacts: end.xacts - start.xacts };
  }
}

/** The labels of a window's CPU, most first, and the CPU of everything else on the machine (undefined without /proc/stat). */
export function cpuBreakdown(usage: WindowUsage): { rows: [string, number][]; otherCpu: number | undefined } {
  const rows = [...usage.byLabel.entries()].sort((a, b) => b[1] - a[1]);
  const oursCpu = rows.reduce((sum, [, cpu]) => sum + cpu, 0);
  return { rows, otherCpu: usage.machine === undefined ? undefined : Math.max(0, usage.machine - oursCpu) };
}

// ---------------------------------------------------------------------------------------------
// The human summary

/** Milliseconds with one decimal. */
export const ms = (value: number): string => value.toFixed(1);

/** "code count, code count...", or "none". */
export const countsText = (byCode: Record<string, number>): string =>
  Object.keys(byCode).length === 0 ? "none" : Object.entries(byCode).map(([code, count]) => `${code} ${count}`).join(", ");

/** The journal's line: findings over transfers checked, and the first three findings. */
export function journalLine(verify: VerifyJournalResponse): string {
  return `journal: ${verify.findings.length} findings over ${verify.transfersChecked} transfers` +
    (verify.findings.length > 0 ? ` (${verify.findings.slice(0, 3).map((finding) => `${FindingKind[finding.kind]}: ${finding.detail}`).join("; ")})` : "");
}

/** Statuses a payment of router.payments does not leave. */
export const FINAL_STATUSES = [RouterPaymentStatus.SUCCEEDED, RouterPaymentStatus.FAILED, RouterPaymentStatus.CANCELED];

/** How a router.payments row stands, for reports: "SUCCEEDED", "FAILED:gateway_declined". */
export function statusLabel(status: number, failureCode = ""): string {
  return (RouterPaymentStatus[status] ?? String(status)) + (failureCode ? `:${failureCode}` : "");
}

/**
 * The simulator's records (charges or payouts) by the payment they belong to (matched by the
 * gateway reference the Router sends), and how many succeeded records belong to no payment.
 */
export function recordsByPayment(records: readonly RecordView[], paymentIds: readonly string[]): { byPayment: Map<string, RecordView[]>; orphans: number } {
  const paymentOf = new Map<string, string>();
  for (const id of paymentIds) for (const gateway of SIMULATED_GATEWAYS) paymentOf.set(gatewayReference(id, gateway), id);
  const byPayment = new Map<string, RecordView[]>();
  let orphans = 0;
  for (const record of records) {
    const id = paymentOf.get(record.reference);
    if (id === undefined) {
      if (record.status === "succeeded") orphans++;
      continue;
    }
    byPayment.set(id, [...(byPayment.get(id) ?? []), record]);
  }
  return { byPayment, orphans };
}
