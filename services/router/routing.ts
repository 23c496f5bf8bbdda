// Routing and resilience as one loop: which gateway a payment goes to (rules, then ranking by
// recent success rate and latency, with a small exploration share, never a gateway whose circuit
// is open), and how each call to a gateway is guarded (a concurrency and rate limit, a circuit
// breaker that counts only transport failures, timeouts and 5xx, a retry budget). The view is this
// Router process's own: each process measures the gateways it calls.
import { CircuitState } from "../../gen/cowrie/router/v1/router_pb.js";
import type { Logger } from "../runtime/log.js";
import { metrics } from "../runtime/metrics.js";
import { isGatewayFault, type CallOptions, type Connector, type GatewayName, type GatewayResult } from "./gateways/connector.js";

// ---------------------------------------------------------------------------------------------
// Circuit breaker

/**
 * CLOSED → OPEN after `failuresToOpen` consecutive gateway faults; OPEN fails fast for `openMs`,
 * then HALF_OPEN lets at most `probesMax` calls through at once; `successesToClose` successful
 * probes close it, any faulty probe opens it again. Written by hand (cockatiel's breaker, used
 * for Cowrie's own RPCs, admits one probe and only moves to half-open when a call is attempted,
 * so a router that skips open gateways would never probe them).
 */
export class GatewayBreaker {
  private state: CircuitState = CircuitState.CLOSED;
  private consecutiveFaults = 0;
  private openUntilMs = 0;
  private probesInFlight = 0;
  private probeSuccesses = 0;

  constructor(
    private readonly options: { failuresToOpen: number; openMs: number; probesMax: number; successesToClose: number },
    private readonly onChange: (from: CircuitState, to: CircuitState) => void = () => {},
    private readonly now: () => number = Date.now,
  ) {}

  /** The state now (an OPEN breaker whose time is up reads as HALF_OPEN). */
  current(): CircuitState {
    if (this.state === CircuitState.OPEN && this.now() >= this.openUntilMs) this.move(CircuitState.HALF_OPEN);
    return this.state;
  }

  /** Whether a call may go now; in HALF_OPEN it takes one of the probe slots. */
  tryAcquire(): boolean {
    switch (this.current()) {
      case CircuitState.CLOSED:
        return true;
      case CircuitState.HALF_OPEN:
        if (this.probesInFlight >= this.options.probesMax) return false;
        this.probesInFlight++;
        return true;
      default:
        return false;
    }
  }

  /** The end of an acquired call: `fault` true for a gateway fault, false for any answer that shows it works. */
  release(fault: boolean, wasProbe: boolean): void {
    if (wasProbe) this.probesInFlight = Math.max(0, this.probesInFlight - 1);
    if (this.state === CircuitState.HALF_OPEN && wasProbe) {
      if (fault) return this.open();
      if (++this.probeSuccesses >= this.options.successesToClose) this.move(CircuitState.CLOSED);
      return;
    }
    if (this.state !== CircuitState.CLOSED) return;
    this.consecutiveFaults = fault ? this.consecutiveFaults + 1 : 0;
    if (this.consecutiveFaults >= this.options.failuresToOpen) this.open();
  }

  private open(): void {
    this.openUntilMs = this.now() + this.options.openMs;
    this.move(CircuitState.OPEN);
  }

  private move(to: CircuitState): void {
    const from = this.state;
    if (from === to) return;
    this.state = to;
    this.consecutiveFaults = 0;
    this.probesInFlight = 0;
    this.probeSuccesses = 0;
    this.onChange(from, to);
  }
}

// ---------------------------------------------------------------------------------------------
// Sliding window of recent calls

class CallWindow {
  private readonly calls: { fault: boolean; latencyMs: number }[] = [];
  private next = 0;

  constructor(private readonly size: number) {}

  add(fault: boolean, latencyMs: number): void {
    const call = { fault, latencyMs };
    if (this.calls.length < this.size) this.calls.push(call);
    else this.calls[this.next] = call;
    this.next = (this.next + 1) % this.size;
  }

  get count(): number {
    return this.calls.length;
  }

  clear(): void {
    this.calls.length = 0;
    this.next = 0;
  }

  /** Calls that did not fail at the gateway (declines count: the gateway worked); 1 with no data. */
  successRate(): number {
    if (this.calls.length === 0) return 1;
    return this.calls.filter((call) => !call.fault).length / this.calls.length;
  }

