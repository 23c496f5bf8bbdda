// `npm run chaos`: a bank test in the style of Jepsen's (issue 9, second half). Concurrent clients
// make random payments through the public Edge while a nemesis injects faults in turn; once the
// faults stop and the mesh has quiesced, the run checks that no money was lost, made up, moved
// twice or moved for a failed payment, and that every event reached every consumer.
//
// Isolation: CI runs every test file at once on the machine's shared PostgreSQL, Redis and
// RabbitMQ, so this run never stops those. It starts its own PostgreSQL cluster (initdb into a
// temporary folder, as the `postgres` user when run as root, on a free port) and its own
// redis-server, which the nemesis crashes and restarts; RabbitMQ is the shared server under a
// broker namespace of the run's own, reached through a TCP proxy in this process whose
// connections the nemesis cuts. The five services and the gateway simulator are processes of their
// own (bench/support.ts BenchMesh), on free ports. This process supervises them: a service that
// exits unexpectedly (for example the postgres.js crash when PostgreSQL restarts, NOTES.md) is
// restarted, and counted as an anomaly (process_crashed): every fault is one to ride out.
//
// The clients (bench/chaos-workload.ts): `clients` loops, each making internal payments with a fee,
// partial refunds of payments they saw succeed, PAY_INs and PAYOUTs (NGN through Paystack and Flutterwave, USD through Flutterwave and Stripe;
// some forced to decline, stay pending for a while, or time out after the gateway acted), a fresh
// Idempotency-Key each; an unknown outcome (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED...) is retried
// with the same key until the answer is definite; gateway payments are polled until final; a share
// of keys is sent again and must replay.
//
// The nemesis, one fault at a time, each kind once per round in a seeded order, a few seconds of
// calm in between, until the fault window is over (the first round always completes):
//   kill:<service>     SIGKILL of ledger, wallet, risk, router or edge, then a restart;
//   pause:ledger       SIGSTOP of the Ledger for 3 to 8 seconds, then SIGCONT;
//   postgres:restart   `pg_ctl stop -m immediate` of the run's cluster, a few seconds down, start;
//   redis:restart      SHUTDOWN NOSAVE of the run's Redis, a few seconds down, start (empty);
//   rabbitmq:drop      every connection through the proxy cut, new ones refused for a few seconds;
//   rabbitmq:outage    the same for 8 to 11 seconds (past rabbitmq-client's 5 s wait for a channel),
//                      and a second in, SIGKILL of the Router, the Edge or Risk in turn: restarted
//                      while RabbitMQ is away, its consumers must wait for it (COWRIE_STARTUP_WAIT_MS);
//   gateway:outage     one gateway of the simulator down (503 at once, or hanging) for a few seconds.
//
// Then: clients stop starting operations and finish theirs; the run waits until every payment is
// final, every outbox published and every event applied by its consumers (at most
// `quiesce-timeout`), and checks (bench/chaos-checks.ts): clients' answers against the payments,
// money per payment and per account, per currency conservation, constrained accounts, pending
// money, the simulator's records, Ledger VerifyJournal, events in edge.audit_events and the
// consumers' inboxes, webhook deliveries to an endpoint of the run's own (bench/chaos-webhooks.ts:
// every tenant event delivered and received, signatures valid), parked and dead-lettered events, and the Router's reconciliation over the
// run's window (RunReconciliation) when it is there. Every violation is an anomaly of a named kind.
//
// Output: progress on stderr; a human summary on stdout, then as the LAST line one JSON object with
// `operations` (by kind and outcome), `faults` (by kind), `restarts`, `anomalies` (by kind) and
// `duration_s`. Exit code 0 when there are no anomalies, 1 otherwise (2 on bad options).
//
// Options (flag, or environment variable; flags win):
//   --duration N          CHAOS_DURATION_SECONDS     fault window, seconds (180); the first round of faults always completes
//   --clients N           CHAOS_CLIENTS              concurrent clients (16)
//   --seed N              CHAOS_SEED                 seed of the clients' and the nemesis' choices (random; printed)
//   --fault-gap N         CHAOS_FAULT_GAP_SECONDS    calm between two faults, seconds (3)
//   --quiesce-timeout N   CHAOS_QUIESCE_SECONDS      longest wait for the mesh to quiesce, seconds (120)
//   --client-grace N      CHAOS_CLIENT_GRACE_SECONDS how long after the faults a client keeps retrying one key (60)
//   --timeout-ms N        CHAOS_TIMEOUT_MS           deadline of every client call (8000)
//   --wallets N           CHAOS_WALLETS              wallets per currency (NGN, USD) (8)
//   --faults a,b          CHAOS_FAULTS               only these fault kinds (to reproduce one), e.g. postgres:restart
//   --sabotage            CHAOS_SABOTAGE=1           the checks' own test: before checking, flip one SUCCEEDED payment to
//                                                    FAILED, delete one audit row and add a second gateway capture; the
//                                                    run must then report anomalies (and exit 1)
//   CHAOS_LOG_DIR=<dir>   keep every process's output there (default: kept in the work folder only when anomalies were found)
//   CHAOS_WORKDIR=<dir>   the work folder (default: a new one under the system's temp folder); tests pass
//                         one to clean up after a run that was killed (chaos-backends.ts cleanupWorkdir)
//   TEST_AMQP_URL         the shared RabbitMQ (default amqp://guest:guest@127.0.0.1:5672)
import { mkdirSync, mkdtempSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";
import { createClient } from "@connectrpc/connect";
import { Http2SessionManager, createConnectTransport } from "@connectrpc/connect-node";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { ConnectError } from "@connectrpc/connect";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import postgres from "postgres";
import { Connection } from "rabbitmq-client";
import { WalletKind } from "../gen/cowrie/edge/v1/wallets_pb.js";
import type { VerifyJournalResponse } from "../gen/cowrie/ledger/v1/ledger_pb.js";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { meshTopology } from "../services/mesh.js";
import { gatewayReference } from "../services/router/gateway-flow.js";
import { workTopology } from "../services/router/service.js";
import { pause } from "../services/runtime/pause.js";
import type { TcpProxy } from "../services/runtime/tcp-proxy.js";
import { TEST_AMQP_URL, freePorts } from "../services/runtime/testing.js";
import { simulatorControl, simulatorGatewayEnv, type SimulatedGateway } from "../services/simulator/control.js";
import { SIMULATED_GATEWAYS } from "../services/simulator/core.js";
import { PrivatePostgres, PrivateRedis, cleanupWorkdir, rabbitProxy, writeState } from "./chaos-backends.js";
import { Anomalies, FAULT_KINDS, backlog, checkRun, type FaultKind } from "./chaos-checks.js";
import { startWebhookReceiver, type WebhookReceiver } from "./chaos-webhooks.js";
import { seededRandom } from "../services/simulator/core.js";
import { Workload, type ChaosWallet } from "./chaos-workload.js";
import { BenchMesh, MESH_SERVICES, ServiceProcess, benchOptions, countsText, createWallets, round, runGuarded, type MeshServiceName } from "./support.js";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "..");
const NAME = "chaos";

