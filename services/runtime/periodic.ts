// Background work that runs every interval, one pass at a time per process: a pass still running
// when the next is due is not doubled, a failing pass is logged and tried again next time, and
// stop() waits for the pass in flight. Completers, resolvers, reapers and expiry tasks use it.
import { errorText, type Logger } from "./log.js";

export interface Periodic {
  /** Stops scheduling passes and waits for the one in flight. */
  stop(): Promise<void>;
}

export function every(intervalMs: number, name: string, pass: () => Promise<unknown>, log: Logger): Periodic {
  let running: Promise<unknown> | undefined;
  const timer = setInterval(() => {
    running ??= pass()
      .catch((error: unknown) => log.warn({ err: errorText(error) }, `${name} pass failed; will retry`))
      .finally(() => (running = undefined));
  }, intervalMs);
  timer.unref();
  return {
    async stop() {
      clearInterval(timer);
      await running;
    },
  };
}