  latencyPercentileMs(percentile: number): number {
    if (this.calls.length === 0) return 0;
    const sorted = this.calls.map((call) => call.latencyMs).sort((a, b) => a - b);
    return sorted[Math.min(sorted.length - 1, Math.floor((percentile / 100) * sorted.length))] as number;
  }
}

// ---------------------------------------------------------------------------------------------
// Concurrency and rate limit

/** At most `concurrencyMax` calls at once and `ratePerSecond` starts per second (token bucket). */
export class GatewayLimiter {
  private inFlightCount = 0;
  private tokens: number;
  private refilledAtMs = Date.now();
  private readonly waiters: (() => void)[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly concurrencyMax: number,
    private readonly ratePerSecond: number,
  ) {
    this.tokens = Math.max(1, Math.min(ratePerSecond, concurrencyMax));
  }

  get inFlight(): number {
    return this.inFlightCount;
  }

  /** Waits for a slot; resolves with its release. Rejects when `signal` aborts first. */
  async acquire(signal?: AbortSignal): Promise<() => void> {
    for (;;) {
      signal?.throwIfAborted();
      this.refill();
      if (this.inFlightCount < this.concurrencyMax && this.tokens >= 1) {
        this.tokens -= 1;
        this.inFlightCount++;
        let released = false;
        return () => {
          if (released) return;
          released = true;
          this.inFlightCount--;
          this.wake();
        };
      }
      await new Promise<void>((resolve) => {
        const onAbort = () => resolve();
        signal?.addEventListener("abort", onAbort, { once: true });
        this.waiters.push(() => {
          signal?.removeEventListener("abort", onAbort);
          resolve();
        });
        // Out of tokens: wake when the next one is due, whether or not a call ends meanwhile.
        if (this.tokens < 1 && !this.timer) {
          this.timer = setTimeout(() => {
            this.timer = undefined;
            this.wake();
          }, Math.ceil(((1 - this.tokens) / this.ratePerSecond) * 1000));
        }
      });
    }
  }

  private refill(): void {
    const nowMs = Date.now();
    const capacity = Math.max(1, Math.min(this.ratePerSecond, this.concurrencyMax));
    this.tokens = Math.min(capacity, this.tokens + ((nowMs - this.refilledAtMs) / 1000) * this.ratePerSecond);
    this.refilledAtMs = nowMs;
  }

  private wake(): void {
    for (const waiter of this.waiters.splice(0)) waiter();
  }
}

// ---------------------------------------------------------------------------------------------
// Retry budget

/**
 * Retries may add at most `ratioPercent` of the first attempts (beyond a small reserve), so that
 * when a gateway falters retries cannot multiply the load on it: every first attempt deposits
 * `ratioPercent` hundredths of a token, every retry spends a whole one. Integer hundredths keep
 * the arithmetic exact.
 */
export class RetryBudget {
  private hundredths: number;
  private readonly capHundredths: number;

  constructor(
    private readonly ratioPercent: number,
    reserve: number,
  ) {
    this.hundredths = reserve * 100;
    this.capHundredths = (reserve + ratioPercent) * 100;
  }

  recordAttempt(): void {
    this.hundredths = Math.min(this.capHundredths, this.hundredths + this.ratioPercent);
  }

  tryRetry(): boolean {
    if (this.hundredths < 100) return false;
    this.hundredths -= 100;
    return true;
  }
}

/** Retries add at most 20% to a gateway's calls, beyond a reserve of 10. */
const RETRY_RATIO_PERCENT = 20;
const RETRY_RESERVE = 10;

// ---------------------------------------------------------------------------------------------
// Rules and ranking

/**
 * First choice by rules: the gateways preferred for a currency, best first (local acquiring
 * where it exists: Paystack for Nigeria and Ghana, Flutterwave across East Africa, Stripe for
 * card markets). A gateway not listed may still be chosen when it serves the currency; it just
 * starts without the preference bonus.
 */
export const PREFERENCE_BY_CURRENCY: Readonly<Record<string, readonly GatewayName[]>> = {
  NGN: ["paystack", "flutterwave"],
  GHS: ["paystack", "flutterwave"],
  ZAR: ["paystack", "flutterwave"],
  KES: ["flutterwave", "paystack"],
  UGX: ["flutterwave"],
  USD: ["stripe", "flutterwave", "paystack"],
  EUR: ["stripe", "flutterwave"],
  GBP: ["stripe", "flutterwave"],
};