const option = benchOptions(NAME, "usage: npm run chaos -- [--duration 180] [--clients 16] [--seed N] [--fault-gap 3]\n" +
  "  [--quiesce-timeout 120] [--client-grace 60] [--timeout-ms 8000] [--wallets 8] [--faults kind,...] [--sabotage]\n" +
  "  (or CHAOS_* environment variables; see bench/chaos.ts)\n");
const DURATION_SECONDS = option("duration", "CHAOS_DURATION_SECONDS", 180, 1, 86_400);
const CLIENTS = Math.floor(option("clients", "CHAOS_CLIENTS", 16, 1, 512));
const SEED = Math.floor(option("seed", "CHAOS_SEED", Math.floor(Math.random() * 1_000_000), 0, 2 ** 31));
const FAULT_GAP_SECONDS = option("fault-gap", "CHAOS_FAULT_GAP_SECONDS", 3, 0, 600);
const QUIESCE_SECONDS = option("quiesce-timeout", "CHAOS_QUIESCE_SECONDS", 120, 5, 3600);
const CLIENT_GRACE_SECONDS = option("client-grace", "CHAOS_CLIENT_GRACE_SECONDS", 60, 5, 3600);
const TIMEOUT_MS = Math.floor(option("timeout-ms", "CHAOS_TIMEOUT_MS", 8000, 500, 60_000));
const WALLETS_PER_CURRENCY = Math.floor(option("wallets", "CHAOS_WALLETS", 8, 2, 500));
/** --faults kill:router,postgres:restart: only these kinds (to reproduce one). */
const FAULTS_ONLY = (() => {
  const argv = process.argv.slice(2);
  const at = argv.findIndex((arg) => arg === "--faults" || arg.startsWith("--faults="));
  const raw = at < 0 ? process.env.CHAOS_FAULTS : argv[at]?.includes("=") ? argv[at]?.split("=")[1] : argv[at + 1];
  if (!raw) return undefined;
  const kinds = raw.split(",").map((kind) => kind.trim()).filter(Boolean);
  const unknown = kinds.filter((kind) => !(FAULT_KINDS as readonly string[]).includes(kind));
  if (unknown.length > 0 || kinds.length === 0) {
    console.error(`${NAME}: --faults must name some of ${FAULT_KINDS.join(", ")}; got '${raw}'`);
    process.exit(2);
  }
  return kinds as FaultKind[];
})();
const SABOTAGE = process.argv.includes("--sabotage") || process.env.CHAOS_SABOTAGE === "1";
const LOG_DIR = process.env.CHAOS_LOG_DIR ? path.resolve(process.env.CHAOS_LOG_DIR) : undefined;

const START_TIMEOUT_MS = 90_000;
const STOP_GRACE_MS = 10_000;
/** Longest a fault's recovery (every service SERVING again) may take before it is an anomaly. */
const RECOVERY_TIMEOUT_MS = 90_000;
const CURRENCIES = ["NGN", "USD"] as const;
const FUNDING_MINOR = 300_000n;
/** The simulator holds an "ambiguous" answer this long, longer than the Router waits for a gateway. */
const GATEWAY_TIMEOUT_MS = 3000;
const AMBIGUOUS_HOLD_MS = 4000;


const progress = (line: string): void => {
  process.stderr.write(`${NAME}: ${new Date().toISOString().slice(11, 19)} ${line}\n`);
};

// ---------------------------------------------------------------------------------------------
// The supervisor: every service that exits without being told to is restarted and counted (an anomaly).

