// The Router killed with SIGKILL while gateway payments are in flight (calls sent, answers not
// yet recorded, messages unacknowledged), then started again: every payment must end SUCCEEDED
// or FAILED, each charged or paid out at most once at the gateways (by the simulator's own
// records), SUCCEEDED exactly when the gateway moved the money, and the Ledger must agree.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { PaymentKind, PaymentStatus, RouterService, type Payment } from "../../gen/cowrie/router/v1/router_pb.js";
import { WalletKind, WalletService } from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import { startMesh, type Mesh } from "../mesh.js";
import { meshTopology } from "../mesh.js";
import { capturingLogger, deleteBrokerTopology, freshDatabase, meshEnvironment, TEST_AMQP_URL, testConfig } from "../runtime/testing.js";
import { simulatorControl, simulatorGatewayEnv } from "../simulator/control.js";
import { startSimulator } from "../simulator/simulator.js";

const root = path.resolve(import.meta.dirname, "../..");
const TENANT = "tenant-crash";

let database: Awaited<ReturnType<typeof freshDatabase>>;
let namespace: string | undefined;
let simulator: Awaited<ReturnType<typeof startSimulator>>;
let mesh: Mesh;
let env: Record<string, string>;
let routerProcess: ChildProcess | undefined;
let router: Client<typeof RouterService>;
let wallets: Client<typeof WalletService>;

/** The Router as its own process, as in production; resolves once it serves. */
async function startRouter(): Promise<ChildProcess> {
  const child = spawn(process.execPath, ["--import", "tsx", "services/main.ts", "router"], { cwd: root, env: { ...process.env, ...env }, stdio: ["ignore", "ignore", "pipe"] });
  await new Promise<void>((resolve, reject) => {
    let output = "";
    child.stderr?.on("data", (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes("service(s) up")) resolve();
    });
    child.once("exit", (code) => reject(new Error(`router exited ${code}: ${output}`)));
  });
  return child;
}

before(async () => {
  database = await freshDatabase("gateway_crash");
  simulator = await startSimulator({ port: 0 });
  env = await meshEnvironment({
    DATABASE_URL: database.url,
    AMQP_URL: TEST_AMQP_URL,
    ...simulatorGatewayEnv(simulator.url),
    COWRIE_GATEWAY_TIMEOUT_MS: "1000",
    COWRIE_COMPLETER_INTERVAL_MS: "200",
    COWRIE_RECOVERY_AFTER_MS: "1500",
    COWRIE_LOG_LEVEL: "warn",
  });
  const config = testConfig(env);
  namespace = config.brokerNamespace;
  mesh = await startMesh(config, ["ledger", "wallet"], capturingLogger().log);
  const transport = (port: number) => createConnectTransport({ baseUrl: `http://127.0.0.1:${port}`, httpVersion: "2" });
  router = createClient(RouterService, transport(config.routerPort));
  wallets = createClient(WalletService, transport(config.walletPort));
});

after(async () => {
  routerProcess?.kill("SIGKILL");
  await mesh?.close();
  await simulator?.close();
  await database?.drop();
  if (namespace) await deleteBrokerTopology(meshTopology(namespace));
});

describe("the Router killed mid-payment", () => {
  it("completes every gateway payment exactly once after a restart", async () => {
    // Slow gateways, so that the kill lands while calls are out.
    await simulatorControl(simulator.url).configure("paystack", { latencyMs: { median: 300, p99: 800 } });
    await simulatorControl(simulator.url).configure("flutterwave", { latencyMs: { median: 300, p99: 800 } });
    routerProcess = await startRouter();
    const { wallet } = await wallets.createWallet({ tenantId: TENANT, ownerId: "merchant", currency: "NGN", kind: WalletKind.MERCHANT });
    assert.ok(wallet);
    await wallets.fundWallet({ tenantId: TENANT, walletId: wallet.id, amountMinor: 1_000_000n, currency: "NGN", idempotencyKey: "seed" });

    const accepted: Payment[] = await Promise.all(Array.from({ length: 30 }, async (_, index) => {
      const payout = index % 3 === 0;
      const { payment } = await router.createPayment({
        tenantId: TENANT,
        idempotencyKey: `crash-${index}`,
        kind: payout ? PaymentKind.PAYOUT : PaymentKind.PAY_IN,
        amountMinor: BigInt(1_000 + index),
        currency: "NGN",
        country: "NG",
        ...(payout
          ? { sourceWalletId: wallet.id, bankAccount: { bankCode: "058", accountNumber: "0123456789", accountName: "Ada" } }
          : { destinationWalletId: wallet.id, paymentMethod: "AUTH_good", customerEmail: "payer@example.com" }),
      });
      assert.ok(payment);
      return payment;
    }));
    await new Promise((resolve) => setTimeout(resolve, 400));
    routerProcess.kill("SIGKILL");
    await new Promise((resolve) => routerProcess?.once("exit", resolve));
    routerProcess = await startRouter();

    const untilMs = Date.now() + 30_000;
    let payments: Payment[] = [];
    for (;;) {
      payments = await Promise.all(accepted.map(async (payment) => (await router.getPayment({ tenantId: TENANT, paymentId: payment.id })).payment as Payment));
      if (payments.every((payment) => payment.status === PaymentStatus.SUCCEEDED || payment.status === PaymentStatus.FAILED)) break;
      assert.ok(Date.now() < untilMs, `still open: ${payments.filter((p) => p.status !== PaymentStatus.SUCCEEDED && p.status !== PaymentStatus.FAILED).map((p) => PaymentStatus[p.status]).join(", ")}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }

    const moved = new Map<string, number>();
    for (const record of await simulatorControl(simulator.url).records({})) {
      if (record.status !== "succeeded" || record.operation === "refund") continue;
      const paymentId = record.reference.split(".")[0]!.replace("pay-", "pay_");
      moved.set(paymentId, (moved.get(paymentId) ?? 0) + 1);
    }
    let expected = 1_000_000n;
    for (const payment of payments) {
      const count = moved.get(payment.id) ?? 0;
      assert.ok(count <= 1, `${payment.id} moved money ${count} times at the gateways`);
      assert.equal(count, payment.status === PaymentStatus.SUCCEEDED ? 1 : 0, `${payment.id} is ${PaymentStatus[payment.status]} (${payment.failureCode})`);
      if (payment.status === PaymentStatus.SUCCEEDED) expected += payment.kind === PaymentKind.PAY_IN ? payment.amountMinor : -payment.amountMinor;
    }
    assert.ok(payments.filter((payment) => payment.status === PaymentStatus.SUCCEEDED).length >= 25, "healthy gateways should take almost every payment");
    const { wallet: after } = await wallets.getWallet({ tenantId: TENANT, walletId: wallet.id });
    assert.equal(after?.postedBalanceMinor, expected);
    assert.equal(after?.availableBalanceMinor, expected, "a hold was left behind");
  });
});
