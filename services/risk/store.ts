// Risk's PostgreSQL reads and writes. A fired evaluation is one statement (decision, flags and, on
// REVIEW, the review and its opening event), so the hot path costs at most one round trip and one
// commit, and nothing at all when no rule fired.
import { and, asc, desc, eq, gt, gte, inArray, lt, sql, type SQL } from "drizzle-orm";
import { Decision, ReviewStatus } from "../../gen/cowrie/risk/v1/risk_pb.js";
import { create } from "@bufbuild/protobuf";
import { RiskEventSchema } from "../../gen/cowrie/events/v1/events_pb.js";
import { outboxRowOf, type NewEvent } from "../runtime/events.js";
import { rowsOf, type Db } from "../runtime/db.js";
import type { FiredRule, RuleCode, Verdict } from "./rules.js";
import { blocklist, decisions, flags, reviewEvents, reviews, settings } from "./schema.js";
import type { TenantSource } from "./settings.js";

export type FlagRow = typeof flags.$inferSelect;
export type ReviewRow = typeof reviews.$inferSelect;
export type ReviewEventRow = typeof reviewEvents.$inferSelect;
export type BlocklistRow = typeof blocklist.$inferSelect;

export interface EvaluatedPayment {
  tenantId: string;
  paymentId: string;
  userId: string;
  amountMinor: bigint;
  currency: string;
}

export interface StoredDecision extends Verdict {
  createdAt: Date;
}

function storedDecision(row: typeof decisions.$inferSelect): StoredDecision {
  return {
    decision: row.decision as Decision,
    score: row.score,
    reasons: row.reasons as RuleCode[],
    flags: row.flags as FiredRule[],
    createdAt: row.createdAt,
  };
}

export class RiskStore implements TenantSource {
  constructor(private readonly db: Db) {}

  // -------------------------------------------------------------------------------------------
  // Settings and blocklist

  async readVersioned(tenantId: string): Promise<{ settings: unknown; version: number } | undefined> {
    const [row] = await this.db.select({ settings: settings.settings, version: settings.version }).from(settings).where(eq(settings.tenantId, tenantId));
    return row;
  }

  readBlocklist(tenantId: string): Promise<{ kind: number; value: string }[]> {
    return this.db.select({ kind: blocklist.kind, value: blocklist.value }).from(blocklist).where(eq(blocklist.tenantId, tenantId));
  }

  /** Stores the settings; with expectedVersion > 0 only if it is still current. Returns the new version, or undefined on a stale one. */
  async writeSettings(tenantId: string, json: unknown, expectedVersion: number): Promise<number | undefined> {
    if (expectedVersion > 0) {
      const [row] = await this.db
        .update(settings)
        .set({ settings: json, version: sql`${settings.version} + 1`, updatedAt: new Date() })
        .where(and(eq(settings.tenantId, tenantId), eq(settings.version, expectedVersion)))
        .returning({ version: settings.version });
      return row?.version;
    }
    const [row] = await this.db
      .insert(settings)
      .values({ tenantId, settings: json, version: 1 })
      .onConflictDoUpdate({ target: settings.tenantId, set: { settings: json, version: sql`${settings.version} + 1`, updatedAt: new Date() } })
      .returning({ version: settings.version });
    return row?.version;
  }

  /** Bumps the tenant's version in the same statement as a blocklist change, so every process reloads. */
  private bumpVersion(tenantId: string, changed: SQL): SQL {
    return sql`insert into risk.settings (tenant_id, settings, version)
      select ${tenantId}, '{}'::jsonb, 1 where exists (${changed})
      on conflict (tenant_id) do update set version = risk.settings.version + 1, updated_at = now()`;
  }

  async addBlocklistEntry(tenantId: string, kind: number, value: string, reason: string): Promise<BlocklistRow> {
    const result = await this.db.execute(sql`
      with entry as (
        insert into risk.blocklist (tenant_id, kind, value, reason) values (${tenantId}, ${kind}, ${value}, ${reason})
        on conflict (tenant_id, kind, value) do update set reason = excluded.reason
        returning tenant_id, kind, value, reason, created_at),
      bumped as (${this.bumpVersion(tenantId, sql`select 1 from entry`)})
      select tenant_id as "tenantId", kind, value, reason, created_at as "createdAt" from entry`);
    const [row] = rowsOf<BlocklistRow & { createdAt: Date | string }>(result);
    if (!row) throw new Error("blocklist insert returned no row");
    return { ...row, createdAt: new Date(row.createdAt) };
  }

  /** True when the entry was there. */
  async removeBlocklistEntry(tenantId: string, kind: number, value: string): Promise<boolean> {
    const result = await this.db.execute(sql`
      with gone as (
        delete from risk.blocklist where tenant_id = ${tenantId} and kind = ${kind} and value = ${value} returning 1),
      bumped as (${this.bumpVersion(tenantId, sql`select 1 from gone`)})
      select count(*)::int as removed from gone`);
    return (rowsOf<{ removed: number }>(result)[0]?.removed ?? 0) > 0;
  }

