// The routing loop's parts, alone: the gateway breaker against a model under any sequence of
// calls, faults and time (fast-check), the limiter's bounds, and the rules of a routing decision.
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { CircuitState } from "../../gen/cowrie/router/v1/router_pb.js";
import { createLogger } from "../runtime/log.js";
import type { Connector, GatewayName, GatewayResult } from "./gateways/connector.js";
import { GatewayBreaker, GatewayLimiter, GatewayPool, RetryBudget } from "./routing.js";

const { CLOSED, OPEN, HALF_OPEN } = CircuitState;
const ALLOWED = new Set([`${CLOSED}>${OPEN}`, `${OPEN}>${HALF_OPEN}`, `${HALF_OPEN}>${OPEN}`, `${HALF_OPEN}>${CLOSED}`]);

describe("GatewayBreaker", () => {
  const options = { failuresToOpen: 3, openMs: 1_000, probesMax: 2, successesToClose: 2 };
  type Step = { kind: "call"; fault: boolean } | { kind: "start" } | { kind: "finish"; fault: boolean } | { kind: "wait"; ms: number };
  const step = fc.oneof(
    fc.record({ kind: fc.constant("call" as const), fault: fc.boolean() }),
    fc.record({ kind: fc.constant("start" as const) }),
    fc.record({ kind: fc.constant("finish" as const), fault: fc.boolean() }),
    fc.record({ kind: fc.constant("wait" as const), ms: fc.integer({ min: 0, max: 1_500 }) }),
  );

  it("moves only along CLOSED → OPEN → HALF_OPEN → CLOSED/OPEN, opens only on enough consecutive faults, and bounds probes", () => {
    fc.assert(fc.property(fc.array(step, { maxLength: 200 }), (steps: Step[]) => {
      let nowMs = 0;
      const transitions: string[] = [];
      const breaker = new GatewayBreaker(options, (from, to) => transitions.push(`${from}>${to}`), () => nowMs);
      const inFlight: boolean[] = [];
      let consecutiveFaults = 0;
      // The model: faults in a row counted over every call that ends while the circuit is closed.
      const finish = (fault: boolean, wasProbe: boolean) => {
        const before = breaker.current();
        breaker.release(fault, wasProbe);
        if (before === CLOSED && !wasProbe) {
          consecutiveFaults = fault ? consecutiveFaults + 1 : 0;
          if (breaker.current() !== CLOSED) assert.ok(consecutiveFaults >= options.failuresToOpen, "opened without enough consecutive faults");
        }
        if (breaker.current() !== CLOSED) consecutiveFaults = 0;
      };
      for (const item of steps) {
        const before = breaker.current();
        if (before !== CLOSED) consecutiveFaults = 0;
        if (item.kind === "wait") {
          nowMs += item.ms;
          continue;
        }
        if (item.kind === "finish") {
          const wasProbe = inFlight.shift();
          if (wasProbe !== undefined) finish(item.fault, wasProbe);
          continue;
        }
        const admitted = breaker.tryAcquire();
        if (before === OPEN) assert.equal(admitted, false, "an open circuit let a call through");
        if (before === HALF_OPEN && admitted) {
          assert.ok(inFlight.filter(Boolean).length < options.probesMax, "more probes than allowed");
        }
        if (!admitted) continue;
        if (item.kind === "start") inFlight.push(before === HALF_OPEN);
        else finish(item.fault, before === HALF_OPEN);
      }
      for (const change of transitions) assert.ok(ALLOWED.has(change), `illegal transition ${change}`);
    }), { numRuns: 300 });
  });

  it("stays closed through any number of successes, and opens after exactly failuresToOpen faults in a row", () => {
    const breaker = new GatewayBreaker(options);
    for (let index = 0; index < 50; index++) {
      assert.ok(breaker.tryAcquire());
      breaker.release(index % 2 === 0, false);
    }
    assert.equal(breaker.current(), CLOSED);
    for (let index = 0; index < options.failuresToOpen; index++) {
      assert.ok(breaker.tryAcquire());
      breaker.release(true, false);
    }
    assert.equal(breaker.current(), OPEN);
  });
});

