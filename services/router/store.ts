// The Router's reads and writes in PostgreSQL. Three rules hold every write together:
//  - a payment and its idempotency key are written in one transaction, before money moves;
//  - a status changes only by compare-and-set on (status, version), with its history row in the
//    same transaction, so a driver that lost the race re-reads and acts on what is there now;
//  - every status change writes its event (messages.ts) to the outbox in the same transaction;
//  - a refund reserves its amount on the refunded payment in the transaction that records it,
//    under the refunded payment's row lock, and gives it back in the transaction that fails it.
import { createHash } from "node:crypto";
import { and, asc, desc, eq, gte, inArray, isNull, lt, or, sql, type SQL } from "drizzle-orm";
import { PaymentKind, PaymentStatus } from "../../gen/cowrie/router/v1/router_pb.js";
import { transact, transactPipelined, type Db, type FinishingStatement, type Tx } from "../runtime/db.js";
import { timeSortableId } from "../runtime/ids.js";
import { creation, transition } from "./lifecycle.js";
import { eventsInsert } from "../runtime/events.js";
import { paymentStatusChanged } from "./messages.js";
import { gatewayCalls, outbox, paymentTransitions, payments, refundRefusals, type RequestFields } from "./schema.js";

export type PaymentRow = typeof payments.$inferSelect;
export type NewPayment = typeof payments.$inferInsert;
export type TransitionRow = typeof paymentTransitions.$inferSelect;
export type RefusalRow = typeof refundRefusals.$inferSelect;
export type GatewayCallRow = typeof gatewayCalls.$inferSelect;

// ---------------------------------------------------------------------------------------------
// Ids and fingerprints

/** "pay_" + 26 characters that sort by creation time, to the millisecond. */
export function newPaymentId(nowMs = Date.now()): string {
  return `pay_${timeSortableId(nowMs)}`;
}

/** SHA-256 of the request's parameters in a fixed order. */
export function fingerprintOf(fields: RequestFields): string {
  return createHash("sha256").update(JSON.stringify(Object.entries(fields).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))).digest("base64url");
}

