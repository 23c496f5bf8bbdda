// How every Cowrie service starts and stops. A service is a module that names its Protobuf
// services, the backends it uses and its migrations, and builds its routes from a context; this
// file does the rest identically for all five: migrations, health checks, the server, clients
// with deadlines and breakers, and an orderly shutdown.
import type { DescService } from "@bufbuild/protobuf";
import type { Client, ConnectRouter } from "@connectrpc/connect";
import { createMemoryBroker, createRabbitBroker, type Broker } from "./broker.js";
import { createMemoryCache, createRedisCache, type Cache } from "./cache.js";
import { createServiceClient } from "./client.js";
import { servicePort, serviceUrl, type Config, type ServiceName } from "./config.js";
import { createPostgresDatabase, openEmbeddedDatabase, type Database } from "./db.js";
import { startRelay, type EventFeed } from "./events.js";
import { HealthState, type DependencyCheck } from "./health.js";
import { isBackendUnavailable } from "./errors.js";
import { errorText, type Logger } from "./log.js";
import { withTimeout } from "./limits.js";
import { backoffMs, pause } from "./pause.js";
import { startServer, type AnyRequest, type AnyResponse } from "./server.js";

export interface ServiceContext {
  readonly name: ServiceName;
  readonly config: Config;
  readonly log: Logger;
  /** Present when the module declared `uses.database`. */
  readonly database: Database;
  readonly cache: Cache;
  readonly broker: Broker;
  /** A client for another Cowrie service, with deadline propagation and a circuit breaker (lane: see ClientOptions). */
  client<T extends DescService>(service: T, target: Exclude<ServiceName, "edge">, lane?: string): Client<T>;
}

export interface ServiceInstance {
  routes(router: ConnectRouter): void;
  /** Plain HTTP endpoints beside the RPCs; returns true when it took the request. */
  http?(request: AnyRequest, response: AnyResponse): boolean;
  /** Stops background work; called after the server has drained. */
  stop?(): Promise<void>;
}

export interface ServiceModule {
  readonly name: ServiceName;
  /** The Protobuf services this service serves on its port. */
  readonly services: DescService[];
  /** Backends whose health decides the service's health. */
  readonly uses: { database?: boolean; cache?: boolean; broker?: boolean };
  /** Folder of drizzle-kit migrations, applied at start-up. */
  readonly migrationsFolder?: string;
  /**
   * What the service publishes (events.ts): usually its outbox table (`outboxFeed(outbox)`). The
   * runtime runs a relay for it beside the server, whatever the broker's state; the broker is not
   * part of the service's health, since the feed keeps events while RabbitMQ is away.
   */
  readonly eventFeed?: EventFeed;
  create(context: ServiceContext): Promise<ServiceInstance> | ServiceInstance;
}

/** The backends of one process: shared cache and broker, and a database per service. */
export interface Backends {
  readonly cache: Cache;
  readonly broker: Broker;
  database(service: ServiceName): Database;
  close(): Promise<void>;
}

export async function openBackends(config: Config, log: Logger): Promise<Backends> {
  // Backend connection errors are logged, never thrown: calls fail with UNAVAILABLE and the
  // health service reports NOT_SERVING until the backend is back.
  const onError = (backend: string) => (error: unknown) =>
    log.warn({ backend, err: error instanceof Error ? error.message : String(error) }, "backend error");
  const cache = config.redisUrl
    ? createRedisCache(config.redisUrl, { keyPrefix: "cowrie:", commandTimeoutMs: 1000, onError: onError("redis") })
    : createMemoryCache();
  const broker = config.amqpUrl
    ? createRabbitBroker(config.amqpUrl, { connectionName: `cowrie-${process.pid}`, connectWait: { ms: config.startupWaitMs, setting: "COWRIE_STARTUP_WAIT_MS" }, onError: onError("rabbitmq") })
    : createMemoryBroker({ onError: onError("memory-broker") });
  const embedded = config.databaseUrl ? undefined : await openEmbeddedDatabase(config.dataDir);
  const pools = new Map<ServiceName, Database>();
  return {
    cache,
    broker,
    database(service) {
      if (embedded) return embedded.database();
      let pool = pools.get(service);
      if (!pool) {
        pool = createPostgresDatabase(config.databaseUrl as string, {
          poolMax: config.databasePoolMax,
          applicationName: `cowrie-${service}`,
        });
        pools.set(service, pool);
      }
      return pool;
    },
    async close() {
      await Promise.allSettled([...pools.values()].map((pool) => pool.close()));
      await embedded?.close();
      await Promise.allSettled([cache.close(), broker.close()]);
    },
  };
}

