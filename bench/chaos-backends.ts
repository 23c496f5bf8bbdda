// The private backends of a chaos run (bench/chaos.ts): a PostgreSQL cluster and a Redis server of
// the run's own, which the nemesis may crash and restart without touching the machine's shared
// servers (other test files use those at the same time), and a TCP proxy in front of the shared
// RabbitMQ whose connections the nemesis cuts. Everything lives in one work folder; `cleanupWorkdir`
// stops whatever is left there (by the pids the folder records) and removes it, so that a test can
// clean up after a run that was killed.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import postgres from "postgres";
import { pause } from "../services/runtime/pause.js";
import { startTcpProxy, type TcpProxy } from "../services/runtime/tcp-proxy.js";

/** Where the PostgreSQL binaries are: /usr/lib/postgresql/<newest version>/bin. */
export function postgresBinDir(): string {
  const root = "/usr/lib/postgresql";
  const versions = existsSync(root) ? readdirSync(root).filter((entry) => /^\d+$/.test(entry)).sort((a, b) => Number(b) - Number(a)) : [];
  for (const version of versions) {
    const bin = path.join(root, version, "bin");
    if (existsSync(path.join(bin, "pg_ctl"))) return bin;
  }
  throw new Error(`no PostgreSQL binaries under ${root}/<version>/bin`);
}

/** PostgreSQL refuses to run as root: then its commands run as the `postgres` user. */
const AS_ROOT = typeof process.getuid === "function" && process.getuid() === 0;

function commandLine(command: string, args: string[]): [string, string[]] {
  return AS_ROOT ? ["runuser", ["-u", "postgres", "--", command, ...args]] : [command, args];
}

/** Runs a PostgreSQL command synchronously (only where blocking does not matter: cleanup). */
function runSync(command: string, args: string[], timeoutMs = 60_000): void {
  const [file, argv] = commandLine(command, args);
  spawnSync(file, argv, { encoding: "utf8", timeout: timeoutMs, stdio: "ignore" });
}

/**
 * Runs a PostgreSQL command without blocking the event loop (the run's clients and the RabbitMQ
 * proxy live in this process); rejects on a non-zero exit unless `allowFailure`.
 */
function run(command: string, args: string[], options: { allowFailure?: boolean; timeoutMs?: number } = {}): Promise<{ status: number | null; output: string }> {
  const [file, argv] = commandLine(command, args);
  return new Promise((resolve, reject) => {
    // stdin ignored and the output collected: pg_ctl's postmaster inherits none of our pipes
    // through the log file it writes (-l), so `close` comes when pg_ctl itself ends.
    const child = spawn(file, argv, { stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 60_000);
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once("exit", (status) => {
      clearTimeout(timer);
      if (status !== 0 && !options.allowFailure) reject(new Error(`${command} ${args.join(" ")} failed (${status}): ${output.trim()}`));
      else resolve({ status, output });
    });
  });
}

async function redisPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const child = spawn("redis-cli", ["-p", String(port), "ping"], { stdio: ["ignore", "pipe", "ignore"] });
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 2000);
    child.once("exit", () => {
      clearTimeout(timer);
      resolve(output.trim() === "PONG");
    });
    child.once("error", () => resolve(false));
  });
}

/** A PostgreSQL cluster in `<workdir>/pg`, on 127.0.0.1:<port>, trust auth, fsync off (process crashes keep every commit; only a machine crash would not). */
export class PrivatePostgres {
  readonly dataDir: string;
  readonly socketDir: string;
  readonly logFile: string;
  readonly #bin = postgresBinDir();

  constructor(
    readonly workdir: string,
    readonly port: number,
  ) {
    this.dataDir = path.join(workdir, "pg", "data");
    this.socketDir = path.join(workdir, "pg");
    this.logFile = path.join(workdir, "pg", "postgres.log");
  }

  get url(): string {
    return `postgres://postgres@127.0.0.1:${this.port}/postgres`;
  }