interface Crash {
  service: string;
  code: number | null;
  signal: string | null;
  cause: string;
  atS: number;
}

/** What a crashed process's last lines say, in a few words. */
function crashCause(lines: readonly string[]): string {
  const text = lines.join("\n");
  if (/Cannot read properties of null \(reading 'write'\)/.test(text)) return "postgres.js: Cannot read properties of null (reading 'write')";
  if (/ECONNREFUSED|connect ECONNREFUSED|Connection terminated|terminating connection|the database system is (starting up|shutting down|in recovery mode)|CONNECTION_(CLOSED|ENDED|DESTROYED)/.test(text)) {
    return "database unreachable";
  }
  const errorLine = [...lines].reverse().find((line) => /error|Error|fatal|FATAL/.test(line));
  return (errorLine ?? lines[lines.length - 1] ?? "no output").slice(0, 200);
}

class Supervisor {
  readonly crashes: Crash[] = [];
  readonly restarts = { nemesis: {} as Record<string, number>, crash: {} as Record<string, number> };
  stopping = false;
  readonly #expected = new WeakSet<ServiceProcess>();
  readonly #recentCrashes = new Map<string, number[]>();

  constructor(
    private readonly mesh: BenchMesh<"simulator">,
    private readonly startedAtMs: number,
    /** Called after every restart: the work folder keeps the current pids. */
    private readonly onRespawn: () => void,
  ) {}

  watchAll(): void {
    for (const [name, child] of this.mesh.services) this.#watch(name, child);
  }

