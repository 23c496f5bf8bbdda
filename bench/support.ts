// Small pieces shared by the benchmarks: the postgres.js commit baseline (the same measurement
// bench/ledger.ts makes: one-row insert transactions from 16 concurrent clients on an empty
// table, this machine's commit ceiling), percentiles, and what /proc says about processes and
// the machine. bench/ledger.ts still carries its own copy of the baseline; it can import this
// one unchanged (same table, same loop, same rate).
import { spawn, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";
import postgres from "postgres";

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

  next(type: string, id: string | undefined, timeoutMs: number): Promise<Out> {
    const key = id === undefined ? type : `${type}:${id}`;
    return new Promise((resolve, reject) => {
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