  async init(): Promise<void> {
    mkdirSync(this.socketDir, { recursive: true });
    if (AS_ROOT) spawnSync("chown", ["-R", "postgres:postgres", this.workdir]);
    await run(path.join(this.#bin, "initdb"), ["-D", this.dataDir, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"]);
    await this.start();
  }

  async start(): Promise<void> {
    const options = `-p ${this.port} -k ${this.socketDir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=200`;
    await run(path.join(this.#bin, "pg_ctl"), ["-D", this.dataDir, "-o", options, "-l", this.logFile, "-w", "-t", "60", "start"]);
    // pg_ctl -w waits for the postmaster; make sure TCP connections are taken too.
    for (let attempt = 0; ; attempt++) {
      const sql = postgres(this.url, { max: 1, onnotice: () => {}, connect_timeout: 2 });
      try {
        await sql`select 1`;
        return;
      } catch (error) {
        if (attempt > 50) throw error;
        await pause(200);
      } finally {
        await sql.end({ timeout: 1 }).catch(() => undefined);
      }
    }
  }

  /** The fault: `pg_ctl stop -m immediate` (a crash: no checkpoint, recovery from WAL on start). */
  async stopImmediate(): Promise<void> {
    await run(path.join(this.#bin, "pg_ctl"), ["-D", this.dataDir, "-m", "immediate", "-w", "stop"], { allowFailure: true });
  }

  /** The postmaster's pid, while it runs. */
  pid(): number | undefined {
    return postmasterPid(this.dataDir);
  }
}

function postmasterPid(dataDir: string): number | undefined {
  try {
    const pid = Number(readFileSync(path.join(dataDir, "postmaster.pid"), "utf8").split("\n", 1)[0]);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/** A redis-server of the run's own, a child of this process (no persistence). */
export class PrivateRedis {
  #child: ChildProcess | undefined;
  readonly pidFile: string;

  constructor(
    readonly workdir: string,
    readonly port: number,
  ) {
    this.pidFile = path.join(workdir, "redis.pid");
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    const child = spawn("redis-server", ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", this.workdir], {
      stdio: "ignore",
    });
    this.#child = child;
    if (child.pid) writeFileSync(this.pidFile, String(child.pid));
    for (let attempt = 0; ; attempt++) {
      if (await redisPing(this.port)) return;
      if (child.exitCode !== null || attempt > 100) throw new Error(`redis-server on port ${this.port} did not start`);
      await pause(100);
    }
  }

  /** The fault: SHUTDOWN NOSAVE (every key is gone), then waits for the process to exit. */
  async shutdown(): Promise<void> {
    const child = this.#child;
    await new Promise((resolve) => {
      const cli = spawn("redis-cli", ["-p", String(this.port), "shutdown", "nosave"], { stdio: "ignore" });
      cli.once("exit", resolve);
      cli.once("error", resolve);
    });
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    }
  }

  async stop(): Promise<void> {
    const child = this.#child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGKILL");
      await exited;
    }
    rmSync(this.pidFile, { force: true });
  }
}

/** The proxy in front of RabbitMQ: the mesh's AMQP_URL points at it. */
export async function rabbitProxy(amqpUrl: string): Promise<{ proxy: TcpProxy; url: string }> {
  const target = new URL(amqpUrl);
  const proxy = await startTcpProxy({ host: target.hostname, port: Number(target.port || 5672) });
  const url = new URL(amqpUrl);
  url.hostname = "127.0.0.1";
  url.port = String(proxy.port);
  return { proxy, url: url.toString() };
}

/** What a run records in its work folder so that someone else can clean up after it. */
export interface WorkdirState {
  namespace?: string;
  /** The run's service and simulator processes, so that they can be killed if the run was. */
  pids?: number[];
}

export function writeState(workdir: string, state: WorkdirState): void {
  writeFileSync(path.join(workdir, "state.json"), JSON.stringify(state));
}

export function readState(workdir: string): WorkdirState {
  try {
    return JSON.parse(readFileSync(path.join(workdir, "state.json"), "utf8")) as WorkdirState;
  } catch {
    return {};
  }
}

/**
 * Stops what a run left in `workdir` (its PostgreSQL, its Redis) and removes the folder, except
 * `keep` (a subfolder such as the logs). Safe to call more than once, or on a folder never used.
 */
export function cleanupWorkdir(workdir: string, keep?: string): void {
  if (!existsSync(workdir)) return;
  // Processes of a run that was killed before it could stop them (checked to be Cowrie's own).
  for (const pid of readState(workdir).pids ?? []) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("services/")) process.kill(pid, "SIGKILL");
    } catch {
      // gone
    }
  }
  const dataDir = path.join(workdir, "pg", "data");
  const pgPid = postmasterPid(dataDir);
  if (pgPid !== undefined) {
    try {
      runSync(path.join(postgresBinDir(), "pg_ctl"), ["-D", dataDir, "-m", "immediate", "-w", "-t", "20", "stop"], 30_000);
    } catch {
      // no binaries: fall through to the signal
    }
    try {
      process.kill(pgPid, 0);
      process.kill(pgPid, "SIGQUIT");
    } catch {
      // gone
    }
  }
  try {
    const redisPid = Number(readFileSync(path.join(workdir, "redis.pid"), "utf8"));
    if (Number.isInteger(redisPid) && redisPid > 0) process.kill(redisPid, "SIGKILL");
  } catch {
    // none, or gone
  }
  for (const entry of readdirSync(workdir)) {
    if (entry === keep) continue;
    rmSync(path.join(workdir, entry), { recursive: true, force: true });
  }
  if (keep === undefined || !existsSync(path.join(workdir, keep))) rmSync(workdir, { recursive: true, force: true });
}
