// The Edge's doors, with the Edge alone on a fresh database and the real Redis, in front of a
// stand-in Wallet that records which tenant each call was made for: API keys (missing, malformed,
// unknown, revoked, read-only), the operator token and AdminService, the generated operator
// token file, rate limits, failing open without Redis, and the `npm run admin` command.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { create } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { AdminService, ApiKeyScope } from "../../gen/cowrie/edge/v1/admin_pb.js";
import { WalletsService } from "../../gen/cowrie/edge/v1/wallets_pb.js";
import { WalletSchema, WalletService } from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import { startTcpProxy } from "../runtime/tcp-proxy.js";
import { freshDatabase, rejection, startTestService, TEST_REDIS_URL } from "../runtime/testing.js";
import { KEY_CACHE_TTL_MS, OPERATOR_TOKEN_FILE } from "./auth.js";
import { edgeModule } from "./service.js";
import { bearer, edgeClient, newTenant, OPERATOR_TOKEN, startEdgeAlone, startStub } from "./test-support.js";

const root = path.resolve(import.meta.dirname, "../..");
const seenTenants: string[] = [];

let database: Awaited<ReturnType<typeof freshDatabase>>;
let stub: Awaited<ReturnType<typeof startStub>>;
let edge: Awaited<ReturnType<typeof startEdgeAlone>>;

before(async () => {
  database = await freshDatabase("edge_auth");
  stub = await startStub((router) =>
    router.service(WalletService, {
      async getWallet(request) {
        seenTenants.push(request.tenantId);
        return { wallet: create(WalletSchema, { id: request.walletId, tenantId: request.tenantId, currency: "USD" }) };
      },
      async fundWallet(request) {
        seenTenants.push(request.tenantId);
        return { transferId: `wtx_${request.idempotencyKey.length}`, replayed: false };
      },
    }),
  );
  edge = await startEdgeAlone(database.url, stub.baseUrl);
});

after(async () => {
  await edge?.close();
  await stub?.close();
  await database?.drop();
});

const fund = { walletId: "wal_x", amountMinor: 100n, currency: "USD" };
const withKey = (key: string) => ({ headers: { "idempotency-key": key } });

