// The Edge: Cowrie's public API. Tenants call WalletsService and PaymentsService with an API key
// (auth.ts); every call is rate-limited per key (rate-limit.ts); every mutation needs an
// Idempotency-Key and runs exactly once (idempotency.ts); the handlers (wallets.ts, payments.ts)
// validate public fields and call the internal Wallet and Router with the key's tenant. Operators
// manage tenants and keys through AdminService (admin.ts) with the operator token. endpoints.ts
// is the one place that puts those checks around every handler.
import { fileURLToPath } from "node:url";
import { Code, ConnectError } from "@connectrpc/connect";
import { eq } from "drizzle-orm";
import { AdminService } from "../../gen/cowrie/edge/v1/admin_pb.js";
import { EventOperationsService } from "../../gen/cowrie/events/v1/operations_pb.js";
import { PaymentsService } from "../../gen/cowrie/edge/v1/payments_pb.js";
import { WalletsService } from "../../gen/cowrie/edge/v1/wallets_pb.js";
import { WebhooksService } from "../../gen/cowrie/edge/v1/webhooks_pb.js";
import { RouterService } from "../../gen/cowrie/router/v1/router_pb.js";
import { WalletService } from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import type { ServiceInstance, ServiceModule } from "../runtime/service.js";
import { adminImpl } from "./admin.js";
import { ApiKeyAuthenticator, loadOperatorToken } from "./auth.js";
import { operatorService, publicService, type PublicGuards } from "./endpoints.js";
import { edgeEventOperations, startEdgeConsumers } from "./events.js";
import { IdempotencyStore } from "./idempotency.js";
import { paymentsEndpoints } from "./payments.js";
import { RateLimiter } from "./rate-limit.js";
import { tenants } from "./schema.js";
import { walletsEndpoints } from "./wallets.js";
import { createWebhooks } from "./webhooks/module.js";

export { IDEMPOTENCY_KEY_HEADER, REPLAYED_HEADER } from "./idempotency.js";

export const edgeModule: ServiceModule = {
  name: "edge",
  services: [WalletsService, PaymentsService, WebhooksService, AdminService, EventOperationsService],
  // Redis is not a health dependency: the rate limiter lets calls through and the replay cache
  // falls back to PostgreSQL while it is down, so the Edge keeps serving and says so.
  uses: { database: true },
  migrationsFolder: fileURLToPath(new URL("./migrations", import.meta.url)),
  async create(context): Promise<ServiceInstance> {
    const { config, database, cache, log, client } = context;
    const db = database.db;
    const operatorToken = await loadOperatorToken(config, log);
    const apiKeys = new ApiKeyAuthenticator(db, config);
    const idempotency = new IdempotencyStore({
      db,
      cache,
      log,
      ttlHours: config.idempotencyTtlHours,
      recoveryAfterMs: config.recoveryAfterMs,
      completerIntervalMs: config.completerIntervalMs,
      completerDeadlineMs: config.deadlineDefaultMs,
    });
    const guards: PublicGuards = { apiKeys, rateLimiter: new RateLimiter(cache, log), idempotency };
    // Built once, before serving: this also registers every mutation with the completer.
    const requireSandbox = async (tenantId: string): Promise<void> => {
      const [tenant] = await db.select({ live: tenants.live }).from(tenants).where(eq(tenants.id, tenantId));
      if (tenant?.live !== false) {
        throw new ConnectError("FundWallet is for sandbox tenants; a live tenant's money comes in through pay-ins", Code.PermissionDenied);
      }
    };
    const wallets = publicService(WalletsService, guards, walletsEndpoints(client(WalletService, "wallet"), requireSandbox));
    const payments = publicService(PaymentsService, guards, paymentsEndpoints(client(RouterService, "router"), client(RouterService, "router", "waiting")));
    const admin = operatorService(AdminService, operatorToken, adminImpl({ db, config, apiKeys }));
    const webhooks = createWebhooks({ db, config, log, guards });
    const eventOps = operatorService(EventOperationsService, operatorToken, edgeEventOperations(context));
    idempotency.start();
    webhooks.start();
    const consumers = await startEdgeConsumers(context);
    return {
      routes(router) {
        router.service(WalletsService, wallets);
        router.service(PaymentsService, payments);
        router.service(WebhooksService, webhooks.impl);
        router.service(AdminService, admin);
        router.service(EventOperationsService, eventOps);
      },
      async stop() {
        await Promise.all(consumers.map((consumer) => consumer.close()));
        await webhooks.stop();
        await idempotency.stop();
      },
    };
  },
};
