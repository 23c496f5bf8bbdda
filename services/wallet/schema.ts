// The Wallet service's tables, in PostgreSQL schema "wallet". A wallet row holds identity, status
// and limits only; its money lives in the Ledger account of the same id. Outflow reservations
// make daily limits race-free, and hold rows remember what a Ledger pending transfer is for.
import { bigint, check, date, index, integer, pgSchema, primaryKey, text, timestamp, unique } from "drizzle-orm/pg-core";
import { eventTables } from "../runtime/event-tables.js";
import { sql } from "drizzle-orm";

export const wallet = pgSchema("wallet");

/** Wallet events, written with each change (runtime/event-tables.ts). */
export const { outbox } = eventTables(wallet);

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
    frozenReason: text("frozen_reason").notNull().default(""),
    /** Most one transfer or hold may take out; 0 = no limit. */
    perTransactionLimitMinor: bigint("per_transaction_limit_minor", { mode: "bigint" }).notNull().default(sql`0`),
    /** Most that may leave per UTC day, holds included; 0 = no limit. */
    dailyOutflowLimitMinor: bigint("daily_outflow_limit_minor", { mode: "bigint" }).notNull().default(sql`0`),
  },
  (table) => [
    unique("wallets_tenant_owner_currency").on(table.tenantId, table.ownerId, table.currency),
    check("wallets_currency_iso", sql`${table.currency} ~ '^[A-Z]{3}$'`),
    check("wallets_limits_not_negative", sql`${table.perTransactionLimitMinor} >= 0 and ${table.dailyOutflowLimitMinor} >= 0`),
    // ListWallets: a tenant's wallets (or one owner's), newest first, by keyset.
    index("wallets_tenant_created_idx").on(table.tenantId, table.createdAt.desc(), table.id.desc()),
    index("wallets_tenant_owner_created_idx").on(table.tenantId, table.ownerId, table.createdAt.desc(), table.id.desc()),
  ],
);

/**
 * One row per money-moving operation that passed the wallet's own checks (a transfer out or a
 * hold), written before the Ledger call under the operation's Ledger transfer id. It counts the
 * amount against the wallet's UTC day, and it marks the operation as "decided by the Ledger":
 * a retry finds it and asks the Ledger for the recorded outcome instead of re-checking status
 * and limits. A Ledger refusal stamps `refused` and gives the amount back to the day.
 */
export const outflows = wallet.table(
  "outflows",
  {
    operationId: text("operation_id").primaryKey(),
    walletId: text("wallet_id").notNull(),
    day: date("day", { mode: "string" }).notNull(),
    amountMinor: bigint("amount_minor", { mode: "bigint" }).notNull(),
    /** The Refusal code when the Ledger refused the operation; null while it counts. */
    refused: text("refused"),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
  },
  (table) => [check("outflows_amount_positive", sql`${table.amountMinor} > 0`)],
);

/**
 * A wallet's outflow per UTC day: the sum of its counting reservations. Reserving is a
 * conditional upsert on this row, so concurrent reservations against a daily limit serialize on
 * it and can never admit more than the limit together.
 */
export const outflowTotals = wallet.table(
  "outflow_totals",
  {
    walletId: text("wallet_id").notNull(),
    day: date("day", { mode: "string" }).notNull(),
    totalMinor: bigint("total_minor", { mode: "bigint" }).notNull(),
  },
  (table) => [
    primaryKey({ columns: [table.walletId, table.day] }),
    check("outflow_totals_not_negative", sql`${table.totalMinor} >= 0`),
  ],
);

/**
 * Holds: a Ledger pending transfer with the same id, plus what it is for. The row is written
 * after the Ledger accepted the pending transfer; its status follows the Ledger's (captured by
 * "<id>:post", released by "<id>:void", expired by the Ledger's "expire:<id>") and is brought up
 * to date whenever the Wallet learns of a change.
 */
export const holds = wallet.table(
  "holds",
  {
    id: text("id").primaryKey(),
    tenantId: text("tenant_id").notNull(),
    walletId: text("wallet_id").notNull(),
    destinationWalletId: text("destination_wallet_id").notNull(),
    amountMinor: bigint("amount_minor", { mode: "bigint" }).notNull(),
    currency: text("currency").notNull(),
    reference: text("reference").notNull().default(""),
    timeoutSeconds: integer("timeout_seconds").notNull(),
    status: integer("status").notNull(),
    capturedMinor: bigint("captured_minor", { mode: "bigint" }).notNull().default(sql`0`),
    /** The Ledger transfer code of the capture (HOLD_CAPTURE; PAYOUT or REFUND for gateway holds). */
    captureCode: integer("capture_code").notNull().default(6),
    /** The Ledger's commit time of the pending transfer. */
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull(),
    /** created_at + timeout: from then on the Ledger refuses to post or void it. */
    expiresAt: timestamp("expires_at", { withTimezone: true, mode: "date" }).notNull(),
    updatedAt: timestamp("updated_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
  },
  (table) => [
    check("holds_amount_positive", sql`${table.amountMinor} > 0`),
    check("holds_captured_within_amount", sql`${table.capturedMinor} >= 0 and ${table.capturedMinor} <= ${table.amountMinor}`),
    index("holds_tenant_wallet_idx").on(table.tenantId, table.walletId),
  ],
);
