// Per-API-key rate limits: a token bucket per key in the shared cache (Redis), so every Edge
// process draws from the same bucket. Over the limit: RESOURCE_EXHAUSTED with a `retry-after`
// header in whole seconds.
//
// When Redis cannot be reached the limiter fails OPEN: the call goes through and a warning is
// logged (at most once per 5 s). The rate limit protects capacity; it is not a
// correctness or security boundary (authentication and idempotency live in PostgreSQL), so a
// Redis outage should cost some protection against floods, not the whole public API. A refused
// connection fails at once; an unresponsive Redis costs each call up to the cache's command
// timeout (1 s) before it is let through.
import { Code, ConnectError } from "@connectrpc/connect";
import type { Cache } from "../runtime/cache.js";
import { throttledWarning, type Logger } from "../runtime/log.js";
import type { Caller } from "./auth.js";

export const RETRY_AFTER_HEADER = "retry-after";

export class RateLimiter {
  private readonly warnFailOpen: (error: unknown) => void;

  constructor(
    private readonly cache: Cache,
    log: Logger,
  ) {
    this.warnFailOpen = throttledWarning(log, "rate limiter cannot reach the cache; allowing calls unlimited until it is back");
  }

  /** Takes one token from the caller's bucket; RESOURCE_EXHAUSTED when it is empty. */
  async take(caller: Caller): Promise<void> {
    let outcome: { allowed: boolean; retryAfterMs: number };
    try {
      outcome = await this.cache.takeToken(`edge:rate:${caller.keyId}`, {
        ratePerSecond: caller.ratePerSecond,
        burst: caller.burst,
      });
    } catch (error) {
      this.warnFailOpen(error);
      return;
    }
    if (outcome.allowed) return;
    throw new ConnectError(
      `rate limit exceeded; retry after ${outcome.retryAfterMs} ms`,
      Code.ResourceExhausted,
      // Error metadata is sent as response headers (Connect) or trailers (gRPC).
      { [RETRY_AFTER_HEADER]: String(Math.max(1, Math.ceil(outcome.retryAfterMs / 1000))) },
    );
  }

}
