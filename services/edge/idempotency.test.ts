// The Edge's idempotency, with the Edge alone on a fresh database and the real Redis, in front
// of a stand-in Wallet that applies each downstream key once (as the real one does through the
// Ledger) and counts executions: replays with the idempotent-replayed header, conflicts,
// concurrent duplicates, decided and retryable failures, lease takeover, the completer, the
// reaper and the Redis fast path.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import postgres from "postgres";
import { ApiKeyScope } from "../../gen/cowrie/edge/v1/admin_pb.js";
import { FundWalletRequestSchema, WalletsService } from "../../gen/cowrie/edge/v1/wallets_pb.js";
import { HoldSchema, RefusalSchema, WalletSchema, WalletService } from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import { freshDatabase, rejection } from "../runtime/testing.js";
import { downstreamKeyFor, fingerprintOf } from "./idempotency.js";
import { edgeClient, idempotencyRows, newTenant, refusingFirstWrite, startEdgeAlone, startStub } from "./test-support.js";

/** What the stand-in Wallet saw: one entry per execution, and the effects applied per downstream key. */
const executions: { tenantId: string; walletId: string; key: string; amountMinor: bigint }[] = [];
const effects = new Map<string, bigint>();
const flakyFailures = new Set<string>();

let database: Awaited<ReturnType<typeof freshDatabase>>;
let stub: Awaited<ReturnType<typeof startStub>>;
let edge: Awaited<ReturnType<typeof startEdgeAlone>>;
let sql: postgres.Sql;
let tenant: Awaited<ReturnType<typeof newTenant>>;
let wallets: Client<typeof WalletsService>;

const FUND_WALLET = WalletsService.method.fundWallet;

before(async () => {
  database = await freshDatabase("edge_idempotency");
  stub = await startStub((router) =>
    router.service(WalletService, {
      async fundWallet(request) {
        executions.push({ tenantId: request.tenantId, walletId: request.walletId, key: request.idempotencyKey, amountMinor: request.amountMinor });
        if (request.walletId === "wal_slow") await new Promise((resolve) => setTimeout(resolve, 300));
        if (request.walletId === "wal_broke") {
          throw new ConnectError("insufficient funds in wallet wal_broke", Code.FailedPrecondition, undefined, [
            { desc: RefusalSchema, value: { code: "insufficient_funds" } },
          ]);
        }
        if (request.walletId === "wal_flaky" && !flakyFailures.has(request.idempotencyKey)) {
          flakyFailures.add(request.idempotencyKey);
          throw new ConnectError("ledger unreachable", Code.Unavailable);
        }
        // Like the real Wallet: the effect is named by (tenant, key).
        const effect = `${request.tenantId}/${request.idempotencyKey}`;
        const replayed = effects.has(effect);
        if (!replayed) effects.set(effect, request.amountMinor);
        return {
          transferId: `wtx_${request.idempotencyKey.slice(5, 15)}`,
          wallet: create(WalletSchema, { id: request.walletId, tenantId: request.tenantId, postedBalanceMinor: effects.get(effect) ?? 0n }),
          replayed,
        };
      },
      async placeHold(request) {
        return { hold: create(HoldSchema, { id: "hld_1", walletId: request.walletId, amountMinor: request.amountMinor }) };
      },
    }),
  );
  // A fast completer, so the test does not wait for the default 35 s recovery.
  edge = await startEdgeAlone(database.url, stub.baseUrl, { COWRIE_COMPLETER_INTERVAL_MS: "50", COWRIE_RECOVERY_AFTER_MS: "100" });
  sql = postgres(database.url, { max: 2, onnotice: () => {} });
  tenant = await newTenant(edge.admin);
  wallets = edgeClient(WalletsService, edge.baseUrl, tenant.apiKey);
});

after(async () => {
  await sql?.end();
  await edge?.close();
  await stub?.close();
  await database?.drop();
});

let counter = 0;
function newKey(label: string): string {
  counter += 1;
  return `${label}-${process.pid}-${counter}`;
}

/** Calls FundWallet with an Idempotency-Key and reports the idempotent-replayed header with the outcome. */
async function fund(walletId: string, amountMinor: bigint, key: string) {
  let replayedHeader: string | null = null;
  const response = await wallets.fundWallet(
    { walletId, amountMinor, currency: "USD" },
    { headers: { "idempotency-key": key }, onHeader: (headers) => (replayedHeader = headers.get("idempotent-replayed")) },
  );
  return { response, replayedHeader };
}

const executionsOf = (walletId: string) => executions.filter((execution) => execution.walletId === walletId);

