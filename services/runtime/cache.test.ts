import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import { createMemoryCache, createRedisCache, type Cache, type CacheScript } from "./cache.js";

const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const RUN_ID = `${Date.now().toString(36)}-${randomBytes(3).toString("hex")}`;
const COMMAND_TIMEOUT_MS = 1_000;

/**
 * A counter that stops at a limit, returning {taken, count, backend time in ms}, and a plain
 * string written beside it: the smallest script that needs atomicity (read, decide, write).
 */
const BOUNDED_COUNTER: CacheScript = {
  name: "testBoundedCounter",
  lua: `
local limit = tonumber(ARGV[1])
local count = tonumber(redis.call("HGET", KEYS[1], "n") or "0")
local t = redis.call("TIME")
local now = tostring(tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
if count >= limit then return {0, count, now} end
count = count + 1
redis.call("HSET", KEYS[1], "n", count)
redis.call("PEXPIRE", KEYS[1], ARGV[2])
redis.call("SET", KEYS[2], "last=" .. count, "PX", ARGV[2])
return {1, count, now}
`,
  memory(store, keys, args) {
    const [counterKey, lastKey] = keys as [string, string];
    const limit = Number(args[0]);
    const ttlMs = Number(args[1]);
    const state = (store.get(counterKey) as { n: number } | undefined) ?? { n: 0 };
    const now = String(Math.floor(store.nowMs));
    if (state.n >= limit) return [0, state.n, now];
    state.n += 1;
    store.set(counterKey, state, ttlMs);
    store.set(lastKey, `last=${state.n}`, ttlMs);
    return [1, state.n, now];
  },
};

interface Backend {
  suite: string;
  kind: Cache["kind"];
  create(): Cache;
}

const backends: Backend[] = [
  { suite: "createMemoryCache()", kind: "memory", create: () => createMemoryCache() },
  {
    suite: "createRedisCache()",
    kind: "redis",
    create: () =>
      createRedisCache(REDIS_URL, { keyPrefix: `cowrie-test:${RUN_ID}:`, commandTimeoutMs: COMMAND_TIMEOUT_MS }),
  },
];

