// `npm run bench:ledger`: the Ledger as its own process on the real PostgreSQL, driven over its
// gRPC/Connect port, against a baseline measured in the same run: one-row insert transactions
// from 16 concurrent postgres.js clients, this machine's commit ceiling.
//
//   (a) single-transfer RPCs from 64 concurrent clients across 10,000 accounts
//   (b) batches of 1,000 transfers per RPC
//   (c) single-transfer RPCs where every transfer credits one hot account
//
// Prints a human summary, then as the last line one JSON object with the figures.
// BENCH_SECONDS (default 8) sets each phase's length; TEST_DATABASE_URL the server; BENCH_CPU_PROF=<dir>
// profiles the Ledger, and `bench/profile-summary.ts <dir> single|batch|hot` says where its time went.
import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import * as path from "node:path";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AccountCode, CreateTransferResult, LedgerService, TransferKind, type Transfer } from "../gen/cowrie/ledger/v1/ledger_pb.js";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { freePorts, freshDatabase } from "../services/runtime/testing.js";
import { BASELINE_CLIENTS, commitBaseline, percentileSorted, rate, round, runFor } from "./support.js";

const root = path.resolve(import.meta.dirname, "..");
const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
const ACCOUNTS = 10_000;
const SINGLE_CLIENTS = 64;
const BATCH_SIZE = 1_000;
const BATCH_CLIENTS = 4;
const FUNDING_MINOR = 1_000_000_000n;
/** BENCH_CPU_PROF=<dir>: the Ledger runs with --cpu-prof into <dir>/ledger; <dir>/windows.json names each phase's window. */
const CPU_PROF_DIR = process.env.BENCH_CPU_PROF;
const windows: Record<string, { startUs: number; endUs: number }> = {};
const monotonicUs = (): number => Number(process.hrtime.bigint() / 1000n);

/** Runs one phase and records its monotonic window for bench/profile-summary.ts. */
async function phase<T>(name: string, run: () => Promise<T>): Promise<T> {
  const startUs = monotonicUs();
  try {
    return await run();
  } finally {
    windows[name] = { startUs, endUs: monotonicUs() };
  }
}

type TransferInit = Omit<Partial<Transfer>, "$typeName">;

function percentile(values: number[], fraction: number): number {
  return percentileSorted([...values].sort((x, y) => x - y), fraction);
}

async function startLedger(databaseUrl: string): Promise<{ port: number; stop(): Promise<void> }> {
  const [port] = (await freePorts(1)) as [number];
  const child = spawn(process.execPath, [...(CPU_PROF_DIR ? ["--cpu-prof", `--cpu-prof-dir=${path.join(CPU_PROF_DIR, "ledger")}`] : []), "--import", "tsx", "services/main.ts", "ledger"], {
    cwd: root,
    env: { ...process.env, DATABASE_URL: databaseUrl, COWRIE_LEDGER_PORT: String(port), COWRIE_LOG_LEVEL: "warn", COWRIE_DATABASE_POOL_MAX: "8" },
    stdio: ["ignore", "ignore", "inherit"],
  });
  const exited = new Promise<void>((resolve) => child.on("exit", () => resolve()));
  const health = createClient(Health, createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "2" }));
  const startedAtMs = Date.now();
  for (;;) {
    const status = await health.check({}, { timeoutMs: 500 }).then((r) => r.status, () => undefined);
    if (status === ServingStatus.SERVING) break;
    if (Date.now() - startedAtMs > 30_000 || child.exitCode !== null) throw new Error("ledger did not start");
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return {
    port,
    async stop() {
      child.kill("SIGTERM");
      await exited;
    },
  };
}

async function setUp(ledger: Client<typeof LedgerService>): Promise<string[]> {
  const wallets = Array.from({ length: ACCOUNTS }, (_, index) => `bench-wallet-${index}`);
  await ledger.createAccounts({ accounts: [{ id: "bench-funding", currency: "NGN", code: AccountCode.FUNDING }, { id: "bench-hot", currency: "NGN", code: AccountCode.MERCHANT_WALLET }] });
  for (let start = 0; start < ACCOUNTS; start += 5_000) {
    await ledger.createAccounts({
      accounts: wallets.slice(start, start + 5_000).map((id) => ({ id, currency: "NGN", code: AccountCode.CUSTOMER_WALLET, debitsMustNotExceedCredits: true })),
    });
  }
  for (let start = 0; start < ACCOUNTS; start += BATCH_SIZE) {
    await ledger.createTransfers({
      transfers: wallets.slice(start, start + BATCH_SIZE).map((id) => ({
        id: `bench-fund-${id}`, kind: TransferKind.POSTED, debitAccountId: "bench-funding", creditAccountId: id, amountMinor: FUNDING_MINOR, currency: "NGN", code: 1,
      })),
    });
  }
  return wallets;
}