/** The first parameter that differs between two uses of one idempotency key, if any. */
export function differingField(stored: RequestFields, incoming: RequestFields): string | undefined {
  if (stored.operation !== incoming.operation) return "operation";
  for (const key of new Set([...Object.keys(stored), ...Object.keys(incoming)])) {
    if (stored[key] !== incoming[key]) return key;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Payments

/**
 * Records a payment (CREATED) and its creation in one transaction bound to the call's deadline.
 * When the key was used before, returns the stored payment instead (`created` false); the caller
 * compares parameters. ON CONFLICT waits for a concurrent insert of the same key to commit, so
 * twenty racing calls find one payment.
 */
export async function insertPayment(db: Db, payment: NewPayment, reason: string): Promise<{ row: PaymentRow; created: boolean }> {
  return transactPipelined<{ row: PaymentRow; created: boolean }>(db, async (tx) => {
    // A payment that starts in PROCESSING has taken two steps (CREATED, then PROCESSING): version 1,
    // so that its two events carry different versions.
    const [inserted] = await tx
      .insert(payments)
      .values({ ...payment, version: payment.status === PaymentStatus.PROCESSING ? 1 : 0 })
      .onConflictDoNothing({ target: [payments.tenantId, payments.idempotencyKey] })
      .returning();
    if (inserted) return { result: { row: inserted, created: true }, finish: creationStatements(tx, inserted, reason) };
    const existing = await findByKey(tx, payment.tenantId, payment.idempotencyKey);
    if (!existing) throw new Error(`payment under key ${payment.idempotencyKey} vanished`);
    return { result: { row: existing, created: false }, finish: [] };
  });
}

/** Writes the history and events of a new payment, in the caller's transaction (refunds). */
async function recordCreation(tx: Tx, row: PaymentRow, reason: string): Promise<void> {
  for (const statement of creationStatements(tx, row, reason)) await statement;
}

/**
 * The statements that write a new payment's history and events. A payment inserted straight into
 * PROCESSING (the request path, which starts moving its money at once) also gets its CREATED →
 * PROCESSING step, in the same statement, so the history is the same path as for any other payment.
 */
function creationStatements(tx: Tx, row: PaymentRow, reason: string): FinishingStatement[] {
  const change = creation(reason);
  const steps = [{ paymentId: row.id, fromStatus: change.from, toStatus: change.to, at: row.createdAt, reason }];
  const events = [paymentStatusChanged({ ...row, status: change.to, version: 0 }, change.from, reason)];
  if (row.status === PaymentStatus.PROCESSING) {
    transition({ status: change.to }, PaymentStatus.PROCESSING, MOVING_FUNDS);
    steps.push({ paymentId: row.id, fromStatus: change.to, toStatus: PaymentStatus.PROCESSING, at: row.createdAt, reason: MOVING_FUNDS });
    events.push(paymentStatusChanged(row, change.to, MOVING_FUNDS));
  }
  return [tx.insert(paymentTransitions).values(steps), eventsInsert(tx, outbox, "router", events)];
}

/** The reason recorded when a payment's money starts moving. */
export const MOVING_FUNDS = "moving funds";

export async function findByKey(db: Db | Tx, tenantId: string, idempotencyKey: string): Promise<PaymentRow | undefined> {
  const [row] = await db.select().from(payments).where(and(eq(payments.tenantId, tenantId), eq(payments.idempotencyKey, idempotencyKey)));
  return row;
}

/** A payment of the tenant; another tenant's id is as absent as an unknown one. */
export async function findPayment(db: Db, tenantId: string, id: string): Promise<PaymentRow | undefined> {
  const [row] = await db.select().from(payments).where(and(eq(payments.id, id), eq(payments.tenantId, tenantId)));
  return row;
}

export async function findById(db: Db, id: string): Promise<PaymentRow | undefined> {
  const [row] = await db.select().from(payments).where(eq(payments.id, id));
  return row;
}

export function paymentHistory(db: Db, id: string): Promise<TransitionRow[]> {
  return db.select().from(paymentTransitions).where(eq(paymentTransitions.paymentId, id)).orderBy(asc(paymentTransitions.id));
}

export type OutcomeFields = Partial<
  Pick<
    PaymentRow,
    | "failureCode"
    | "failureMessage"
    | "transferId"
    | "gateway"
    | "gatewayTransactionId"
    | "holdId"
    | "nextCheckAt"
    | "checks"
    | "needsReconciliation"
    | "riskDecision"
    | "riskScore"
    | "riskReasons"
  >
>;

/**
 * Moves `payment` to `to` by compare-and-set and records the change, in one transaction.
 * Returns the updated row, or undefined when the payment is no longer the one read (someone
 * else moved it): re-read and act on its current state. Failing or canceling a refund gives its
 * reserved amount back to the refunded payment in the same transaction.
 *
 * `bound` ties the transaction to the call's deadline. Outcomes of money that already moved are
 * recorded unbound: the caller being gone does not make the movement less real.
 */
export async function persistTransition(
  db: Db,
  payment: PaymentRow,
  to: PaymentStatus,
  reason: string,
  fields: OutcomeFields,
  bound: boolean,
): Promise<PaymentRow | undefined> {
  transition({ status: payment.status as PaymentStatus }, to, reason);
  const now = new Date();
  const work = async (tx: Tx) => {
    const [moved] = await tx
      .update(payments)
      .set({ ...fields, status: to, version: payment.version + 1, updatedAt: now, leaseUntil: null })
      .where(and(eq(payments.id, payment.id), eq(payments.status, payment.status), eq(payments.version, payment.version)))
      .returning();
    if (!moved) return { result: undefined, finish: [] };
    const finish: FinishingStatement[] = [
      tx.insert(paymentTransitions).values({ paymentId: moved.id, fromStatus: payment.status, toStatus: to, at: now, reason }),
      eventsInsert(tx, outbox, "router", [paymentStatusChanged(moved, payment.status as PaymentStatus, reason)]),
    ];
    if (moved.refundedPaymentId && (to === PaymentStatus.FAILED || to === PaymentStatus.CANCELED)) {
      finish.push(tx
        .update(payments)
        .set({ refundedMinor: sql`${payments.refundedMinor} - ${moved.amountMinor}`, updatedAt: now })
        .where(eq(payments.id, moved.refundedPaymentId)));
    }
    return { result: moved, finish };
  };
  return bound ? transactPipelined(db, work) : transactPipelined(db, work, null);
}

// ---------------------------------------------------------------------------------------------
// Listing

export interface ListFilters {
  tenantId: string;
  status?: PaymentStatus;
  kind?: PaymentKind;
  walletId?: string;
  createdFrom?: Date;
  createdTo?: Date;
}

/** Newest first by (created_at, id); `after` is the last row of the previous page. */
export function listPayments(db: Db, filters: ListFilters, after: { createdAt: Date; id: string } | undefined, limit: number): Promise<PaymentRow[]> {
  const conditions: (SQL | undefined)[] = [eq(payments.tenantId, filters.tenantId)];
  if (filters.status) conditions.push(eq(payments.status, filters.status));
  if (filters.kind) conditions.push(eq(payments.kind, filters.kind));
  if (filters.walletId) {
    conditions.push(or(eq(payments.sourceWalletId, filters.walletId), eq(payments.destinationWalletId, filters.walletId)));
  }
  if (filters.createdFrom) conditions.push(gte(payments.createdAt, filters.createdFrom));
  if (filters.createdTo) conditions.push(lt(payments.createdAt, filters.createdTo));
  if (after) {
    conditions.push(sql`(${payments.createdAt}, ${payments.id}) < (${after.createdAt.toISOString()}::timestamptz, ${after.id})`);
  }
  return db
    .select()
    .from(payments)
    .where(and(...conditions))
    .orderBy(desc(payments.createdAt), desc(payments.id))
    .limit(limit);
}

// ---------------------------------------------------------------------------------------------
// Refunds

export interface RefundRefusal {
  code: string;
  message: string;
}

/**
 * How much a refund of `requested` (0: all that is left) may take from `original`, or why it may
 * not. Pure: the caller holds the original's row lock, so the answer stays true until commit.
 */
export function refundDecision(original: PaymentRow, requested: bigint): { amountMinor: bigint } | RefundRefusal {
  if (original.kind !== PaymentKind.INTERNAL && original.kind !== PaymentKind.PAY_IN) {
    return { code: "payment_not_refundable", message: `payment ${original.id} is a ${PaymentKind[original.kind]} payment; only INTERNAL and PAY_IN payments can be refunded` };
  }
  if (original.status !== PaymentStatus.SUCCEEDED) {
    return { code: "payment_not_succeeded", message: `payment ${original.id} is ${PaymentStatus[original.status]}; only a SUCCEEDED payment can be refunded` };
  }
  const left = original.amountMinor - original.refundedMinor;
  if (left === 0n) {
    return { code: "fully_refunded", message: `payment ${original.id} is already fully refunded: 0 of ${original.amountMinor} left to refund` };
  }
  if (requested > left) {
    return { code: "exceeds_refundable", message: `refund of ${requested} exceeds what is left to refund on payment ${original.id}: ${left} of ${original.amountMinor}` };
  }
  return { amountMinor: requested === 0n ? left : requested };
}

export type RefundOpening =
  | { kind: "not_found" }
  | { kind: "existing"; row: PaymentRow }
  | { kind: "refused_before"; refusal: RefusalRow }
  | { kind: "refused"; refusal: RefundRefusal }
  | { kind: "created"; refund: PaymentRow; original: PaymentRow };

/** The key was taken by a concurrent call for another payment; the transaction rolls back. */
class KeyTaken extends Error {}

export interface RefundInput {
  id: string;
  tenantId: string;
  idempotencyKey: string;
  fingerprint: string;
  request: RequestFields;
  paymentId: string;
  /** 0: all that is left. */
  requestedMinor: bigint;
  reason: string;
  now: Date;
}

/**
 * One transaction: lock the refunded payment (every refund of it queues here), look the key up
 * (now that any concurrent use of it for this payment has committed), then either record the
 * refusal under the key or reserve the amount and record the refund payment with its creation.
 */
export async function openRefund(db: Db, input: RefundInput): Promise<RefundOpening> {
  try {
    return await transact(db, async (tx): Promise<RefundOpening> => {
      const [original] = await tx
        .select()
        .from(payments)
        .where(and(eq(payments.id, input.paymentId), eq(payments.tenantId, input.tenantId)))
        .for("update");
      if (!original) return { kind: "not_found" };
      const existing = await findByKey(tx, input.tenantId, input.idempotencyKey);
      if (existing) return { kind: "existing", row: existing };
      const [refusedBefore] = await tx
        .select()
        .from(refundRefusals)
        .where(and(eq(refundRefusals.tenantId, input.tenantId), eq(refundRefusals.idempotencyKey, input.idempotencyKey)));
      if (refusedBefore) return { kind: "refused_before", refusal: refusedBefore };

      const decision = refundDecision(original, input.requestedMinor);
      if (!("amountMinor" in decision)) {
        await tx
          .insert(refundRefusals)
          .values({ tenantId: input.tenantId, idempotencyKey: input.idempotencyKey, fingerprint: input.fingerprint, request: input.request, ...decision, createdAt: input.now })
          .onConflictDoNothing();
        return { kind: "refused", refusal: decision };
      }
      const amountMinor = decision.amountMinor;
      // The reservation re-states every condition, so that even without the lock it could not
      // over-refund; the check constraint is the last line behind it.
      const [reserved] = await tx
        .update(payments)
        .set({ refundedMinor: sql`${payments.refundedMinor} + ${amountMinor}`, updatedAt: input.now })
        .where(and(
          eq(payments.id, original.id),
          eq(payments.tenantId, input.tenantId),
          eq(payments.status, PaymentStatus.SUCCEEDED),
          sql`${payments.refundedMinor} + ${amountMinor} <= ${payments.amountMinor}`,
        ))
        .returning();
      if (!reserved) throw new Error(`refund reservation on ${original.id} failed under its row lock`);
      const [refund] = await tx
        .insert(payments)
        .values({
          id: input.id,
          tenantId: input.tenantId,
          idempotencyKey: input.idempotencyKey,
          fingerprint: input.fingerprint,
          request: input.request,
          kind: PaymentKind.REFUND,
          status: PaymentStatus.CREATED,
          amountMinor,
          currency: original.currency,
          sourceWalletId: original.destinationWalletId,
          // A PAY_IN's payer is outside Cowrie: its refund goes back through the gateway that took it.
          destinationWalletId: original.sourceWalletId,
          gateway: original.kind === PaymentKind.PAY_IN ? original.gateway : "",
          feeMinor: 0n,
          reference: input.reason,
          refundedPaymentId: original.id,
          createdAt: input.now,
          updatedAt: input.now,
        })
        .onConflictDoNothing({ target: [payments.tenantId, payments.idempotencyKey] })
        .returning();
      if (!refund) throw new KeyTaken();
      await recordCreation(tx, refund, `refund of ${original.id}`);
      return { kind: "created", refund, original: reserved };
    });
  } catch (error) {
    if (!(error instanceof KeyTaken)) throw error;
    const row = await findByKey(db, input.tenantId, input.idempotencyKey);
    if (!row) throw new Error(`payment under key ${input.idempotencyKey} vanished`);
    return { kind: "existing", row };
  }
}

// ---------------------------------------------------------------------------------------------
// The completer's scan

/**
 * Takes up to `limit` payments left in CREATED or PROCESSING since before `cutoff`: locks them
 * with SKIP LOCKED (another completer takes others), leases them for `leaseMs` and commits, so no
 * connection is held while their money moves. A lease that runs out makes them eligible again.
 */
export async function claimUnfinished(db: Db, cutoff: Date, leaseMs: number, limit: number): Promise<PaymentRow[]> {
  return db.transaction(async (tx) => {
    const now = new Date();
    const stuck = await tx
      .select({ id: payments.id })
      .from(payments)
      .where(and(
        // Literal statuses, matching the partial index payments_unfinished_idx.
        sql`${payments.status} in (1, 2)`,
        lt(payments.updatedAt, cutoff),
        or(isNull(payments.leaseUntil), lt(payments.leaseUntil, now)),
      ))
      .orderBy(asc(payments.updatedAt))
      .limit(limit)
      .for("update", { skipLocked: true });
    if (stuck.length === 0) return [];
    return tx
      .update(payments)
      .set({ leaseUntil: new Date(now.getTime() + leaseMs) })
      .where(inArray(payments.id, stuck.map((row) => row.id)))
      .returning();
  });
}

// ---------------------------------------------------------------------------------------------
// Gateway payments

/** True for payments that move money through a gateway: pay-ins, payouts, refunds of pay-ins. */
export function isGatewayPayment(row: Pick<PaymentRow, "kind" | "destinationWalletId">): boolean {
  return row.kind === PaymentKind.PAY_IN || row.kind === PaymentKind.PAYOUT || (row.kind === PaymentKind.REFUND && row.destinationWalletId === "");
}

export function gatewayCallsOf(db: Db, paymentId: string): Promise<GatewayCallRow[]> {
  return db.select().from(gatewayCalls).where(eq(gatewayCalls.paymentId, paymentId)).orderBy(asc(gatewayCalls.sequence));
}

/**
 * Records a call as "sent" before it leaves, under the next sequence number, and the payment's
 * gateway with it, so that after a crash the call is known to have possibly reached the gateway.
 */
export async function recordSentCall(
  db: Db,
  call: Pick<GatewayCallRow, "paymentId" | "gateway" | "operation" | "reference" | "candidates" | "reason">,
): Promise<GatewayCallRow> {
  return transactPipelined(db, async (tx) => {
    const [row] = await tx
      .insert(gatewayCalls)
      .values({
        ...call,
        sequence: sql`(select coalesce(max(${gatewayCalls.sequence}), 0) + 1 from ${gatewayCalls} where ${gatewayCalls.paymentId} = ${call.paymentId})`,
        at: new Date(),
        outcome: "sent",
      })
      .returning();
    const finish = call.operation === "status" ? [] : [tx.update(payments).set({ gateway: call.gateway }).where(eq(payments.id, call.paymentId))];
    return { result: row as GatewayCallRow, finish };
  }, null);
}

export async function recordCallResult(
  db: Db,
  call: GatewayCallRow,
  result: Pick<GatewayCallRow, "outcome" | "code" | "action" | "gatewayCode" | "gatewayTransactionId" | "message" | "latencyMs">,
): Promise<GatewayCallRow> {
  const [row] = await db
    .update(gatewayCalls)
    .set(result)
    .where(and(eq(gatewayCalls.paymentId, call.paymentId), eq(gatewayCalls.sequence, call.sequence)))
    .returning();
  return row ?? { ...call, ...result };
}

/** Remembers the hold reserving a payment's money (its gateway is the one about to be called). */
export async function setHold(db: Db, paymentId: string, holdId: string, gateway: string): Promise<void> {
  await db.update(payments).set({ holdId, gateway }).where(eq(payments.id, paymentId));
}

/**
 * Takes up to `limit` payments in `status` (OUTCOME_UNKNOWN or IN_REVIEW) whose next check is
 * due, pushing their next check `leaseMs` ahead so that another process skips them meanwhile.
 */
export async function claimDue(db: Db, status: PaymentStatus.OUTCOME_UNKNOWN | PaymentStatus.IN_REVIEW, leaseMs: number, limit: number): Promise<PaymentRow[]> {
  return db.transaction(async (tx) => {
    const now = new Date();
    const due = await tx
      .select({ id: payments.id })
      .from(payments)
      // Literal statuses, matching the partial indexes payments_outcome_unknown_idx and payments_in_review_idx.
      .where(and(status === PaymentStatus.IN_REVIEW ? sql`${payments.status} = 7` : sql`${payments.status} = 3`, lt(payments.nextCheckAt, now)))
      .orderBy(asc(payments.nextCheckAt))
      .limit(limit)
      .for("update", { skipLocked: true });
    if (due.length === 0) return [];
    return tx
      .update(payments)
      .set({ nextCheckAt: new Date(now.getTime() + leaseMs) })
      .where(inArray(payments.id, due.map((row) => row.id)))
      .returning();
  });
}

/** The resolver asked and learned nothing final: when to ask next, and whether to flag the case. */
export async function rescheduleCheck(db: Db, payment: PaymentRow, nextCheckAt: Date, needsReconciliation: boolean): Promise<void> {
  await db
    .update(payments)
    .set({ nextCheckAt, checks: sql`${payments.checks} + 1`, needsReconciliation })
    .where(and(eq(payments.id, payment.id), eq(payments.version, payment.version)));
}

/** Keeps Risk's verdict on a payment that goes ahead (no status change). */
export async function setRisk(db: Db, payment: PaymentRow, fields: Pick<OutcomeFields, "riskDecision" | "riskScore" | "riskReasons">): Promise<PaymentRow> {
  const [row] = await db.update(payments).set(fields).where(eq(payments.id, payment.id)).returning();
  return row ?? { ...payment, ...fields };
}
