// Risk's counters, one set of tests run against Redis (the Lua scripts) and against the in-process
// cache (their JavaScript twins): windows that count each payment once, exactly, under
// concurrency, sums that stay exact past 2^53, streaks, learned profiles and summaries.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, it } from "node:test";
import fc from "fast-check";
import { createMemoryCache, createRedisCache, type Cache } from "../runtime/cache.js";
import { TEST_REDIS_URL } from "../runtime/testing.js";
import { Counters, type CountRequest } from "./counters.js";
import { deleteRedisKeys } from "./test-support.js";
import { EWMA_ALPHA, ewmaStep, intervalSample, type Moments } from "./rules.js";

const RUN = randomBytes(4).toString("hex");
const WINDOWS = { velocityMs: 60_000, amountMs: 3_600_000, duplicateMs: 300_000 };
const T0 = 1_800_000_000_000;

const backends: { name: string; create(): Cache }[] = [
  { name: "in-process cache", create: () => createMemoryCache() },
  { name: "Redis", create: () => createRedisCache(TEST_REDIS_URL, { keyPrefix: `cowrie-test:risk-counters:${RUN}:`, commandTimeoutMs: 2_000 }) },
];

for (const backend of backends) {
  describe(`Counters on the ${backend.name}`, () => {
    let cache: Cache;
    let counters: Counters;
    let sequence = 0;
    const tenant = () => `t-${RUN}-${++sequence}`;
    let paymentSequence = 0;
    const payment = (tenantId: string, fields: Partial<CountRequest> = {}): CountRequest => ({
      tenantId,
      paymentId: `pay-${++paymentSequence}`,
      userId: "alice",
      currency: "NGN",
      amountMinor: 1_000n,
      beneficiaryId: "",
      windows: WINDOWS,
      ...fields,
    });

    before(() => {
      cache = backend.create();
      counters = new Counters(cache, 86_400_000);
    });

    after(async () => {
      await cache.close();
      if (backend.name === "Redis") await deleteRedisKeys(`cowrie-test:risk-counters:${RUN}:*`);
    });

    it("counts a payment once: a second count of the same id replays the first snapshot", async () => {
      const t = tenant();
      const first = payment(t, { nowMs: T0 });
      const counted = await counters.count(first);
      assert.equal(counted.kind, "counted");
      const again = await counters.count({ ...first, nowMs: T0 + 5 });
      assert.equal(again.kind, "replayed");
      assert.deepEqual(again.observation, counted.observation);
      assert.equal((await counters.count(payment(t, { nowMs: T0 + 10 }))).observation.paymentsInWindow, 2);
    });

    it("slides the velocity window: payments older than the window drop out", async () => {
      const t = tenant();
      const counts: number[] = [];
      for (const offsetMs of [0, 10_000, 65_000, 69_999, 130_000]) {
        counts.push((await counters.count(payment(t, { nowMs: T0 + offsetMs }))).observation.paymentsInWindow);
      }
      // At 65 s the payment at 0 has left; at 130 s everything before 70 s has.
      assert.deepEqual(counts, [1, 2, 2, 3, 1]);
    });

    it("sums amounts per user and currency exactly beyond 2^53, and drops them with the window", async () => {
      const t = tenant();
      const big = 2n ** 53n + 1n;
      assert.equal((await counters.count(payment(t, { amountMinor: big, nowMs: T0 }))).observation.amountInWindowMinor, big);
      assert.equal((await counters.count(payment(t, { amountMinor: big, nowMs: T0 + 1 }))).observation.amountInWindowMinor, 2n * big);
      const usd = await counters.count(payment(t, { amountMinor: 7n, currency: "USD", nowMs: T0 + 2 }));
      assert.equal(usd.observation.amountInWindowMinor, 7n, "other currencies have their own sum");
      const later = await counters.count(payment(t, { amountMinor: 5n, nowMs: T0 + WINDOWS.amountMs }));
      assert.equal(later.observation.amountInWindowMinor, big + 5n, "the first payment left the hour");
    });

    it("counts repeats of the same amount and currency within the duplicate window", async () => {
      const t = tenant();
      const repeats: number[] = [];
      for (const [amountMinor, offsetMs] of [[500n, 0], [700n, 1], [500n, 2], [500n, 3], [500n, WINDOWS.duplicateMs + 2]] as const) {
        repeats.push((await counters.count(payment(t, { amountMinor, nowMs: T0 + offsetMs }))).observation.sameAmountInWindow);
      }
      assert.deepEqual(repeats, [1, 1, 2, 3, 2]);
    });

    it("counts 200 concurrent payments of one user exactly: every count from 1 to 200 seen once", async () => {
      const t = tenant();
      const results = await Promise.all(Array.from({ length: 200 }, () => counters.count(payment(t))));
      const counts = results.map((result) => result.observation.paymentsInWindow).sort((a, b) => a - b);
      assert.deepEqual(counts, Array.from({ length: 200 }, (_, i) => i + 1));
      const summary = await counters.summary(t, "alice", WINDOWS);
      assert.equal(summary.paymentsInWindow, 200);
      assert.equal(summary.currencies[0]?.amountInWindowMinor, 200_000n);
    });

    it("keeps a failed streak that grows with failures, resets on success, and counts each payment once", async () => {
      const t = tenant();
      const streaks: number[] = [];
      for (const [id, succeeded] of [["p1", false], ["p2", false], ["p2", false], ["p3", false], ["p4", true], ["p5", false]] as const) {
        streaks.push((await counters.recordOutcome(t, id, "alice", succeeded)).failedStreak);
      }
      assert.deepEqual(streaks, [1, 2, 2, 3, 0, 1]);
      const replay = await counters.recordOutcome(t, "p1", "alice", true);
      assert.deepEqual(replay, { kind: "replayed", succeeded: false, failedStreak: 1, learned: false });
      assert.equal((await counters.count(payment(t))).observation.failedStreak, 1);
    });

    it("refuses an outcome for another user than the evaluation's", async () => {
      const t = tenant();
      const counted = payment(t);
      await counters.count(counted);
      assert.equal((await counters.recordOutcome(t, counted.paymentId, "mallory", true)).kind, "user_mismatch");
      assert.equal((await counters.recordOutcome(t, counted.paymentId, "alice", true)).kind, "recorded");
    });

    it("learns the amount and interval of successful payments as rules.ewmaStep does, and their beneficiaries", async () => {
      const t = tenant();
      const amounts = [1_000n, 1_300n, 900n, 1_100n, 5_000n];
      let amount: Moments | undefined;
      let interval: Moments | undefined;
      for (const [index, amountMinor] of amounts.entries()) {
        const p = payment(t, { amountMinor, beneficiaryId: "bob", nowMs: T0 + index * 90_000 });
        const { observation } = await counters.count(p);
        assert.equal(observation.beneficiaryKnown, index > 0, "bob is known once a payment to him succeeded");
        assert.equal(observation.profile?.samples ?? 0, index);
        if (amount) {
          assert.ok(observation.profile);
          assert.equal(observation.profile.amountMean, amount.mean);
          assert.equal(observation.profile.amountVariance, amount.variance);
        }
        const outcome = await counters.recordOutcome(t, p.paymentId, "alice", true);
        assert.equal(outcome.learned, true);
        amount = ewmaStep(amount, Number(amountMinor));
        if (index > 0) interval = ewmaStep(interval, intervalSample(T0 + (index - 1) * 90_000, T0 + index * 90_000));
      }
      const summary = await counters.summary(t, "alice", WINDOWS, T0 + 4 * 90_000);
      const profile = summary.currencies[0]?.profile;
      assert.ok(profile && interval && amount);
      assert.equal(profile.samples, 5);
      assert.equal(profile.intervalSamples, 4);
      assert.equal(profile.amountMean, amount.mean);
      // ln() of Lua's C library and of V8 may differ in the last bit.
      assert.ok(Math.abs(profile.intervalMean - interval.mean) < 1e-12);
      assert.ok(Math.abs(profile.intervalVariance - interval.variance) < 1e-12);
      assert.equal(profile.lastAtMs, T0 + 4 * 90_000);
    });

    it("summarises the windows, streak and every currency without changing them", async () => {
      const t = tenant();
      await counters.count(payment(t, { amountMinor: 300n, nowMs: T0 }));
      await counters.count(payment(t, { amountMinor: 200n, currency: "USD", nowMs: T0 + 1 }));
      await counters.recordOutcome(t, "failed-1", "alice", false);
      const summary = await counters.summary(t, "alice", WINDOWS, T0 + 2);
      assert.equal(summary.paymentsInWindow, 2);
      assert.equal(summary.failedStreak, 1);
      assert.deepEqual(summary.currencies.map(({ currency, amountInWindowMinor }) => [currency, amountInWindowMinor]), [["NGN", 300n], ["USD", 200n]]);
      const later = await counters.summary(t, "alice", WINDOWS, T0 + 61_000);
      assert.equal(later.paymentsInWindow, 0);
      assert.deepEqual(await counters.summary(t, "alice", WINDOWS, T0 + 2), summary);
    });

    it("counts any interleaving of payments like a plain list of timestamps would (property)", async () => {
      await fc.assert(
        fc.asyncProperty(fc.array(fc.tuple(fc.integer({ min: 0, max: 200_000 }), fc.constantFrom(100n, 200n)), { minLength: 1, maxLength: 15 }), async (steps) => {
          const t = tenant();
          let clock = T0;
          const seen: { atMs: number; amountMinor: bigint }[] = [];
          for (const [gapMs, amountMinor] of steps) {
            clock += gapMs;
            seen.push({ atMs: clock, amountMinor });
            const { observation } = await counters.count(payment(t, { amountMinor, nowMs: clock }));
            const inWindow = (windowMs: number) => seen.filter((event) => event.atMs > clock - windowMs);
            assert.equal(observation.paymentsInWindow, inWindow(WINDOWS.velocityMs).length);
            assert.equal(observation.amountInWindowMinor, inWindow(WINDOWS.amountMs).reduce((sum, event) => sum + event.amountMinor, 0n));
            assert.equal(observation.sameAmountInWindow, inWindow(WINDOWS.duplicateMs).filter((event) => event.amountMinor === amountMinor).length);
          }
        }),
        { numRuns: 25 },
      );
    });
  });
}

