// The three tables every service that publishes or consumes events keeps in its own schema:
//  - outbox: events written in the same transaction as the change they describe, published by
//    the relay (events.ts) in `sequence` order, stamped `published_at`, pruned after a retention;
//  - inbox: the ids of events a consumer has applied, written in the same transaction as the
//    effect, so a redelivered event is recognised and skipped;
//  - parked: events a consumer gave up on after its retries, with the reason, until an operator
//    replays them.
// A service's schema.ts exports `eventTables(itsSchema)` so that drizzle-kit generates them with
// the service's migrations.
import { sql } from "drizzle-orm";
import { bigint, customType, index, integer, primaryKey, text, timestamp, uuid, type PgSchema } from "drizzle-orm/pg-core";

export const bytea = customType<{ data: Uint8Array; driverData: Uint8Array }>({ dataType: () => "bytea" });

export function eventTables(schema: PgSchema) {
  const outbox = schema.table(
    "outbox",
    {
      id: uuid("id").primaryKey(),
      sequence: bigint("sequence", { mode: "bigint" }).generatedAlwaysAsIdentity().notNull(),
      eventType: text("event_type").notNull(),
      subject: text("subject").notNull(),
      tenantId: text("tenant_id").notNull().default(""),
      /** The encoded Envelope; null when the relay renders it from the row the subject names. */
      payload: bytea("payload"),
      createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
      publishedAt: timestamp("published_at", { withTimezone: true, mode: "date" }),
    },
    (table) => [
      index("outbox_unpublished_idx").on(table.sequence).where(sql`${table.publishedAt} is null`),
      index("outbox_published_idx").on(table.publishedAt).where(sql`${table.publishedAt} is not null`),
    ],
  );
  const inbox = schema.table(
    "inbox",
    {
      consumer: text("consumer").notNull(),
      eventId: text("event_id").notNull(),
      processedAt: timestamp("processed_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
    },
    (table) => [primaryKey({ columns: [table.consumer, table.eventId] }), index("inbox_processed_idx").on(table.processedAt)],
  );
  const parked = schema.table(
    "parked_events",
    {
      id: bigint("id", { mode: "bigint" }).generatedAlwaysAsIdentity().primaryKey(),
      consumer: text("consumer").notNull(),
      eventId: text("event_id").notNull(),
      eventType: text("event_type").notNull(),
      body: bytea("body").notNull(),
      reason: text("reason").notNull(),
      attempts: integer("attempts").notNull(),
      parkedAt: timestamp("parked_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
      replayedAt: timestamp("replayed_at", { withTimezone: true, mode: "date" }),
      replayedBy: text("replayed_by"),
    },
    (table) => [index("parked_events_open_idx").on(table.consumer, table.id).where(sql`${table.replayedAt} is null`)],
  );
  return { outbox, inbox, parked };
}

export type EventTables = ReturnType<typeof eventTables>;