describe("API keys", () => {
  it("refuses a call without an API key, or with a malformed, unknown or wrong one, as UNAUTHENTICATED", async () => {
    const { apiKey } = await newTenant(edge.admin);
    const [, idPart] = /^ck_([0-9a-z]{16})_/.exec(apiKey) ?? [];
    const otherSecret = "A".repeat(43);
    const cases: [string, Record<string, string>, RegExp][] = [
      ["no header", {}, /missing API key/],
      ["not Bearer", { authorization: `Basic ${apiKey}` }, /malformed API key/],
      ["not a Cowrie key", { authorization: "Bearer sk_live_123" }, /malformed API key/],
      ["truncated", { authorization: `Bearer ${apiKey.slice(0, -1)}` }, /malformed API key/],
      ["unknown key id", { authorization: `Bearer ck_${"0".repeat(16)}_${otherSecret}` }, /unknown API key key_0{16}/],
      ["wrong secret", { authorization: `Bearer ck_${idPart}_${otherSecret}` }, /unknown API key/],
    ];
    const wallets = edgeClient(WalletsService, edge.baseUrl);
    for (const [label, headers, message] of cases) {
      const error = await rejection(wallets.getWallet({ walletId: "wal_x" }, { headers }));
      assert.equal(error.code, Code.Unauthenticated, label);
      assert.match(error.rawMessage, message, label);
      const mutation = await rejection(wallets.fundWallet(fund, { headers: { ...headers, "idempotency-key": `k-${label}` } }));
      assert.equal(mutation.code, Code.Unauthenticated, label);
    }
  });

  it("acts for the key's tenant, whatever the request says", async () => {
    const a = await newTenant(edge.admin, "a");
    const b = await newTenant(edge.admin, "b");
    seenTenants.length = 0;
    await edgeClient(WalletsService, edge.baseUrl, a.apiKey).getWallet({ walletId: "wal_1" });
    await edgeClient(WalletsService, edge.baseUrl, b.apiKey).fundWallet(fund, withKey("t-1"));
    assert.deepEqual(seenTenants, [a.tenantId, b.tenantId]);
  });

  it("lets a read-only key read and refuses its mutations with PERMISSION_DENIED, writing nothing", async () => {
    const { tenantId } = await newTenant(edge.admin);
    const { apiKeySecret } = await edge.admin.createApiKey({ tenantId, scope: ApiKeyScope.READ_ONLY, label: "dashboard" });
    const wallets = edgeClient(WalletsService, edge.baseUrl, apiKeySecret);
    assert.equal((await wallets.getWallet({ walletId: "wal_r" })).wallet?.id, "wal_r");
    const error = await rejection(wallets.fundWallet(fund, withKey("read-only-1")));
    assert.equal(error.code, Code.PermissionDenied);
    assert.match(error.rawMessage, /read-only; FundWallet needs a read-write key/);
  });

  it("refuses a revoked key at once, and revoking twice keeps the first time", async () => {
    const { keyId, apiKey } = await newTenant(edge.admin);
    const wallets = edgeClient(WalletsService, edge.baseUrl, apiKey);
    await wallets.getWallet({ walletId: "wal_before" }); // cached as valid
    const first = await edge.admin.revokeApiKey({ apiKeyId: keyId });
    const error = await rejection(wallets.getWallet({ walletId: "wal_after" }));
    assert.equal(error.code, Code.Unauthenticated);
    assert.match(error.rawMessage, /was revoked/);
    const second = await edge.admin.revokeApiKey({ apiKeyId: keyId });
    assert.ok(first.apiKey?.revokedAt && second.apiKey?.revokedAt);
    assert.equal(timestampDate(second.apiKey.revokedAt).getTime(), timestampDate(first.apiKey.revokedAt).getTime());
  });
});

