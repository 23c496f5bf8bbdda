// Starts a set of Cowrie services in this process on shared backends. `npm start` runs all five
// on the embedded default; a production-like deployment runs one service per process.
import { edgeModule } from "./edge/service.js";
import { ledgerModule } from "./ledger/service.js";
import { riskModule } from "./risk/service.js";
import { routerModule } from "./router/service.js";
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

export async function startMesh(config: Config, names: readonly ServiceName[], log: Logger): Promise<Mesh> {
  const backends = await openBackends(config, log);
  const services: RunningService[] = [];
  try {
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
