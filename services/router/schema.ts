// The Router's tables, in PostgreSQL schema "router". A payment row is written, with its
// idempotency key, before any money moves; its status then changes only by compare-and-set
// (on `version`), each change appended to payment_transitions in the same transaction. The check
// constraints are the second line of defence behind the handlers' own validation: a bug may
// refuse a request, never store an impossible payment.
import { sql } from "drizzle-orm";
import { bigint, boolean, check, foreignKey, index, integer, jsonb, pgSchema, primaryKey, smallint, text, timestamp, unique } from "drizzle-orm/pg-core";
import { eventTables } from "../runtime/event-tables.js";

export const router = pgSchema("router");

/** Payment events, written with each status change (runtime/event-tables.ts). */
export const { outbox } = eventTables(router);

/** The parameters of the request that used an idempotency key, as the caller sent them. */
export type RequestFields = Record<string, string>;

/** Who pays, as Risk sees it. Not part of the request's fingerprint: a retry from another IP is the same payment. */
export interface Payer {
  userId: string;
  deviceId?: string;
  ipAddress?: string;
}

/** How a gateway payment reaches the gateway: the payer's method or the bank account paid. */
export interface Instrument {
  paymentMethod?: string;
  customerEmail?: string;
  country: string;
  bankAccount?: { bankCode: string; accountNumber: string; accountName: string };
}