for (const backend of backends) {
  describe(backend.suite, () => {
    let cache: Cache;
    const usedKeys = new Set<string>();
    /** Unique per test so cases never see each other's keys; remembered for cleanup. */
    const key = (name: string) => {
      const unique = `${name}:${randomBytes(4).toString("hex")}`;
      usedKeys.add(unique);
      return unique;
    };

    before(() => {
      cache = backend.create();
    });

    after(async () => {
      for (const usedKey of usedKeys) await cache.del(usedKey);
      await cache.close();
    });

    it("reports its kind", () => {
      assert.equal(cache.kind, backend.kind);
    });

    it("ping() resolves while the backend is reachable", async () => {
      await cache.ping();
    });

    it("get() returns null for a missing key", async () => {
      assert.equal(await cache.get(key("missing")), null);
    });

    it("set() stores a value that get() returns, and overwrites it", async () => {
      const k = key("plain");
      assert.equal(await cache.set(k, "first", { ttlMs: 10_000 }), true);
      assert.equal(await cache.get(k), "first");
      assert.equal(await cache.set(k, "second", { ttlMs: 10_000 }), true);
      assert.equal(await cache.get(k), "second");
    });

    it("del() removes a key and ignores a missing one", async () => {
      const k = key("del");
      await cache.set(k, "v", { ttlMs: 10_000 });
      await cache.del(k);
      assert.equal(await cache.get(k), null);
      await cache.del(k);
    });

    it("expires values after ttlMs", async () => {
      const k = key("ttl");
      await cache.set(k, "short-lived", { ttlMs: 100 });
      assert.equal(await cache.get(k), "short-lived");
      await sleep(200);
      assert.equal(await cache.get(k), null);
    });

    it("set() with ifAbsent only writes when the key does not exist", async () => {
      const k = key("nx");
      assert.equal(await cache.set(k, "owner-a", { ttlMs: 10_000, ifAbsent: true }), true);
      assert.equal(await cache.set(k, "owner-b", { ttlMs: 10_000, ifAbsent: true }), false);
      assert.equal(await cache.get(k), "owner-a");
      await cache.del(k);
      assert.equal(await cache.set(k, "owner-b", { ttlMs: 10_000, ifAbsent: true }), true);
      assert.equal(await cache.get(k), "owner-b");
    });

    it("set() with ifAbsent succeeds again once the previous value expired", async () => {
      const k = key("nx-expired");
      assert.equal(await cache.set(k, "first", { ttlMs: 50, ifAbsent: true }), true);
      await sleep(120);
      assert.equal(await cache.set(k, "second", { ttlMs: 10_000, ifAbsent: true }), true);
      assert.equal(await cache.get(k), "second");
    });

    it("exactly one of many concurrent ifAbsent writers wins", async () => {
      const k = key("nx-race");
      const results = await Promise.all(
        Array.from({ length: 50 }, (_, i) => cache.set(k, `writer-${i}`, { ttlMs: 10_000, ifAbsent: true })),
      );
      assert.equal(results.filter(Boolean).length, 1);
    });

    it("rejects a ttlMs that is not a positive integer", async () => {
      await assert.rejects(cache.set(key("bad-ttl"), "v", { ttlMs: 0 }), RangeError);
      await assert.rejects(cache.set(key("bad-ttl"), "v", { ttlMs: 1.5 }), RangeError);
      await assert.rejects(cache.incrementBy(key("bad-ttl"), 1, -1), RangeError);
    });

    it("incrementBy() creates a counter at 0 and adds to it", async () => {
      const k = key("counter");
      assert.equal(await cache.incrementBy(k, 5, 10_000), 5);
      assert.equal(await cache.incrementBy(k, -2, 10_000), 3);
      assert.equal(await cache.get(k), "3");
    });

    it("incrementBy() is atomic under 200 concurrent increments", async () => {
      const k = key("concurrent");
      const results = await Promise.all(Array.from({ length: 200 }, () => cache.incrementBy(k, 1, 10_000)));
      assert.equal(await cache.get(k), "200");
      // Every caller saw a distinct intermediate value: no lost or duplicated updates.
      assert.deepEqual(
        [...results].sort((a, b) => a - b),
        Array.from({ length: 200 }, (_, i) => i + 1),
      );
    });

    it("incrementBy() keeps the TTL from creation instead of extending it", async () => {
      const k = key("counter-ttl");
      assert.equal(await cache.incrementBy(k, 1, 300), 1);
      await sleep(150);
      assert.equal(await cache.incrementBy(k, 1, 300), 2);
      // ≥ 350 ms after creation the counter is gone, although a TTL reset by the
      // second increment would have kept it until ≥ 450 ms.
      await sleep(200);
      assert.equal(await cache.get(k), null);
      assert.equal(await cache.incrementBy(k, 1, 10_000), 1);
    });

    it("takeToken() allows a full burst, then refuses with the time until the next token", async () => {
      const k = key("bucket-burst");
      const options = { ratePerSecond: 2, burst: 3, nowMs: 1_000_000 };
      for (let i = 0; i < 3; i++) assert.deepEqual(await cache.takeToken(k, options), { allowed: true, retryAfterMs: 0 });
      // Empty: one token comes every 500 ms at 2 per second.
      assert.deepEqual(await cache.takeToken(k, options), { allowed: false, retryAfterMs: 500 });
      assert.deepEqual(await cache.takeToken(k, { ...options, nowMs: 1_000_200 }), { allowed: false, retryAfterMs: 300 });
    });

    it("takeToken() refills at the rate and never above the burst", async () => {
      const k = key("bucket-refill");
      const at = (nowMs: number) => cache.takeToken(k, { ratePerSecond: 10, burst: 2, nowMs });
      assert.equal((await at(0)).allowed, true);
      assert.equal((await at(0)).allowed, true);
      assert.equal((await at(0)).allowed, false);
      assert.equal((await at(100)).allowed, true); // 100 ms at 10/s = one token
      assert.equal((await at(100)).allowed, false);
      // A long pause fills the bucket to its size, not beyond.
      assert.equal((await at(60_000)).allowed, true);
      assert.equal((await at(60_000)).allowed, true);
      assert.deepEqual(await at(60_000), { allowed: false, retryAfterMs: 100 });
    });

    it("takeToken() treats a clock going backwards as no time elapsed", async () => {
      const k = key("bucket-backwards");
      assert.equal((await cache.takeToken(k, { ratePerSecond: 1, burst: 1, nowMs: 5_000 })).allowed, true);
      assert.equal((await cache.takeToken(k, { ratePerSecond: 1, burst: 1, nowMs: 1_000 })).allowed, false);
    });

    it("takeToken() is atomic: 100 concurrent takes from a bucket of 10 allow exactly 10", async () => {
      const k = key("bucket-race");
      const results = await Promise.all(
        Array.from({ length: 100 }, () => cache.takeToken(k, { ratePerSecond: 0.001, burst: 10 })),
      );
      assert.equal(results.filter((result) => result.allowed).length, 10);
      for (const result of results.filter((r) => !r.allowed)) assert.ok(result.retryAfterMs > 0);
    });

    it("takeToken() uses the backend's own clock when no time is given", async () => {
      const k = key("bucket-clock");
      const options = { ratePerSecond: 20, burst: 1 };
      assert.equal((await cache.takeToken(k, options)).allowed, true);
      const refused = await cache.takeToken(k, options);
      assert.equal(refused.allowed, false);
      assert.ok(refused.retryAfterMs > 0 && refused.retryAfterMs <= 50, `retryAfterMs ${refused.retryAfterMs}`);
      await sleep(80);
      assert.equal((await cache.takeToken(k, options)).allowed, true);
    });

    it("takeToken() rejects a rate or burst that makes no bucket", async () => {
      await assert.rejects(cache.takeToken(key("bad-bucket"), { ratePerSecond: 0, burst: 1 }), RangeError);
      await assert.rejects(cache.takeToken(key("bad-bucket"), { ratePerSecond: 1, burst: 0 }), RangeError);
      await assert.rejects(cache.takeToken(key("bad-bucket"), { ratePerSecond: 1, burst: 1.5 }), RangeError);
    });

    it("runScript() runs atomically: 100 concurrent runs of a counter bounded at 10 take exactly 10", async () => {
      const counter = key("script-race");
      const last = key("script-race-last");
      const replies = await Promise.all(
        Array.from({ length: 100 }, () => cache.runScript(BOUNDED_COUNTER, [counter, last], ["10", "10000"])),
      );
      const taken = replies.filter((reply) => (reply as ScriptTuple)[0] === 1).map((reply) => (reply as ScriptTuple)[1]);
      assert.deepEqual(taken.sort((a, b) => a - b), Array.from({ length: 10 }, (_, i) => i + 1));
      // The script's plain string is under the same (prefixed) key get() reads.
      assert.equal(await cache.get(last), "last=10");
    });

    it("runScript() sees the backend's wall clock and honours the TTLs the script sets", async () => {
      const counter = key("script-ttl");
      const last = key("script-ttl-last");
      const [, , nowMs] = (await cache.runScript(BOUNDED_COUNTER, [counter, last], ["5", "100"])) as ScriptTuple;
      assert.ok(Math.abs(Number(nowMs) - Date.now()) < 1_000, `backend time ${nowMs}`);
      await sleep(200);
      assert.equal(await cache.get(last), null);
      assert.deepEqual(((await cache.runScript(BOUNDED_COUNTER, [counter, last], ["5", "100"])) as ScriptTuple).slice(0, 2), [1, 1]);
    });

    it("get() on a key a script keeps as another type fails with WRONGTYPE", async () => {
      const counter = key("script-type");
      await cache.runScript(BOUNDED_COUNTER, [counter, key("script-type-last")], ["5", "10000"]);
      await assert.rejects(cache.get(counter), /WRONGTYPE/);
    });

    it("incrementBy() rejects when the value is not an integer", async () => {
      const k = key("not-a-number");
      await cache.set(k, "abc", { ttlMs: 10_000 });
      await assert.rejects(cache.incrementBy(k, 1, 10_000), /not an integer/);
      assert.equal(await cache.get(k), "abc");
    });
  });
}

type ScriptTuple = [number, number, string];

describe("createRedisCache() against an unreachable server", () => {
  it("rejects commands within the command timeout instead of hanging, without crashing", async () => {
    const errors: Error[] = [];
    const cache = createRedisCache("redis://127.0.0.1:1", {
      keyPrefix: `cowrie-test:${RUN_ID}:`,
      commandTimeoutMs: 200,
      onError: (error) => errors.push(error),
    });
    try {
      const startedMs = performance.now();
      await assert.rejects(cache.ping());
      await assert.rejects(cache.get("anything"));
      assert.ok(performance.now() - startedMs < 1_500, "commands should fail fast");
      assert.ok(errors.length > 0, "connection errors are reported to onError");
    } finally {
      await cache.close();
    }
  });
});
