// The chaos run (bench/chaos.ts, `npm run chaos`) in the CI suite, short: one round of every fault
// while eight clients make payments, then the bank checks. It runs as a child process with a work
// folder of this test's own, so that whatever happens to it (a failure, the test's timeout) this
// test stops what the run left behind: its private PostgreSQL and Redis, its queues on the shared
// RabbitMQ, the folder itself. The shared PostgreSQL, Redis and RabbitMQ are never stopped.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { test } from "node:test";
import { cleanupWorkdir, readState } from "../bench/chaos-backends.js";
import { FAULT_KINDS } from "../bench/chaos-checks.js";
import { meshTopology } from "./mesh.js";
import { deleteBrokerTopology } from "./runtime/testing.js";

const root = path.resolve(import.meta.dirname, "..");
/** The run's own bound; the test's is a little longer, for the cleanup. */
const RUN_LIMIT_MS = 165_000;
const KILL_GRACE_MS = 20_000;

test("chaos: every fault once, zero anomalies", { timeout: RUN_LIMIT_MS + KILL_GRACE_MS + 15_000 }, async (t) => {
  const workdir = mkdtempSync(path.join(tmpdir(), "cowrie-chaos-test-"));
  const args = ["--import", "tsx", "bench/chaos.ts", "--duration", "1", "--clients", "8", "--fault-gap", "2", "--quiesce-timeout", "45", "--client-grace", "30"];
  const child = spawn(process.execPath, args, {
    cwd: root,
    env: { ...process.env, CHAOS_WORKDIR: workdir, CHAOS_LOG_DIR: "" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  let timedOut = false;
  // Past the bound, SIGTERM (the run stops its processes and servers), then SIGKILL.
  const term = setTimeout(() => {
    timedOut = true;
    child.kill("SIGTERM");
  }, RUN_LIMIT_MS);
  const kill = setTimeout(() => child.kill("SIGKILL"), RUN_LIMIT_MS + KILL_GRACE_MS);
  let code: number | null = null;
  try {
    code = await exited;
  } finally {
    clearTimeout(term);
    clearTimeout(kill);
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    // The run cleans up after itself; this is for a run that could not.
    const { namespace } = readState(workdir);
    // A failed run's logs stay (in <workdir>/logs) as evidence.
    cleanupWorkdir(workdir, code === 0 ? undefined : "logs");
    if (namespace && (timedOut || child.signalCode !== null)) await deleteBrokerTopology(meshTopology(namespace)).catch(() => undefined);
  }

  const lastLine = stdout.trim().split("\n").at(-1) ?? "";
  const context = `exit ${code}${timedOut ? " (timed out)" : ""}; logs in ${path.join(workdir, "logs")} unless it passed\n--- summary\n${stdout.slice(-6000)}\n--- last progress\n${stderr.split("\n").slice(-40).join("\n")}`;
  t.diagnostic(lastLine);
  let report: { anomalies: Record<string, number>; anomalies_total: number; faults: Record<string, number>; operations_total: number; quiesced: boolean };
  try {
    report = JSON.parse(lastLine);
  } catch {
    assert.fail(`the chaos run printed no JSON line\n${context}`);
  }
  assert.deepEqual(report.anomalies, {}, `anomalies found\n${context}`);
  assert.equal(report.quiesced, true, context);
  for (const kind of FAULT_KINDS) assert.ok((report.faults[kind] ?? 0) >= 1, `fault ${kind} was not injected\n${context}`);
  assert.ok(report.operations_total > 50, `only ${report.operations_total} operations\n${context}`);
  assert.equal(code, 0, context);
});