export const payments = router.table(
  "payments",
  {
    /** "pay_" + 26 characters: 10 of millisecond time in Crockford base32, then 16 random. */
    id: text("id").primaryKey(),
    tenantId: text("tenant_id").notNull(),
    idempotencyKey: text("idempotency_key").notNull(),
    /** SHA-256 of the request's parameters; the same key with another fingerprint is ALREADY_EXISTS. */
    fingerprint: text("fingerprint").notNull(),
    /** The parameters behind the fingerprint, to name the field that differs. */
    request: jsonb("request").$type<RequestFields>().notNull(),
    kind: smallint("kind").notNull(),
    status: smallint("status").notNull(),
    amountMinor: bigint("amount_minor", { mode: "bigint" }).notNull(),
    currency: text("currency").notNull(),
    /** "" for a PAY_IN (the payer is outside Cowrie). */
    sourceWalletId: text("source_wallet_id").notNull(),
    /** "" for a PAYOUT, and for a refund of a PAY_IN (the money goes back through the gateway). */
    destinationWalletId: text("destination_wallet_id").notNull(),
    feeMinor: bigint("fee_minor", { mode: "bigint" }).notNull().default(sql`0`),
    /** Refunds that succeeded or are in progress; reserved before a refund moves money. */
    refundedMinor: bigint("refunded_minor", { mode: "bigint" }).notNull().default(sql`0`),
    failureCode: text("failure_code").notNull().default(""),
    failureMessage: text("failure_message").notNull().default(""),
    reference: text("reference").notNull().default(""),
    refundedPaymentId: text("refunded_payment_id"),
    transferId: text("transfer_id").notNull().default(""),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull(),
    updatedAt: timestamp("updated_at", { withTimezone: true, mode: "date" }).notNull(),
    /** Number of status changes: the compare-and-set token (status alone has a cycle, so ABA). */
    version: integer("version").notNull().default(0),
    /** Set by the completer when it takes a stuck payment, so that another completer skips it. */
    leaseUntil: timestamp("lease_until", { withTimezone: true, mode: "date" }),
    /** Gateway payments: the payer's method or the bank account, and the country. */
    instrument: jsonb("instrument").$type<Instrument>(),
    /** Gateway payments: the gateway now in charge ("" before the first routing decision). */
    gateway: text("gateway").notNull().default(""),
    /** The gateway's own id of the transaction that succeeded. */
    gatewayTransactionId: text("gateway_transaction_id").notNull().default(""),
    /** PAYOUT and refunds of PAY_IN: the Wallet hold reserving the money. */
    holdId: text("hold_id").notNull().default(""),
    /** OUTCOME_UNKNOWN and IN_REVIEW: when the gateway, or Risk's review, is asked next, and how often it has been. */
    nextCheckAt: timestamp("next_check_at", { withTimezone: true, mode: "date" }),
    checks: integer("checks").notNull().default(0),
    /** Set when the outcome stayed unknown past the limit: reconciliation has the case. */
    needsReconciliation: boolean("needs_reconciliation").notNull().default(false),
    /** Risk's decision ("allow", "review", "block"), made once before money moves; "" before. */
    riskDecision: text("risk_decision").notNull().default(""),
    riskScore: integer("risk_score").notNull().default(0),
    riskReasons: jsonb("risk_reasons").$type<string[]>().notNull().default(sql`'[]'::jsonb`),
    /** Who pays, for Risk: the user (given or defaulted), and the device and IP when known. */
    payer: jsonb("payer").$type<Payer>().notNull().default(sql`'{"userId":""}'::jsonb`),
  },
  (table) => [
    unique("payments_tenant_idempotency_key").on(table.tenantId, table.idempotencyKey),
    check("payments_amount_positive", sql`${table.amountMinor} > 0`),
    check("payments_fee_within_amount", sql`${table.feeMinor} >= 0 and ${table.feeMinor} < ${table.amountMinor}`),
    check("payments_refunded_within_amount", sql`${table.refundedMinor} >= 0 and ${table.refundedMinor} <= ${table.amountMinor}`),
    check("payments_wallets_differ", sql`${table.sourceWalletId} <> ${table.destinationWalletId}`),
    // Which wallets each kind names: a PAY_IN has no source wallet, a PAYOUT no destination,
    // an INTERNAL payment both; a REFUND has a source and, unless it goes back through a gateway,
    // a destination.
    check("payments_wallets_by_kind", sql`case ${table.kind}
      when 1 then ${table.sourceWalletId} <> '' and ${table.destinationWalletId} <> ''
      when 2 then ${table.sourceWalletId} = '' and ${table.destinationWalletId} <> ''
      when 3 then ${table.sourceWalletId} <> '' and ${table.destinationWalletId} = ''
      else ${table.sourceWalletId} <> '' end`),
    check("payments_gateway_kinds_have_instrument", sql`(${table.kind} in (2, 3)) <= (${table.instrument} is not null)`),
    check("payments_currency_iso", sql`${table.currency} ~ '^[A-Z]{3}$'`),
    check("payments_status_known", sql`${table.status} between 1 and 7`),
    check("payments_kind_known", sql`${table.kind} between 1 and 4`),
    // A refund names the payment it refunds; nothing else does.
    check("payments_refund_names_payment", sql`(${table.kind} = 4) = (${table.refundedPaymentId} is not null)`),
    foreignKey({ name: "payments_refunded_payment_fk", columns: [table.refundedPaymentId], foreignColumns: [table.id] }),
    // Listing is newest first, (created_at, id) descending: PostgreSQL reads these backwards.
    index("payments_tenant_created_idx").on(table.tenantId, table.createdAt, table.id),
    index("payments_tenant_source_idx").on(table.tenantId, table.sourceWalletId, table.createdAt, table.id),
    index("payments_tenant_destination_idx").on(table.tenantId, table.destinationWalletId, table.createdAt, table.id),
    index("payments_refunded_payment_idx").on(table.refundedPaymentId).where(sql`${table.refundedPaymentId} is not null`),
    // The completer's scan: only unfinished payments are indexed.
    index("payments_unfinished_idx").on(table.updatedAt).where(sql`${table.status} in (1, 2)`),
    // The review loop's scan of payments waiting for an operator.
    index("payments_in_review_idx").on(table.nextCheckAt).where(sql`${table.status} = 7`),
    // The resolver's scan of payments whose gateway outcome is unknown.
    index("payments_outcome_unknown_idx").on(table.nextCheckAt).where(sql`${table.status} = 3`),
  ],
);

/**
 * Every call the Router made to a gateway for a payment, written with outcome "sent" BEFORE the
 * request leaves (the recovery point: after a crash, a "sent" row means the gateway may have
 * acted, so its status is asked before anything else) and completed with the answer. A routing
 * decision's candidates and scores are kept on the call it chose.
 */