describe("GatewayLimiter", () => {
  it("never has more calls in flight than its concurrency", async () => {
    const limiter = new GatewayLimiter(3, 10_000);
    let inFlight = 0;
    let peak = 0;
    await Promise.all(Array.from({ length: 20 }, async () => {
      const release = await limiter.acquire();
      peak = Math.max(peak, ++inFlight);
      await new Promise((resolve) => setTimeout(resolve, 5));
      inFlight--;
      release();
    }));
    assert.equal(peak, 3);
  });

  it("starts no more calls per second than its rate", async () => {
    const limiter = new GatewayLimiter(100, 20);
    const startedMs = Date.now();
    await Promise.all(Array.from({ length: 30 }, async () => (await limiter.acquire())()));
    // 20 tokens at once at most, then 20 per second: the last 10 need about half a second.
    assert.ok(Date.now() - startedMs >= 400, `30 starts took ${Date.now() - startedMs} ms`);
  });

  it("gives up waiting when the signal aborts", async () => {
    const limiter = new GatewayLimiter(1, 1_000);
    const held = await limiter.acquire();
    const controller = new AbortController();
    const waiting = limiter.acquire(controller.signal);
    controller.abort(new Error("stop"));
    await assert.rejects(waiting, /stop/);
    held();
  });
});

describe("RetryBudget", () => {
  it("allows the reserve, then one retry per 1/ratio first attempts", () => {
    const budget = new RetryBudget(20, 3);
    let allowed = 0;
    while (budget.tryRetry()) allowed++;
    assert.equal(allowed, 3);
    for (let index = 0; index < 50; index++) budget.recordAttempt();
    allowed = 0;
    while (budget.tryRetry()) allowed++;
    assert.equal(allowed, 10);
  });
});

describe("GatewayPool.decide()", () => {
  function connector(name: GatewayName, currencies: string[], countries: string[], maxAmountMinor: Record<string, bigint> = {}): Connector {
    const unused = async (): Promise<GatewayResult> => assert.fail("not called");
    return {
      name,
      capabilities: { currencies: new Set(currencies), countries: new Set(countries), maxAmountMinor },
      charge: unused,
      payout: unused,
      refund: unused,
      status: unused,
      verifyWebhook: () => undefined,
      listTransactions: () => assert.fail("not called"),
    };
  }
  const pool = new GatewayPool(
    [connector("paystack", ["NGN", "GHS"], ["NG", "GH"], { NGN: 1_000_000n }), connector("flutterwave", ["NGN", "KES"], ["NG", "KE"]), connector("stripe", ["USD"], ["US"])],
    { concurrencyMax: 4, ratePerSecond: 100, breakerFailures: 3, breakerOpenMs: 1_000, explorationShare: 0 },
    createLogger("silent"),
  );

  it("prefers the rules' first choice when the gateways are equally healthy", () => {
    const decision = pool.decide({ currency: "NGN", country: "NG", amountMinor: 100n }, new Map());
    assert.equal(decision.choice, "paystack");
    assert.equal(decision.reason, "best score");
    assert.match(decision.candidates.find((candidate) => candidate.gateway === "stripe")?.excludedReason ?? "", /does not serve NGN/);
  });

  it("excludes by country, by amount, and what the payment already failed over from", () => {
    assert.equal(pool.decide({ currency: "NGN", country: "KE", amountMinor: 100n }, new Map()).choice, "flutterwave");
    const big = pool.decide({ currency: "NGN", country: "NG", amountMinor: 2_000_000n }, new Map());
    assert.equal(big.choice, "flutterwave");
    assert.match(big.candidates.find((candidate) => candidate.gateway === "paystack")?.excludedReason ?? "", /maximum/);
    assert.equal(pool.decide({ currency: "NGN", country: "NG", amountMinor: 100n }, new Map([["paystack", "failed over"]])).choice, "flutterwave");
    const none = pool.decide({ currency: "XOF", country: "SN", amountMinor: 100n }, new Map());
    assert.equal(none.choice, undefined);
  });

  it("explores another eligible gateway in the configured share of decisions", () => {
    const exploring = new GatewayPool(
      [connector("paystack", ["NGN"], ["NG"]), connector("flutterwave", ["NGN"], ["NG"])],
      { concurrencyMax: 4, ratePerSecond: 100, breakerFailures: 3, breakerOpenMs: 1_000, explorationShare: 0.5, random: () => 0.1 },
      createLogger("silent"),
    );
    const decision = exploring.decide({ currency: "NGN", country: "NG", amountMinor: 100n }, new Map());
    assert.equal(decision.choice, "flutterwave");
    assert.equal(decision.reason, "exploration");
  });
});