/** Score points for the rules' first and second choice. */
const PREFERENCE_BONUS = [10, 5] as const;

export interface RoutingInput {
  currency: string;
  country: string;
  amountMinor: bigint;
}

export interface Candidate {
  gateway: GatewayName;
  eligible: boolean;
  excludedReason: string;
  /** Whole points; see router.proto's RoutingCandidate. */
  score: number;
  successRatePermille: number;
  latencyP50Ms: number;
  circuitState: CircuitState;
}

export interface RoutingDecision {
  candidates: Candidate[];
  /** Undefined when no gateway may take the payment now. */
  choice?: GatewayName;
  reason: string;
}

interface Gateway {
  connector: Connector;
  breaker: GatewayBreaker;
  window: CallWindow;
  limiter: GatewayLimiter;
  retries: RetryBudget;
}

export interface GatewayPoolOptions {
  concurrencyMax: number;
  ratePerSecond: number;
  breakerFailures: number;
  breakerOpenMs: number;
  /** Share of decisions that go to a random eligible gateway other than the best, to keep measuring it. */
  explorationShare: number;
  random?: () => number;
}

/** The answer when the breaker stopped a call before it was sent. */
const CIRCUIT_OPEN: GatewayResult = {
  outcome: "error",
  code: "gateway_unavailable",
  action: "failover",
  gatewayCode: "circuit_open",
  message: "circuit open: the request was not sent",
};

export class GatewayPool {
  private readonly gateways = new Map<GatewayName, Gateway>();
  private readonly random: () => number;

  constructor(
    connectors: Iterable<Connector>,
    private readonly options: GatewayPoolOptions,
    log: Logger,
  ) {
    this.random = options.random ?? Math.random;
    const m = metrics();
    for (const connector of connectors) {
      const window = new CallWindow(100);
      const breaker = new GatewayBreaker(
        { failuresToOpen: options.breakerFailures, openMs: options.breakerOpenMs, probesMax: 3, successesToClose: 2 },
        (from, to) => {
          m.gatewayCircuitState.set({ gateway: connector.name }, to);
          // A gateway that proved it recovered starts afresh, not ranked down by its outage.
          if (to === CircuitState.CLOSED) window.clear();
          log.warn({ gateway: connector.name, from: CircuitState[from], to: CircuitState[to] }, "gateway circuit changed state");
        },
      );
      m.gatewayCircuitState.set({ gateway: connector.name }, CircuitState.CLOSED);
      this.gateways.set(connector.name, {
        connector,
        breaker,
        window,
        limiter: new GatewayLimiter(options.concurrencyMax, options.ratePerSecond),
        retries: new RetryBudget(RETRY_RATIO_PERCENT, RETRY_RESERVE),
      });
    }
  }

  /** Whether any gateway serves the currency and country at all, open circuits or not. */
  serves(currency: string, country: string): boolean {
    return [...this.gateways.values()].some(({ connector }) => capabilityExclusion(connector, { currency, country, amountMinor: 1n }) === "");
  }

  /** Every gateway weighed for a payment; `excluded` are gateways this payment may not use (again). */
  decide(input: RoutingInput, excluded: ReadonlyMap<GatewayName, string>): RoutingDecision {
    const preference = PREFERENCE_BY_CURRENCY[input.currency] ?? [];
    const candidates: Candidate[] = [...this.gateways.values()].map(({ connector, breaker, window }) => {
      const circuitState = breaker.current();
      const successRate = window.successRate();
      const latencyP50Ms = window.latencyPercentileMs(50);
      const rank = preference.indexOf(connector.name);
      const score = 100 * successRate - latencyP50Ms / 10 + (rank >= 0 ? (PREFERENCE_BONUS[rank] ?? 0) : 0);
      const excludedReason = exclusion(connector, input, circuitState, excluded.get(connector.name));
      return { gateway: connector.name, eligible: excludedReason === "", excludedReason, score: Math.round(score), successRatePermille: permille(successRate), latencyP50Ms, circuitState };
    });
    const eligible = candidates.filter((candidate) => candidate.eligible).sort((a, b) => b.score - a.score);
    const best = eligible[0];
    if (!best) return { candidates, reason: "no eligible gateway" };
    // A half-open gateway gets the probes it needs to close: its low score after an outage would
    // otherwise keep it from ever being tried. Its probe slots bound how many payments that risks.
    const probing = eligible.find((candidate) => candidate.circuitState === CircuitState.HALF_OPEN);
    if (probing) return { candidates, choice: probing.gateway, reason: "half-open probe" };
    if (eligible.length > 1 && this.random() < this.options.explorationShare) {
      const pick = eligible[1 + Math.floor(this.random() * (eligible.length - 1))] as Candidate;
      return { candidates, choice: pick.gateway, reason: "exploration" };
    }
    return { candidates, choice: best.gateway, reason: eligible.length === 1 ? "only eligible gateway" : "best score" };
  }

