// Reconciliation's reads and writes in PostgreSQL (schema "router"). Payments are read by id
// range: a payment id starts with its creation time to the millisecond (ids.ts), so a window of
// creation time is a range of the primary key, and a run reads only the payments of its window,
// whatever the size of the history. A finding is raised once per (type, subject), its audit event
// and (when critical) its outbox event in the same transaction.
import { create } from "@bufbuild/protobuf";
import { and, asc, desc, eq, gte, inArray, lt, lte, or, sql, type SQL } from "drizzle-orm";
import { ReconciliationFindingRaisedSchema } from "../../../gen/cowrie/events/v1/events_pb.js";
import { FindingStatus, FindingType, Severity } from "../../../gen/cowrie/router/v1/reconciliation_pb.js";
import type { Db, Tx } from "../../runtime/db.js";
import { appendEvents } from "../../runtime/events.js";
import { timeSortableId } from "../../runtime/ids.js";
import { gatewayCalls, outbox, payments, reconFindingEvents, reconFindings, reconLeases, reconPending, reconRuns, reconWatermark } from "../schema.js";
import type { PaymentRow } from "../store.js";

export type RunRow = typeof reconRuns.$inferSelect;
export type FindingRow = typeof reconFindings.$inferSelect;
export type FindingEventRow = typeof reconFindingEvents.$inferSelect;

/** Who the engine's own steps are recorded as in an audit trail. */
export const ENGINE_ACTOR = "reconciliation";
export const FINDING_EVENT_TYPE = "reconciliation.finding.raised";

/** The smallest payment id created at or after `ms`: "pay_" and the 10 time characters. */
export function paymentIdFloor(ms: number): string {
  return `pay_${timeSortableId(Math.max(0, ms)).slice(0, 10)}`;
}

/** Payments created in [from, to) with id after `afterId`, in id order, at most `limit`. */
export function paymentsInWindow(db: Db, from: Date, to: Date, afterId: string, limit: number): Promise<PaymentRow[]> {
  const lower = afterId === "" ? gte(payments.id, paymentIdFloor(from.getTime())) : sql`${payments.id} > ${afterId}`;
  return db
    .select()
    .from(payments)
    .where(and(lower, lt(payments.id, paymentIdFloor(to.getTime()))))
    .orderBy(asc(payments.id))
    .limit(limit);
}

/** Only the id and tenant of payments created in [from, to): enough to derive their Ledger ids. */
export function paymentKeysInWindow(db: Db, from: Date, to: Date, afterId: string, limit: number): Promise<{ id: string; tenantId: string; kind: number }[]> {
  const lower = afterId === "" ? gte(payments.id, paymentIdFloor(from.getTime())) : sql`${payments.id} > ${afterId}`;
  return db
    .select({ id: payments.id, tenantId: payments.tenantId, kind: payments.kind })
    .from(payments)
    .where(and(lower, lt(payments.id, paymentIdFloor(to.getTime()))))
    .orderBy(asc(payments.id))
    .limit(limit);
}

/** One tenant's payments created in [from, to], by the (tenant, created_at) index. */
export function tenantPaymentKeys(db: Db, tenantId: string, from: Date, to: Date, afterId: string, limit: number): Promise<{ id: string; tenantId: string; kind: number }[]> {
  return db
    .select({ id: payments.id, tenantId: payments.tenantId, kind: payments.kind })
    .from(payments)
    .where(and(eq(payments.tenantId, tenantId), gte(payments.createdAt, from), lte(payments.createdAt, to), sql`${payments.id} > ${afterId}`))
    .orderBy(asc(payments.id))
    .limit(limit);
}

export function paymentsByIds(db: Db, ids: readonly string[]): Promise<PaymentRow[]> {
  if (ids.length === 0) return Promise.resolve([]);
  return db.select().from(payments).where(inArray(payments.id, [...ids]));
}

/** The oldest payment's creation time: where the first scheduled run starts. */
export async function oldestPaymentAt(db: Db): Promise<Date | undefined> {
  const [row] = await db.select({ createdAt: payments.createdAt }).from(payments).orderBy(asc(payments.id)).limit(1);
  return row?.createdAt;
}

