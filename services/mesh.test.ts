// End to end: the mesh started the way `npm start` starts it, as its own process, with a tenant
// made by the operator command and driven through the generated clients, as the README shows.
// Once on the real PostgreSQL, Redis and RabbitMQ, once on the embedded default (which must keep
// its data across a restart).
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { createConnectTransport as createWebTransport } from "@connectrpc/connect-web";
import { PaymentsService, PaymentStatus } from "../gen/cowrie/edge/v1/payments_pb.js";
import { EntryType, WalletKind, WalletsService } from "../gen/cowrie/edge/v1/wallets_pb.js";
import { LedgerService } from "../gen/cowrie/ledger/v1/ledger_pb.js";
import { WebhooksService } from "../gen/cowrie/edge/v1/webhooks_pb.js";
import { startWebhookReceiver } from "./edge/test-support.js";
import { verifyWebhook } from "./edge/webhooks/signature.js";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../gen/grpc/health/v1/health_pb.js";
import { SERVICE_NAMES, type ServiceName } from "./runtime/config.js";
import { meshTopology } from "./mesh.js";
import { deleteBrokerTopology, freshDatabase, meshEnvironment, TEST_AMQP_URL, TEST_REDIS_URL } from "./runtime/testing.js";

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
    // Its own process group, so a test that fails can kill the mesh with the simulator it spawned.
    detached: true,
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

/** SIGKILL to the mesh's whole process group (main.ts and the simulator it spawned), if any is left. */
function killGroup(mesh: MeshProcess): void {
  try {
    process.kill(-(mesh.child.pid as number), "SIGKILL");
  } catch {
    // Nothing left.
  }
}

