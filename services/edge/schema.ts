// The Edge's tables, in PostgreSQL schema "edge": who may call the public API (tenants and their
// API keys, of which only a hash of the secret is kept) and the record of every mutating call's
// Idempotency-Key with its fingerprint and outcome (see idempotency.ts).
import { sql } from "drizzle-orm";
import { bigint, boolean, check, customType, index, integer, pgSchema, primaryKey, smallint, text, timestamp, uniqueIndex } from "drizzle-orm/pg-core";
import { eventTables } from "../runtime/event-tables.js";

export const edge = pgSchema("edge");

/** Events applied once by the Edge's consumers (merchant webhooks, audit) (runtime/event-tables.ts). */
export const { inbox, parked } = eventTables(edge);

const bytea = customType<{ data: Uint8Array; driverData: Uint8Array }>({ dataType: () => "bytea" });

export const tenants = edge.table("tenants", {
  // "ten_" + 26 characters that sort by creation time: ListTenants pages by id.
  id: text("id").primaryKey(),
  name: text("name").notNull(),
  // Live tenants move real money and may not mint it with FundWallet; sandbox tenants may.
  live: boolean("live").notNull().default(false),
  createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
});

/** ApiKeyScope values of the public contract. */
export const SCOPE = { readOnly: 1, readWrite: 2 } as const;

export const apiKeys = edge.table(
  "api_keys",
  {
    // "key_" + 16 characters; the public part of the key.
    id: text("id").primaryKey(),
    tenantId: text("tenant_id").notNull().references(() => tenants.id),
    // SHA-256 of the secret part. The secret is 256 random bits, so a fast hash is enough.
    secretHash: bytea("secret_hash").notNull(),
    scope: smallint("scope").notNull(),
    label: text("label").notNull().default(""),
    // Null: COWRIE_RATE_LIMIT_PER_SECOND / COWRIE_RATE_LIMIT_BURST at the time of the call.
    rateLimitPerSecond: integer("rate_limit_per_second"),
    rateLimitBurst: integer("rate_limit_burst"),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
    revokedAt: timestamp("revoked_at", { withTimezone: true, mode: "date" }),
  },
  (table) => [
    check("api_keys_scope_known", sql`${table.scope} in (1, 2)`),
    check("api_keys_rate_positive", sql`${table.rateLimitPerSecond} is null or ${table.rateLimitPerSecond} > 0`),
    check("api_keys_burst_positive", sql`${table.rateLimitBurst} is null or ${table.rateLimitBurst} > 0`),
    index("api_keys_tenant_idx").on(table.tenantId, table.createdAt),
  ],
);

/** States of an idempotency record. */
export const IDEMPOTENCY_STATE = { inProgress: 1, completed: 2 } as const;

export const idempotencyKeys = edge.table(
  "idempotency_keys",
  {
    tenantId: text("tenant_id").notNull(),
    key: text("key").notNull(),
    // Fully qualified RPC, "cowrie.edge.v1.WalletsService/FundWallet": the completer runs it again.
    method: text("method").notNull(),
    // SHA-256 of the method name and the canonical request bytes.
    fingerprint: bytea("fingerprint").notNull(),
    request: bytea("request").notNull(),
    // The API key that sent the request: the completer finishes it only while that key is still
    // valid and read-write. Null for rows written before the column existed.
    apiKeyId: text("api_key_id"),
    state: smallint("state").notNull(),
    // While in progress: the executor's lease; whoever finds it expired may take the work over.
    lockedUntil: timestamp("locked_until", { withTimezone: true, mode: "date" }).notNull(),
    // Executions started: 1 by the first caller, +1 for each takeover of an expired lease.
    attempts: integer("attempts").notNull().default(1),
    // Completed with success: the response message's bytes.
    response: bytea("response"),
    // Completed with a decided error: its code, message and details (JSON of type + base64 value).
    errorCode: integer("error_code"),
    errorMessage: text("error_message"),
    errorDetails: text("error_details"),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
    completedAt: timestamp("completed_at", { withTimezone: true, mode: "date" }),
    // The reaper deletes the record after this.
    expiresAt: timestamp("expires_at", { withTimezone: true, mode: "date" }).notNull(),
  },
  (table) => [
    primaryKey({ name: "idempotency_keys_pk", columns: [table.tenantId, table.key] }),
    check("idempotency_keys_state_known", sql`${table.state} in (1, 2)`),
    check(
      "idempotency_keys_completed_has_outcome",
      sql`${table.state} = 1 or ${table.response} is not null or ${table.errorCode} is not null`,
    ),
    index("idempotency_keys_lease_idx").on(table.lockedUntil).where(sql`${table.state} = 1`),
    index("idempotency_keys_expiry_idx").on(table.expiresAt),
  ],
);