  #watch(name: MeshServiceName, child: ServiceProcess): void {
    void child.exited.then(async (code) => {
      if (this.stopping || this.#expected.has(child)) return;
      const cause = crashCause(child.recent);
      this.crashes.push({ service: name, code, signal: child.child.signalCode, cause, atS: round((performance.now() - this.startedAtMs) / 1000, 1) });
      progress(`${name} exited unexpectedly (${child.child.signalCode ?? `code ${code}`}): ${cause}; restarting it`);
      // Back off when it keeps failing (its database may still be down).
      const now = Date.now();
      const recent = (this.#recentCrashes.get(name) ?? []).filter((at) => now - at < 30_000);
      recent.push(now);
      this.#recentCrashes.set(name, recent);
      await pause(Math.min(5000, 500 * recent.length));
      // Only the service's current process is restarted, once.
      if (this.stopping || this.mesh.services.get(name) !== child) return;
      this.restarts.crash[name] = (this.restarts.crash[name] ?? 0) + 1;
      this.#watch(name, this.mesh.respawn(name));
      this.onRespawn();
    });
  }

  /** The nemesis' SIGKILL: the exit is expected, and the service starts again at once. */
  async kill(name: MeshServiceName): Promise<boolean> {
    let child = this.mesh.services.get(name);
    // A process that crashed on its own is being restarted by the supervisor: kill its successor.
    for (let waited = 0; child && !child.running && waited < 100; waited++) {
      await pause(100);
      child = this.mesh.services.get(name);
    }
    if (!child || !child.running) return false;
    this.#expected.add(child);
    child.child.kill("SIGCONT");
    child.child.kill("SIGKILL");
    await child.exited;
    this.restarts.nemesis[name] = (this.restarts.nemesis[name] ?? 0) + 1;
    this.#watch(name, this.mesh.respawn(name));
    this.onRespawn();
    return true;
  }

  signal(name: MeshServiceName, signal: NodeJS.Signals): void {
    this.mesh.services.get(name)?.child.kill(signal);
  }

  get crashRestarts(): number {
    return Object.values(this.restarts.crash).reduce((sum, count) => sum + count, 0);
  }
}

/** Whether every service answers SERVING now. */
async function servingNow(mesh: BenchMesh<"simulator">, name: MeshServiceName): Promise<boolean> {
  const baseUrl = mesh.url(name);
  const session = new Http2SessionManager(baseUrl);
  try {
    const health = createClient(Health, createConnectTransport({ baseUrl, httpVersion: "2", sessionManager: session }));
    return (await health.check({}, { timeoutMs: 1000 })).status === ServingStatus.SERVING;
  } catch {
    return false;
  } finally {
    session.abort();
  }
}

/** Waits until every service answers SERVING; false after `timeoutMs`. */
async function allServing(mesh: BenchMesh<"simulator">, timeoutMs: number): Promise<boolean> {
  const untilMs = Date.now() + timeoutMs;
  while (Date.now() < untilMs) {
    const serving = await Promise.all(MESH_SERVICES.map((name) => servingNow(mesh, name)));
    if (serving.every(Boolean)) return true;
    await pause(250);
  }
  return false;
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<never> {
  const runStartedMs = performance.now();
  const runStartedAt = new Date();
  const workdir = process.env.CHAOS_WORKDIR ? path.resolve(process.env.CHAOS_WORKDIR) : mkdtempSync(path.join(os.tmpdir(), "cowrie-chaos-"));
  mkdirSync(workdir, { recursive: true });
  const logDir = LOG_DIR ?? path.join(workdir, "logs");
  let keepLogs = LOG_DIR !== undefined;
  let pg: PrivatePostgres | undefined;
  let redis: PrivateRedis | undefined;
  let proxy: TcpProxy | undefined;
  let mesh: BenchMesh<"simulator"> | undefined;
  let supervisor: Supervisor | undefined;
  let monitor: postgres.Sql | undefined;
  let workloadStop: (() => void) | undefined;
  let receiver: WebhookReceiver | undefined;
  const sessions: Http2SessionManager[] = [];
  const watchdogMs = (DURATION_SECONDS + QUIESCE_SECONDS + CLIENT_GRACE_SECONDS) * 1000 + 30 * 60_000;

  return runGuarded(NAME, watchdogMs, async (timedOut) => {
    ServiceProcess.tearingDown = true;
    if (supervisor) supervisor.stopping = true;
    workloadStop?.();
    for (const session of sessions) session.abort();
    await receiver?.close().catch(() => undefined);
    await monitor?.end({ timeout: 2 }).catch(() => undefined);
    // A paused Ledger would not see SIGTERM.
    for (const child of mesh?.services.values() ?? []) child.child.kill("SIGCONT");
    await mesh?.stop(true).catch((error: unknown) => progress(`could not stop the mesh: ${String(error)}`));
    await proxy?.close().catch(() => undefined);
    await redis?.stop().catch(() => undefined);
    if (timedOut) keepLogs = true;
    cleanupWorkdir(workdir, keepLogs && !LOG_DIR ? "logs" : undefined);
    if (keepLogs && !LOG_DIR) progress(`logs kept in ${logDir}`);
  }, async (cleanup) => {
    progress(`seed ${SEED}; work folder ${workdir}`);
    const [pgPort, redisPort] = (await freePorts(2)) as [number, number];
    pg = new PrivatePostgres(workdir, pgPort);
    await pg.init();
    redis = new PrivateRedis(workdir, redisPort);
    await redis.start();
    const rabbit = await rabbitProxy(TEST_AMQP_URL);
    proxy = rabbit.proxy;
    progress(`private PostgreSQL on ${pgPort}, Redis on ${redisPort}; RabbitMQ through a proxy on ${proxy.port}`);

    mesh = await BenchMesh.create({
      root: ROOT,
      databaseUrl: pg.url,
      namespacePrefix: "chaos",
      others: ["simulator"],
      extraEnv: (portOf) => ({
        REDIS_URL: redis?.url ?? "",
        AMQP_URL: rabbit.url,
        ...simulatorGatewayEnv(`http://127.0.0.1:${portOf.simulator}`),
        // Unfinished requests and payments are taken over soon (safely even while their first
        // driver still runs), so that the run quiesces within its bound.
        COWRIE_RECOVERY_AFTER_MS: "10000",
        COWRIE_COMPLETER_INTERVAL_MS: "1000",
        COWRIE_GATEWAY_TIMEOUT_MS: String(GATEWAY_TIMEOUT_MS),
        COWRIE_BREAKER_HALF_OPEN_AFTER_MS: "2000",
        COWRIE_GATEWAY_BREAKER_OPEN_MS: "2000",
        COWRIE_HEALTH_INTERVAL_MS: "1000",
        // Failed webhook attempts come again within seconds, not the default 30 s and more.
        COWRIE_WEBHOOK_RETRY_BASE_MS: "1000",
        COWRIE_WEBHOOK_RETRY_MAX_DELAY_MS: "4000",
        COWRIE_WEBHOOK_INTERVAL_MS: "250",
        // The receiver is this process: a short timeout makes the lease of a delivery claimed by
        // an Edge that is then killed 12 s instead of 40 s.
        COWRIE_WEBHOOK_TIMEOUT_MS: "3000",
        // Reconciliation runs once, on demand, at the end.
        COWRIE_RECON_INTERVAL_MS: "0",
        ...(process.env.COWRIE_LOG_LEVEL ? { COWRIE_LOG_LEVEL: process.env.COWRIE_LOG_LEVEL } : {}),
      }),
      progress,
      logDir,
      startTimeoutMs: START_TIMEOUT_MS,
      stopGraceMs: STOP_GRACE_MS,
    });
    const namespace = mesh.namespace;
    const recordPids = (): void => writeState(workdir, { namespace, pids: [...(mesh?.pidLabels().keys() ?? [])] });
    writeState(workdir, { namespace });
    progress(`broker namespace ${mesh.namespace}; starting ${MESH_SERVICES.join(", ")} and the gateway simulator`);
    const simulator = mesh.spawn("simulator", ["services/simulator/main.ts"]);
    const control = simulatorControl(mesh.url("simulator"));
    const starting = mesh.start([simulator.ready(async () => Object.keys(await control.gateways()).length > 0)]);
    recordPids();
    const startupSeconds = await starting;
    progress(`all SERVING in ${startupSeconds.toFixed(1)} s`);
    for (const gateway of SIMULATED_GATEWAYS) await control.configure(gateway, { ambiguousHoldMs: AMBIGUOUS_HOLD_MS });

    // Setup, before any fault: a tenant, its webhook endpoint, wallets in two currencies, every wallet funded.
    const tenant = await mesh.tenant();
    const webhookSession = new Http2SessionManager(mesh.url("edge"));
    sessions.push(webhookSession);
    receiver = await startWebhookReceiver(tenant, mesh.url("edge"), webhookSession, 0.05);
    const wallets: ChaosWallet[] = [];
    const funded = new Map<string, bigint>();
    for (const currency of CURRENCIES) {
      const owners = Array.from({ length: WALLETS_PER_CURRENCY }, (_, index) => ({ owner: `chaos-${currency}-${index}`, kind: index % 4 === 3 ? WalletKind.MERCHANT : WalletKind.CUSTOMER }));
      const ids = await createWallets(tenant, owners, currency, 4);
      ids.forEach((id, index) => wallets.push({ id, currency, merchant: owners[index]?.kind === WalletKind.MERCHANT }));
    }
    for (const wallet of wallets) {
      await tenant.wallets.fundWallet({ walletId: wallet.id, amountMinor: FUNDING_MINOR, currency: wallet.currency }, { headers: tenant.auth(`setup-fund-${wallet.id}`), timeoutMs: 10_000 });
      funded.set(wallet.id, FUNDING_MINOR);
    }
    progress(`setup: tenant ${tenant.tenantId}, ${wallets.length} wallets funded`);

    supervisor = new Supervisor(mesh, runStartedMs, recordPids);
    supervisor.watchAll();
    void simulator.exited.then((code) => {
      if (!supervisor?.stopping) progress(`the gateway simulator exited (code ${code}): its records are gone; the gateway checks will fail`);
    });

    // The clients.
    let faultsOver = false;
    let giveUpAtMs = Number.POSITIVE_INFINITY;
    let stopped = false;
    workloadStop = () => {
      stopped = true;
      giveUpAtMs = 0;
    };
    const workload = new Workload({
      tenant,
      wallets,
      clients: CLIENTS,
      seed: SEED,
      runTag: `chaos${SEED}`,
      callTimeoutMs: TIMEOUT_MS,
      keepGoing: () => !faultsOver && !stopped,
      giveUpAtMs: () => giveUpAtMs,
      replayShare: 0.1,
    });
    const clientsDone = workload.run();

    // The nemesis.
    const faults: Record<string, number> = {};
    const anomalies = new Anomalies();
    /** What the run saw that is worth knowing but breaks no invariant. */
    const random = seededRandom(SEED);
    const shuffle = <T>(items: readonly T[]): T[] => {
      const copy = [...items];
      for (let index = copy.length - 1; index > 0; index--) {
        const other = Math.floor(random() * (index + 1));
        [copy[index], copy[other]] = [copy[other] as T, copy[index] as T];
      }
      return copy;
    };
    let gatewayTurn = 0;
    /** The services whose consumers start with them, restarted in turn during a RabbitMQ outage. */
    const consuming = ["router", "edge", "risk"] as const;
    let outageTurn = 0;
    /** Each injects its fault and says what it did; undefined: it could not (not counted). */
    const injectors: Record<FaultKind, () => Promise<string | undefined>> = {
      "kill:ledger": async () => ((await supervisor?.kill("ledger")) ? "SIGKILL, restarted" : undefined),
      "kill:wallet": async () => ((await supervisor?.kill("wallet")) ? "SIGKILL, restarted" : undefined),
      "kill:risk": async () => ((await supervisor?.kill("risk")) ? "SIGKILL, restarted" : undefined),
      "kill:router": async () => ((await supervisor?.kill("router")) ? "SIGKILL, restarted" : undefined),
      "kill:edge": async () => ((await supervisor?.kill("edge")) ? "SIGKILL, restarted" : undefined),
      "pause:ledger": async () => {
        // Up to about the clients' deadline: calls in flight then time out with their outcome unknown.
        const seconds = 3 + Math.floor(random() * 6);
        supervisor?.signal("ledger", "SIGSTOP");
        await pause(seconds * 1000);
        supervisor?.signal("ledger", "SIGCONT");
        return `SIGSTOP for ${seconds} s`;
      },
      "postgres:restart": async () => {
        const seconds = 2 + Math.floor(random() * 3);
        await pg?.stopImmediate();
        await pause(seconds * 1000);
        await pg?.start();
        return `stopped -m immediate, down ${seconds} s`;
      },
      "redis:restart": async () => {
        const seconds = 1 + Math.floor(random() * 3);
        await redis?.shutdown();
        await pause(seconds * 1000);
        await redis?.start();
        return `SHUTDOWN NOSAVE, down ${seconds} s`;
      },
      "rabbitmq:drop": async () => {
        const seconds = 1 + Math.floor(random() * 3);
        proxy?.setMode("refuse");
        proxy?.cutAll();
        await pause(seconds * 1000);
        proxy?.setMode("up");
        return `connections cut, refused for ${seconds} s`;
      },
      "rabbitmq:outage": async () => {
        const seconds = 8 + Math.floor(random() * 4);
        const service = consuming[outageTurn++ % consuming.length] as (typeof consuming)[number];
        proxy?.setMode("refuse");
        proxy?.cutAll();
        await pause(1000);
        const restarted = await supervisor?.kill(service);
        await pause((seconds - 1) * 1000);
        proxy?.setMode("up");
        return `connections cut, refused for ${seconds} s; ${service} ${restarted ? "SIGKILLed 1 s in and restarted while RabbitMQ was away" : "not running, so not restarted"}`;
      },
      "gateway:outage": async () => {
        const gateway = SIMULATED_GATEWAYS[gatewayTurn % SIMULATED_GATEWAYS.length] as SimulatedGateway;
        const outage = gatewayTurn % 2 === 0 ? "unavailable" : "hang";
        gatewayTurn++;
        const seconds = 4 + Math.floor(random() * 4);
        await control.configure(gateway, { outage });
        await pause(seconds * 1000);
        await control.configure(gateway, { outage: "none" });
        return `${gateway} ${outage} for ${seconds} s`;
      },
    };
    await pause(3000);
    const faultsStartedMs = performance.now();
    const faultLog: string[] = [];
    for (let round_ = 0; ; round_++) {
      for (const kind of shuffle(FAULTS_ONLY ?? FAULT_KINDS)) {
        const windowOver = (performance.now() - faultsStartedMs) / 1000 >= DURATION_SECONDS;
        if (windowOver && round_ > 0) break;
        const startedMs = performance.now();
        const what = await injectors[kind]();
        if (what === undefined) {
          progress(`fault ${kind}: skipped (the service was not running)`);
          continue;
        }
        faults[kind] = (faults[kind] ?? 0) + 1;
        const recovered = await allServing(mesh, RECOVERY_TIMEOUT_MS);
        const line = `fault ${kind}: ${what}; ${recovered ? "all SERVING" : "NOT all serving"} ${((performance.now() - startedMs) / 1000).toFixed(1)} s after it began`;
        faultLog.push(line);
        progress(line);
        if (!recovered) anomalies.add("service_not_recovered", `after ${kind}: not every service SERVING within ${RECOVERY_TIMEOUT_MS} ms`);
        await pause(FAULT_GAP_SECONDS * 1000);
      }
      if ((performance.now() - faultsStartedMs) / 1000 >= DURATION_SECONDS) break;
    }
    const faultWindowSeconds = (performance.now() - faultsStartedMs) / 1000;
    faultsOver = true;
    giveUpAtMs = Date.now() + CLIENT_GRACE_SECONDS * 1000;
    progress(`faults over after ${faultWindowSeconds.toFixed(0)} s; clients finish their operations (retrying at most ${CLIENT_GRACE_SECONDS} s more)`);
    await clientsDone;

    // Quiescence: every payment final, every event published and applied everywhere.
    const quiesceStartedMs = performance.now();
    monitor = postgres(pg.url, { max: 2, onnotice: () => {}, connection: { application_name: "cowrie-chaos-monitor", statement_timeout: 30_000 } });
    let lastBacklog: Record<string, number> = {};
    /** The backlog's non-zero parts, "payments_not_final 2, ...". */
    const left = (): string => Object.entries(lastBacklog).filter(([, count]) => count > 0).map(([what, count]) => `${what} ${count}`).join(", ");
    let quiesced = false;
    for (let round = 1; (performance.now() - quiesceStartedMs) / 1000 < QUIESCE_SECONDS; round++) {
      lastBacklog = await backlog(monitor, tenant.tenantId).catch((error: unknown) => ({ [`monitor error: ${String(error)}`]: 1 }));
      if (Object.values(lastBacklog).every((count) => count === 0)) {
        quiesced = true;
        break;
      }
      // What a slow quiescence waits on, every 5 s: the last line of a run cut off by its bound says.
      if (round % 5 === 0) progress(`quiescing for ${((performance.now() - quiesceStartedMs) / 1000).toFixed(0)} s: ${left()}`);
      await pause(1000);
    }
    const quiesceSeconds = (performance.now() - quiesceStartedMs) / 1000;
    progress(quiesced ? `quiesced in ${quiesceSeconds.toFixed(1)} s` : `NOT quiesced after ${QUIESCE_SECONDS} s: ${left()}`);
    if (!quiesced) anomalies.add("not_quiesced", left());

    if (SABOTAGE) await sabotage(monitor, tenant.tenantId, control);

    // The checks.
    progress("checking: payments, money, gateway records, journal, events, reconciliation");
    let verify: VerifyJournalResponse | undefined;
    try {
      verify = (await mesh.auditLedger([])).verify;
    } catch (error) {
      progress(`VerifyJournal failed: ${String(error)}`);
    }
    const records = await control.records();
    const counts = await checkRun({ sql: monitor, tenantId: tenant.tenantId, ops: workload.ops, wallets, funded, records, verify, webhooks: receiver }, anomalies);
    const deadLettered = await deadLetters(mesh.namespace);
    // An event consumer's dead letter is an event not applied; a dead-lettered message of the
    // Router's work queue is a payment left to the completer's fallback after ten lost deliveries
    // (outages are waited out with the message kept). Both are anomalies.
    const [workQueue] = workTopology(mesh.namespace).queues;
    for (const [queue, { count, examples }] of Object.entries(deadLettered)) {
      if (count === 0) continue;
      const kind = queue === `${workQueue}.dead` ? "work_message_dead_lettered" : "event_dead_lettered";
      anomalies.add(kind, `${queue}: ${count} messages`, count);
      for (const example of examples) anomalies.example(kind, `${queue}: ${example}`);
    }
    const reconciliation = await reconcile(mesh, runStartedAt, anomalies);
    progress(`reconciliation: ${reconciliation}`);

    const crashes = supervisor.crashes;
    // A service must ride out every fault (waiting for a backend, failing calls UNAVAILABLE), not exit.
    for (const crash of crashes) anomalies.add("process_crashed", `${crash.service} at ${crash.atS} s (${crash.signal ?? `code ${crash.code}`}): ${crash.cause}`);
    const restartsTotal = Object.values(supervisor.restarts.nemesis).reduce((sum, count) => sum + count, 0) + supervisor.crashRestarts;
    if (anomalies.total > 0) keepLogs = true;
    progress("stopping the processes and the private servers, deleting the queues");
    await cleanup();

    // -------------------------------------------------------------------------------------------
    // Report
    const operations = workload.summary();
    const opsTotal = workload.ops.length;
    const retries = workload.retries();
    const durationSeconds = (performance.now() - runStartedMs) / 1000;
    const lines = [
      "",
      `chaos: ${CLIENTS} clients, seed ${SEED}, fault window ${faultWindowSeconds.toFixed(0)} s; private PostgreSQL and Redis, shared RabbitMQ through a proxy`,
      `operations: ${opsTotal} (${workload.ops.reduce((sum, op) => sum + op.attempts, 0)} calls); ` +
        Object.entries(operations).map(([kind, outcomes]) => `${kind}: ${countsText(outcomes)}`).join("; "),
      `  retried after an unknown outcome: ${countsText(retries)}`,
      `faults: ${countsText(faults)}`,
      ...faultLog.map((line) => `  ${line}`),
      `restarts: by the nemesis ${countsText(supervisor.restarts.nemesis)}; after a crash ${countsText(supervisor.restarts.crash)}`,
      ...crashes.slice(0, 10).map((crash) => `  crash at ${crash.atS} s: ${crash.service} (${crash.signal ?? `code ${crash.code}`}): ${crash.cause}`),
      `quiescence: ${quiesced ? `${quiesceSeconds.toFixed(1)} s` : `NOT reached in ${QUIESCE_SECONDS} s`}; checked ${counts.payments} payments, ${counts.transfers} Ledger transfers, ${counts.events} events`,
      `webhooks: ${receiver?.received.size ?? 0} events received (${counts.webhookRedeliveries} more deliveries of the same events, ${receiver?.refused ?? 0} first attempts refused on purpose)`,
      `journal: ${verify ? `${verify.findings.length} findings over ${verify.transfersChecked} transfers` : "not verified"}`,
      `reconciliation: ${reconciliation}`,
      anomalies.total === 0 ? "anomalies: none" : `anomalies: ${anomalies.total}: ${countsText(anomalies.counts)}`,
      ...Object.entries(anomalies.examples).flatMap(([kind, examples]) => examples.map((example) => `  ${kind}: ${example}`)),
      `run took ${durationSeconds.toFixed(0)} s (services SERVING ${startupSeconds.toFixed(1)} s after spawn)${keepLogs ? `; logs in ${logDir}` : ""}`,
      "",
    ];
    process.stdout.write(lines.join("\n"));
    const figures = {
      bench: "chaos",
      ...(SABOTAGE ? { sabotage: true } : {}),
      seed: SEED,
      clients: CLIENTS,
      operations,
      operations_total: opsTotal,
      retries,
      faults,
      faults_total: Object.values(faults).reduce((sum, count) => sum + count, 0),
      restarts: { nemesis: supervisor.restarts.nemesis, crash: supervisor.restarts.crash, total: restartsTotal },
      crashes: crashes.map((crash) => ({ service: crash.service, at_s: crash.atS, cause: crash.cause })),
      anomalies: anomalies.counts,
      anomalies_total: anomalies.total,
      quiesced,
      quiesce_s: round(quiesceSeconds, 1),
      payments: counts.payments,
      ledger_transfers: counts.transfers,
      events: counts.events,
      webhooks: { events_received: receiver?.received.size ?? 0, redeliveries: counts.webhookRedeliveries, refused_on_purpose: receiver?.refused ?? 0 },
      journal_findings: verify?.findings.length ?? null,
      reconciliation,
      fault_window_s: round(faultWindowSeconds, 1),
      duration_s: round(durationSeconds, 1),
    };
    if (anomalies.total > 0) process.exitCode = 1;
    process.stdout.write(`${JSON.stringify(figures)}\n`);
  });
}

/**
 * --sabotage: breaks what the checks hold the mesh to, behind the services' backs, so that a run
 * shows the checks can see: a SUCCEEDED internal payment marked FAILED (its money moved, its client
 * was told SUCCEEDED, its event says succeeded), one audit row deleted, and a second successful
 * capture of a pay-in at another gateway.
 */
async function sabotage(sql: postgres.Sql, tenantId: string, control: ReturnType<typeof simulatorControl>): Promise<void> {
  const [internal] = await sql<{ id: string }[]>`select id from router.payments where tenant_id = ${tenantId} and status = 4 and kind = 1 limit 1`;
  if (internal) await sql`update router.payments set status = 5 where id = ${internal.id}`;
  await sql`delete from edge.audit_events where event_id = (select event_id from edge.audit_events order by recorded_at desc limit 1)`;
  const [payIn] = await sql<{ id: string; gateway: SimulatedGateway; amount_minor: string; currency: string }[]>`
    select id, gateway, amount_minor::text, currency from router.payments where tenant_id = ${tenantId} and status = 4 and kind = 2 limit 1`;
  const other = SIMULATED_GATEWAYS.find((gateway) => gateway !== payIn?.gateway) as SimulatedGateway;
  if (payIn) await control.importRecords([{ gateway: other, operation: "charge", reference: gatewayReference(payIn.id, other), amountMinor: payIn.amount_minor, currency: payIn.currency, status: "succeeded" }]);
  progress(`sabotage: ${internal?.id} marked FAILED, one audit row deleted, ${payIn?.id} captured again at ${other}`);
}

/**
 * Messages in the dead-letter twins of the run's queues (none is the goal), with the first few of
 * each: the body (a payment id for the work queue) and when and why it was dead-lettered.
 */
async function deadLetters(namespace: string): Promise<Record<string, { count: number; examples: string[] }>> {
  const connection = new Connection({ url: TEST_AMQP_URL, connectionName: `cowrie-chaos-check-${process.pid}` });
  connection.on("error", () => {});
  const found: Record<string, { count: number; examples: string[] }> = {};
  try {
    for (const queue of meshTopology(namespace).queues.filter((name) => !/\.retry\.\d+$/.test(name))) {
      const dead = `${queue}.dead`;
      const count = await connection.queueDeclare({ queue: dead, passive: true }).then((ok) => ok.messageCount, () => 0);
      const examples: string[] = [];
      // The queues are deleted at the end: taking the messages loses nothing.
      for (let index = 0; index < Math.min(count, 3); index++) {
        const message = await connection.basicGet({ queue: dead, noAck: true }).catch(() => undefined);
        if (!message) break;
        const body = Buffer.isBuffer(message.body) ? message.body : Buffer.from(String(message.body));
        const text = /^[\x20-\x7e]+$/.test(body.toString("latin1")) ? body.toString("utf8") : `${body.length} bytes`;
        const death = (message.headers?.["x-death"] as { time?: { value?: number } | number; reason?: string; count?: number }[] | undefined)?.[0];
        const firstDeath = message.headers?.["x-first-death-reason"];
        examples.push(`${message.messageId ?? ""} ${text}; ${String(firstDeath ?? death?.reason ?? "")}${death?.count ? ` x${death.count}` : ""}`);
      }
      found[dead] = { count, examples };
    }
  } finally {
    await connection.close().catch(() => undefined);
  }
  return found;
}

/**
 * Runs the Router's reconciliation over the run's window and counts its findings as anomalies;
 * answers what happened, in a few words. Skipped (with a note) when the Router has no
 * ReconciliationService.
 */
async function reconcile(mesh: BenchMesh<"simulator">, from: Date, anomalies: Anomalies): Promise<string> {
  let module: typeof import("../gen/cowrie/router/v1/reconciliation_pb.js");
  try {
    module = await import("../gen/cowrie/router/v1/reconciliation_pb.js");
  } catch {
    return "skipped: no cowrie.router.v1.ReconciliationService in gen/ yet";
  }
  const session = new Http2SessionManager(mesh.url("router"));
  try {
    const client = createClient(module.ReconciliationService, createConnectTransport({ baseUrl: mesh.url("router"), httpVersion: "2", useBinaryFormat: true, sessionManager: session }));
    const headers = { authorization: `Bearer ${mesh.operatorToken}` };
    const window = { from: timestampFromDate(new Date(from.getTime() - 60_000)), to: timestampFromDate(new Date()), operator: "chaos" };
    let response;
    for (let attempt = 0; ; attempt++) {
      try {
        response = await client.runReconciliation(window, { headers, timeoutMs: 120_000 });
        break;
      } catch (error) {
        const connectError = ConnectError.from(error);
        if (codeToString(connectError.code) === "unimplemented") return "skipped: the Router does not implement RunReconciliation";
        if (attempt >= 3) {
          anomalies.add("reconciliation_failed", `${codeToString(connectError.code)}: ${connectError.rawMessage}`);
          return `failed: ${codeToString(connectError.code)}: ${connectError.rawMessage}`;
        }
        await pause(2000);
      }
    }
    const run = response.run;
    if (!run) return "no run in the answer";
    if (run.status !== "completed") anomalies.add("reconciliation_failed", `run ${run.id} ${run.status}: ${run.error}`);
    const byType: string[] = [];
    for (const count of run.findingsByType) {
      const type = (module.FindingType[count.type] ?? String(count.type)).toLowerCase();
      byType.push(`${type} ${count.count}`);
      if (count.count > 0) anomalies.add(`reconciliation_${type}`, `run ${run.id}: ${count.count}`, count.count);
    }
    if (byType.length > 0) {
      const { findings } = await client.listFindings({ pageSize: 20 }, { headers, timeoutMs: 30_000 }).catch(() => ({ findings: [] }));
      for (const finding of findings) anomalies.example(`reconciliation_${(module.FindingType[finding.type] ?? "").toLowerCase()}`, `${finding.subject}: ${finding.detail}`);
    }
    return `run ${run.id} ${run.status}: checked ${run.checked} (payments ${run.paymentsChecked}, gateway transactions ${run.gatewayTransactionsChecked}, ledger transfers ${run.ledgerTransfersChecked}), matched ${run.matched}, deferred ${run.deferred}; findings ${byType.length === 0 ? "none" : byType.join(", ")}`;
  } finally {
    session.abort();
  }
}

await main();