function client<T extends DescService>(service: T, port: number, apiKey?: string): Client<T> {
  const interceptors: Interceptor[] = apiKey
    ? [(next) => (request) => {
        request.header.set("authorization", `Bearer ${apiKey}`);
        return next(request);
      }]
    : [];
  return createClient(service, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}`, interceptors }));
}

/** Runs `npm run admin -- ...` as an operator would, against the mesh's Edge. */
async function admin(mesh: MeshProcess, env: Record<string, string>, ...args: string[]): Promise<string> {
  const { stdout } = await promisify(execFile)(process.execPath, ["--import", "tsx", "scripts/admin.ts", ...args], {
    cwd: root,
    env: { ...process.env, ...env, COWRIE_EDGE_PORT: String(mesh.ports.edge) },
  });
  return stdout;
}

/** A tenant and its first API key, made with the operator command as the README shows. */
async function createTenant(mesh: MeshProcess, env: Record<string, string>, name: string) {
  const printed = await admin(mesh, env, "create-tenant", name);
  const apiKey = printed.match(/ck_[A-Za-z0-9_-]+/)?.[0];
  const tenantId = printed.match(/ten_[A-Za-z0-9]+/)?.[0];
  assert.ok(apiKey && tenantId, `admin create-tenant printed no key: ${printed}`);
  return { apiKey, tenantId };
}

/**
 * The journey of a new tenant: wallets for a customer and a merchant, a top-up, a payment with a
 * fee leg, a partial refund, and the statement that shows all of it.
 */
async function driveSlice(mesh: MeshProcess, env: Record<string, string>, label: string) {
  const { apiKey } = await createTenant(mesh, env, `shop-${label}`);
  const wallets = client(WalletsService, mesh.ports.edge, apiKey);
  const payments = client(PaymentsService, mesh.ports.edge, apiKey);
  const requestId = `e2e-${label}-${Date.now()}`;
  const headers = (key: string, id = `${requestId}-${key}`) => new Headers({ "x-request-id": id, "idempotency-key": key });
  const customer = (await wallets.createWallet({ ownerId: "alice", currency: "NGN", kind: WalletKind.CUSTOMER }, { headers: headers("w1"), timeoutMs: 5000 })).wallet;
  const merchant = (await wallets.createWallet({ ownerId: "bakery", currency: "NGN", kind: WalletKind.MERCHANT }, { headers: headers("w2"), timeoutMs: 5000 })).wallet;
  assert.ok(customer && merchant);
  const funded = await wallets.fundWallet({ walletId: customer.id, amountMinor: 10_000n, currency: "NGN" }, { headers: headers("fund"), timeoutMs: 5000 });
  assert.equal(funded.wallet?.availableBalanceMinor, 10_000n);
  const paid = await payments.createPayment(
    { sourceWalletId: customer.id, destinationWalletId: merchant.id, amountMinor: 2_500n, feeMinor: 100n, currency: "NGN", reference: "order-1" },
    { headers: headers("pay", requestId), timeoutMs: 5000 },
  );
  assert.equal(paid.payment?.status, PaymentStatus.SUCCEEDED, `payment ${paid.payment?.failureCode} ${paid.payment?.failureMessage}`);
  const refunded = await payments.refundPayment(
    { paymentId: paid.payment?.id ?? "", amountMinor: 1_000n, reason: "one cake short" },
    { headers: headers("refund"), timeoutMs: 5000 },
  );
  assert.equal(refunded.refund?.status, PaymentStatus.SUCCEEDED);
  assert.equal(refunded.payment?.refundedMinor, 1_000n);
  const statement = await wallets.getStatement({ walletId: customer.id }, { timeoutMs: 5000 });
  // Top-up, the payment's two legs (2,400 to the merchant, the 100 fee), the refund.
  assert.deepEqual(statement.entries.map((entry) => entry.balanceAfterMinor), [10_000n, 7_600n, 7_500n, 8_500n]);
  assert.deepEqual(statement.entries.map((entry) => EntryType[entry.type]), ["FUNDING", "PAYMENT", "FEE", "REFUND"]);
  const merchantNow = (await wallets.getWallet({ walletId: merchant.id })).wallet;
  assert.equal(merchantNow?.postedBalanceMinor, 2_400n - 1_000n);
  return { apiKey, wallets, payments, customer, merchant, requestId, headers, payment: paid.payment };
}

describe("the mesh on real PostgreSQL, Redis and RabbitMQ", () => {
  let database: Awaited<ReturnType<typeof freshDatabase>>;
  let mesh: MeshProcess;
  let env: Record<string, string>;

  before(async () => {
    database = await freshDatabase("mesh");
    env = await meshEnvironment({
      DATABASE_URL: database.url,
      REDIS_URL: TEST_REDIS_URL,
      AMQP_URL: TEST_AMQP_URL,
      COWRIE_LOG_LEVEL: "info",
      COWRIE_OPERATOR_TOKEN: `operator-${randomUUID()}`,
    });
    mesh = await startMeshProcess(env);
  });

  after(async () => {
    if (mesh && mesh.child.exitCode === null) await mesh.stop();
    if (mesh) killGroup(mesh);
    await database?.drop();
    if (env?.COWRIE_BROKER_NAMESPACE) await deleteBrokerTopology(meshTopology(env.COWRIE_BROKER_NAMESPACE));
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

  it("pays and refunds through Edge → Router → Wallet → Ledger, with balances from the Ledger", async () => {
    const { customer, merchant } = await driveSlice(mesh, env, "real");
    const ledger = client(LedgerService, mesh.ports.ledger);
    const { accounts } = await ledger.lookupAccounts({ ids: [customer.id, merchant.id, "funding:NGN"] });
    const [c, m, funding] = accounts;
    assert.equal((c?.creditsPosted ?? 0n) - (c?.debitsPosted ?? 0n), 8_500n);
    assert.equal((m?.creditsPosted ?? 0n) - (m?.debitsPosted ?? 0n), 1_400n);
    assert.ok((funding?.debitsPosted ?? 0n) >= 10_000n);
  });

  it("returns the first outcome for a retried idempotency key and refuses a changed request", async () => {
    const { payments, customer, merchant, headers, payment } = await driveSlice(mesh, env, "retry");
    const request = { sourceWalletId: customer.id, destinationWalletId: merchant.id, amountMinor: 2_500n, feeMinor: 100n, currency: "NGN", reference: "order-1" };
    const replay = await payments.createPayment(request, { headers: headers("pay"), timeoutMs: 5000 });
    assert.equal(replay.replayed, true);
    assert.equal(replay.payment?.id, payment?.id);
    await assert.rejects(
      payments.createPayment({ ...request, amountMinor: 2_000n }, { headers: headers("pay") }),
      (error: ConnectError) => error.code === Code.AlreadyExists,
    );
    const tooMuch = { ...request, amountMinor: 1_000_000n };
    const first = await payments.createPayment(tooMuch, { headers: headers("too-much") });
    const again = await payments.createPayment(tooMuch, { headers: headers("too-much") });
    assert.equal(first.payment?.status, PaymentStatus.FAILED);
    assert.equal(first.payment?.failureCode, "insufficient_funds");
    assert.equal(again.payment?.id, first.payment?.id);
    assert.equal(again.replayed, true);
  });

  it("keeps tenants apart and refuses calls without a valid API key", async () => {
    const { customer } = await driveSlice(mesh, env, "tenant-a");
    const other = await createTenant(mesh, env, "tenant-b");
    const intruder = client(WalletsService, mesh.ports.edge, other.apiKey);
    await assert.rejects(intruder.getWallet({ walletId: customer.id }), (error: ConnectError) => error.code === Code.NotFound);
    const anonymous = client(WalletsService, mesh.ports.edge);
    await assert.rejects(anonymous.getWallet({ walletId: customer.id }), (error: ConnectError) => error.code === Code.Unauthenticated);
  });

  it("answers bad input with INVALID_ARGUMENT naming the field", async () => {
    const { apiKey } = await createTenant(mesh, env, "bad-input");
    const edge = client(WalletsService, mesh.ports.edge, apiKey);
    await assert.rejects(
      edge.createWallet({ ownerId: "x", currency: "naira", kind: WalletKind.CUSTOMER }, { headers: { "idempotency-key": "k1" } }),
      (error: ConnectError) => error.code === Code.InvalidArgument && error.rawMessage.startsWith("currency:"),
    );
    await assert.rejects(
      edge.fundWallet({ walletId: "wal_x", amountMinor: 5n, currency: "NGN" }),
      (error: ConnectError) => error.code === Code.InvalidArgument && error.rawMessage.startsWith("Idempotency-Key header:"),
    );
  });

  it("carries the request id into every hop's log line, with a deadline that shrinks per hop", async () => {
    const { requestId } = await driveSlice(mesh, env, "trace");
    await new Promise((resolve) => setTimeout(resolve, 200));
    const lines = mesh.logLines().filter((line) => line.requestId === requestId && line.msg === "rpc");
    const hop = (service: string, rpc: string) =>
      lines.find((line) => line.service === service && String(line.rpc).endsWith(rpc)) as { budgetMs: number } | undefined;
    const hops = [hop("edge", "/CreatePayment"), hop("router", "/CreatePayment"), hop("wallet", "/TransferFunds"), hop("ledger", "/CreateTransfers")];
    assert.ok(hops.every(Boolean), `missing hop lines: ${JSON.stringify(lines)}`);
    const budgets = hops.map((line) => line?.budgetMs ?? 0);
    assert.ok((budgets[0] ?? 0) <= 5000);
    for (let index = 1; index < budgets.length; index++) {
      assert.ok((budgets[index] ?? 0) < (budgets[index - 1] ?? 0), `budgets do not shrink per hop: ${budgets.join(" → ")}`);
    }
  });

  it("serves browsers through Connect-Web (Connect protocol over HTTP/1.1 with JSON)", async () => {
    const { apiKey } = await createTenant(mesh, env, "web");
    const web = createClient(WalletsService, createWebTransport({
      baseUrl: `http://127.0.0.1:${mesh.ports.edge}`,
      interceptors: [(next) => (request) => {
        request.header.set("authorization", `Bearer ${apiKey}`);
        return next(request);
      }],
    }));
    const response = await web.createWallet({ ownerId: "web-user", currency: "KES", kind: WalletKind.CUSTOMER }, { headers: { "idempotency-key": "web-1" } });
    assert.equal(response.wallet?.currency, "KES");
    assert.equal(response.wallet?.minorUnitExponent, 2);
    const again = await web.getWallet({ walletId: response.wallet?.id ?? "" });
    assert.equal(again.wallet?.availableBalanceMinor, 0n);
  });

  it("stops cleanly on SIGINT", async () => {
    assert.equal(await mesh.stop(), 0);
  });
});