describe("revocation across Edge processes", () => {
  it("reaches another Edge process within the 2 s key cache", async () => {
    const second = await startEdgeAlone(database.url, stub.baseUrl);
    try {
      const { keyId, apiKey } = await newTenant(edge.admin);
      const elsewhere = edgeClient(WalletsService, second.baseUrl, apiKey);
      await elsewhere.getWallet({ walletId: "wal_cached" }); // the second Edge now caches the key
      await edge.admin.revokeApiKey({ apiKeyId: keyId }); // revoked through the first
      const revokedAtMs = Date.now();
      for (;;) {
        const outcome = await elsewhere.getWallet({ walletId: "wal_cached" }).then(() => undefined, (error: unknown) => error);
        if (outcome) {
          assert.equal((outcome as { code?: Code }).code, Code.Unauthenticated);
          break;
        }
        assert.ok(Date.now() - revokedAtMs < KEY_CACHE_TTL_MS + 500, "the revoked key still works after the cache TTL");
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    } finally {
      await second.close();
    }
  });
});

describe("AdminService", () => {
  it("needs the operator token: none, a wrong one or an API key is UNAUTHENTICATED", async () => {
    const { apiKey } = await newTenant(edge.admin);
    for (const token of [undefined, "not-the-operator-token", apiKey]) {
      const error = await rejection(edgeClient(AdminService, edge.baseUrl, token).listTenants({}));
      assert.equal(error.code, Code.Unauthenticated, String(token));
    }
  });

  it("creates a tenant with a first read-write key shown once, and lists keys without secrets", async () => {
    const created = await edge.admin.createTenant({ name: "Bakery Ltd" });
    assert.match(created.tenant?.id ?? "", /^ten_[0-9a-z]{26}$/);
    assert.match(created.apiKey?.id ?? "", /^key_[0-9a-z]{16}$/);
    assert.equal(created.apiKey?.scope, ApiKeyScope.READ_WRITE);
    assert.match(created.apiKeySecret, /^ck_[0-9a-z]{16}_[A-Za-z0-9_-]{43}$/);
    assert.ok(created.apiKeySecret.startsWith(`ck_${created.apiKey?.id.slice(4)}_`));
    const tenantId = created.tenant?.id ?? "";
    const extra = await edge.admin.createApiKey({
      tenantId, scope: ApiKeyScope.READ_ONLY, label: "reports", rateLimitPerSecond: 5, rateLimitBurst: 7,
    });
    assert.equal(extra.apiKey?.rateLimitPerSecond, 5);
    assert.equal(extra.apiKey?.rateLimitBurst, 7);
    const { apiKeys } = await edge.admin.listApiKeys({ tenantId });
    assert.deepEqual(apiKeys.map((key) => key.id), [created.apiKey?.id, extra.apiKey?.id]);
    assert.equal(apiKeys[0]?.rateLimitPerSecond, 100); // the configured default
    assert.ok(!JSON.stringify(apiKeys, (_k, v) => (typeof v === "bigint" ? String(v) : v)).includes(created.apiKeySecret.slice(20)));
  });

  it("pages through tenants oldest first", async () => {
    for (let i = 0; i < 3; i++) await edge.admin.createTenant({ name: `paged-${i}` });
    const seen: string[] = [];
    let pageToken = "";
    do {
      const page = await edge.admin.listTenants({ pageSize: 2, pageToken });
      assert.ok(page.tenants.length <= 2);
      seen.push(...page.tenants.map((tenant) => tenant.id));
      pageToken = page.nextPageToken;
    } while (pageToken);
    assert.deepEqual(seen, [...seen].sort());
    assert.equal(new Set(seen).size, seen.length);
    assert.ok(seen.length >= 3);
  });

  it("answers bad fields with INVALID_ARGUMENT naming them, and unknown ids with NOT_FOUND", async () => {
    const { admin } = edge;
    const cases: [() => Promise<unknown>, Code, RegExp][] = [
      [() => admin.createTenant({ name: "" }), Code.InvalidArgument, /^name: is required/],
      [() => admin.createTenant({ name: "x".repeat(129) }), Code.InvalidArgument, /^name: must be at most 128/],
      [() => admin.createApiKey({ tenantId: "ten_nope", scope: ApiKeyScope.READ_ONLY }), Code.NotFound, /tenant ten_nope not found/],
      [() => admin.createApiKey({ tenantId: "ten_x", scope: ApiKeyScope.UNSPECIFIED }), Code.InvalidArgument, /^scope:/],
      [() => admin.createApiKey({ tenantId: "bad id!", scope: ApiKeyScope.READ_ONLY }), Code.InvalidArgument, /^tenant_id:/],
      [() => admin.createApiKey({ tenantId: "ten_x", scope: 2, rateLimitPerSecond: 2_000_000 }), Code.InvalidArgument, /^rate_limit_per_second:/],
      [() => admin.revokeApiKey({ apiKeyId: "key_0000000000000000" }), Code.NotFound, /API key key_0{16} not found/],
      [() => admin.listApiKeys({ tenantId: "ten_nope" }), Code.NotFound, /tenant ten_nope not found/],
      [() => admin.listTenants({ pageSize: 101 }), Code.InvalidArgument, /^page_size:/],
      [() => admin.listTenants({ pageToken: "garbage" }), Code.InvalidArgument, /^page_token:/],
    ];
    for (const [call, code, message] of cases) {
      const error = await rejection(call());
      assert.equal(error.code, code, `${message}: ${error.rawMessage}`);
      assert.match(error.rawMessage, message);
    }
  });
});

describe("rate limits", () => {
  it("answers RESOURCE_EXHAUSTED with retry-after once a key's burst is spent, per key", async () => {
    const { tenantId } = await newTenant(edge.admin);
    const { apiKeySecret } = await edge.admin.createApiKey({ tenantId, scope: ApiKeyScope.READ_WRITE, rateLimitPerSecond: 1, rateLimitBurst: 3 });
    const limited = edgeClient(WalletsService, edge.baseUrl, apiKeySecret);
    for (let i = 0; i < 3; i++) await limited.getWallet({ walletId: "wal_rl" });
    const error = await rejection(limited.getWallet({ walletId: "wal_rl" }));
    assert.equal(error.code, Code.ResourceExhausted);
    assert.match(error.rawMessage, /^rate limit exceeded; retry after \d+ ms$/);
    const retryAfterMs = Number(/after (\d+) ms/.exec(error.rawMessage)?.[1]);
    assert.ok(retryAfterMs > 0 && retryAfterMs <= 1000, `retry after ${retryAfterMs} ms`);
    assert.equal(error.metadata.get("retry-after"), "1");
    // Mutations count against the same bucket, and are refused before anything is written.
    assert.equal((await rejection(limited.fundWallet(fund, withKey("rl-1")))).code, Code.ResourceExhausted);
    // Another key of the same tenant has its own bucket.
    const other = (await edge.admin.createApiKey({ tenantId, scope: ApiKeyScope.READ_ONLY })).apiKeySecret;
    await edgeClient(WalletsService, edge.baseUrl, other).getWallet({ walletId: "wal_rl" });
    // The bucket refills at 1 per second.
    await new Promise((resolve) => setTimeout(resolve, retryAfterMs + 50));
    await limited.getWallet({ walletId: "wal_rl" });
  });

  it("sends retry-after as an HTTP header to Connect clients", async () => {
    const { tenantId } = await newTenant(edge.admin);
    const { apiKeySecret } = await edge.admin.createApiKey({ tenantId, scope: ApiKeyScope.READ_ONLY, rateLimitPerSecond: 1, rateLimitBurst: 1 });
    const call = () => fetch(`${edge.baseUrl}/cowrie.edge.v1.WalletsService/GetWallet`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${apiKeySecret}` },
      body: JSON.stringify({ walletId: "wal_h" }),
    });
    assert.equal((await call()).status, 200);
    const refused = await call();
    assert.equal(refused.status, 429);
    assert.equal(refused.headers.get("retry-after"), "1");
    assert.equal(((await refused.json()) as { code: string }).code, "resource_exhausted");
  });
});

describe("when Redis goes away", () => {
  it("fails open on rate limits and keeps idempotency in PostgreSQL", async () => {
    const redis = new URL(TEST_REDIS_URL);
    const proxy = await startTcpProxy({ host: redis.hostname, port: Number(redis.port || 6379) });
    const cut = await startEdgeAlone(database.url, stub.baseUrl, { REDIS_URL: `redis://127.0.0.1:${proxy.port}` });
    try {
      const { tenantId } = await newTenant(cut.admin);
      const { apiKeySecret } = await cut.admin.createApiKey({ tenantId, scope: ApiKeyScope.READ_WRITE, rateLimitPerSecond: 1, rateLimitBurst: 1 });
      const wallets = edgeClient(WalletsService, cut.baseUrl, apiKeySecret);
      await wallets.getWallet({ walletId: "wal_open" }); // Redis up: the only token is spent
      assert.equal((await rejection(wallets.getWallet({ walletId: "wal_open" }))).code, Code.ResourceExhausted);
      proxy.setMode("refuse");
      proxy.cutAll();
      for (let i = 0; i < 3; i++) await wallets.getWallet({ walletId: "wal_open" });
      const first = await wallets.fundWallet(fund, withKey("no-redis-1"));
      let replayedHeader: string | null = null;
      const again = await wallets.fundWallet(fund, {
        ...withKey("no-redis-1"),
        onHeader: (headers) => (replayedHeader = headers.get("idempotent-replayed")),
      });
      assert.equal(first.replayed, false);
      assert.equal(again.replayed, true);
      assert.equal(replayedHeader, "true");
      const conflict = await rejection(wallets.fundWallet({ ...fund, amountMinor: 5n }, withKey("no-redis-1")));
      assert.equal(conflict.code, Code.AlreadyExists);
    } finally {
      proxy.setMode("up");
      await cut.close();
      await proxy.close();
    }
  });
});

describe("the operator token file", () => {
  it("is created with mode 0600 when COWRIE_OPERATOR_TOKEN is unset, and kept across restarts", async () => {
    const dataDir = await mkdtemp(path.join(tmpdir(), "cowrie-edge-"));
    const env = { DATABASE_URL: database.url, COWRIE_DATA_DIR: dataDir, COWRIE_LOG_LEVEL: "warn" };
    try {
      const first = await startTestService(edgeModule, env);
      const file = path.join(dataDir, OPERATOR_TOKEN_FILE);
      const token = (await readFile(file, "utf8")).trim();
      await first.close();
      assert.equal((await stat(file)).mode & 0o777, 0o600);
      assert.ok(token.length >= 32);
      const second = await startTestService(edgeModule, env);
      try {
        assert.equal((await readFile(file, "utf8")).trim(), token);
        const listed = await edgeClient(AdminService, second.baseUrl, token).listTenants({ pageSize: 1 });
        assert.ok(Array.isArray(listed.tenants));
        const error = await rejection(edgeClient(AdminService, second.baseUrl, OPERATOR_TOKEN).listTenants({}));
        assert.equal(error.code, Code.Unauthenticated);
      } finally {
        await second.close();
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

describe("npm run admin", () => {
  const admin = async (...args: string[]) => {
    const port = new URL(edge.baseUrl).port;
    return promisify(execFile)(process.execPath, ["--import", "tsx", "scripts/admin.ts", ...args], {
      cwd: root,
      env: { ...process.env, COWRIE_EDGE_PORT: port, COWRIE_OPERATOR_TOKEN: OPERATOR_TOKEN, COWRIE_EDGE_URL: "" },
    });
  };

  it("creates a tenant and keys, lists and revokes them, printing readable lines", async () => {
    const created = await admin("create-tenant", "Corner Shop");
    const tenantId = /ten_[0-9a-z]{26}/.exec(created.stdout)?.[0];
    const apiKey = /ck_[0-9a-z]{16}_[A-Za-z0-9_-]{43}/.exec(created.stdout)?.[0];
    assert.ok(tenantId && apiKey, created.stdout);
    assert.match(created.stdout, /shown once/);
    assert.match(created.stdout, /"Corner Shop"/);
    const wallets = createClient(WalletsService, createConnectTransport({ baseUrl: edge.baseUrl, httpVersion: "2", interceptors: [bearer(apiKey)] }));
    await wallets.getWallet({ walletId: "wal_cli" });

    const readOnly = await admin("create-key", tenantId, "--read-only", "--label", "bi tool");
    const readOnlyId = /key_[0-9a-z]{16}/.exec(readOnly.stdout)?.[0];
    assert.match(readOnly.stdout, /READ_ONLY/);
    assert.match(readOnly.stdout, /shown once/);
    assert.ok(readOnlyId);

    const revoked = await admin("revoke-key", readOnlyId);
    assert.match(revoked.stdout, new RegExp(`^revoked  ${readOnlyId}  READ_ONLY  revoked `));
    const listed = await admin("list-keys", tenantId);
    const lines = listed.stdout.trim().split("\n");
    assert.equal(lines.length, 2);
    assert.match(lines[0] ?? "", /READ_WRITE {2}active/);
    assert.match(lines[1] ?? "", /READ_ONLY {2}revoked/);
    assert.doesNotMatch(listed.stdout, /ck_/);
    const tenants = await admin("list-tenants");
    assert.match(tenants.stdout, new RegExp(`${tenantId} .*"Corner Shop"`));
  });

  it("exits 1 with the error code when the call fails, and 2 on bad usage", async () => {
    const failed = await admin("list-keys", "ten_missing").then(() => assert.fail("should fail"), (error: { code: number; stderr: string }) => error);
    assert.equal(failed.code, 1);
    assert.match(failed.stderr, /NOT_FOUND: tenant ten_missing not found/);
    const usage = await admin("frobnicate").then(() => assert.fail("should fail"), (error: { code: number; stderr: string }) => error);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /usage: npm run admin/);
  });
});
