// The per-process cache of tenants' rules: fresh enough (never older than its maxAgeMs), cheap
// (one read per tenant, shared by concurrent evaluations, the blocklist only when its version
// moved), and it keeps the last rules when PostgreSQL cannot be read.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { BlocklistKind } from "../../gen/cowrie/risk/v1/risk_pb.js";
import { TenantRulesCache, type TenantSource } from "./settings.js";

function fakeSource() {
  const state = { version: 1, maxPayments: 5, blocked: ["mallory"], failing: false, versionReads: 0, blocklistReads: 0 };
  const source: TenantSource = {
    async readVersioned() {
      state.versionReads++;
      await sleep(5);
      if (state.failing) throw new Error("database unreachable");
      return { settings: { velocity: { maxPayments: state.maxPayments } }, version: state.version };
    },
    async readBlocklist() {
      state.blocklistReads++;
      return state.blocked.map((value) => ({ kind: BlocklistKind.USER, value }));
    },
  };
  return { state, source };
}

describe("TenantRulesCache", () => {
  it("shares one read among concurrent callers and serves from memory while fresh", async () => {
    const { state, source } = fakeSource();
    const cache = new TenantRulesCache(source, 10_000, () => {});
    const all = await Promise.all(Array.from({ length: 20 }, () => cache.get("t")));
    assert.equal(state.versionReads, 1);
    assert.ok(all.every((rules) => rules === all[0]));
    assert.equal(all[0]?.settings.velocity.maxPayments, 5);
    assert.equal(all[0]?.blocklist.has("USER", "mallory"), true);
    await cache.get("t");
    assert.equal(state.versionReads, 1);
  });

  it("reads again in the background past half its age, so that rules never outlive maxAgeMs", async () => {
    const { state, source } = fakeSource();
    const cache = new TenantRulesCache(source, 200, () => {});
    await cache.get("t");
    state.maxPayments = 9;
    state.version = 2;
    await sleep(120);
    assert.equal((await cache.get("t")).settings.velocity.maxPayments, 5, "still fresh: answered at once");
    await sleep(30);
    assert.equal((await cache.get("t")).settings.velocity.maxPayments, 9, "the background read landed");
    assert.equal(state.blocklistReads, 2);
    state.maxPayments = 11; // same version: only the version is read, nothing reloads
    await sleep(120);
    await cache.get("t");
    await sleep(30);
    assert.equal((await cache.get("t")).settings.velocity.maxPayments, 9);
    assert.equal(state.blocklistReads, 2);
  });

  it("drops a tenant on invalidate(), and keeps the last rules when a read fails", async () => {
    const errors: unknown[] = [];
    const { state, source } = fakeSource();
    const cache = new TenantRulesCache(source, 50, (_tenant, error) => errors.push(error));
    await cache.get("t");
    state.maxPayments = 7;
    state.version = 3;
    cache.invalidate("t");
    assert.equal((await cache.get("t")).settings.velocity.maxPayments, 7);
    state.failing = true;
    await sleep(60);
    assert.equal((await cache.get("t")).settings.velocity.maxPayments, 7);
    assert.equal(errors.length, 1);
    await assert.rejects(cache.get("unknown-tenant"), /database unreachable/);
  });
});
