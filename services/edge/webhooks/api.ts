// The public WebhooksService. Unlike wallets and payments, webhooks live in the Edge itself, so
// each handler works on edge.webhook_* directly, always scoped by the API key's tenant: another
// tenant's ids (and deleted endpoints) are NOT_FOUND.
//
// Mutations run under the Edge's idempotency (endpoints.ts), and the completer may execute one
// again after its executor died. Create and rotate therefore record their downstream key and a
// re-execution returns the work already done (the same endpoint and secret) instead of doing it
// twice; redelivery does the same through its logged attempt.
import { and, desc, eq, isNull, lt, sql, type SQL } from "drizzle-orm";
import { WebhookDeliveryStatus, type WebhooksService } from "../../../gen/cowrie/edge/v1/webhooks_pb.js";
import { transact, type Db, type Tx } from "../../runtime/db.js";
import { failedPrecondition, invalidArgument, notFound } from "../../runtime/errors.js";
import { limitText, optionalId, requireId, requirePageSize } from "../../runtime/validate.js";
import { mutate, read, type Endpoints } from "../endpoints.js";
import { limitPageToken } from "../fields.js";
import { tenants, webhookDeliveries, webhookEndpoints } from "../schema.js";
import { deliveryMessages, type WebhookDispatcher } from "./dispatcher.js";
import { requireEventTypes, requireSchemeForTenant, requireWebhookUrl } from "./filters.js";
import { pageOf, pagePosition } from "../../runtime/pages.js";
import { optionalEnum } from "../../runtime/validate.js";
import { WEBHOOK_ENDPOINTS_MAX, endpointMessage, newEndpointId, newWebhookSecret, type EndpointRow } from "./store.js";

const DESCRIPTION_MAX = 256;
const GRACE_SECONDS_DEFAULT = 86_400;
const GRACE_SECONDS_MAX = 604_800;
const DELIVERY_PAGE_DEFAULT = 20;

/** The tenant's endpoint, locked for the change about to be made; NOT_FOUND otherwise. */
async function lockedEndpoint(tx: Tx, tenantId: string, endpointId: string): Promise<EndpointRow> {
  const [row] = await tx
    .select()
    .from(webhookEndpoints)
    .where(and(eq(webhookEndpoints.id, endpointId), eq(webhookEndpoints.tenantId, tenantId), isNull(webhookEndpoints.deletedAt)))
    .for("update");
  if (!row) throw notFound(`webhook endpoint ${endpointId}`);
  return row;
}

/** The tenant's row, locked: serializes its endpoint changes (the count limit, live or not). */
async function lockedTenant(tx: Tx, tenantId: string): Promise<{ live: boolean }> {
  const [tenant] = await tx.select({ live: tenants.live }).from(tenants).where(eq(tenants.id, tenantId)).for("update");
  if (!tenant) throw notFound(`tenant ${tenantId}`);
  return tenant;
}

/** A deliveries page continues after the last delivery id of the previous one (runtime/pages.ts). */
const DELIVERY_POSITION = /^whd_[0-9a-z]{1,64}$/;

