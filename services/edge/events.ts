// The Edge's event consumers and their operations:
//  - "edge.webhooks" turns each tenant event into merchant webhook deliveries (webhooks/), in the
//    transaction that records the event in the inbox: exactly one set of deliveries per event;
//  - "edge.audit" keeps every event the mesh publishes, once, in edge.audit_events, with the
//    envelope's bytes exactly as published.
// EventOperationsService (behind the operator token) lists and replays what either parked.
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Tx } from "../runtime/db.js";
import { eventOperations, startEventConsumer, type ConsumedEvent, type ConsumerDefinition, type EventConsumer } from "../runtime/events.js";
import type { ServiceContext } from "../runtime/service.js";
import { auditEvents, inbox, parked } from "./schema.js";
import { enqueueWebhookDeliveries } from "./webhooks/module.js";

/** The events merchants can subscribe to: their own payments, wallets and risk decisions. */
export const WEBHOOKS_CONSUMER: ConsumerDefinition = { name: "edge.webhooks", bindingKeys: ["payment.#", "risk.#", "wallet.#", "reconciliation.#"] };
export const AUDIT_CONSUMER: ConsumerDefinition = { name: "edge.audit", bindingKeys: ["#"] };

export async function startEdgeConsumers(context: ServiceContext): Promise<EventConsumer[]> {
  const common = {
    namespace: context.config.brokerNamespace,
    broker: context.broker,
    db: context.database.db,
    tables: { inbox, parked },
    log: context.log,
  };
  const webhooks = await startEventConsumer({
    ...common,
    ...WEBHOOKS_CONSUMER,
    handle: async (tx, events) => void (await enqueueWebhookDeliveries(tx, events.map((item) => item.event))),
  });
  const audit = await startEventConsumer({ ...common, ...AUDIT_CONSUMER, handle: recordAudit }).catch(async (error: unknown) => {
    await webhooks.close();
    throw error;
  });
  return [webhooks, audit];
}

async function recordAudit(tx: Tx, events: readonly ConsumedEvent[]): Promise<void> {
  await tx
    .insert(auditEvents)
    .values(events.map(({ event, raw }) => ({
      eventId: event.id,
      type: event.type,
      source: event.source,
      subject: event.subject,
      tenantId: event.tenantId,
      occurredAt: event.time ? timestampDate(event.time) : new Date(),
      envelope: raw,
    })))
    .onConflictDoNothing();
}

export function edgeEventOperations(context: ServiceContext) {
  return eventOperations({
    db: context.database.db,
    tables: { inbox, parked },
    broker: context.broker,
    namespace: context.config.brokerNamespace,
    consumers: [WEBHOOKS_CONSUMER.name, AUDIT_CONSUMER.name],
  });
}
