// Clients for calling other Cowrie services. Each process keeps one HTTP/2 transport per target
// (with keepalive pings) and each calling service one circuit breaker per target. Every call
// carries the request id and what is left of the caller's deadline minus a margin, capped per
// hop, so no downstream call outlives its caller. At most COWRIE_CLIENT_MAX_IN_FLIGHT calls per
// target are on the wire at once; the rest wait their turn off the wire. A call cancelled on the
// wire resets its HTTP/2 stream, and nghttp2, under every Node server, closes a connection after
// a burst of 1,000 resets (its Rapid Reset protection; Node 20 cannot raise that limit), failing
// every other call on it. So a call whose deadline passes, or whose caller goes away, is answered
// at once but left on the wire for the target to end (onTheWire), and one given up while it
// waits for a slot was never sent.
import { randomUUID } from "node:crypto";
import type { DescService } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type CallOptions, type Client, type Transport } from "@connectrpc/connect";
import { codeToString, headerTimeout as CONNECT_TIMEOUT_HEADER } from "@connectrpc/connect/protocol-connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { BrokenCircuitError, ConsecutiveBreaker, circuitBreaker, handleWhen, type CircuitBreakerPolicy } from "cockatiel";
import { currentCallContext, outboundTimeoutMs, remainingMs } from "./call-context.js";
import type { Config } from "./config.js";
import type { Logger } from "./log.js";
import { metrics } from "./metrics.js";
import { REQUEST_ID_HEADER } from "./server.js";

/** A process's connection to one base URL, and the limit on the calls it has on the wire. */
interface Target {
  readonly transport: Transport;
  readonly inFlight: InFlightLimit;
}

const targets = new Map<string, Target>();

/**
 * The process-wide transport for a base URL, with its in-flight limit (set by the first client of
 * the URL). Cowrie's internal hops speak the Connect protocol with binary Protobuf over HTTP/2: on
 * these machines a connect-node server handles about twice as many Connect calls per second as
 * gRPC calls (see NOTES.md and `npm run bench:rpc`).
 */
function sharedTarget(options: ClientOptions): Target {
  const key = options.lane ? `${options.baseUrl} ${options.lane}` : options.baseUrl;
  let target = targets.get(key);
  if (!target) {
    const gauge = metrics().clientWaitingCalls;
    const labels = { target: metricTarget(options) };
    target = {
      transport: createConnectTransport({
        baseUrl: options.baseUrl,
        httpVersion: "2",
        useBinaryFormat: true,
        pingIntervalMs: 10_000,
        pingTimeoutMs: 5_000,
        idleConnectionTimeoutMs: 60_000,
      }),
      inFlight: new InFlightLimit(options.config.clientMaxInFlight, (waiting) => gauge.set(labels, waiting)),
    };
    targets.set(key, target);
  }
  return target;
}

/**
 * At most `limit` calls at once; the others wait in arrival order. A waiting call whose signal
 * (made only when it has to wait) aborts leaves the line at once, having sent nothing.
 */
export class InFlightLimit {
  #active = 0;
  readonly #waiting = new Set<() => void>();

  /** `waitingChanged` hears the number of waiting calls whenever it changes. */
  constructor(
    readonly limit: number,
    private readonly waitingChanged: (waiting: number) => void = () => {},
  ) {}

