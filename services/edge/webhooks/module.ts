// Merchant webhooks as one piece of the Edge: the public WebhooksService and the dispatcher that
// sends deliveries, built from the Edge's context. service.ts serves `impl`, calls start() once
// it serves and stop() when it stops. The event consumer adds deliveries with
// enqueueWebhookDeliveries (store.ts), inside its own transaction.
import type { ServiceImpl } from "@connectrpc/connect";
import { WebhooksService } from "../../../gen/cowrie/edge/v1/webhooks_pb.js";
import type { Config } from "../../runtime/config.js";
import type { Db } from "../../runtime/db.js";
import type { Logger } from "../../runtime/log.js";
import { publicService, type PublicGuards } from "../endpoints.js";
import { webhooksEndpoints } from "./api.js";
import { WebhookDispatcher } from "./dispatcher.js";

export { enqueueWebhookDeliveries, envelopeJson } from "./store.js";

export interface Webhooks {
  readonly impl: ServiceImpl<typeof WebhooksService>;
  readonly dispatcher: WebhookDispatcher;
  start(): void;
  stop(): Promise<void>;
}

export function createWebhooks(context: { db: Db; config: Config; log: Logger; guards: PublicGuards }): Webhooks {
  const { db, config, log, guards } = context;
  const dispatcher = new WebhookDispatcher({
    db,
    log,
    timeoutMs: config.webhookTimeoutMs,
    retryBaseMs: config.webhookRetryBaseMs,
    retryMaxDelayMs: config.webhookRetryMaxDelayMs,
    retryForMs: config.webhookRetryForMs,
    concurrency: config.webhookConcurrency,
    intervalMs: config.webhookIntervalMs,
  });
  return {
    // Built before the Edge serves: this registers the mutations with the idempotency completer.
    impl: publicService(WebhooksService, guards, webhooksEndpoints(db, dispatcher)),
    dispatcher,
    start: () => dispatcher.start(),
    stop: () => dispatcher.stop(),
  };
}