let counter = 0;
function randomTransfer(wallets: string[], creditAccountId?: string): TransferInit {
  const debit = wallets[Math.floor(Math.random() * wallets.length)] as string;
  let credit = creditAccountId ?? (wallets[Math.floor(Math.random() * wallets.length)] as string);
  if (credit === debit) credit = wallets[(wallets.indexOf(debit) + 1) % wallets.length] as string;
  counter++;
  return { id: `bench-${process.pid}-${counter}`, kind: TransferKind.POSTED, debitAccountId: debit, creditAccountId: credit, amountMinor: 1n + BigInt(counter % 100), currency: "NGN", code: 2 };
}

async function send(ledger: Client<typeof LedgerService>, transfers: TransferInit[]): Promise<number> {
  const { results } = await ledger.createTransfers({ transfers }, { timeoutMs: 30_000 });
  const created = results.filter((item) => item.result === CreateTransferResult.CREATED).length;
  if (created !== transfers.length) throw new Error(`only ${created} of ${transfers.length} created`);
  return created;
}

async function main(): Promise<void> {
  const database = await freshDatabase("bench_ledger");
  let ledgerProcess: Awaited<ReturnType<typeof startLedger>> | undefined;
  try {
    process.stdout.write(`baseline: one-row insert transactions, ${BASELINE_CLIENTS} postgres.js clients, ${SECONDS} s\n`);
    const base = await commitBaseline(database.url, SECONDS);

    ledgerProcess = await startLedger(database.url);
    const transport = createConnectTransport({ baseUrl: `http://127.0.0.1:${ledgerProcess.port}`, httpVersion: "2", useBinaryFormat: true });
    const ledger = createClient(LedgerService, transport);
    process.stdout.write(`setting up ${ACCOUNTS} funded accounts\n`);
    const wallets = await setUp(ledger);

    process.stdout.write(`(a) single-transfer RPCs, ${SINGLE_CLIENTS} concurrent clients, ${SECONDS} s\n`);
    const single = await phase("single", () => runFor(SECONDS, SINGLE_CLIENTS, () => send(ledger, [randomTransfer(wallets)])));
    process.stdout.write(`(b) batches of ${BATCH_SIZE} transfers, ${BATCH_CLIENTS} concurrent clients, ${SECONDS} s\n`);
    const batched = await phase("batch", () => runFor(SECONDS, BATCH_CLIENTS, () => send(ledger, Array.from({ length: BATCH_SIZE }, () => randomTransfer(wallets)))));
    process.stdout.write(`(c) single-transfer RPCs crediting one hot account, ${SINGLE_CLIENTS} concurrent clients, ${SECONDS} s\n`);
    const hot = await phase("hot", () => runFor(SECONDS, SINGLE_CLIENTS, () => send(ledger, [randomTransfer(wallets, "bench-hot")])));

    const verify = await ledger.verifyJournal({}, { timeoutMs: 120_000 });
    const figures = {
      bench: "ledger",
      seconds: SECONDS,
      accounts: ACCOUNTS,
      baseline_commits_per_s: rate(base),
      single_transfers_per_s: rate(single),
      batch_transfers_per_s: rate(batched),
      hot_account_transfers_per_s: rate(hot),
      single_p50_ms: round(percentile(single.latenciesMs, 0.5)),
      single_p99_ms: round(percentile(single.latenciesMs, 0.99)),
      hot_p99_ms: round(percentile(hot.latenciesMs, 0.99)),
      batch_p50_ms: round(percentile(batched.latenciesMs, 0.5)),
      errors: single.errors + batched.errors + hot.errors,
      verifier_findings: verify.findings.length,
      transfers_verified: Number(verify.transfersChecked),
      ratios: {
        batch_vs_baseline: round(rate(batched) / rate(base)),
        single_vs_baseline: round(rate(single) / rate(base)),
        hot_vs_single: round(rate(hot) / rate(single)),
      },
    };
    process.stdout.write(
      [
        "",
        `baseline (postgres.js one-row inserts) ${String(figures.baseline_commits_per_s).padStart(8)} commits/s`,
        `(a) single-transfer RPCs               ${String(figures.single_transfers_per_s).padStart(8)} transfers/s  p50 ${figures.single_p50_ms} ms  p99 ${figures.single_p99_ms} ms  (${figures.ratios.single_vs_baseline}× baseline, target ≥ 1)`,
        `(b) batches of ${BATCH_SIZE}                  ${String(figures.batch_transfers_per_s).padStart(8)} transfers/s  p50 ${figures.batch_p50_ms} ms per batch  (${figures.ratios.batch_vs_baseline}× baseline, target ≥ 5)`,
        `(c) hot account                        ${String(figures.hot_account_transfers_per_s).padStart(8)} transfers/s  p99 ${figures.hot_p99_ms} ms  (${figures.ratios.hot_vs_single}× uniform, target ≥ 0.8)`,
        `errors ${figures.errors}; verifier: ${figures.transfers_verified} transfers replayed, ${figures.verifier_findings} findings`,
        "",
      ].join("\n"),
    );
    process.stdout.write(`${JSON.stringify(figures)}\n`);
  } finally {
    await ledgerProcess?.stop();
    await database.drop();
    if (CPU_PROF_DIR) writeFileSync(path.join(CPU_PROF_DIR, "windows.json"), JSON.stringify(windows, null, 2));
  }
}

await main();
