// Structured JSON logs, one object per line on stdout. Every service in a process shares one
// root logger; each service gets a child that stamps `service` on its lines.
import { pino, type Logger } from "pino";

export type { Logger };

export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  });
}

/** The message of anything thrown, for a log field. */
export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * Logs a line that repeats on every call while its condition lasts (a dependency away, a breaker
 * open) at most once per interval for each key. `write` gets how many lines of the key were left
 * out since the last one written, for the line's `notLogged` field.
 */
export function sampledLog(intervalMs = 1_000): (key: string, write: (notLogged: number) => void) => void {
  const byKey = new Map<string, { lastAtMs: number; notLogged: number }>();
  return (key, write) => {
    const nowMs = performance.now();
    const entry = byKey.get(key);
    if (entry && nowMs - entry.lastAtMs < intervalMs) {
      entry.notLogged++;
      return;
    }
    if (!entry && byKey.size >= 1_000) byKey.clear();
    write(entry?.notLogged ?? 0);
    byKey.set(key, { lastAtMs: nowMs, notLogged: 0 });
  };
}

/** A warning about a condition that repeats on every call while it lasts (a cache that cannot be reached). */
export function throttledWarning(log: Logger, message: string, intervalMs = 5_000): (error: unknown) => void {
  const sample = sampledLog(intervalMs);
  return (error) => sample(message, (notLogged) => log.warn({ err: errorText(error), notLogged }, message));
}