describe("ewmaStep()", () => {
  it("starts at the first sample with no variance, and keeps a constant series there", () => {
    fc.assert(fc.property(fc.double({ min: -1e9, max: 1e9, noNaN: true }), fc.integer({ min: 1, max: 50 }), (value, steps) => {
      let moments: Moments | undefined;
      for (let i = 0; i < steps; i++) moments = ewmaStep(moments, value);
      assert.ok(moments);
      assert.ok(Math.abs(moments.mean - value) <= Math.abs(value) * 1e-12);
      assert.ok(moments.variance <= Math.abs(value) * 1e-9);
    }));
  });

  it("keeps the mean within the samples' range and the variance non-negative", () => {
    fc.assert(fc.property(fc.array(fc.double({ min: 0, max: 1e12, noNaN: true }), { minLength: 1, maxLength: 100 }), (samples) => {
      let moments: Moments | undefined;
      for (const sample of samples) moments = ewmaStep(moments, sample, EWMA_ALPHA);
      assert.ok(moments);
      const slack = Math.max(...samples) * 1e-9;
      assert.ok(moments.mean >= Math.min(...samples) - slack && moments.mean <= Math.max(...samples) + slack);
      assert.ok(moments.variance >= 0);
    }));
  });

  it("moves the mean by alpha of the surprise", () => {
    assert.deepEqual(ewmaStep({ mean: 100, variance: 0 }, 200, 0.1), { mean: 110, variance: 900 });
  });
});