  /** Takes a slot (waiting for one if need be); the function returned gives it back, once. */
  async acquire(waitSignal: () => AbortSignal): Promise<() => void> {
    if (this.#active < this.limit) this.#active++;
    else await this.#turn(waitSignal());
    let released = false;
    return () => {
      if (released) return;
      released = true;
      // The slot goes straight to the first waiting call, if any.
      const next = this.#waiting.values().next();
      if (next.done) this.#active--;
      else next.value();
    };
  }

  #turn(signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    return new Promise((resolve, reject) => {
      const leave = (): void => {
        this.#waiting.delete(take);
        this.waitingChanged(this.#waiting.size);
      };
      const onAbort = (): void => {
        leave();
        reject(signal.reason);
      };
      const take = (): void => {
        leave();
        signal.removeEventListener("abort", onAbort);
        resolve();
      };
      this.#waiting.add(take);
      this.waitingChanged(this.#waiting.size);
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }
}

/** Deadline expiries that say nothing more about the target than one already counted: see below. */
const uncountedExpiries = new WeakSet<ConnectError>();

/**
 * Failures that say the target is unhealthy: it could not be reached, or did not answer within
 * the deadline. Business outcomes (INVALID_ARGUMENT, FAILED_PRECONDITION, NOT_FOUND...) prove the
 * target is working and never count, and neither do two kinds of expiry (uncountedExpiries):
 *  - a call that waited in this process until less than half of its time was left: under
 *    overload such expiries are the queue's doing;
 *  - a call that was already on the wire when another expiry was counted: the calls in flight
 *    when the target, or this process, stalls for longer than their deadline all expire
 *    together, and that is one stall, counted once. Counted one by one, a single pause (a
 *    saturated machine, a long GC) opened the Router's breaker to Risk, and every payment for the
 *    next COWRIE_BREAKER_HALF_OPEN_AFTER_MS skipped its fraud checks. A target that stays silent
 *    still opens the breaker: each call sent after a counted expiry counts when it expires.
 * Transport failures (refused, reset) always count, so a target that is down opens it at once.
 */
function isTargetFailure(error: unknown): boolean {
  if (!(error instanceof ConnectError) || uncountedExpiries.has(error)) return false;
  return error.code === Code.Unavailable || error.code === Code.DeadlineExceeded || error.code === Code.Unknown;
}

export interface ClientOptions {
  /** The calling service, for metric labels. */
  caller: string;
  /** The target service's short name ("ledger"). */
  target: string;
  /**
   * Calls that may last their whole deadline (a payment waited for) go in a lane of their own: a
   * connection, an in-flight limit and a breaker apart from the target's other calls, so that
   * they cannot take every slot. Metrics name it "<target>/<lane>".
   */
  lane?: string;
  baseUrl: string;
  config: Config;
  log: Logger;
}

function metricTarget(options: ClientOptions): string {
  return options.lane ? `${options.target}/${options.lane}` : options.target;
}

function createBreaker(options: ClientOptions, target: string): CircuitBreakerPolicy {
  const breaker = circuitBreaker(handleWhen(isTargetFailure), {
    halfOpenAfter: options.config.breakerHalfOpenAfterMs,
    breaker: new ConsecutiveBreaker(options.config.breakerFailures),
  });
  const gauge = metrics().breakerState;
  const labels = { service: options.caller, target };
  gauge.set(labels, breaker.state);
  breaker.onStateChange((state) => {
    gauge.set(labels, state);
    options.log.warn({ target, breakerState: state }, "circuit breaker changed state");
  });
  return breaker;
}

/**
 * The downstream's error with its code, message and details, but without the response headers
 * and trailers it arrived with: re-thrown by a handler, those would be written into the
 * caller's response (content-type, grpc-status...) and corrupt it.
 */
function withoutTransportMetadata(error: unknown): unknown {
  if (!(error instanceof ConnectError)) return error;
  // Incoming details (type name and bytes) are written back out as they came.
  const details = error.details as ConstructorParameters<typeof ConnectError>[3];
  return new ConnectError(error.rawMessage, error.code, undefined, details, error);
}

/**
 * A call whose HTTP/2 connection was closed under it (GOAWAY with an error code: connect-node
 * says INTERNAL) is UNAVAILABLE: the target may or may not have acted on it, and a retry with
 * the same idempotency key is the answer. It counts against the target's breaker.
 */
function connectionLost(target: string, error: unknown): unknown {
  if (!(error instanceof ConnectError) || error.code !== Code.Internal || !causedBy(error, "ERR_HTTP2_SESSION_ERROR")) return error;
  return new ConnectError(`the connection to ${target} was closed during the call (${error.rawMessage}); its outcome is unknown`, Code.Unavailable, undefined, undefined, error);
}

/** Whether a Node error with `code` is in the error's cause chain. */
function causedBy(error: Error, code: string): boolean {
  for (let cause: unknown = error.cause, depth = 0; cause instanceof Error && depth < 5; cause = cause.cause, depth++) {
    if ((cause as NodeJS.ErrnoException).code === code) return true;
  }
  return false;
}

function waitedTooLong(target: string, limit: number, timeoutMs: number): ConnectError {
  return new ConnectError(`${limit} calls to ${target} were in flight for the whole ${timeoutMs} ms deadline; this one was not sent`, Code.DeadlineExceeded);
}

/**
 * How long a call stays on the wire past its deadline for the target's own answer. A target that
 * is only overloaded can take seconds to reach the answers it owes (1,500 calls arriving at once
 * took longer than 1 s on a loaded CI machine); a silent one is cut off by the breaker anyway.
 */
const WIRE_GRACE_MS = 5_000;

/**
 * Sends a call whose deadline the target enforces: it travels in the Connect timeout header, and
 * every Cowrie server answers DEADLINE_EXCEEDED when it passes. The call is not cancelled here at
 * the deadline, because a cancelled call resets its HTTP/2 stream, and past a burst of 1,000
 * resets (then 33 a second) the target's HTTP/2 library closes the whole connection (its Rapid
 * Reset protection; Node 20 cannot raise the limit). Under a flash sale the Edge's calls to the
 * Router expired by the hundred a second: every few seconds the Router closed the connection,
 * failing the 256 calls on it with their outcome unknown, and a run that should have accepted
 * most payments accepted a sixth of them. Only a target silent WIRE_GRACE_MS past the deadline
 * (hung, stopped) has the call cut off here.
 */
function onTheWire(
  call: (request: unknown, options: CallOptions) => Promise<unknown>,
  request: unknown,
  callOptions: CallOptions,
  headers: Headers,
  leftMs: number,
  target: string,
): Promise<unknown> {
  headers.set(CONNECT_TIMEOUT_HEADER, String(leftMs));
  const silent = new AbortController();
  const timer = setTimeout(() => silent.abort(new ConnectError(`${target} did not answer within ${leftMs} ms`, Code.DeadlineExceeded)), leftMs + WIRE_GRACE_MS);
  return call(request, { ...callOptions, timeoutMs: undefined, headers, signal: silent.signal }).finally(() => clearTimeout(timer));
}

/**
 * The call's answer, or DEADLINE_EXCEEDED when `leftMs` passes first, or the reason the caller
 * left (its signal): the caller never waits past its deadline for a call still on the wire.
 */
function answerBy<T>(wire: Promise<T>, leftMs: number, signal: AbortSignal, target: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener("abort", onLeave);
    };
    const onLeave = (): void => {
      done();
      reject(ConnectError.from(signal.reason, Code.Canceled));
    };
    const timer = setTimeout(() => {
      done();
      reject(new ConnectError(`${target} did not answer within ${leftMs} ms`, Code.DeadlineExceeded));
    }, leftMs);
    if (signal.aborted) return onLeave();
    signal.addEventListener("abort", onLeave, { once: true });
    wire.then((value) => {
      done();
      resolve(value);
    }, (error: unknown) => {
      done();
      reject(error);
    });
  });
}

