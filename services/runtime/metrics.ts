// Prometheus metrics. One registry per process: when several services share a process (the
// embedded default), each /metrics endpoint serves the same registry and the `service` label
// tells them apart.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export interface Metrics {
  readonly registry: Registry;
  readonly rpcRequests: Counter<"service" | "method" | "code">;
  readonly rpcDurationSeconds: Histogram<"service" | "method" | "code">;
  readonly clientRequests: Counter<"service" | "target" | "method" | "code">;
  readonly breakerState: Gauge<"service" | "target">;
  readonly healthStatus: Gauge<"service">;
  readonly gatewayCalls: Counter<"gateway" | "operation" | "code">;
  readonly gatewayDurationSeconds: Histogram<"gateway" | "operation">;
  readonly gatewayCircuitState: Gauge<"gateway">;
  readonly gatewayInFlight: Gauge<"gateway">;
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
  };
  return processMetrics;
}