describe("Idempotency-Key", () => {
  it("is required on a mutation: INVALID_ARGUMENT naming the header, and no record", async () => {
    const before = (await idempotencyRows(database.url)).length;
    const cases: [Record<string, string>, RegExp][] = [
      [{}, /^Idempotency-Key header: is required$/],
      [{ "idempotency-key": "has space" }, /^Idempotency-Key header: must be 1 to 255 printable ASCII/],
      [{ "idempotency-key": "k".repeat(256) }, /^Idempotency-Key header: must be 1 to 255 printable ASCII/],
    ];
    for (const [headers, message] of cases) {
      const error = await rejection(wallets.fundWallet({ walletId: "wal_a", amountMinor: 1n, currency: "USD" }, { headers }));
      assert.equal(error.code, Code.InvalidArgument);
      assert.match(error.rawMessage, message);
    }
    assert.equal((await idempotencyRows(database.url)).length, before);
  });

  it("leaves no record for a request that fails validation", async () => {
    const key = newKey("invalid");
    const error = await rejection(wallets.fundWallet({ walletId: "wal_a", amountMinor: 0n, currency: "USD" }, { headers: { "idempotency-key": key } }));
    assert.equal(error.code, Code.InvalidArgument);
    assert.match(error.rawMessage, /^amount_minor:/);
    assert.ok(!(await idempotencyRows(database.url)).some((row) => row.key === key));
  });

  it("replays the first response with idempotent-replayed: true and replayed = true, executing once", async () => {
    const key = newKey("replay");
    const first = await fund("wal_replay", 500n, key);
    assert.equal(first.response.replayed, false);
    assert.equal(first.replayedHeader, null);
    const second = await fund("wal_replay", 500n, key);
    assert.equal(second.replayedHeader, "true");
    assert.equal(second.response.replayed, true);
    assert.equal(second.response.transferId, first.response.transferId);
    assert.equal(second.response.wallet?.postedBalanceMinor, 500n);
    assert.equal(executionsOf("wal_replay").length, 1);
    const execution = executionsOf("wal_replay")[0];
    assert.equal(execution?.tenantId, tenant.tenantId);
    assert.equal(execution?.key, downstreamKeyFor("cowrie.edge.v1.WalletsService/FundWallet", key));
    assert.ok((execution?.key.length ?? 0) <= 255);
  });

  it("refuses the same key for a different request with ALREADY_EXISTS saying what differs", async () => {
    const key = newKey("conflict");
    await fund("wal_conflict", 500n, key);
    const changed = await rejection(fund("wal_conflict", 501n, key));
    assert.equal(changed.code, Code.AlreadyExists);
    assert.equal(changed.rawMessage, "Idempotency-Key was used for a different request (amount_minor differs)");
    const otherMethod = await rejection(wallets.placeHold(
      { walletId: "wal_conflict", destinationWalletId: "wal_other", amountMinor: 500n, currency: "USD" },
      { headers: { "idempotency-key": key } },
    ));
    assert.equal(otherMethod.code, Code.AlreadyExists);
    assert.match(otherMethod.rawMessage, /^Idempotency-Key was used for a different request \(FundWallet, not PlaceHold\)$/);
    assert.equal(executionsOf("wal_conflict").length, 1);
  });

  it("scopes keys by tenant: another tenant's same key is its own request", async () => {
    const key = newKey("tenant-scope");
    await fund("wal_scope", 100n, key);
    const other = await newTenant(edge.admin, "other");
    const otherWallets = edgeClient(WalletsService, edge.baseUrl, other.apiKey);
    const response = await otherWallets.fundWallet({ walletId: "wal_scope", amountMinor: 999n, currency: "USD" }, { headers: { "idempotency-key": key } });
    assert.equal(response.replayed, false);
    assert.deepEqual(executionsOf("wal_scope").map((execution) => execution.tenantId), [tenant.tenantId, other.tenantId]);
  });

  it("lets exactly one of 20 concurrent duplicates execute; the others answer the outcome or ABORTED", async () => {
    const key = newKey("race");
    const outcomes = await Promise.allSettled(Array.from({ length: 20 }, () => fund("wal_slow", 700n, key)));
    assert.equal(executionsOf("wal_slow").length, 1);
    const succeeded = outcomes.filter((outcome) => outcome.status === "fulfilled");
    assert.ok(succeeded.length >= 1);
    for (const outcome of outcomes) {
      if (outcome.status === "fulfilled") {
        assert.equal(outcome.value.response.wallet?.postedBalanceMinor, 700n);
      } else {
        const error = ConnectError.from(outcome.reason);
        assert.equal(error.code, Code.Aborted, error.message);
        assert.equal(error.rawMessage, "a request with this Idempotency-Key is in progress; retry later");
      }
    }
    const replay = await fund("wal_slow", 700n, key);
    assert.equal(replay.replayedHeader, "true");
    assert.equal(executionsOf("wal_slow").length, 1);
  });

  it("replays a decided failure with its code, message and details, marked as replayed", async () => {
    const key = newKey("decided");
    const first = await rejection(fund("wal_broke", 10n, key));
    const second = await rejection(fund("wal_broke", 10n, key));
    for (const error of [first, second]) {
      assert.equal(error.code, Code.FailedPrecondition);
      assert.equal(error.rawMessage, "insufficient funds in wallet wal_broke");
      assert.deepEqual(error.findDetails(RefusalSchema).map((detail) => detail.code), ["insufficient_funds"]);
    }
    assert.equal(first.metadata.get("idempotent-replayed"), null);
    assert.equal(second.metadata.get("idempotent-replayed"), "true");
    assert.equal(executionsOf("wal_broke").length, 1);
    const [row] = await sql`select state, error_code from edge.idempotency_keys where key = ${key}`;
    assert.deepEqual({ ...row }, { state: 2, error_code: Code.FailedPrecondition });
  });

  it("ends the lease after a retryable failure: the retry executes again with the same downstream key, another request is refused", async () => {
    const key = newKey("retryable");
    const first = await rejection(fund("wal_flaky", 30n, key));
    assert.equal(first.code, Code.Unavailable);
    // The fingerprint stays: the key cannot be reused for another request (whose downstream key
    // would name this one's effects).
    assert.equal((await rejection(fund("wal_flaky", 31n, key))).code, Code.AlreadyExists);
    // The retry runs again at once (or replays, if this file's fast completer got there first).
    const retry = await fund("wal_flaky", 30n, key);
    assert.equal(retry.response.wallet?.id, "wal_flaky");
    const replay = await fund("wal_flaky", 30n, key);
    assert.equal(replay.replayedHeader, "true");
    const seen = executionsOf("wal_flaky").filter((execution) => execution.amountMinor === 30n);
    assert.equal(seen.length, 2);
    assert.equal(seen[0]?.key, seen[1]?.key);
  });

  it("answers UNAVAILABLE, not the outcome, when the outcome cannot be recorded; the retry replays what was recorded, with one effect", async () => {
    const key = newKey("unrecorded");
    // PostgreSQL refuses the first record of this key's outcome, as when it restarts just then.
    const { refusedFirst } = await refusingFirstWrite(sql, "update", "idempotency_keys", `new.key = '${key}' and new.state = 2`, async () => {
      const first = await rejection(fund("wal_unrecorded", 50n, key));
      assert.equal(first.code, Code.Unavailable);
      assert.match(first.rawMessage, /could not be recorded; retry with the same Idempotency-Key/);
      // The retry executes again (or replays what this file's fast completer recorded meanwhile).
      const retry = await fund("wal_unrecorded", 50n, key);
      assert.equal(retry.response.wallet?.postedBalanceMinor, 50n);
      const replay = await fund("wal_unrecorded", 50n, key);
      assert.equal(replay.replayedHeader, "true");
      assert.equal(replay.response.transferId, retry.response.transferId);
    });
    assert.ok(refusedFirst);
    assert.equal(effects.get(`${tenant.tenantId}/${executionsOf("wal_unrecorded")[0]?.key}`), 50n, "one effect");
    assert.equal(new Set(executionsOf("wal_unrecorded").map((execution) => execution.key)).size, 1, "every execution named the same effect");
  });

  it("takes over a request whose executor died once its lease expired", async () => {
    const key = newKey("takeover");
    await insertInProgress(key, { walletId: "wal_takeover", amountMinor: 40n, currency: "USD" }, "now() - interval '1 second'");
    // The completer may get there first; either way one execution and one stored outcome.
    let outcome: Awaited<ReturnType<typeof fund>> | undefined;
    for (let attempt = 0; attempt < 50 && !outcome; attempt++) {
      outcome = await fund("wal_takeover", 40n, key).catch((error: unknown) => {
        assert.equal(ConnectError.from(error).code, Code.Aborted);
        return new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 50));
      });
    }
    assert.equal(outcome?.response.wallet?.postedBalanceMinor, 40n);
    assert.equal(executionsOf("wal_takeover").length, 1);
    const [row] = await sql`select state, attempts from edge.idempotency_keys where key = ${key}`;
    assert.equal(row?.state, 2);
    assert.equal(row?.attempts, 2);
  });
});