/** Every event the mesh published, as the audit consumer received it: one row per event id. */
export const auditEvents = edge.table(
  "audit_events",
  {
    eventId: text("event_id").primaryKey(),
    type: text("type").notNull(),
    source: text("source").notNull(),
    subject: text("subject").notNull(),
    tenantId: text("tenant_id").notNull(),
    occurredAt: timestamp("occurred_at", { withTimezone: true, mode: "date" }).notNull(),
    /** The envelope exactly as published (binary cowrie.events.v1.Envelope). */
    envelope: bytea("envelope").notNull(),
    recordedAt: timestamp("recorded_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
  },
  (table) => [index("audit_events_subject_idx").on(table.subject, table.occurredAt), index("audit_events_tenant_idx").on(table.tenantId, table.occurredAt)],
);

/**
 * Merchant webhook endpoints (webhooks/). The signing secret is kept in plaintext, unlike API
 * keys: HMAC-SHA256 needs the secret itself to sign every delivery, so a hash would not do. It is
 * never returned after the response that created or rotated it.
 */
export const webhookEndpoints = edge.table(
  "webhook_endpoints",
  {
    // "whe_" + 26 characters that sort by creation time.
    id: text("id").primaryKey(),
    tenantId: text("tenant_id").notNull().references(() => tenants.id),
    url: text("url").notNull(),
    // Exact types, "prefix.*" or "*" (webhooks/filters.ts).
    eventTypes: text("event_types").array().notNull(),
    description: text("description").notNull().default(""),
    enabled: boolean("enabled").notNull().default(true),
    secret: text("secret").notNull(),
    // After a rotation the old secret also signs until previous_secret_expires_at.
    previousSecret: text("previous_secret"),
    previousSecretExpiresAt: timestamp("previous_secret_expires_at", { withTimezone: true, mode: "date" }),
    // The downstream keys of the create and of the last rotation: a re-execution of the same
    // request (the idempotency completer) finds its own work instead of doing it twice.
    createKey: text("create_key").notNull(),
    rotationKey: text("rotation_key"),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
    updatedAt: timestamp("updated_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
    // Deleted endpoints stay so that their deliveries' log keeps its endpoint; they are NOT_FOUND.
    deletedAt: timestamp("deleted_at", { withTimezone: true, mode: "date" }),
  },
  (table) => [
    uniqueIndex("webhook_endpoints_create_key_idx").on(table.tenantId, table.createKey),
    index("webhook_endpoints_tenant_idx").on(table.tenantId, table.id).where(sql`${table.deletedAt} is null`),
  ],
);

/** WebhookDeliveryStatus values of the public contract. */
export const WEBHOOK_DELIVERY_STATUS = { pending: 1, delivered: 2, failed: 3 } as const;

/** One event to one endpoint: enqueued in the event consumer's transaction, sent by the dispatcher. */
export const webhookDeliveries = edge.table(
  "webhook_deliveries",
  {
    // "whd_" + 26 characters that sort by creation time: the log pages by id, newest first.
    id: text("id").primaryKey(),
    endpointId: text("endpoint_id").notNull().references(() => webhookEndpoints.id),
    tenantId: text("tenant_id").notNull(),
    eventId: text("event_id").notNull(),
    eventType: text("event_type").notNull(),
    // The JSON body, frozen at enqueue: every attempt signs and sends these exact bytes.
    body: bytea("body").notNull(),
    status: smallint("status").notNull().default(WEBHOOK_DELIVERY_STATUS.pending),
    // Automatic attempts started. The dispatcher's claim increments it, and its result is
    // recorded only while the count is still the one it claimed (a fence against a takeover).
    attempts: integer("attempts").notNull().default(0),
    // Pending: when the dispatcher may take it next (also its lease while an attempt runs).
    nextAttemptAt: timestamp("next_attempt_at", { withTimezone: true, mode: "date" }),
    lastError: text("last_error"),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
    deliveredAt: timestamp("delivered_at", { withTimezone: true, mode: "date" }),
    updatedAt: timestamp("updated_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
  },
  (table) => [
    uniqueIndex("webhook_deliveries_endpoint_event_idx").on(table.endpointId, table.eventId),
    check("webhook_deliveries_status_known", sql`${table.status} in (1, 2, 3)`),
    index("webhook_deliveries_due_idx").on(table.nextAttemptAt).where(sql`${table.status} = 1`),
    index("webhook_deliveries_tenant_idx").on(table.tenantId, table.id),
    index("webhook_deliveries_endpoint_idx").on(table.endpointId, table.id),
    index("webhook_deliveries_event_idx").on(table.tenantId, table.eventId),
  ],
);

/** Every HTTP request made for a delivery, automatic or manual: the delivery log. */
export const webhookAttempts = edge.table(
  "webhook_attempts",
  {
    id: bigint("id", { mode: "bigint" }).generatedAlwaysAsIdentity().primaryKey(),
    deliveryId: text("delivery_id").notNull().references(() => webhookDeliveries.id),
    attemptedAt: timestamp("attempted_at", { withTimezone: true, mode: "date" }).notNull(),
    // Null when no answer came (timeout, refused connection...).
    httpStatus: integer("http_status"),
    error: text("error").notNull().default(""),
    durationMs: integer("duration_ms").notNull(),
    manual: boolean("manual").notNull().default(false),
    // A manual attempt's downstream key: a re-execution of the same RedeliverWebhook sends nothing.
    requestKey: text("request_key"),
  },
  (table) => [
    index("webhook_attempts_delivery_idx").on(table.deliveryId, table.id),
    uniqueIndex("webhook_attempts_request_key_idx").on(table.deliveryId, table.requestKey),
  ],
);