  /** By kind, then value; `after` is the last entry of the previous page. */
  listBlocklist(tenantId: string, kind: number, limit: number, after: { kind: number; value: string } | undefined): Promise<BlocklistRow[]> {
    const conditions: SQL[] = [eq(blocklist.tenantId, tenantId)];
    if (kind !== 0) conditions.push(eq(blocklist.kind, kind));
    if (after) conditions.push(sql`(${blocklist.kind}, ${blocklist.value}) > (${after.kind}, ${after.value})`);
    return this.db.select().from(blocklist).where(and(...conditions)).orderBy(asc(blocklist.kind), asc(blocklist.value)).limit(limit);
  }

  // -------------------------------------------------------------------------------------------
  // Decisions

  async findDecision(tenantId: string, paymentId: string): Promise<StoredDecision | undefined> {
    const [row] = await this.db.select().from(decisions).where(and(eq(decisions.tenantId, tenantId), eq(decisions.paymentId, paymentId)));
    return row && storedDecision(row);
  }

  /**
   * Records a fired evaluation in one statement: the decision, a row per flag and, on REVIEW, a
   * PENDING review with its opening event. The first decision of a payment wins: when one is
   * already stored, nothing is written and the stored one comes back with inserted = false.
   */
  async recordDecision(payment: EvaluatedPayment, verdict: Verdict): Promise<{ stored: StoredDecision; inserted: boolean }> {
    const flagsJson = JSON.stringify(verdict.flags);
    const reasonsJson = JSON.stringify(verdict.reasons);
    const review = verdict.decision === Decision.REVIEW;
    const { tenantId, paymentId, userId, amountMinor, currency } = payment;
    const d = sql.raw("d");
    const result = await this.db.execute(sql`
      with d as (
        insert into risk.decisions (tenant_id, payment_id, user_id, amount_minor, currency, decision, score, reasons, flags)
        values (${tenantId}, ${paymentId}, ${userId}, ${amountMinor}, ${currency}, ${verdict.decision}, ${verdict.score}, ${reasonsJson}::jsonb, ${flagsJson}::jsonb)
        on conflict (tenant_id, payment_id) do nothing
        returning created_at),
      f as (
        insert into risk.flags (tenant_id, payment_id, user_id, rule, severity, action, detail, created_at)
        select ${tenantId}, ${paymentId}, ${userId}, x.rule, x.severity, x.action, x.detail, d.created_at
        from d, jsonb_to_recordset(${flagsJson}::jsonb) as x(rule text, severity smallint, action smallint, detail text)),
      r as (
        insert into risk.reviews (tenant_id, payment_id, user_id, amount_minor, currency, status, score, reasons, created_at)
        select ${tenantId}, ${paymentId}, ${userId}, ${amountMinor}, ${currency}, ${ReviewStatus.PENDING}, ${verdict.score}, ${reasonsJson}::jsonb, d.created_at
        from d where ${review}),
      e as (
        insert into risk.review_events (tenant_id, payment_id, status, actor, reason, at)
        select ${tenantId}, ${paymentId}, ${ReviewStatus.PENDING}, 'risk', ${verdict.reasons.join(", ")}, d.created_at
        from d where ${review}),
      o as (${outboxInsert(d, riskFlagged(payment, verdict))})
      select created_at as "createdAt" from d`);
    const [inserted] = rowsOf<{ createdAt: Date | string }>(result);
    if (inserted) return { stored: { ...verdict, createdAt: new Date(inserted.createdAt) }, inserted: true };
    const existing = await this.findDecision(tenantId, paymentId);
    if (!existing) throw new Error(`decision of ${paymentId} conflicted but cannot be read`);
    return { stored: existing, inserted: false };
  }

  // -------------------------------------------------------------------------------------------
  // Flags

  /** Newest first; `beforeId` is the last flag of the previous page. */
  listFlags(filter: { tenantId: string; userId: string; paymentId: string; from?: Date; to?: Date; beforeId?: bigint }, limit: number): Promise<FlagRow[]> {
    const conditions: SQL[] = [eq(flags.tenantId, filter.tenantId)];
    if (filter.userId !== "") conditions.push(eq(flags.userId, filter.userId));
    if (filter.paymentId !== "") conditions.push(eq(flags.paymentId, filter.paymentId));
    if (filter.from) conditions.push(gte(flags.createdAt, filter.from));
    if (filter.to) conditions.push(lt(flags.createdAt, filter.to));
    if (filter.beforeId !== undefined) conditions.push(lt(flags.id, filter.beforeId));
    return this.db.select().from(flags).where(and(...conditions)).orderBy(desc(flags.id)).limit(limit);
  }

