/**
 * Waits `ms`, or less when `signal` aborts: resolves either way, so a loop that pauses between
 * tries checks its own stop condition instead of handling a rejection.
 */
export function pause(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
  });
}

/**
 * Exponential backoff: baseMs · 2^attempt, at most capMs, with jitter so that many waiters spread
 * out: "full" anywhere from 0, "equal" from half, "none" exactly that.
 */
export function backoffMs(attempt: number, baseMs: number, capMs: number, jitter: "full" | "equal" | "none" = "full", random: () => number = Math.random): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.min(Math.max(attempt, 0), 30));
  const floor = jitter === "full" ? 0 : jitter === "equal" ? ceiling / 2 : ceiling;
  return Math.round(floor + random() * (ceiling - floor));
}