/** OUTCOME_UNKNOWN payments the resolver flagged (the partial index payments_outcome_unknown_idx). */
export function flaggedUnknown(db: Db, limit: number): Promise<PaymentRow[]> {
  return db
    .select()
    .from(payments)
    .where(and(sql`${payments.status} = 3`, eq(payments.needsReconciliation, true)))
    .limit(limit);
}

/** The gateways each payment called, and with which operations (money calls only). */
export async function calledGateways(db: Db, paymentIds: readonly string[]): Promise<Map<string, { gateway: string; operation: string; outcome: string }[]>> {
  const calls = new Map<string, { gateway: string; operation: string; outcome: string }[]>();
  if (paymentIds.length === 0) return calls;
  const rows = await db
    .select({ paymentId: gatewayCalls.paymentId, gateway: gatewayCalls.gateway, operation: gatewayCalls.operation, outcome: gatewayCalls.outcome })
    .from(gatewayCalls)
    .where(and(inArray(gatewayCalls.paymentId, [...paymentIds]), sql`${gatewayCalls.operation} <> 'status'`));
  for (const row of rows) {
    const list = calls.get(row.paymentId) ?? [];
    list.push(row);
    calls.set(row.paymentId, list);
  }
  return calls;
}

// ---------------------------------------------------------------------------------------------
// Pending payments, watermark, leases

export async function addPending(db: Db, paymentIds: readonly string[], since: Date): Promise<void> {
  if (paymentIds.length === 0) return;
  await db.insert(reconPending).values(paymentIds.map((paymentId) => ({ paymentId, since }))).onConflictDoNothing();
}

export async function removePending(db: Db, paymentIds: readonly string[]): Promise<void> {
  if (paymentIds.length === 0) return;
  await db.delete(reconPending).where(inArray(reconPending.paymentId, [...paymentIds]));
}

/** Pending payment ids after `afterId`, in id order. */
export async function pendingAfter(db: Db, afterId: string, limit: number): Promise<string[]> {
  const rows = await db
    .select({ paymentId: reconPending.paymentId })
    .from(reconPending)
    .where(sql`${reconPending.paymentId} > ${afterId}`)
    .orderBy(asc(reconPending.paymentId))
    .limit(limit);
  return rows.map((row) => row.paymentId);
}

export async function readWatermark(db: Db, name: string): Promise<Date | undefined> {
  const [row] = await db.select().from(reconWatermark).where(eq(reconWatermark.name, name));
  return row?.windowEnd;
}

export async function writeWatermark(db: Db, name: string, windowEnd: Date): Promise<void> {
  const now = new Date();
  await db
    .insert(reconWatermark)
    .values({ name, windowEnd, updatedAt: now })
    .onConflictDoUpdate({ target: reconWatermark.name, set: { windowEnd, updatedAt: now } });
}

/**
 * Takes the lease `key` for `ttlMs` unless another owner holds it unexpired; also renews one this
 * owner holds. One statement, so two processes racing for it cannot both win.
 */
export async function takeLease(db: Db, key: string, owner: string, ttlMs: number): Promise<boolean> {
  const until = new Date(Date.now() + ttlMs);
  const rows = await db
    .insert(reconLeases)
    .values({ key, owner, until })
    .onConflictDoUpdate({
      target: reconLeases.key,
      set: { owner, until },
      setWhere: or(eq(reconLeases.owner, owner), lt(reconLeases.until, sql`now()`)),
    })
    .returning({ owner: reconLeases.owner });
  return rows.length === 1;
}

export async function releaseLease(db: Db, key: string, owner: string): Promise<void> {
  await db.delete(reconLeases).where(and(eq(reconLeases.key, key), eq(reconLeases.owner, owner)));
}

// ---------------------------------------------------------------------------------------------
// Runs

export function newRunId(nowMs = Date.now()): string {
  return `rcr_${timeSortableId(nowMs)}`;
}

export async function startRun(db: Db, run: Pick<RunRow, "id" | "trigger" | "requestedBy" | "windowFrom" | "windowTo" | "startedAt">): Promise<void> {
  await db.insert(reconRuns).values({ ...run, status: "running" });
}