  // -------------------------------------------------------------------------------------------
  // Reviews

  async findReview(tenantId: string, paymentId: string): Promise<{ review: ReviewRow; events: ReviewEventRow[] } | undefined> {
    const [review] = await this.db.select().from(reviews).where(and(eq(reviews.tenantId, tenantId), eq(reviews.paymentId, paymentId)));
    if (!review) return undefined;
    const events = await this.db.select().from(reviewEvents)
      .where(and(eq(reviewEvents.tenantId, tenantId), eq(reviewEvents.paymentId, paymentId))).orderBy(asc(reviewEvents.id));
    return { review, events };
  }

  /** Oldest first; `afterSeq` is the last review of the previous page. */
  async listReviews(tenantId: string, status: number, limit: number, afterSeq: bigint | undefined): Promise<{ review: ReviewRow; events: ReviewEventRow[] }[]> {
    const conditions: SQL[] = [eq(reviews.tenantId, tenantId)];
    if (status !== 0) conditions.push(eq(reviews.status, status));
    if (afterSeq !== undefined) conditions.push(gt(reviews.seq, afterSeq));
    const rows = await this.db.select().from(reviews).where(and(...conditions)).orderBy(asc(reviews.seq)).limit(limit);
    if (rows.length === 0) return [];
    const events = await this.db.select().from(reviewEvents)
      .where(and(eq(reviewEvents.tenantId, tenantId), inArray(reviewEvents.paymentId, rows.map((row) => row.paymentId))))
      .orderBy(asc(reviewEvents.id));
    return rows.map((review) => ({ review, events: events.filter((event) => event.paymentId === review.paymentId) }));
  }

  /**
   * Moves a PENDING review to `status` and appends the audit event, in one statement. Returns
   * false when the review was not PENDING (or does not exist): the caller reads it to say which.
   */
  async resolveReview(tenantId: string, paymentId: string, status: ReviewStatus, operator: string, reason: string): Promise<boolean> {
    const r = sql.raw("r");
    const result = await this.db.execute(sql`
      with r as (
        update risk.reviews set status = ${status}, resolved_at = now(), resolved_by = ${operator}, resolution_reason = ${reason}
        where tenant_id = ${tenantId} and payment_id = ${paymentId} and status = ${ReviewStatus.PENDING}
        returning resolved_at),
      e as (
        insert into risk.review_events (tenant_id, payment_id, status, actor, reason, at)
        select ${tenantId}, ${paymentId}, ${status}, ${operator}, ${reason}, r.resolved_at from r),
      o as (${outboxInsert(r, reviewResolved(tenantId, paymentId, status, operator, reason))})
      select count(*)::int as resolved from r`);
    return (rowsOf<{ resolved: number }>(result)[0]?.resolved ?? 0) > 0;
  }

  async pendingReviews(tenantId: string, userId: string): Promise<number> {
    const [row] = await this.db.select({ count: sql<number>`count(*)::int` }).from(reviews)
      .where(and(eq(reviews.tenantId, tenantId), eq(reviews.userId, userId), eq(reviews.status, ReviewStatus.PENDING)));
    return row?.count ?? 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Events: written by the statement that records what they describe, only when it wrote a row.

/** `insert into risk.outbox … select … from <cte>`: the event exists exactly when the CTE wrote a row. */
function outboxInsert(from: SQL, event: NewEvent): SQL {
  const row = outboxRowOf("risk", event);
  return sql`insert into risk.outbox (id, event_type, subject, tenant_id, payload, created_at)
    select ${row.id}::uuid, ${row.eventType}, ${row.subject}, ${row.tenantId}, decode(${Buffer.from(row.payload).toString("hex")}, 'hex'), ${row.createdAt.toISOString()}::timestamptz from ${from}`;
}

const DECISION_NAMES: Record<number, string> = { [Decision.ALLOW]: "allow", [Decision.REVIEW]: "review", [Decision.BLOCK]: "block" };

function riskFlagged(payment: EvaluatedPayment, verdict: Verdict): NewEvent {
  return {
    type: "risk.flagged",
    subject: `payment/${payment.paymentId}`,
    tenantId: payment.tenantId,
    schema: RiskEventSchema,
    data: create(RiskEventSchema, {
      paymentId: payment.paymentId,
      userId: payment.userId,
      decision: DECISION_NAMES[verdict.decision] ?? "",
      score: verdict.score,
      reasons: verdict.reasons,
    }),
  };
}

function reviewResolved(tenantId: string, paymentId: string, status: ReviewStatus, operator: string, note: string): NewEvent {
  return {
    type: "risk.review.resolved",
    subject: `payment/${paymentId}`,
    tenantId,
    schema: RiskEventSchema,
    data: create(RiskEventSchema, {
      paymentId,
      resolution: status === ReviewStatus.APPROVED ? "approved" : "declined",
      resolvedBy: operator,
      note,
    }),
  };
}
