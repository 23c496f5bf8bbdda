// The Ledger's tables, in PostgreSQL schema "ledger". Balances live only in the four totals of
// an account, which change in the same transaction as the transfers that move them; the check
// constraints are the second line of defence behind the write path's own checks.
import { sql } from "drizzle-orm";
import { bigint, boolean, check, customType, index, integer, jsonb, pgSchema, smallint, text, timestamp } from "drizzle-orm/pg-core";

export const ledger = pgSchema("ledger");

// The id columns (accounts' id; transfers' id, accounts and pending id; pending transfers' id and
// resolver; refusals' id) use COLLATE "C", set by migration 0005: drizzle has no way to say so
// here. Ids are ASCII and compare byte by byte, which is faster than the server's collation and
// the same on every server.

const bytea = customType<{ data: Uint8Array; driverData: Uint8Array }>({ dataType: () => "bytea" });

export const accounts = ledger.table(
  "accounts",
  {
    id: text("id").primaryKey(),
    currency: text("currency").notNull(),
    code: integer("code").notNull(),
    ownerRef: text("owner_ref").notNull().default(""),
    metadata: jsonb("metadata").$type<Record<string, string>>().notNull().default({}),
    debitsMustNotExceedCredits: boolean("debits_must_not_exceed_credits").notNull().default(false),
    creditsMustNotExceedDebits: boolean("credits_must_not_exceed_debits").notNull().default(false),
    debitsPosted: bigint("debits_posted", { mode: "bigint" }).notNull().default(sql`0`),
    creditsPosted: bigint("credits_posted", { mode: "bigint" }).notNull().default(sql`0`),
    debitsPending: bigint("debits_pending", { mode: "bigint" }).notNull().default(sql`0`),
    creditsPending: bigint("credits_pending", { mode: "bigint" }).notNull().default(sql`0`),
    closed: boolean("closed").notNull().default(false),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
  },
  (table) => [
    check("accounts_currency_iso", sql`${table.currency} ~ '^[A-Z]{3}$'`),
    check("accounts_totals_not_negative", sql`${table.debitsPosted} >= 0 and ${table.creditsPosted} >= 0 and ${table.debitsPending} >= 0 and ${table.creditsPending} >= 0`),
    check("accounts_one_constraint", sql`not (${table.debitsMustNotExceedCredits} and ${table.creditsMustNotExceedDebits})`),
    check("accounts_debits_within_credits", sql`not ${table.debitsMustNotExceedCredits} or ${table.debitsPosted} + ${table.debitsPending} <= ${table.creditsPosted}`),
    check("accounts_credits_within_debits", sql`not ${table.creditsMustNotExceedDebits} or ${table.creditsPosted} + ${table.creditsPending} <= ${table.debitsPosted}`),
  ],
);

/**
 * The journal: committed transfers, immutable (a trigger refuses UPDATE and DELETE). The id is
 * the caller's idempotency key, kept forever. `sequence` numbers transfers 1, 2, 3... in commit
 * order without gaps; `batch` ties each to the hash-chained journal batch that committed it.
 * POST/VOID/EXPIRE rows are stored resolved: accounts, currency and amount filled in.
 *
 * The accounts a row names are checked once per statement, not per row by foreign keys: a
 * statement trigger (migration 0004) refuses a row whose debit or credit account does not exist
 * in the transfer's currency, and accounts can be neither deleted nor renamed. Per-row foreign
 * key triggers were 60% of the PostgreSQL time of a 1,000-transfer insert.
 */
export const transfers = ledger.table(
  "transfers",
  {
    id: text("id").primaryKey(),
    sequence: bigint("sequence", { mode: "bigint" }).notNull().unique(),
    batch: bigint("batch", { mode: "bigint" }).notNull(),
    kind: smallint("kind").notNull(),
    debitAccountId: text("debit_account_id").notNull(),
    creditAccountId: text("credit_account_id").notNull(),
    amountMinor: bigint("amount_minor", { mode: "bigint" }).notNull(),
    currency: text("currency").notNull(),
    code: integer("code").notNull(),
    reference: text("reference").notNull(),
    metadata: jsonb("metadata").$type<Record<string, string>>().notNull(),
    linked: boolean("linked").notNull(),
    pendingId: text("pending_id").notNull(),
    timeoutSeconds: integer("timeout_seconds").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull(),
  },
  (table) => [
    check("transfers_amount_positive", sql`${table.amountMinor} > 0`),
    check("transfers_accounts_differ", sql`${table.debitAccountId} <> ${table.creditAccountId}`),
    index("transfers_debit_account_idx").on(table.debitAccountId, table.sequence),
    index("transfers_credit_account_idx").on(table.creditAccountId, table.sequence),
  ],
);

/** Resolution state of PENDING transfers (the journal rows themselves never change). */
export const pendingTransfers = ledger.table(
  "pending_transfers",
  {
    id: text("id").primaryKey().references(() => transfers.id),
    status: smallint("status").notNull(),
    expiresAt: timestamp("expires_at", { withTimezone: true, mode: "date" }),
    resolvedBy: text("resolved_by"),
  },
  (table) => [index("pending_transfers_expiry_idx").on(table.expiresAt).where(sql`${table.status} = 1 and ${table.expiresAt} is not null`)],
);

/**
 * Transfers that were refused, as submitted, with the refusal. A retry with the same id returns
 * the recorded result, so an outcome once decided never flips.
 */
export const transferFailures = ledger.table("transfer_failures", {
  id: text("id").primaryKey(),
  result: integer("result").notNull(),
  kind: smallint("kind").notNull(),
  debitAccountId: text("debit_account_id").notNull(),
  creditAccountId: text("credit_account_id").notNull(),
  amountMinor: bigint("amount_minor", { mode: "bigint" }).notNull(),
  currency: text("currency").notNull(),
  code: integer("code").notNull(),
  reference: text("reference").notNull(),
  metadata: jsonb("metadata").$type<Record<string, string>>().notNull(),
  linked: boolean("linked").notNull(),
  pendingId: text("pending_id").notNull(),
  timeoutSeconds: integer("timeout_seconds").notNull(),
  createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull().defaultNow(),
});

/**
 * One row per committed batch: hash = SHA-256(previous batch's hash, then every transfer of the
 * batch in sequence order in a canonical encoding). Changing, adding or removing any journal row
 * breaks the chain from that batch on.
 */
export const journalBatches = ledger.table("journal_batches", {
  batch: bigint("batch", { mode: "bigint" }).primaryKey(),
  firstSequence: bigint("first_sequence", { mode: "bigint" }).notNull(),
  lastSequence: bigint("last_sequence", { mode: "bigint" }).notNull(),
  previousHash: bytea("previous_hash").notNull(),
  hash: bytea("hash").notNull(),
  createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull(),
});

/**
 * The head of the journal, one row. Every commit locks it, so batches get consecutive numbers
 * and sequences even with several Ledger processes on one database.
 */
export const journalHead = ledger.table("journal_head", {
  id: smallint("id").primaryKey(),
  lastBatch: bigint("last_batch", { mode: "bigint" }).notNull(),
  lastSequence: bigint("last_sequence", { mode: "bigint" }).notNull(),
  lastHash: bytea("last_hash").notNull(),
});

/**
 * How far the relay has published the journal (events.ts): the last batch the broker confirmed.
 * The journal is the Ledger's outbox; the write path writes no event rows of its own.
 */
export const relayCursor = ledger.table("relay_cursor", {
  id: smallint("id").primaryKey(),
  lastBatch: bigint("last_batch", { mode: "bigint" }).notNull(),
});