export async function finishRun(db: Db, id: string, fields: Partial<RunRow>): Promise<RunRow> {
  const [row] = await db.update(reconRuns).set(fields).where(eq(reconRuns.id, id)).returning();
  if (!row) throw new Error(`reconciliation run ${id} vanished`);
  return row;
}

export async function findRun(db: Db, id: string): Promise<RunRow | undefined> {
  const [row] = await db.select().from(reconRuns).where(eq(reconRuns.id, id));
  return row;
}

export function listRuns(db: Db, beforeId: string | undefined, limit: number): Promise<RunRow[]> {
  return db
    .select()
    .from(reconRuns)
    .where(beforeId ? lt(reconRuns.id, beforeId) : undefined)
    .orderBy(desc(reconRuns.id))
    .limit(limit);
}

// ---------------------------------------------------------------------------------------------
// Findings

/** A mismatch as the engine describes it, before it is stored. */
export interface Detection {
  type: FindingType;
  severity: Severity;
  subject: string;
  paymentId?: string;
  tenantId?: string;
  gateway?: string;
  gatewayTransactionId?: string;
  ledgerTransferId?: string;
  expectedAmountMinor?: bigint;
  observedAmountMinor?: bigint;
  expectedCurrency?: string;
  observedCurrency?: string;
  detail: string;
}

export function newFindingId(nowMs = Date.now()): string {
  return `rcf_${timeSortableId(nowMs)}`;
}

/** A FindingType or Severity name as events and metrics spell it: "failed_but_debited". */
export function enumName(values: object, value: number): string {
  const name = (values as Record<number, string>)[value] ?? String(value);
  return name.toLowerCase();
}

/**
 * Stores a detection unless the same (type, subject) is already known; for a new critical
 * finding, writes its event to the outbox in the same transaction. Returns the finding and
 * whether this call raised it.
 */
export async function raiseFinding(db: Db, detection: Detection, runId: string, now: Date): Promise<{ finding: FindingRow; created: boolean }> {
  return db.transaction(async (tx) => {
    const [inserted] = await tx
      .insert(reconFindings)
      .values({
        id: newFindingId(now.getTime()),
        type: detection.type,
        severity: detection.severity,
        status: FindingStatus.OPEN,
        subject: detection.subject,
        paymentId: detection.paymentId ?? "",
        tenantId: detection.tenantId ?? "",
        gateway: detection.gateway ?? "",
        gatewayTransactionId: detection.gatewayTransactionId ?? "",
        ledgerTransferId: detection.ledgerTransferId ?? "",
        expectedAmountMinor: detection.expectedAmountMinor ?? 0n,
        observedAmountMinor: detection.observedAmountMinor ?? 0n,
        expectedCurrency: detection.expectedCurrency ?? "",
        observedCurrency: detection.observedCurrency ?? "",
        detail: detection.detail.slice(0, 2000),
        runId,
        detectedAt: now,
      })
      .onConflictDoNothing({ target: [reconFindings.type, reconFindings.subject] })
      .returning();
    if (!inserted) {
      const [existing] = await tx.select().from(reconFindings).where(and(eq(reconFindings.type, detection.type), eq(reconFindings.subject, detection.subject)));
      if (!existing) throw new Error(`finding ${detection.subject} vanished`);
      return { finding: existing, created: false };
    }
    await tx.insert(reconFindingEvents).values({ findingId: inserted.id, at: now, actor: ENGINE_ACTOR, action: "opened", note: inserted.detail });
    if (inserted.severity === Severity.CRITICAL) await appendFindingEvent(tx, inserted);
    return { finding: inserted, created: true };
  });
}

/**
 * The event of a critical finding, written to the Router's outbox in the finding's transaction:
 * the relay publishes it like every other event.
 */