export function webhooksEndpoints(db: Db, dispatcher: WebhookDispatcher): Endpoints<typeof WebhooksService> {
  return {
    createWebhookEndpoint: mutate((request) => {
      const url = requireWebhookUrl(request.url, "url");
      const eventTypes = requireEventTypes(request.eventTypes, "event_types");
      const description = limitText(request.description, "description", DESCRIPTION_MAX);
      return ({ tenantId, downstreamKey }) => transact(db, async (tx) => {
        const tenant = await lockedTenant(tx, tenantId);
        const [again] = await tx
          .select()
          .from(webhookEndpoints)
          .where(and(eq(webhookEndpoints.tenantId, tenantId), eq(webhookEndpoints.createKey, downstreamKey)));
        // This request ran before and its response was lost: it is still the only one to show the secret.
        if (again) return { endpoint: endpointMessage(again), secret: again.secret };
        requireSchemeForTenant(url, tenant.live, "url");
        const [count] = await tx
          .select({ n: sql<number>`count(*)::int` })
          .from(webhookEndpoints)
          .where(and(eq(webhookEndpoints.tenantId, tenantId), isNull(webhookEndpoints.deletedAt)));
        if (Number(count?.n ?? 0) >= WEBHOOK_ENDPOINTS_MAX) {
          throw failedPrecondition(`a tenant has at most ${WEBHOOK_ENDPOINTS_MAX} webhook endpoints; delete one first`);
        }
        const [row] = await tx
          .insert(webhookEndpoints)
          .values({
            id: newEndpointId(),
            tenantId,
            url,
            eventTypes,
            description,
            enabled: !request.disabled,
            secret: newWebhookSecret(),
            createKey: downstreamKey,
          })
          .returning();
        if (!row) throw new Error("insert into edge.webhook_endpoints returned no row");
        return { endpoint: endpointMessage(row), secret: row.secret };
      });
    }),

    getWebhookEndpoint: read(async (request, { tenantId }) => {
      const endpointId = requireId(request.endpointId, "endpoint_id");
      const [row] = await db
        .select()
        .from(webhookEndpoints)
        .where(and(eq(webhookEndpoints.id, endpointId), eq(webhookEndpoints.tenantId, tenantId), isNull(webhookEndpoints.deletedAt)));
      if (!row) throw notFound(`webhook endpoint ${endpointId}`);
      return { endpoint: endpointMessage(row) };
    }),

    listWebhookEndpoints: read(async (_request, { tenantId }) => {
      const rows = await db
        .select()
        .from(webhookEndpoints)
        .where(and(eq(webhookEndpoints.tenantId, tenantId), isNull(webhookEndpoints.deletedAt)))
        .orderBy(desc(webhookEndpoints.id))
        .limit(WEBHOOK_ENDPOINTS_MAX);
      return { endpoints: rows.map((row) => endpointMessage(row)) };
    }),

    updateWebhookEndpoint: mutate((request) => {
      const endpointId = requireId(request.endpointId, "endpoint_id");
      const url = request.url === undefined ? undefined : requireWebhookUrl(request.url, "url");
      const eventTypes = request.eventTypes === undefined ? undefined : requireEventTypes(request.eventTypes.eventTypes, "event_types.event_types");
      const description = request.description === undefined ? undefined : limitText(request.description, "description", DESCRIPTION_MAX);
      const enabled = request.enabled;
      return ({ tenantId }) => transact(db, async (tx) => {
        const tenant = await lockedTenant(tx, tenantId);
        await lockedEndpoint(tx, tenantId, endpointId);
        if (url !== undefined) requireSchemeForTenant(url, tenant.live, "url");
        const [row] = await tx
          .update(webhookEndpoints)
          .set({ url, eventTypes, description, enabled, updatedAt: sql`now()` })
          .where(eq(webhookEndpoints.id, endpointId))
          .returning();
        if (!row) throw notFound(`webhook endpoint ${endpointId}`);
        return { endpoint: endpointMessage(row) };
      });
    }),

    deleteWebhookEndpoint: mutate((request) => {
      const endpointId = requireId(request.endpointId, "endpoint_id");
      return async ({ tenantId }) => {
        const deleted = await db
          .update(webhookEndpoints)
          .set({ deletedAt: sql`now()`, enabled: false, updatedAt: sql`now()` })
          .where(and(eq(webhookEndpoints.id, endpointId), eq(webhookEndpoints.tenantId, tenantId), isNull(webhookEndpoints.deletedAt)))
          .returning({ id: webhookEndpoints.id });
        if (deleted.length === 0) throw notFound(`webhook endpoint ${endpointId}`);
        return {};
      };
    }),

    rotateWebhookSecret: mutate((request) => {
      const endpointId = requireId(request.endpointId, "endpoint_id");
      const graceSeconds = request.gracePeriodSeconds ?? GRACE_SECONDS_DEFAULT;
      if (graceSeconds > GRACE_SECONDS_MAX) throw invalidArgument("grace_period_seconds", `must be at most ${GRACE_SECONDS_MAX} (7 days)`);
      return ({ tenantId, downstreamKey }) => transact(db, async (tx) => {
        const current = await lockedEndpoint(tx, tenantId, endpointId);
        if (current.rotationKey === downstreamKey) return { endpoint: endpointMessage(current), secret: current.secret };
        const [row] = await tx
          .update(webhookEndpoints)
          .set({
            secret: newWebhookSecret(),
            previousSecret: graceSeconds > 0 ? current.secret : null,
            previousSecretExpiresAt: graceSeconds > 0 ? sql`now() + ${graceSeconds}::float8 * interval '1 second'` : null,
            rotationKey: downstreamKey,
            updatedAt: sql`now()`,
          })
          .where(eq(webhookEndpoints.id, endpointId))
          .returning();
        if (!row) throw notFound(`webhook endpoint ${endpointId}`);
        return { endpoint: endpointMessage(row), secret: row.secret };
      });
    }),

    listWebhookDeliveries: read(async (request, { tenantId }) => {
      const eventId = optionalId(request.eventId, "event_id");
      const endpointId = optionalId(request.endpointId, "endpoint_id");
      const status = optionalEnum(request.status, "status", WebhookDeliveryStatus);
      const pageSize = requirePageSize(request.pageSize, 100, DELIVERY_PAGE_DEFAULT);
      const after = pagePosition(limitPageToken(request.pageToken, "page_token"), "d", DELIVERY_POSITION);
      if (endpointId !== "") {
        const [owned] = await db
          .select({ id: webhookEndpoints.id })
          .from(webhookEndpoints)
          .where(and(eq(webhookEndpoints.id, endpointId), eq(webhookEndpoints.tenantId, tenantId), isNull(webhookEndpoints.deletedAt)));
        if (!owned) throw notFound(`webhook endpoint ${endpointId}`);
      }
      const conditions: SQL[] = [eq(webhookDeliveries.tenantId, tenantId)];
      if (eventId !== "") conditions.push(eq(webhookDeliveries.eventId, eventId));
      if (endpointId !== "") conditions.push(eq(webhookDeliveries.endpointId, endpointId));
      if (status !== 0) conditions.push(eq(webhookDeliveries.status, status));
      if (after !== undefined) conditions.push(lt(webhookDeliveries.id, after));
      const rows = await db
        .select()
        .from(webhookDeliveries)
        .where(and(...conditions))
        .orderBy(desc(webhookDeliveries.id))
        .limit(pageSize + 1);
      const { page, nextPageToken } = pageOf(rows, pageSize, "d", (last) => last.id);
      return { deliveries: await deliveryMessages(db, page), nextPageToken };
    }),

    redeliverWebhook: mutate((request) => {
      const deliveryId = requireId(request.deliveryId, "delivery_id");
      return ({ tenantId, downstreamKey }) => dispatcher.redeliver(tenantId, deliveryId, downstreamKey);
    }),
  };
}
