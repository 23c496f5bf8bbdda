// Prometheus metrics. One registry per process: when several services share a process (the
// embedded default), each /metrics endpoint serves the same registry and the `service` label
// tells them apart.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export interface Metrics {
  readonly registry: Registry;
  readonly rpcRequests: Counter<"service" | "method" | "code">;
  readonly rpcDurationSeconds: Histogram<"service" | "method" | "code">;
  readonly clientRequests: Counter<"service" | "target" | "method" | "code">;
  readonly clientWaitingCalls: Gauge<"target">;
  readonly clientSlotWaitSeconds: Histogram<"target">;
  readonly riskEvaluationSeconds: Histogram<"path">;
  readonly breakerState: Gauge<"service" | "target">;
  readonly healthStatus: Gauge<"service">;
  readonly gatewayCalls: Counter<"gateway" | "operation" | "code">;
  readonly gatewayDurationSeconds: Histogram<"gateway" | "operation">;
  readonly gatewayCircuitState: Gauge<"gateway">;
  readonly gatewayInFlight: Gauge<"gateway">;
  readonly outboxLagSeconds: Gauge<"service">;
  readonly eventsPublished: Counter<"service">;
  readonly eventPublishFailures: Counter<"service">;
  readonly eventsConsumed: Counter<"consumer" | "result">;
  readonly eventConsumerLagSeconds: Histogram<"consumer">;
  readonly eventQueueDepth: Gauge<"consumer">;
  readonly parkedEvents: Gauge<"consumer">;
  readonly reconRuns: Counter<"trigger" | "status">;
  readonly reconRunDurationSeconds: Histogram<"trigger">;
  readonly reconChecked: Counter<"side" | "result">;
  readonly reconFindings: Counter<"type" | "severity">;
  readonly reconMatchRate: Gauge;
}

let processMetrics: Metrics | undefined;

