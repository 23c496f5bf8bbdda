// Merchant webhooks in PostgreSQL: endpoints, and the deliveries the event consumer enqueues.
//
// enqueueWebhookDeliveries runs inside the consumer's inbox transaction, so an event is turned
// into deliveries exactly once even when RabbitMQ redelivers it; the unique (endpoint, event)
// makes it idempotent on its own as well. The body is rendered once, here, and frozen: every
// attempt (automatic or manual) signs and sends the same bytes.
import { randomBytes } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { and, eq, inArray, isNull } from "drizzle-orm";
import { WebhookEndpointSchema, type WebhookEndpoint } from "../../../gen/cowrie/edge/v1/webhooks_pb.js";
import type { Envelope } from "../../../gen/cowrie/events/v1/events_pb.js";
import type { Tx } from "../../runtime/db.js";
import { envelopeToJson } from "../../runtime/events.js";
import { timeSortableId } from "../../runtime/ids.js";
import { webhookDeliveries, webhookEndpoints } from "../schema.js";
import { matchesEventType } from "./filters.js";

export type EndpointRow = typeof webhookEndpoints.$inferSelect;

/** A tenant's endpoints, at most: bounds the fan-out of one event. */
export const WEBHOOK_ENDPOINTS_MAX = 16;

/** The webhook body of an event: the Envelope in Protobuf's canonical JSON (runtime/events.ts). */
export function envelopeJson(envelope: Envelope): string {
  return JSON.stringify(envelopeToJson(envelope));
}

export function newEndpointId(): string {
  return `whe_${timeSortableId().toLowerCase()}`;
}

export function newDeliveryId(): string {
  return `whd_${timeSortableId().toLowerCase()}`;
}

/** 256 random bits; the HMAC key is the whole string. */
export function newWebhookSecret(): string {
  return `whsec_${randomBytes(32).toString("base64url")}`;
}

/**
 * One pending delivery, due now, per enabled endpoint of each event's tenant whose filter matches
 * its type. Platform events (no tenant) go to nobody. One query reads the endpoints of every
 * tenant in the batch and one statement adds the deliveries. Returns how many deliveries it added
 * (none for an event enqueued before). Call it inside the transaction that records the events as
 * processed.
 */
export async function enqueueWebhookDeliveries(tx: Tx, envelopes: readonly Envelope[]): Promise<number> {
  const tenantIds = [...new Set(envelopes.map((envelope) => envelope.tenantId).filter((tenantId) => tenantId !== ""))];
  if (tenantIds.length === 0) return 0;
  const endpoints = await tx
    .select({ id: webhookEndpoints.id, tenantId: webhookEndpoints.tenantId, eventTypes: webhookEndpoints.eventTypes })
    .from(webhookEndpoints)
    .where(and(inArray(webhookEndpoints.tenantId, tenantIds), eq(webhookEndpoints.enabled, true), isNull(webhookEndpoints.deletedAt)));
  if (endpoints.length === 0) return 0;
  const now = new Date();
  const deliveries = envelopes.flatMap((envelope) => {
    const matching = endpoints.filter((endpoint) => endpoint.tenantId === envelope.tenantId && matchesEventType(endpoint.eventTypes, envelope.type));
    if (matching.length === 0) return [];
    const body = Buffer.from(envelopeJson(envelope), "utf8");
    return matching.map((endpoint) => ({
      id: newDeliveryId(),
      endpointId: endpoint.id,
      tenantId: envelope.tenantId,
      eventId: envelope.id,
      eventType: envelope.type,
      body,
      nextAttemptAt: now,
    }));
  });
  if (deliveries.length === 0) return 0;
  const inserted = await tx.insert(webhookDeliveries).values(deliveries).onConflictDoNothing().returning({ id: webhookDeliveries.id });
  return inserted.length;
}

/** The public view of an endpoint: never its secrets. */
export function endpointMessage(row: EndpointRow, nowMs = Date.now()): WebhookEndpoint {
  const graceRuns = row.previousSecret !== null && row.previousSecretExpiresAt !== null && row.previousSecretExpiresAt.getTime() > nowMs;
  return create(WebhookEndpointSchema, {
    id: row.id,
    url: row.url,
    eventTypes: row.eventTypes,
    description: row.description,
    enabled: row.enabled,
    createdAt: timestampFromDate(row.createdAt),
    updatedAt: timestampFromDate(row.updatedAt),
    previousSecretExpiresAt: graceRuns && row.previousSecretExpiresAt ? timestampFromDate(row.previousSecretExpiresAt) : undefined,
  });
}
