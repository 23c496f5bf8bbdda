// End to end: the mesh started the way `npm start` starts it, as its own process, driven through
// the generated clients. Once on the real PostgreSQL, Redis and RabbitMQ, once on the embedded
// default (which must keep its data across a restart).
import assert from "node:assert/strict";
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { createConnectTransport as createWebTransport } from "@connectrpc/connect-web";
import { WalletKind, WalletsService } from "../gen/cowrie/edge/v1/wallets_pb.js";
import { LedgerService } from "../gen/cowrie/ledger/v1/ledger_pb.js";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { SERVICE_NAMES, type ServiceName } from "./runtime/config.js";
import { freshDatabase, meshEnvironment, TEST_AMQP_URL, TEST_REDIS_URL } from "./runtime/testing.js";

const root = path.resolve(import.meta.dirname, "..");
const STARTUP_LIMIT_MS = 30_000;

interface MeshProcess {
  child: ChildProcess;
  ports: Record<ServiceName, number>;
  logLines(): Record<string, unknown>[];
  stop(): Promise<number | null>;
}

/** Starts `services/main.ts` exactly as `npm start` does, and waits until every service is SERVING. */
async function startMeshProcess(env: Record<string, string>): Promise<MeshProcess & { startupMs: number }> {
  const startedAtMs = Date.now();
  const child = spawn(process.execPath, ["--import", "tsx", "services/main.ts"], {
    cwd: root,
    env: { ...process.env, DATABASE_URL: "", REDIS_URL: "", AMQP_URL: "", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (chunk) => (stdout += chunk));
  child.stderr?.on("data", (chunk) => (stderr += chunk));
  const ports = Object.fromEntries(
    SERVICE_NAMES.map((name) => [name, Number(env[`COWRIE_${name.toUpperCase()}_PORT`])]),
  ) as Record<ServiceName, number>;
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  for (const name of SERVICE_NAMES) {
    const health = createClient(Health, createGrpcTransport({ baseUrl: `http://127.0.0.1:${ports[name]}` }));
    for (;;) {
      if (child.exitCode !== null) assert.fail(`mesh exited during start-up: ${stderr}`);
      if (Date.now() - startedAtMs > STARTUP_LIMIT_MS) assert.fail(`${name} not SERVING after ${STARTUP_LIMIT_MS} ms: ${stderr}`);
      const status = await health.check({}, { timeoutMs: 500 }).then((response) => response.status, () => undefined);
      if (status === ServingStatus.SERVING) break;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  return {
    child,
    ports,
    startupMs: Date.now() - startedAtMs,
    logLines: () => stdout.split("\n").filter((line) => line.startsWith("{")).map((line) => JSON.parse(line)),
    async stop() {
      child.kill("SIGINT");
      return exited;
    },
  };
}

function client<T extends DescService>(service: T, port: number): Client<T> {
  return createClient(service, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` }));
}

/** Create two wallets, fund one from the platform funding account, move money, read both. */
async function driveSlice(mesh: MeshProcess, label: string) {
  const edge = client(WalletsService, mesh.ports.edge);
  const requestId = `e2e-${label}-${Date.now()}`;
  const headers = (key: string, id = `${requestId}-${key}`) => new Headers({ "x-request-id": id, "idempotency-key": key });
  const alice = (await edge.createWallet({ ownerId: `alice-${label}`, currency: "NGN", kind: WalletKind.CUSTOMER }, { timeoutMs: 5000 })).wallet;
  const bob = (await edge.createWallet({ ownerId: `bob-${label}`, currency: "NGN", kind: WalletKind.CUSTOMER }, { timeoutMs: 5000 })).wallet;
  assert.ok(alice && bob);
  const funded = await edge.fundWallet({ walletId: alice.id, amountMinor: 10_000n, currency: "NGN" }, { headers: headers(`fund-${label}`), timeoutMs: 5000 });
  assert.equal(funded.wallet?.availableBalanceMinor, 10_000n);
  const moved = await edge.transferFunds(
    { sourceWalletId: alice.id, destinationWalletId: bob.id, amountMinor: 2_500n, currency: "NGN" },
    { headers: headers(`move-${label}`, requestId), timeoutMs: 3000 },
  );
  assert.equal(moved.replayed, false);
  assert.equal(moved.sourceWallet?.postedBalanceMinor, 7_500n);
  assert.equal(moved.destinationWallet?.postedBalanceMinor, 2_500n);
  return { edge, alice, bob, requestId, headers, transferId: moved.transferId };
}

describe("the mesh on real PostgreSQL, Redis and RabbitMQ", () => {
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let mesh: MeshProcess;

  before(async () => {
    database = await freshDatabase("mesh");
    mesh = await startMeshProcess(await meshEnvironment({
      DATABASE_URL: database.url,
      REDIS_URL: TEST_REDIS_URL,
      AMQP_URL: TEST_AMQP_URL,
      COWRIE_LOG_LEVEL: "info",
    }));
  });

  after(async () => {
    if (mesh && mesh.child.exitCode === null) await mesh.stop();
    await database?.drop();
  });

  it("lists every service, health and reflection with buf curl on every port", async () => {
    const buf = path.join(root, "node_modules/.bin/buf");
    for (const name of SERVICE_NAMES) {
      const { stdout } = await promisify(execFile)(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-services", `http://127.0.0.1:${mesh.ports[name]}`]);
      const listed = stdout.trim().split("\n");
      assert.ok(listed.some((service) => service.startsWith(`cowrie.${name}.v1.`)), `${name}: ${stdout}`);
      assert.ok(listed.includes("grpc.health.v1.Health"));
      assert.ok(listed.includes("grpc.reflection.v1.ServerReflection"));
      assert.ok(listed.includes("grpc.reflection.v1alpha.ServerReflection"));
    }
  });

  it("moves money between wallets through Edge → Wallet → Ledger, with balances from the Ledger", async () => {
    const { alice, bob } = await driveSlice(mesh, "real");
    const ledger = client(LedgerService, mesh.ports.ledger);
    const { accounts } = await ledger.lookupAccounts({ ids: [alice.id, bob.id, "funding:NGN"] });
    const [a, b, funding] = accounts;
    assert.equal((a?.creditsPosted ?? 0n) - (a?.debitsPosted ?? 0n), 7_500n);
    assert.equal((b?.creditsPosted ?? 0n) - (b?.debitsPosted ?? 0n), 2_500n);
    assert.equal(funding?.debitsPosted, 10_000n);
  });

  it("returns the first outcome for a retried idempotency key and refuses a changed request", async () => {
    const { edge, alice, bob, headers } = await driveSlice(mesh, "retry");
    const request = { sourceWalletId: alice.id, destinationWalletId: bob.id, amountMinor: 2_500n, currency: "NGN" };
    const replay = await edge.transferFunds(request, { headers: headers("move-retry"), timeoutMs: 3000 });
    assert.equal(replay.replayed, true);
    assert.equal(replay.sourceWallet?.postedBalanceMinor, 7_500n);
    await assert.rejects(
      edge.transferFunds({ ...request, amountMinor: 1n }, { headers: headers("move-retry") }),
      (error: ConnectError) => error.code === Code.AlreadyExists && /amount_minor/.test(error.rawMessage),
    );
    const tooMuch = { ...request, amountMinor: 1_000_000n };
    for (let attempt = 0; attempt < 2; attempt++) {
      await assert.rejects(
        edge.transferFunds(tooMuch, { headers: headers("too-much-retry") }),
        (error: ConnectError) => error.code === Code.FailedPrecondition && /insufficient funds/.test(error.rawMessage),
      );
    }
  });

  it("answers bad input with INVALID_ARGUMENT naming the field", async () => {
    const edge = client(WalletsService, mesh.ports.edge);
    await assert.rejects(
      edge.createWallet({ ownerId: "x", currency: "naira", kind: WalletKind.CUSTOMER }),
      (error: ConnectError) => error.code === Code.InvalidArgument && error.rawMessage.startsWith("currency:"),
    );
    await assert.rejects(
      edge.fundWallet({ walletId: "wal_x", amountMinor: 5n, currency: "NGN" }),
      (error: ConnectError) => error.code === Code.InvalidArgument && error.rawMessage.startsWith("Idempotency-Key header:"),
    );
  });

  it("carries the request id into every hop's log line, with a deadline that shrinks per hop", async () => {
    const { requestId } = await driveSlice(mesh, "trace");
    await new Promise((resolve) => setTimeout(resolve, 200));
    const lines = mesh.logLines().filter((line) => line.requestId === requestId && line.msg === "rpc");
    const transfer = (service: string, rpc: string) =>
      lines.find((line) => line.service === service && String(line.rpc).endsWith(rpc)) as { budgetMs: number } | undefined;
    const edgeLine = transfer("edge", "/TransferFunds");
    const walletLine = transfer("wallet", "/TransferFunds");
    const ledgerLine = transfer("ledger", "/CreateTransfers");
    assert.ok(edgeLine && walletLine && ledgerLine, `missing hop lines: ${JSON.stringify(lines)}`);
    assert.ok(edgeLine.budgetMs <= 3000);
    assert.ok(walletLine.budgetMs < edgeLine.budgetMs, `wallet ${walletLine.budgetMs} !< edge ${edgeLine.budgetMs}`);
    assert.ok(ledgerLine.budgetMs < walletLine.budgetMs, `ledger ${ledgerLine.budgetMs} !< wallet ${walletLine.budgetMs}`);
  });

  it("serves browsers through Connect-Web (Connect protocol over HTTP/1.1 with JSON)", async () => {
    const web = createClient(WalletsService, createWebTransport({ baseUrl: `http://127.0.0.1:${mesh.ports.edge}` }));
    const response = await web.createWallet({ ownerId: "web-user", currency: "KES", kind: WalletKind.CUSTOMER });
    assert.equal(response.wallet?.currency, "KES");
    const again = await web.getWallet({ walletId: response.wallet?.id ?? "" });
    assert.equal(again.wallet?.availableBalanceMinor, 0n);
  });

  it("stops cleanly on SIGINT", async () => {
    assert.equal(await mesh.stop(), 0);
  });
});

describe("the mesh on the embedded default (npm start with no configuration)", () => {
  let dataDir: string;

  before(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), "cowrie-embedded-"));
  });

  after(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  it("runs the slice, and keeps the money across a restart", async () => {
    const env = await meshEnvironment({ COWRIE_DATA_DIR: dataDir });
    const first = await startMeshProcess(env);
    process.stdout.write(`# embedded mesh SERVING on all five ports after ${first.startupMs} ms\n`);
    const { alice, bob } = await driveSlice(first, "embedded");
    assert.equal(await first.stop(), 0);

    const second = await startMeshProcess(env);
    try {
      const edge = client(WalletsService, second.ports.edge);
      assert.equal((await edge.getWallet({ walletId: alice.id })).wallet?.postedBalanceMinor, 7_500n);
      assert.equal((await edge.getWallet({ walletId: bob.id })).wallet?.postedBalanceMinor, 2_500n);
    } finally {
      assert.equal(await second.stop(), 0);
    }
  });
});