function dependencyChecks(module: ServiceModule, backends: Backends): DependencyCheck[] {
  const checks: DependencyCheck[] = [];
  if (module.uses.database) {
    const database = backends.database(module.name);
    checks.push({ name: "database", check: () => database.ping() });
  }
  if (module.uses.cache) checks.push({ name: "cache", check: () => backends.cache.ping() });
  if (module.uses.broker) {
    checks.push({
      name: "broker",
      check: async () => {
        if (!backends.broker.isReady()) throw new Error("not connected to the broker");
      },
    });
  }
  return checks;
}

export interface RunningService {
  readonly name: ServiceName;
  readonly port: number;
  readonly health: HealthState;
  close(): Promise<void>;
}

/**
 * Runs `work`, and again with growing pauses while its backend cannot be reached, for at most
 * `waitMs`: a service started while PostgreSQL restarts (or before it is up) waits for it instead
 * of exiting. Any other error, or the wait running out, is thrown. An attempt that hangs (a
 * connection accepted and closed keeps postgres.js's pool retrying) is cut off at the end of it.
 */
async function whenReachable<T>(work: () => Promise<T>, backend: string, waitMs: number, log: Logger): Promise<T> {
  const startedAtMs = Date.now();
  for (let attempt = 0; ; attempt++) {
    try {
      const leftMs = Math.max(1, waitMs - (Date.now() - startedAtMs));
      return await withTimeout(work(), leftMs, `${backend} did not answer within COWRIE_STARTUP_WAIT_MS (${waitMs} ms)`);
    } catch (error) {
      if (!isBackendUnavailable(error) || Date.now() - startedAtMs >= waitMs) throw error;
      if (attempt % 10 === 0) log.warn({ backend, err: errorText(error), waitedMs: Date.now() - startedAtMs, waitMs }, "cannot reach a backend at start; waiting for it");
      await pause(backoffMs(attempt, 100, 2_000, "equal"));
    }
  }
}

export async function startService(
  module: ServiceModule,
  backends: Backends,
  config: Config,
  rootLog: Logger,
): Promise<RunningService> {
  const log = rootLog.child({ service: module.name });
  const database = module.uses.database ? backends.database(module.name) : undefined;
  if (database && module.migrationsFolder) {
    const { migrationsFolder } = module;
    await whenReachable(() => database.migrate(module.name, migrationsFolder), "PostgreSQL", config.startupWaitMs, log);
  }
  const context: ServiceContext = {
    name: module.name,
    config,
    log,
    get database(): Database {
      if (!database) throw new Error(`${module.name} did not declare uses.database`);
      return database;
    },
    cache: backends.cache,
    broker: backends.broker,
    client: (service, target, lane) =>
      createServiceClient(service, { caller: module.name, target, lane, baseUrl: serviceUrl(config, target), config, log }),
  };
  const instance = await module.create(context);
  const health = new HealthState(
    module.name,
    module.services.map((service) => service.typeName),
    dependencyChecks(module, backends),
    log,
  );
  await health.start(config.healthIntervalMs, Math.min(config.healthIntervalMs, 2000));
  const server = await startServer({
    name: module.name,
    host: config.host,
    port: servicePort(config, module.name),
    config,
    log,
    services: module.services,
    routes: (router) => instance.routes(router),
    http: instance.http && ((request, response) => instance.http?.(request, response) ?? false),
    health,
  });
  const relay =
    database && module.eventFeed
      ? startRelay({
          source: module.name,
          db: database.db,
          feed: module.eventFeed,
          broker: backends.broker,
          namespace: config.brokerNamespace,
          log,
        })
      : undefined;
  return {
    name: module.name,
    port: server.port,
    health,
    async close() {
      await server.close();
      await instance.stop?.();
      // What the last calls committed goes out now rather than at the next start.
      await relay?.drain();
      await relay?.stop();
    },
  };
}
