// Webhook metrics, on the process-wide registry of runtime/metrics.ts. Registered once per
// process (several Edges in one test process share them, as the runtime's metrics are shared).
import { Counter, Gauge, Histogram } from "prom-client";
import { metrics } from "../../runtime/metrics.js";

/** How many recent attempts the success ratio covers. */
const RECENT_ATTEMPTS = 100;

export type AttemptResult = "success" | "http_error" | "redirect" | "timeout" | "network_error";

export interface WebhookMetrics {
  readonly attempts: Counter<"result">;
  readonly deliveries: Counter<"outcome">;
  readonly attemptDurationSeconds: Histogram;
  readonly pending: Gauge;
  readonly oldestPendingSeconds: Gauge;
  readonly successRatio: Gauge;
  /** Counts one attempt and updates the success ratio. */
  attempted(result: AttemptResult, durationMs: number): void;
}

let shared: WebhookMetrics | undefined;

export function webhookMetrics(): WebhookMetrics {
  if (shared) return shared;
  const registry = metrics().registry;
  const recent: boolean[] = [];
  const successRatio = new Gauge({
    name: "cowrie_webhook_success_ratio",
    help: `Share of this process's last ${RECENT_ATTEMPTS} webhook attempts that the endpoint answered with 2xx.`,
    registers: [registry],
  });
  const attempts = new Counter({
    name: "cowrie_webhook_attempts_total",
    help: "Webhook HTTP attempts, automatic and manual, by result: success, http_error, redirect, timeout, network_error.",
    labelNames: ["result"],
    registers: [registry],
  });
  const attemptDurationSeconds = new Histogram({
    name: "cowrie_webhook_attempt_duration_seconds",
    help: "Time to a webhook endpoint's answer (or the failure).",
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  });
  shared = {
    attempts,
    attemptDurationSeconds,
    successRatio,
    deliveries: new Counter({
      name: "cowrie_webhook_deliveries_total",
      help: "Webhook deliveries that ended, by outcome: delivered, or failed (retry window passed, endpoint disabled or deleted).",
      labelNames: ["outcome"],
      registers: [registry],
    }),
    pending: new Gauge({
      name: "cowrie_webhook_pending_deliveries",
      help: "Webhook deliveries not yet delivered nor failed (all Edge processes; refreshed by the dispatcher).",
      registers: [registry],
    }),
    oldestPendingSeconds: new Gauge({
      name: "cowrie_webhook_oldest_pending_seconds",
      help: "Age of the oldest pending webhook delivery (0 when none).",
      registers: [registry],
    }),
    attempted(result, durationMs) {
      attempts.inc({ result });
      attemptDurationSeconds.observe(durationMs / 1000);
      recent.push(result === "success");
      if (recent.length > RECENT_ATTEMPTS) recent.shift();
      successRatio.set(recent.filter(Boolean).length / recent.length);
    },
  };
  return shared;
}