export const gatewayCalls = router.table(
  "gateway_calls",
  {
    paymentId: text("payment_id").notNull().references(() => payments.id),
    sequence: integer("sequence").notNull(),
    at: timestamp("at", { withTimezone: true, mode: "date" }).notNull(),
    gateway: text("gateway").notNull(),
    /** charge, payout, refund or status. */
    operation: text("operation").notNull(),
    reference: text("reference").notNull(),
    candidates: jsonb("candidates").$type<unknown[]>(),
    reason: text("reason").notNull(),
    /** "sent" until answered; then the GatewayResult outcome. */
    outcome: text("outcome").notNull(),
    code: text("code").notNull().default(""),
    action: text("action").notNull().default(""),
    gatewayCode: text("gateway_code").notNull().default(""),
    /** The gateway's own id of the transaction, when the answer carried one. */
    gatewayTransactionId: text("gateway_transaction_id").notNull().default(""),
    message: text("message").notNull().default(""),
    latencyMs: integer("latency_ms").notNull().default(0),
  },
  (table) => [primaryKey({ name: "gateway_calls_pkey", columns: [table.paymentId, table.sequence] })],
);

/** Every status change of every payment, oldest first by id; from_status 0 marks the creation. */
export const paymentTransitions = router.table(
  "payment_transitions",
  {
    id: bigint("id", { mode: "bigint" }).generatedAlwaysAsIdentity().primaryKey(),
    paymentId: text("payment_id").notNull().references(() => payments.id),
    fromStatus: smallint("from_status").notNull(),
    toStatus: smallint("to_status").notNull(),
    at: timestamp("at", { withTimezone: true, mode: "date" }).notNull(),
    reason: text("reason").notNull().default(""),
  },
  (table) => [index("payment_transitions_payment_idx").on(table.paymentId, table.id)],
);

/**
 * Refunds refused for good (payment not succeeded, nothing or too little left), kept under their
 * idempotency key so that a retry returns the same refusal even after the payment changed.
 */
export const refundRefusals = router.table(
  "refund_refusals",
  {
    tenantId: text("tenant_id").notNull(),
    idempotencyKey: text("idempotency_key").notNull(),
    fingerprint: text("fingerprint").notNull(),
    request: jsonb("request").$type<RequestFields>().notNull(),
    code: text("code").notNull(),
    message: text("message").notNull(),
    createdAt: timestamp("created_at", { withTimezone: true, mode: "date" }).notNull(),
  },
  (table) => [primaryKey({ name: "refund_refusals_pkey", columns: [table.tenantId, table.idempotencyKey] })],
);

// ---------------------------------------------------------------------------------------------
// Reconciliation (reconciliation/): runs, findings and their audit trail, the scheduled
// watermark, leases that keep two Router processes from running one window at once, and the
// payments seen in flight that later runs must look at again.

/** One reconciliation run and its summary. */
export const reconRuns = router.table(
  "recon_runs",
  {
    /** "rcr_" + 26 characters sortable by start time. */
    id: text("id").primaryKey(),
    /** "scheduled" or "manual". */
    trigger: text("trigger").notNull(),
    requestedBy: text("requested_by").notNull().default(""),
    windowFrom: timestamp("window_from", { withTimezone: true, mode: "date" }).notNull(),
    windowTo: timestamp("window_to", { withTimezone: true, mode: "date" }).notNull(),
    /** "running", "completed" or "failed". */
    status: text("status").notNull(),
    startedAt: timestamp("started_at", { withTimezone: true, mode: "date" }).notNull(),
    finishedAt: timestamp("finished_at", { withTimezone: true, mode: "date" }),
    durationMs: integer("duration_ms").notNull().default(0),
    paymentsChecked: bigint("payments_checked", { mode: "number" }).notNull().default(0),
    gatewayTransactionsChecked: bigint("gateway_transactions_checked", { mode: "number" }).notNull().default(0),
    ledgerTransfersChecked: bigint("ledger_transfers_checked", { mode: "number" }).notNull().default(0),
    checked: bigint("checked", { mode: "number" }).notNull().default(0),
    matched: bigint("matched", { mode: "number" }).notNull().default(0),
    deferred: bigint("deferred", { mode: "number" }).notNull().default(0),
    /** FindingType name → mismatches of that type seen in the run. */
    findingsByType: jsonb("findings_by_type").$type<Record<string, number>>().notNull().default(sql`'{}'::jsonb`),
    findingsOpened: integer("findings_opened").notNull().default(0),
    autoResolved: integer("auto_resolved").notNull().default(0),
    error: text("error").notNull().default(""),
  },
  (table) => [check("recon_runs_window", sql`${table.windowTo} > ${table.windowFrom}`)],
);

