// grpc.health.v1.Health for one service. The status is SERVING only while every dependency the
// service declared (database, cache, broker) answered its last check and the service is not
// shutting down. Check answers from the last known status; Watch streams every change.
import type { ConnectRouter } from "@connectrpc/connect";
import { Code, ConnectError } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import {
  Health,
  HealthCheckResponseSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
  type HealthCheckResponse,
} from "../../gen/grpc/health/v1/health_pb.js";
import type { Logger } from "./log.js";
import { withTimeout } from "./limits.js";
import { metrics } from "./metrics.js";

export { ServingStatus };

export interface DependencyCheck {
  /** Name used in logs, for example "database". */
  name: string;
  /** Resolves when the dependency answers; rejects (or times out) when it does not. */
  check: () => Promise<void>;
}

export class HealthState {
  #status = ServingStatus.NOT_SERVING;
  #shuttingDown = false;
  #failing = new Map<string, string>();
  readonly #watchers = new Set<() => void>();
  #timer: NodeJS.Timeout | undefined;

  constructor(
    readonly serviceName: string,
    /** Fully-qualified names of the services registered on this port, e.g. cowrie.ledger.v1.LedgerService. */
    readonly serviceNames: string[],
    private readonly dependencies: DependencyCheck[],
    private readonly log: Logger,
  ) {}

  get status(): ServingStatus {
    return this.#status;
  }

  /** Why the service is not serving, for logs and error messages. */
  get failing(): ReadonlyMap<string, string> {
    return this.#failing;
  }

  /** Runs the checks now and then every intervalMs until shutdown. */
  async start(intervalMs: number, checkTimeoutMs: number): Promise<void> {
    await this.runChecks(checkTimeoutMs);
    this.#timer = setInterval(() => void this.runChecks(checkTimeoutMs), intervalMs);
    this.#timer.unref();
  }

  /** Marks the service NOT_SERVING for good: load balancers stop sending new calls. */
  shutdown(): void {
    this.#shuttingDown = true;
    if (this.#timer) clearInterval(this.#timer);
    this.update();
  }

  async runChecks(checkTimeoutMs: number): Promise<void> {
    const results = await Promise.all(
      this.dependencies.map(async (dependency) => {
        try {
          await withTimeout(dependency.check(), checkTimeoutMs, `${dependency.name} check timed out`);
          return [dependency.name, undefined] as const;
        } catch (error) {
          return [dependency.name, error instanceof Error ? error.message : String(error)] as const;
        }
      }),
    );
    const failing = new Map<string, string>();
    for (const [name, problem] of results) if (problem !== undefined) failing.set(name, problem);
    this.#failing = failing;
    this.update();
  }

  private update(): void {
    const next = this.#shuttingDown || this.#failing.size > 0 ? ServingStatus.NOT_SERVING : ServingStatus.SERVING;
    metrics().healthStatus.set({ service: this.serviceName }, next === ServingStatus.SERVING ? 1 : 0);
    if (next === this.#status) return;
    this.#status = next;
    this.log.info(
      { health: ServingStatus[next], failing: Object.fromEntries(this.#failing), shuttingDown: this.#shuttingDown },
      "health changed",
    );
    for (const notify of this.#watchers) notify();
  }

  statusOf(service: string): ServingStatus {
    if (service === "" || this.serviceNames.includes(service)) return this.#status;
    return ServingStatus.SERVICE_UNKNOWN;
  }

  /** Calls notify on every status change until the returned function is called. */
  watch(notify: () => void): () => void {
    this.#watchers.add(notify);
    return () => this.#watchers.delete(notify);
  }
}

function response(status: ServingStatus): HealthCheckResponse {
  return create(HealthCheckResponseSchema, { status });
}

export function registerHealth(router: ConnectRouter, state: HealthState): void {
  router.service(Health, {
    check(request) {
      const status = state.statusOf(request.service);
      if (status === ServingStatus.SERVICE_UNKNOWN) {
        throw new ConnectError(`unknown service ${request.service}`, Code.NotFound);
      }
      return response(status);
    },
    async *watch(request, context) {
      // Sends the current status, then one message per change, until the client goes away or
      // the server shuts down (the handler's signal aborts in both cases).
      let changed: (() => void) | undefined;
      const unwatch = state.watch(() => changed?.());
      const aborted = new Promise<void>((resolve) => context.signal.addEventListener("abort", () => resolve(), { once: true }));
      try {
        let last: ServingStatus | undefined;
        for (;;) {
          const status = state.statusOf(request.service);
          if (status !== last) {
            last = status;
            yield response(status);
          }
          // Checked after sending, so that a change arriving with the abort still goes out:
          // close() marks the service NOT_SERVING and, when idle, aborts in the same tick.
          if (context.signal.aborted) break;
          await Promise.race([new Promise<void>((resolve) => (changed = resolve)), aborted]);
        }
      } finally {
        unwatch();
      }
    },
  });
}