/** A client for one target service whose unary methods carry deadline, request id, in-flight limit and breaker. */
export function createServiceClient<T extends DescService>(service: T, options: ClientOptions): Client<T> {
  const { transport, inFlight } = sharedTarget(options);
  const inner = createClient(service, transport) as Record<string, (...args: never[]) => unknown>;
  // The target as metrics and logs name it, once per client rather than once per call.
  const label = metricTarget(options);
  const breaker = createBreaker(options, label);
  // When the open breaker lets its next probe through: what a caller failed fast should wait.
  let probeAtMs = 0;
  breaker.onBreak(() => (probeAtMs = Date.now() + options.config.breakerHalfOpenAfterMs));
  // When the last deadline expiry that counted against the target happened (isTargetFailure).
  let countedExpiryAt = -Infinity;
  const { clientRequests: counter, clientSlotWaitSeconds: slotWait } = metrics();
  const waited = (startedAt: number): void => slotWait.observe({ target: label }, (performance.now() - startedAt) / 1000);
  const client: Record<string, unknown> = {};
  for (const method of service.methods) {
    const call = inner[method.localName] as (request: unknown, options: CallOptions) => Promise<unknown>;
    if (method.methodKind !== "unary") {
      client[method.localName] = call;
      continue;
    }
    client[method.localName] = async (request: unknown, callOptions: CallOptions = {}) => {
      const context = currentCallContext();
      // A caller may ask for less time than the budget allows, never for more.
      const askedMs = callOptions.timeoutMs && callOptions.timeoutMs > 0 ? callOptions.timeoutMs : Infinity;
      const timeoutMs = Math.min(outboundTimeoutMs(context ? remainingMs(context) : undefined, options.config), askedMs);
      // What the call would have carried had it been sent the moment its request arrived here.
      const fullMs = context?.receivedAtMs === undefined
        ? timeoutMs
        : Math.min(outboundTimeoutMs(context.deadlineAtMs - context.receivedAtMs, options.config), askedMs);
      let code = "ok";
      try {
        if (timeoutMs <= 0) {
          throw new ConnectError(`no time left in the deadline to call ${options.target}`, Code.DeadlineExceeded);
        }
        const headers = new Headers(callOptions.headers);
        headers.set(REQUEST_ID_HEADER, context?.requestId ?? randomUUID());
        const signal = AbortSignal.any([context?.signal, callOptions.signal].filter((given) => given !== undefined));
        const startedAt = performance.now();
        const release = await inFlight.acquire(() => AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)])).catch((error: unknown) => {
          // Given up while waiting for a turn: nothing reached the target.
          if (!(error instanceof DOMException)) throw error;
          waited(startedAt);
          throw error.name === "TimeoutError" ? waitedTooLong(options.target, inFlight.limit, timeoutMs) : ConnectError.from(error);
        });
        let sent = false;
        try {
          const waitedMs = performance.now() - startedAt;
          if (waitedMs >= 1) waited(startedAt);
          const leftMs = waitedMs < 1 ? timeoutMs : Math.floor(timeoutMs - waitedMs);
          if (leftMs <= 0) throw waitedTooLong(options.target, inFlight.limit, timeoutMs);
          // A call that waited here (for a database connection, for a slot) until less than half
          // of its time was left says little about the target when it expires: under overload
          // such expiries would open the breaker and fail every call waiting behind them at once.
          const sentInTime = leftMs * 2 >= fullMs;
          return await breaker.execute(() => {
            // A caller that left while it waited for a slot sends nothing.
            if (signal.aborted) return Promise.reject(ConnectError.from(signal.reason, Code.Canceled));
            const sentAt = performance.now();
            // The slot follows the call on the wire, which the target ends; the caller (and the
            // breaker) has its answer by the deadline, or as soon as the caller leaves.
            const wire = onTheWire(call, request, callOptions, headers, leftMs, options.target);
            sent = true;
            wire.then(release, release);
            return answerBy(wire, leftMs, signal, options.target).catch((error: unknown) => {
              const failure = connectionLost(options.target, error);
              if (failure instanceof ConnectError && failure.code === Code.DeadlineExceeded) {
                if (sentInTime && sentAt >= countedExpiryAt) countedExpiryAt = performance.now();
                else uncountedExpiries.add(failure);
              }
              throw failure;
            });
          });
        } finally {
          if (!sent) release();
        }
      } catch (error) {
        const mapped = error instanceof BrokenCircuitError
          ? new ConnectError(`${options.target} is unavailable: circuit breaker open, failing fast`, Code.Unavailable, {
            // Error metadata goes out as response headers (Connect) or trailers (gRPC).
            "retry-after": String(Math.max(1, Math.ceil((probeAtMs - Date.now()) / 1000))),
          })
          : withoutTransportMetadata(error);
        code = mapped instanceof ConnectError ? codeToString(mapped.code) : "unknown";
        throw mapped;
      } finally {
        counter.inc({ service: options.caller, target: label, method: method.name, code });
      }
    };
  }
  return client as Client<T>;
}