/**
 * A mismatch, raised once per (type, subject): later runs that see it again do not raise it
 * again, so a case stays one case however many runs look at it.
 */
export const reconFindings = router.table(
  "recon_findings",
  {
    /** "rcf_" + 26 characters sortable by detection time. */
    id: text("id").primaryKey(),
    type: smallint("type").notNull(),
    severity: smallint("severity").notNull(),
    /** FindingStatus: 1 open, 2 auto-resolved, 3 resolved by an operator. */
    status: smallint("status").notNull(),
    subject: text("subject").notNull(),
    paymentId: text("payment_id").notNull().default(""),
    tenantId: text("tenant_id").notNull().default(""),
    gateway: text("gateway").notNull().default(""),
    gatewayTransactionId: text("gateway_transaction_id").notNull().default(""),
    ledgerTransferId: text("ledger_transfer_id").notNull().default(""),
    expectedAmountMinor: bigint("expected_amount_minor", { mode: "bigint" }).notNull().default(sql`0`),
    observedAmountMinor: bigint("observed_amount_minor", { mode: "bigint" }).notNull().default(sql`0`),
    expectedCurrency: text("expected_currency").notNull().default(""),
    observedCurrency: text("observed_currency").notNull().default(""),
    detail: text("detail").notNull(),
    runId: text("run_id").notNull(),
    detectedAt: timestamp("detected_at", { withTimezone: true, mode: "date" }).notNull(),
    resolvedAt: timestamp("resolved_at", { withTimezone: true, mode: "date" }),
    resolvedBy: text("resolved_by").notNull().default(""),
    resolutionReason: text("resolution_reason").notNull().default(""),
    /** The correction asked for (kept to recognise a retry) and the Ledger transfer that made it. */
    correction: jsonb("correction").$type<{ debitAccountId: string; creditAccountId: string; amountMinor: string; currency: string }>(),
    correctionTransferId: text("correction_transfer_id").notNull().default(""),
  },
  (table) => [
    unique("recon_findings_type_subject").on(table.type, table.subject),
    check("recon_findings_status_known", sql`${table.status} between 1 and 3`),
    // ListFindings: newest first, by status or by payment.
    index("recon_findings_status_idx").on(table.status, table.id),
    index("recon_findings_payment_idx").on(table.paymentId).where(sql`${table.paymentId} <> ''`),
  ],
);

/** A finding's audit trail: who did what, when and why. Append-only. */
export const reconFindingEvents = router.table(
  "recon_finding_events",
  {
    id: bigint("id", { mode: "bigint" }).generatedAlwaysAsIdentity().primaryKey(),
    findingId: text("finding_id").notNull().references(() => reconFindings.id),
    at: timestamp("at", { withTimezone: true, mode: "date" }).notNull(),
    actor: text("actor").notNull(),
    action: text("action").notNull(),
    note: text("note").notNull().default(""),
    transferId: text("transfer_id").notNull().default(""),
  },
  (table) => [index("recon_finding_events_finding_idx").on(table.findingId, table.id)],
);

/** How far scheduled reconciliation has got: the end of the last window it finished. */
export const reconWatermark = router.table("recon_watermark", {
  name: text("name").primaryKey(),
  windowEnd: timestamp("window_end", { withTimezone: true, mode: "date" }).notNull(),
  updatedAt: timestamp("updated_at", { withTimezone: true, mode: "date" }).notNull(),
});

/** Who runs a window now: a row per key, taken while `until` has passed, renewed while running. */
export const reconLeases = router.table("recon_leases", {
  key: text("key").primaryKey(),
  owner: text("owner").notNull(),
  until: timestamp("until", { withTimezone: true, mode: "date" }).notNull(),
});

/**
 * Payments a run found still in flight (not final, not yet stuck): each later run looks at them
 * again until they are final and checked, so moving the watermark past them loses none.
 */
export const reconPending = router.table("recon_pending", {
  paymentId: text("payment_id").primaryKey(),
  since: timestamp("since", { withTimezone: true, mode: "date" }).notNull(),
});