  /** Whether the gateway's retry budget allows one more retry now (spends it if so). */
  tryRetry(name: GatewayName): boolean {
    return this.gateways.get(name)?.retries.tryRetry() ?? false;
  }

  /**
   * One call to a gateway, guarded: waits for a limiter slot, asks the breaker (an open circuit
   * answers CIRCUIT_OPEN without sending), measures, and feeds the breaker and the window.
   */
  async call(name: GatewayName, operation: string, run: (connector: Connector, options: CallOptions) => Promise<GatewayResult>, options: CallOptions & { firstAttempt?: boolean }): Promise<{ result: GatewayResult; latencyMs: number }> {
    const gateway = this.gateways.get(name);
    if (!gateway) throw new Error(`unknown gateway ${name}`);
    if (options.firstAttempt) gateway.retries.recordAttempt();
    const release = await gateway.limiter.acquire(options.signal);
    const m = metrics();
    try {
      const wasProbe = gateway.breaker.current() === CircuitState.HALF_OPEN;
      if (!gateway.breaker.tryAcquire()) return { result: CIRCUIT_OPEN, latencyMs: 0 };
      m.gatewayInFlight.set({ gateway: name }, gateway.limiter.inFlight);
      const startedMs = performance.now();
      let result: GatewayResult;
      try {
        result = await run(gateway.connector, options);
      } catch (error) {
        gateway.breaker.release(false, wasProbe);
        throw error;
      }
      const latencyMs = Math.round(performance.now() - startedMs);
      const fault = isGatewayFault(result);
      gateway.breaker.release(fault, wasProbe);
      gateway.window.add(fault, latencyMs);
      m.gatewayCalls.inc({ gateway: name, operation, code: result.code });
      m.gatewayDurationSeconds.observe({ gateway: name, operation }, latencyMs / 1000);
      return { result, latencyMs };
    } finally {
      release();
      m.gatewayInFlight.set({ gateway: name }, gateway.limiter.inFlight);
    }
  }

  health() {
    return [...this.gateways.values()].map(({ connector, breaker, window, limiter }) => ({
      name: connector.name,
      circuitState: breaker.current(),
      successRatePermille: permille(window.successRate()),
      latencyP50Ms: window.latencyPercentileMs(50),
      latencyP95Ms: window.latencyPercentileMs(95),
      windowCalls: window.count,
      inFlight: limiter.inFlight,
      concurrencyMax: limiter.concurrencyMax,
      currencies: [...connector.capabilities.currencies].sort(),
    }));
  }
}

/** Why the gateway cannot take this kind of payment at all, or "". */
function capabilityExclusion(connector: Connector, input: RoutingInput): string {
  const { currencies, countries, maxAmountMinor } = connector.capabilities;
  if (!currencies.has(input.currency)) return `does not serve ${input.currency}`;
  if (input.country && !countries.has(input.country)) return `does not serve ${input.country}`;
  const max = maxAmountMinor[input.currency];
  if (max !== undefined && input.amountMinor > max) return `amount over its ${input.currency} maximum of ${max}`;
  return "";
}

function exclusion(connector: Connector, input: RoutingInput, circuit: CircuitState, excludedForPayment: string | undefined): string {
  const capability = capabilityExclusion(connector, input);
  if (capability) return capability;
  if (excludedForPayment) return excludedForPayment;
  if (circuit === CircuitState.OPEN) return "circuit open";
  return "";
}

function permille(rate: number): number {
  return Math.round(rate * 1000);
}