async function appendFindingEvent(tx: Tx, finding: FindingRow): Promise<void> {
  const data = create(ReconciliationFindingRaisedSchema, {
    findingId: finding.id,
    findingType: enumName(FindingType, finding.type),
    severity: enumName(Severity, finding.severity),
    subject: finding.subject,
    paymentId: finding.paymentId,
    gateway: finding.gateway,
    gatewayTransactionId: finding.gatewayTransactionId,
    ledgerTransferId: finding.ledgerTransferId,
    detail: finding.detail,
    runId: finding.runId,
  });
  const subject = finding.paymentId !== "" ? `payment/${finding.paymentId}` : `finding/${finding.id}`;
  await appendEvents(tx, outbox, "router", [{ type: FINDING_EVENT_TYPE, subject, tenantId: finding.tenantId, schema: ReconciliationFindingRaisedSchema, data }]);
}

/** Closes an OPEN finding as settled by the engine, with its audit event; false when it was not open. */
export async function autoResolveFinding(db: Db, findingId: string, note: string, now: Date): Promise<boolean> {
  return db.transaction(async (tx) => {
    const [moved] = await tx
      .update(reconFindings)
      .set({ status: FindingStatus.AUTO_RESOLVED, resolvedAt: now, resolvedBy: ENGINE_ACTOR, resolutionReason: note })
      .where(and(eq(reconFindings.id, findingId), eq(reconFindings.status, FindingStatus.OPEN)))
      .returning({ id: reconFindings.id });
    if (!moved) return false;
    await tx.insert(reconFindingEvents).values({ findingId, at: now, actor: ENGINE_ACTOR, action: "auto_resolved", note });
    return true;
  });
}

/** An attempt to settle a finding that did not settle it, kept in its trail. */
export async function noteFinding(db: Db, findingId: string, action: string, note: string, now: Date): Promise<void> {
  await db.insert(reconFindingEvents).values({ findingId, at: now, actor: ENGINE_ACTOR, action, note: note.slice(0, 2000) });
}

/** An operator's resolution; undefined when the finding is no longer OPEN (someone else resolved it). */
export async function resolveFinding(
  db: Db,
  findingId: string,
  fields: { operator: string; reason: string; correction: FindingRow["correction"]; transferId: string },
  now: Date,
): Promise<FindingRow | undefined> {
  return db.transaction(async (tx) => {
    const [moved] = await tx
      .update(reconFindings)
      .set({
        status: FindingStatus.RESOLVED,
        resolvedAt: now,
        resolvedBy: fields.operator,
        resolutionReason: fields.reason,
        correction: fields.correction,
        correctionTransferId: fields.transferId,
      })
      .where(and(eq(reconFindings.id, findingId), eq(reconFindings.status, FindingStatus.OPEN)))
      .returning();
    if (!moved) return undefined;
    await tx.insert(reconFindingEvents).values({ findingId, at: now, actor: fields.operator, action: "resolved", note: fields.reason, transferId: fields.transferId });
    return moved;
  });
}

export async function findFinding(db: Db, id: string): Promise<FindingRow | undefined> {
  const [row] = await db.select().from(reconFindings).where(eq(reconFindings.id, id));
  return row;
}

export function findingEvents(db: Db, findingId: string): Promise<FindingEventRow[]> {
  return db.select().from(reconFindingEvents).where(eq(reconFindingEvents.findingId, findingId)).orderBy(asc(reconFindingEvents.id));
}

export interface FindingFilters {
  status?: FindingStatus;
  type?: FindingType;
  minSeverity?: Severity;
  paymentId?: string;
}

/** Newest first by id; `beforeId` is the last finding of the previous page. */
export function listFindings(db: Db, filters: FindingFilters, beforeId: string | undefined, limit: number): Promise<FindingRow[]> {
  const conditions: (SQL | undefined)[] = [];
  if (filters.status) conditions.push(eq(reconFindings.status, filters.status));
  if (filters.type) conditions.push(eq(reconFindings.type, filters.type));
  if (filters.minSeverity) conditions.push(gte(reconFindings.severity, filters.minSeverity));
  if (filters.paymentId) conditions.push(eq(reconFindings.paymentId, filters.paymentId));
  if (beforeId) conditions.push(lt(reconFindings.id, beforeId));
  return db
    .select()
    .from(reconFindings)
    .where(and(...conditions))
    .orderBy(desc(reconFindings.id))
    .limit(limit);
}
