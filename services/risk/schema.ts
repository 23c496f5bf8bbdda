// Risk's tables, in PostgreSQL schema "risk". The windows and profiles live in Redis
// (counters.ts); PostgreSQL keeps what must last and be queried: each tenant's settings and
// blocklist, every decision in which a rule fired (the idempotency record of that evaluation)
// with one row per flag, and the review queue with its audit trail.
import { bigint, bigserial, index, integer, jsonb, pgSchema, primaryKey, smallint, text, timestamp } from "drizzle-orm/pg-core";
import { eventTables } from "../runtime/event-tables.js";

export const risk = pgSchema("risk");

/** Risk events out; payment events in, applied once by the feedback consumer (runtime/event-tables.ts). */
export const { outbox, inbox, parked } = eventTables(risk);

/** A tenant's settings as it stored them (RiskSettings as proto JSON; zero values mean defaults). */
export const settings = risk.table("settings", {
  tenantId: text("tenant_id").primaryKey(),
  settings: jsonb("settings").notNull(),
  /** Bumped by every settings update and blocklist change: other processes reload when it moves. */
  version: bigint("version", { mode: "number" }).notNull(),
  updatedAt: timestamp("updated_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
});

export const blocklist = risk.table(
  "blocklist",
  {
    tenantId: text("tenant_id").notNull(),
    /** BlocklistKind. */
    kind: smallint("kind").notNull(),
    value: text("value").notNull(),
    reason: text("reason").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
  },
  // The key also orders ListBlocklistEntries (kind, then value).
  (table) => [primaryKey({ columns: [table.tenantId, table.kind, table.value] })],
);

/**
 * Evaluations in which at least one rule fired (ALLOW with flags, REVIEW, BLOCK, and every
 * RISK_UNAVAILABLE fallback): the first decision of the payment, returned to its retries.
 */
export const decisions = risk.table(
  "decisions",
  {
    tenantId: text("tenant_id").notNull(),
    paymentId: text("payment_id").notNull(),
    userId: text("user_id").notNull(),
    amountMinor: bigint("amount_minor", { mode: "bigint" }).notNull(),
    currency: text("currency").notNull(),
    /** Decision. */
    decision: smallint("decision").notNull(),
    score: integer("score").notNull(),
    /** Rule codes, in response order. */
    reasons: jsonb("reasons").notNull(),
    /** [{rule, severity, action, detail}] as in the response. */
    flags: jsonb("flags").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
  },
  (table) => [primaryKey({ columns: [table.tenantId, table.paymentId] })],
);

/** One row per fired rule, for ListFlags and the user summary. */
export const flags = risk.table(
  "flags",
  {
    id: bigserial("id", { mode: "bigint" }).primaryKey(),
    tenantId: text("tenant_id").notNull(),
    paymentId: text("payment_id").notNull(),
    userId: text("user_id").notNull(),
    rule: text("rule").notNull(),
    /** Severity. */
    severity: smallint("severity").notNull(),
    /** Action. */
    action: smallint("action").notNull(),
    detail: text("detail").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull(),
  },
  (table) => [
    index("flags_tenant_id_idx").on(table.tenantId, table.id.desc()),
    index("flags_tenant_user_id_idx").on(table.tenantId, table.userId, table.id.desc()),
    index("flags_tenant_payment_idx").on(table.tenantId, table.paymentId),
  ],
);

/** A payment decided REVIEW, waiting for (or resolved by) an operator. */
export const reviews = risk.table(
  "reviews",
  {
    tenantId: text("tenant_id").notNull(),
    paymentId: text("payment_id").notNull(),
    /** Queue order. */
    seq: bigserial("seq", { mode: "bigint" }).notNull(),
    userId: text("user_id").notNull(),
    amountMinor: bigint("amount_minor", { mode: "bigint" }).notNull(),
    currency: text("currency").notNull(),
    /** ReviewStatus. */
    status: smallint("status").notNull(),
    score: integer("score").notNull(),
    reasons: jsonb("reasons").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull(),
    resolvedAt: timestamp("resolved_at", { withTimezone: true, mode: "date" }),
    resolvedBy: text("resolved_by").notNull().default(""),
    resolutionReason: text("resolution_reason").notNull().default(""),
  },
  (table) => [
    primaryKey({ columns: [table.tenantId, table.paymentId] }),
    index("reviews_tenant_status_seq_idx").on(table.tenantId, table.status, table.seq),
    index("reviews_tenant_seq_idx").on(table.tenantId, table.seq),
    index("reviews_tenant_user_status_idx").on(table.tenantId, table.userId, table.status),
  ],
);

/** The audit trail of a review: its opening and its resolution, append-only. */
export const reviewEvents = risk.table(
  "review_events",
  {
    id: bigserial("id", { mode: "bigint" }).primaryKey(),
    tenantId: text("tenant_id").notNull(),
    paymentId: text("payment_id").notNull(),
    /** ReviewStatus reached. */
    status: smallint("status").notNull(),
    actor: text("actor").notNull(),
    reason: text("reason").notNull(),
    at: timestamp("at", { withTimezone: true, mode: "date" }).notNull(),
  },
  (table) => [index("review_events_tenant_payment_idx").on(table.tenantId, table.paymentId, table.id)],
);