/** An edge.idempotency_keys row as a crashed executor leaves it: in progress, request stored. */
async function insertInProgress(key: string, request: { walletId: string; amountMinor: bigint; currency: string }, lockedUntil: string, apiKeyId = tenant.keyId) {
  const message = create(FundWalletRequestSchema, request);
  const bytes = Buffer.from(toBinary(FundWalletRequestSchema, message));
  await sql`
    insert into edge.idempotency_keys (tenant_id, key, method, fingerprint, request, api_key_id, state, locked_until, expires_at)
    values (${tenant.tenantId}, ${key}, 'cowrie.edge.v1.WalletsService/FundWallet', ${fingerprintOf(FUND_WALLET, message)},
            ${bytes}, ${apiKeyId}, 1, ${sql.unsafe(lockedUntil)}, now() + interval '1 day')`;
}

async function waitFor<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 5_000): Promise<T> {
  const startedAtMs = Date.now();
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() - startedAtMs > timeoutMs) assert.fail(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe("background work", () => {
  it("the completer finishes a request abandoned in progress, and a retry then replays it", async () => {
    const key = newKey("abandoned");
    await insertInProgress(key, { walletId: "wal_abandoned", amountMinor: 60n, currency: "USD" }, "now() - interval '1 minute'");
    const row = await waitFor("the completer", async () => {
      const [found] = await sql`select state, attempts, response is not null as has_response from edge.idempotency_keys where key = ${key}`;
      return found?.state === 2 ? found : undefined;
    });
    assert.equal(row.has_response, true);
    assert.equal(row.attempts, 2);
    assert.deepEqual(executionsOf("wal_abandoned").map((execution) => [execution.tenantId, execution.amountMinor]), [[tenant.tenantId, 60n]]);
    assert.equal(executionsOf("wal_abandoned")[0]?.key, downstreamKeyFor("cowrie.edge.v1.WalletsService/FundWallet", key));
    const replay = await fund("wal_abandoned", 60n, key);
    assert.equal(replay.replayedHeader, "true");
    assert.equal(replay.response.wallet?.postedBalanceMinor, 60n);
    assert.equal(executionsOf("wal_abandoned").length, 1);
  });

  it("the completer refuses, without running it, a request whose API key was revoked since", async () => {
    const key = newKey("revoked");
    const { apiKey } = await edge.admin.createApiKey({ tenantId: tenant.tenantId, scope: ApiKeyScope.READ_WRITE });
    await edge.admin.revokeApiKey({ apiKeyId: apiKey?.id ?? "" });
    await insertInProgress(key, { walletId: "wal_revoked", amountMinor: 80n, currency: "USD" }, "now() - interval '1 minute'", apiKey?.id);
    await waitFor("the completer", async () => {
      const [found] = await sql`select state from edge.idempotency_keys where key = ${key}`;
      return found?.state === 2 ? true : undefined;
    });
    assert.equal(executionsOf("wal_revoked").length, 0);
    const retry = await rejection(fund("wal_revoked", 80n, key));
    assert.equal(retry.code, Code.PermissionDenied);
    assert.match(retry.rawMessage, /revoked or made read-only/);
  });

  it("the completer leaves a request alone while its lease holds", async () => {
    const key = newKey("leased");
    await insertInProgress(key, { walletId: "wal_leased", amountMinor: 70n, currency: "USD" }, "now() + interval '1 minute'");
    await new Promise((resolve) => setTimeout(resolve, 400));
    assert.equal(executionsOf("wal_leased").length, 0);
    const error = await rejection(fund("wal_leased", 70n, key));
    assert.equal(error.code, Code.Aborted);
    await sql`delete from edge.idempotency_keys where key = ${key}`;
  });

  it("the reaper deletes records past their expiry", async () => {
    const keys = [newKey("expired"), newKey("expired")];
    for (const key of keys) await fund("wal_reaped", 5n, key);
    await sql`update edge.idempotency_keys set expires_at = now() - interval '1 second' where key in ${sql(keys)}`;
    await waitFor("the reaper", async () => ((await sql`select 1 from edge.idempotency_keys where key in ${sql(keys)}`).length === 0 ? true : undefined));
  });
});

describe("the Redis fast path", () => {
  it("answers a replay from Redis before PostgreSQL", async () => {
    const key = newKey("fast");
    const first = await fund("wal_fast", 80n, key);
    // White-box: with the PostgreSQL record gone, only the cache can still replay it.
    await sql`delete from edge.idempotency_keys where key = ${key}`;
    const replay = await fund("wal_fast", 80n, key);
    assert.equal(replay.replayedHeader, "true");
    assert.equal(replay.response.transferId, first.response.transferId);
    assert.equal(executionsOf("wal_fast").length, 1);
  });
});