/** The process-wide metrics, created on first use with the default process collectors. */
export function metrics(): Metrics {
  if (processMetrics) return processMetrics;
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  processMetrics = {
    registry,
    rpcRequests: new Counter({
      name: "cowrie_rpc_requests_total",
      help: "RPCs handled, by service, method and status code.",
      labelNames: ["service", "method", "code"],
      registers: [registry],
    }),
    rpcDurationSeconds: new Histogram({
      name: "cowrie_rpc_duration_seconds",
      help: "Time to handle an RPC, by service, method and status code.",
      labelNames: ["service", "method", "code"],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    clientRequests: new Counter({
      name: "cowrie_client_requests_total",
      help: "Outbound RPCs, by calling service, target service, method and status code.",
      labelNames: ["service", "target", "method", "code"],
      registers: [registry],
    }),
    clientWaitingCalls: new Gauge({
      name: "cowrie_client_waiting_calls",
      help: "Outbound calls waiting off the wire for one of COWRIE_CLIENT_MAX_IN_FLIGHT slots, by target service.",
      labelNames: ["target"],
      registers: [registry],
    }),
    clientSlotWaitSeconds: new Histogram({
      name: "cowrie_client_slot_wait_seconds",
      help: "How long outbound calls that found every in-flight slot taken waited for one (until sent or given up), by target service.",
      labelNames: ["target"],
      buckets: [0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    riskEvaluationSeconds: new Histogram({
      name: "cowrie_risk_evaluation_seconds",
      help: "Time Risk took to decide an Evaluate, by path: clean (counted, nothing fired: no write), flagged (a rule fired: the decision committed to PostgreSQL first), replayed (an earlier decision read back), fallback (Redis unavailable).",
      labelNames: ["path"],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers: [registry],
    }),
    breakerState: new Gauge({
      name: "cowrie_circuit_breaker_state",
      help: "Circuit breaker per caller and target: 0 closed, 1 open, 2 half-open, 3 isolated.",
      labelNames: ["service", "target"],
      registers: [registry],
    }),
    healthStatus: new Gauge({
      name: "cowrie_health_serving",
      help: "1 while the service reports SERVING, 0 otherwise.",
      labelNames: ["service"],
      registers: [registry],
    }),
    gatewayCalls: new Counter({
      name: "cowrie_gateway_calls_total",
      help: "Calls from the Router to payment gateways, by gateway, operation and unified code.",
      labelNames: ["gateway", "operation", "code"],
      registers: [registry],
    }),
    gatewayDurationSeconds: new Histogram({
      name: "cowrie_gateway_call_duration_seconds",
      help: "Time to a gateway's answer (or failure), by gateway and operation.",
      labelNames: ["gateway", "operation"],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: [registry],
    }),
    gatewayCircuitState: new Gauge({
      name: "cowrie_gateway_circuit_state",
      help: "Circuit breaker per payment gateway: 1 closed, 2 open, 3 half-open (cowrie.router.v1.CircuitState).",
      labelNames: ["gateway"],
      registers: [registry],
    }),
    gatewayInFlight: new Gauge({
      name: "cowrie_gateway_in_flight",
      help: "Calls to a payment gateway in flight.",
      labelNames: ["gateway"],
      registers: [registry],
    }),
    outboxLagSeconds: new Gauge({
      name: "cowrie_outbox_lag_seconds",
      help: "Age of the oldest event in a service's outbox that the broker has not confirmed (0 when none).",
      labelNames: ["service"],
      registers: [registry],
    }),
    eventsPublished: new Counter({
      name: "cowrie_events_published_total",
      help: "Events the relay published and the broker confirmed, by service.",
      labelNames: ["service"],
      registers: [registry],
    }),
    eventPublishFailures: new Counter({
      name: "cowrie_event_publish_failures_total",
      help: "Relay passes that failed (broker or database away); the outbox keeps the backlog.",
      labelNames: ["service"],
      registers: [registry],
    }),
    eventsConsumed: new Counter({
      name: "cowrie_events_consumed_total",
      help: "Events delivered to a consumer, by result: applied, duplicate (already in the inbox), retried, parked.",
      labelNames: ["consumer", "result"],
      registers: [registry],
    }),
    eventQueueDepth: new Gauge({
      name: "cowrie_event_queue_depth",
      help: "Events waiting in a consumer's RabbitMQ queue (sampled every few seconds).",
      labelNames: ["consumer"],
      registers: [registry],
    }),
    parkedEvents: new Gauge({
      name: "cowrie_parked_events",
      help: "Events a consumer parked after its retries and no operator has replayed yet.",
      labelNames: ["consumer"],
      registers: [registry],
    }),
    eventConsumerLagSeconds: new Histogram({
      name: "cowrie_event_consumer_lag_seconds",
      help: "Time from an event's commit to its application by a consumer.",
      labelNames: ["consumer"],
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers: [registry],
    }),
    reconRuns: new Counter({
      name: "cowrie_recon_runs_total",
      help: "Reconciliation runs, by trigger (scheduled, manual) and outcome (completed, failed).",
      labelNames: ["trigger", "status"],
      registers: [registry],
    }),
    reconRunDurationSeconds: new Histogram({
      name: "cowrie_recon_run_duration_seconds",
      help: "Time one reconciliation run took, by trigger.",
      labelNames: ["trigger"],
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
      registers: [registry],
    }),
    reconChecked: new Counter({
      name: "cowrie_recon_checked_total",
      help: "Items reconciliation compared, by side (payment, gateway, ledger) and result (matched, mismatched).",
      labelNames: ["side", "result"],
      registers: [registry],
    }),
    reconFindings: new Counter({
      name: "cowrie_recon_findings_total",
      help: "New reconciliation findings, by type and severity.",
      labelNames: ["type", "severity"],
      registers: [registry],
    }),
    reconMatchRate: new Gauge({
      name: "cowrie_recon_match_rate",
      help: "Share of compared items that matched in the last finished reconciliation run (1 when nothing was compared).",
      registers: [registry],
    }),
  };
  return processMetrics;
}
