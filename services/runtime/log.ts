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
