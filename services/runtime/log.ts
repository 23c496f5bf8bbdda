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
 * A warning logged at most once per interval, for a condition that repeats on every call while it
 * lasts (a cache that cannot be reached).
 */
export function throttledWarning(log: Logger, message: string, intervalMs = 5_000): (error: unknown) => void {
  let lastAtMs = -Infinity;
  return (error) => {
    const nowMs = Date.now();
    if (nowMs - lastAtMs < intervalMs) return;
    lastAtMs = nowMs;
    log.warn({ err: errorText(error) }, message);
  };
}
