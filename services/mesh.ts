// Starts a set of Cowrie services in this process on shared backends. `npm start` runs all five
// on the embedded default; a production-like deployment runs one service per process.
import { AUDIT_CONSUMER, WEBHOOKS_CONSUMER } from "./edge/events.js";
import { edgeModule } from "./edge/service.js";
import { FEEDBACK_CONSUMER } from "./risk/feedback.js";
import { consumerQueues, declareEventConsumers, eventsExchange } from "./runtime/events.js";
import { ledgerModule } from "./ledger/service.js";
import { riskModule } from "./risk/service.js";
import { routerModule, workTopology } from "./router/service.js";
import type { Config, ServiceName } from "./runtime/config.js";
import type { Logger } from "./runtime/log.js";
import { openBackends, startService, type Backends, type RunningService, type ServiceModule } from "./runtime/service.js";
import { walletModule } from "./wallet/service.js";

export const MODULES: Record<ServiceName, ServiceModule> = {
  ledger: ledgerModule,
  wallet: walletModule,
  router: routerModule,
  risk: riskModule,
  edge: edgeModule,
};

/** Start order: dependencies first, so the Edge opens its port last. */
const START_ORDER: ServiceName[] = ["ledger", "wallet", "risk", "router", "edge"];

export interface Mesh {
  readonly services: RunningService[];
  readonly backends: Backends;
  close(): Promise<void>;
}

/** Every event consumer of the mesh, declared before any service publishes (events.ts). */
export const EVENT_CONSUMERS = [WEBHOOKS_CONSUMER, AUDIT_CONSUMER, FEEDBACK_CONSUMER];

export async function startMesh(config: Config, names: readonly ServiceName[], log: Logger): Promise<Mesh> {
  const backends = await openBackends(config, log);
  const services: RunningService[] = [];
  try {
    await declareEventConsumers(backends.broker, config.brokerNamespace, EVENT_CONSUMERS);
    for (const name of START_ORDER.filter((candidate) => names.includes(candidate))) {
      services.push(await startService(MODULES[name], backends, config, log));
    }
  } catch (error) {
    await Promise.allSettled(services.map((service) => service.close()));
    await backends.close();
    throw error;
  }
  return {
    services,
    backends,
    async close() {
      // Stop taking calls everywhere first, then let each drain, Edge first.
      for (const service of [...services].reverse()) service.health.shutdown();
      for (const service of [...services].reverse()) await service.close();
      await backends.close();
    },
  };
}

/**
 * Every queue and exchange a mesh declares under a broker namespace (dead-letter twins aside):
 * the Router's work queue, the events exchange and each event consumer's queue with its delay
 * queues. Tests and benchmarks delete them afterwards (testing.ts deleteBrokerTopology).
 */
export function meshTopology(namespace: string): { queues: string[]; exchanges: string[] } {
  const work = workTopology(namespace);
  return {
    queues: [...work.queues, ...EVENT_CONSUMERS.flatMap((consumer) => consumerQueues(namespace, consumer))],
    exchanges: [...work.exchanges, eventsExchange(namespace)],
  };
}