describe("the mesh on the embedded default (npm start with no configuration)", () => {
  let dataDir: string;
  const started: MeshProcess[] = [];

  before(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), "cowrie-embedded-"));
  });

  after(async () => {
    // A failed assertion must not leave a mesh running (nor the gateway simulator it spawned, which
    // holds the mesh's output pipes), which would keep this file from ending.
    for (const mesh of started) killGroup(mesh);
    await rm(dataDir, { recursive: true, force: true });
  });

  it("runs a tenant's journey with the generated operator token, and keeps the money across a restart", async () => {
    const env = await meshEnvironment({ COWRIE_DATA_DIR: dataDir });
    const first = await startMeshProcess(env);
    started.push(first);
    process.stdout.write(`# embedded mesh SERVING on all five ports after ${first.startupMs} ms\n`);
    const { apiKey, customer, merchant, payments } = await driveSlice(first, env, "embedded");
    // Events on the embedded default: the outbox through the in-process broker to a merchant webhook.
    const receiver = await startWebhookReceiver(() => 204);
    try {
      const webhooks = client(WebhooksService, first.ports.edge, apiKey);
      const { secret } = await webhooks.createWebhookEndpoint({ url: receiver.url, eventTypes: ["payment.succeeded"] }, { headers: { "idempotency-key": "hook" } });
      await payments.createPayment(
        { sourceWalletId: customer.id, destinationWalletId: merchant.id, amountMinor: 100n, currency: "NGN", reference: "hooked" },
        { headers: { "idempotency-key": "hooked" }, timeoutMs: 5000 },
      );
      const received = () => receiver.requests.map(({ headers, body }) => ({
        type: String(headers["cowrie-event-type"]),
        reference: String((JSON.parse(body.toString("utf8")) as { data?: { payment?: { reference?: string } } }).data?.payment?.reference ?? ""),
        verified: verifyWebhook({ secret, signatureHeader: headers["cowrie-signature"] as string, body }).ok,
      }));
      // Events of the earlier payments may still be on their way when the endpoint appears: only
      // this payment's are counted.
      const hooked = () => received().filter((event) => event.reference === "hooked");
      for (let waited = 0; hooked().length === 0 && waited < 100; waited++) await new Promise((resolve) => setTimeout(resolve, 100));
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert.deepEqual(hooked(), [{ type: "payment.succeeded", reference: "hooked", verified: true }]);
      assert.ok(received().every((event) => event.verified));
    } finally {
      await receiver.close();
    }
    assert.equal(await first.stop(), 0);

    const second = await startMeshProcess(env);
    started.push(second);
    try {
      const edge = client(WalletsService, second.ports.edge, apiKey);
      assert.equal((await edge.getWallet({ walletId: customer.id })).wallet?.postedBalanceMinor, 8_400n);
      assert.equal((await edge.getWallet({ walletId: merchant.id })).wallet?.postedBalanceMinor, 1_500n);
    } finally {
      assert.equal(await second.stop(), 0);
    }
  });
});
