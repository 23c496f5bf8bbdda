// The context of the RPC being handled: its request id and its deadline. It travels with the
// async call chain (AsyncLocalStorage) so that every outbound call and every log line made while
// handling a request can see it without threading it through every function.
import { AsyncLocalStorage } from "node:async_hooks";

export interface CallContext {
  readonly requestId: string;
  /** Epoch milliseconds by which the caller needs an answer. */
  readonly deadlineAtMs: number;
  /** Epoch milliseconds at which the request arrived, for a call served by this process. */
  readonly receivedAtMs?: number;
  /** Aborted when the deadline passes or the caller goes away. */
  readonly signal: AbortSignal;
}

const storage = new AsyncLocalStorage<CallContext>();

export function runInCallContext<T>(context: CallContext, fn: () => T): T {
  return storage.run(context, fn);
}

export function currentCallContext(): CallContext | undefined {
  return storage.getStore();
}

export function remainingMs(context: CallContext, nowMs = Date.now()): number {
  return context.deadlineAtMs - nowMs;
}

/**
 * The deadline a server gives a call: the client's own timeout, else the default, never more
 * than the maximum.
 */
export function serverBudgetMs(
  clientTimeoutMs: number | undefined,
  limits: { deadlineDefaultMs: number; deadlineMaxMs: number },
): number {
  return Math.min(clientTimeoutMs ?? limits.deadlineDefaultMs, limits.deadlineMaxMs);
}

/**
 * The timeout an outbound call carries: what is left of the caller's budget minus a margin (so
 * that the caller can still answer its own caller), capped per hop. Zero or less means there is
 * no time left to make the call at all.
 */
export function outboundTimeoutMs(
  remainingBudgetMs: number | undefined,
  limits: { hopMarginMs: number; hopTimeoutMaxMs: number },
): number {
  if (remainingBudgetMs === undefined) return limits.hopTimeoutMaxMs;
  return Math.min(Math.floor(remainingBudgetMs - limits.hopMarginMs), limits.hopTimeoutMaxMs);
}
