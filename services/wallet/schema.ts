// The Wallet service's tables, in PostgreSQL schema "wallet". A wallet row holds identity and
// status only; its money lives in the Ledger account of the same id.
import { check, integer, pgSchema, text, timestamp, unique } from "drizzle-orm/pg-core";
import { sql } from "drizzle-orm";

export const wallet = pgSchema("wallet");

export const wallets = wallet.table(
  "wallets",
  {
    id: text("id").primaryKey(),
    tenantId: text("tenant_id").notNull(),
    ownerId: text("owner_id").notNull(),
    currency: text("currency").notNull(),
    kind: integer("kind").notNull(),
    status: integer("status").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
    updatedAt: timestamp("updated_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
  },
  (table) => [
    unique("wallets_tenant_owner_currency").on(table.tenantId, table.ownerId, table.currency),
    check("wallets_currency_iso", sql`${table.currency} ~ '^[A-Z]{3}$'`),
  ],
);
