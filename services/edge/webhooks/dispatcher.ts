// Sends pending webhook deliveries. Every Edge process runs one dispatcher; they share the work
// through PostgreSQL:
//   claim:  in one statement, take up to COWRIE_WEBHOOK_CONCURRENCY due deliveries
//           (`for update skip locked`, so two processes never take the same one), count the
//           attempt and push next_attempt_at out by a lease (the timeout plus a margin): a process
//           that dies mid-attempt leaves the delivery to be taken again when the lease runs out;
//   send:   POST outside any transaction, signed, with a timeout, redirects not followed;
//   record: one transaction logs the attempt and sets the delivery's next state, only if the
//           attempt count is still the one claimed (a slower, older claimant writes nothing over
//           a newer one's state; its attempt still appears in the log). If the database does not
//           answer (a restart, a failover), the process reads the endpoint or records the outcome
//           again as soon as it does, while its lease lasts, rather than leaving the delivery to be
//           sent again once the lease runs out.
// 2xx is DELIVERED. Anything else is retried after an exponential backoff with jitter until the
// retry window (COWRIE_WEBHOOK_RETRY_FOR_MS from the delivery's creation) would be passed, then it
// is FAILED. A due delivery always gets its attempt, even past the window (a long outage of the
// Edge does not fail deliveries unsent). Endpoints disabled or deleted fail their due deliveries
// without a request.
import { performance } from "node:perf_hooks";
import { Code, ConnectError } from "@connectrpc/connect";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { create } from "@bufbuild/protobuf";
import { and, asc, eq, inArray, lte, ne, sql } from "drizzle-orm";
import { WebhookAttemptSchema, WebhookDeliverySchema, type WebhookAttempt, type WebhookDelivery } from "../../../gen/cowrie/edge/v1/webhooks_pb.js";
import { currentCallContext, remainingMs } from "../../runtime/call-context.js";
import type { Db } from "../../runtime/db.js";
import { notFound } from "../../runtime/errors.js";
import { errorText, type Logger } from "../../runtime/log.js";
import { every, type Periodic } from "../../runtime/periodic.js";
import { WEBHOOK_DELIVERY_STATUS, webhookAttempts, webhookDeliveries, webhookEndpoints } from "../schema.js";
import { webhookMetrics, type AttemptResult } from "./metrics.js";
import { backoffMs, pause } from "../../runtime/pause.js";
import { SIGNATURE_HEADER, signWebhook } from "./signature.js";

export interface DispatcherOptions {
  db: Db;
  log: Logger;
  /** Longest one POST may take, answer headers included. */
  timeoutMs: number;
  /** The first retry's delay; each further one doubles, up to retryMaxDelayMs. */
  retryBaseMs: number;
  retryMaxDelayMs: number;
  /** How long after its creation a delivery is still retried. */
  retryForMs: number;
  /** Deliveries in flight per process, and the size of one claim. */
  concurrency: number;
  /** How often the dispatcher looks for due deliveries. */
  intervalMs: number;
}

/**
 * A claim's lease: the timeout and a margin of three times it (at least 5 s), so a slow but live
 * attempt is not taken over; 40 s with the default 10 s timeout.
 */
const leaseMs = (timeoutMs: number): number => timeoutMs + Math.max(5_000, 3 * timeoutMs);
/** What failed in an attempt is done again after these delays (doubling), until this much of the lease is left. */
const RETRY_IN_LEASE_BASE_MS = 250;
const RETRY_IN_LEASE_MAX_DELAY_MS = 4_000;
const RETRY_IN_LEASE_RESERVE_MS = 5_000;
/** Claims per pass at most, so that stop() never waits on an endless backlog. */
const ROUNDS_MAX = 20;
/** The gauges count every pending delivery: not on every pass. */
const GAUGE_REFRESH_MS = 5_000;
const ERROR_LENGTH_MAX = 500;

/** Delay before the next attempt after `attempts` failed ones: exponential, "equal jitter". */
export function retryDelayMs(attempts: number, baseMs: number, maxMs: number, random = Math.random): number {
  // Between half and all of the ceiling: retries of many deliveries spread out, and the delay
  // still grows with every attempt.
  return backoffMs(attempts - 1, baseMs, maxMs, "equal", random);
}

export interface AttemptOutcome {
  attemptedAt: Date;
  httpStatus: number | null;
  error: string;
  durationMs: number;
  result: AttemptResult;
}

/** What one POST needs. */
export interface Outgoing {
  deliveryId: string;
  eventId: string;
  eventType: string;
  url: string;
  body: Uint8Array;
  /** The current secret first; the previous one too while its grace period runs. */
  secrets: string[];
}

/** One signed POST. Never throws: every failure is an outcome to log. */
export async function postWebhook(outgoing: Outgoing, timeoutMs: number): Promise<AttemptOutcome> {
  const attemptedAt = new Date();
  const started = performance.now();
  const timestampSeconds = Math.floor(attemptedAt.getTime() / 1000);
  const elapsed = () => Math.round(performance.now() - started);
  try {
    const response = await fetch(outgoing.url, {
      method: "POST",
      body: outgoing.body,
      // A redirect is the endpoint's misconfiguration: following it would send the signed event
      // to a URL the merchant never registered.
      redirect: "manual",
      signal: AbortSignal.timeout(timeoutMs),
      headers: {
        "content-type": "application/json",
        "user-agent": "Cowrie-Webhooks/1",
        "cowrie-event-id": outgoing.eventId,
        "cowrie-event-type": outgoing.eventType,
        "cowrie-delivery-id": outgoing.deliveryId,
        [SIGNATURE_HEADER]: signWebhook(outgoing.secrets, outgoing.body, timestampSeconds),
      },
    });
    const durationMs = elapsed();
    // The answer's body means nothing to Cowrie; dropping it frees the connection.
    await response.body?.cancel().catch(() => {});
    if (response.status >= 200 && response.status < 300) {
      return { attemptedAt, httpStatus: response.status, error: "", durationMs, result: "success" };
    }
    if (response.status >= 300 && response.status < 400) {
      const location = response.headers.get("location") ?? "";
      return { attemptedAt, httpStatus: response.status, error: clip(`redirect not followed: ${location}`), durationMs, result: "redirect" };
    }
    return { attemptedAt, httpStatus: response.status, error: `HTTP ${response.status}`, durationMs, result: "http_error" };
  } catch (error) {
    const durationMs = elapsed();
    const name = (error as { name?: string }).name;
    if (name === "TimeoutError" || name === "AbortError") {
      return { attemptedAt, httpStatus: null, error: `no answer within ${timeoutMs} ms`, durationMs, result: "timeout" };
    }
    return { attemptedAt, httpStatus: null, error: clip(networkError(error)), durationMs, result: "network_error" };
  }
}

/** fetch says "fetch failed"; the cause says why (ECONNREFUSED, ENOTFOUND, a TLS error...). */
function networkError(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } }).cause;
  if (cause?.code) return `${cause.code}: ${cause.message ?? ""}`.trim();
  return cause?.message ?? errorText(error);
}

function clip(text: string): string {
  return text.length > ERROR_LENGTH_MAX ? `${text.slice(0, ERROR_LENGTH_MAX - 1)}…` : text;
}

interface Claimed {
  id: string;
  endpointId: string;
  eventId: string;
  eventType: string;
  body: Uint8Array;
  attempts: number;
}

const STATUS = WEBHOOK_DELIVERY_STATUS;

export class WebhookDispatcher {
  private periodic: Periodic | undefined;
  private stopping = false;
  private gaugesRefreshedAt = 0;

  constructor(private readonly options: DispatcherOptions) {}

  start(): void {
    this.stopping = false;
    this.periodic = every(this.options.intervalMs, "webhook dispatcher", () => this.runOnce(), this.options.log);
  }

  /** Stops claiming; attempts in flight finish (each within the timeout) and are recorded. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.periodic?.stop();
    this.periodic = undefined;
  }

  /** One pass: claims and sends due deliveries until none is left or ROUNDS_MAX claims. */
  async runOnce(): Promise<number> {
    let sent = 0;
    for (let round = 0; round < ROUNDS_MAX && !this.stopping; round++) {
      const claimed = await this.claim();
      await Promise.all(claimed.map((delivery) => this.attempt(delivery)));
      sent += claimed.length;
      if (claimed.length < this.options.concurrency) break;
    }
    await this.refreshGauges().catch((error: unknown) => this.options.log.warn({ err: errorText(error) }, "webhook gauges not refreshed"));
    return sent;
  }

  private async claim(): Promise<Claimed[]> {
    const { db, concurrency, timeoutMs } = this.options;
    const due = db
      .select({ id: webhookDeliveries.id })
      .from(webhookDeliveries)
      .where(and(eq(webhookDeliveries.status, STATUS.pending), lte(webhookDeliveries.nextAttemptAt, sql`now()`)))
      .orderBy(asc(webhookDeliveries.nextAttemptAt))
      .limit(concurrency)
      .for("update", { skipLocked: true });
    return db
      .update(webhookDeliveries)
      .set({
        attempts: sql`${webhookDeliveries.attempts} + 1`,
        nextAttemptAt: sql`now() + ${leaseMs(timeoutMs)}::float8 * interval '1 millisecond'`,
        updatedAt: sql`now()`,
      })
      .where(inArray(webhookDeliveries.id, due))
      .returning({
        id: webhookDeliveries.id,
        endpointId: webhookDeliveries.endpointId,
        eventId: webhookDeliveries.eventId,
        eventType: webhookDeliveries.eventType,
        body: webhookDeliveries.body,
        attempts: webhookDeliveries.attempts,
      });
  }

  /** Sends one claimed delivery and records the outcome; failures are logged, never thrown. */
  private async attempt(delivery: Claimed): Promise<void> {
    const leaseEndsAt = performance.now() + leaseMs(this.options.timeoutMs);
    const endpoint = await this.whileLeased(delivery, leaseEndsAt, "webhook endpoint not read", () => this.target(delivery.endpointId));
    if (endpoint === undefined) return;
    if (!endpoint.usable) {
      await this.whileLeased(delivery, leaseEndsAt, "webhook delivery not failed", () => this.settle(delivery, { status: STATUS.failed, lastError: endpoint.reason }));
      return;
    }
    const outcome = await postWebhook({ ...delivery, url: endpoint.url, secrets: endpoint.secrets, deliveryId: delivery.id }, this.options.timeoutMs);
    webhookMetrics().attempted(outcome.result, outcome.durationMs);
    await this.whileLeased(delivery, leaseEndsAt, "webhook attempt not recorded", () => this.record(delivery, outcome));
  }

  /**
   * `work`, done again after a failure (the database away for a moment: a restart, a failover)
   * while the claim's lease has time left; undefined once it has not, or once the dispatcher is
   * stopping: the lease then runs out and the delivery is taken again.
   */
  private async whileLeased<T>(delivery: Claimed, leaseEndsAt: number, what: string, work: () => Promise<T>): Promise<T | undefined> {
    for (let retry = 0; ; retry++) {
      try {
        return await work();
      } catch (error) {
        const waitMs = backoffMs(retry, RETRY_IN_LEASE_BASE_MS, RETRY_IN_LEASE_MAX_DELAY_MS, "equal");
        const giveUp = this.stopping || performance.now() + waitMs > leaseEndsAt - RETRY_IN_LEASE_RESERVE_MS;
        if (giveUp || retry === 0) {
          this.options.log.warn({ err: errorText(error), deliveryId: delivery.id }, giveUp ? `${what}; it will be retried once the claim's lease runs out` : `${what}; trying again`);
        }
        if (giveUp) return undefined;
        await pause(waitMs);
      }
    }
  }

  /**
   * Logs an attempt and sets the delivery's next state, in one transaction. Repeatable: after a
   * commit whose answer was lost, the attempt is not logged twice, and the state is set only while
   * the delivery is still as claimed.
   */
  private async record(delivery: Claimed, outcome: AttemptOutcome): Promise<void> {
    await this.options.db.transaction(async (tx) => {
      const attemptedAt = outcome.attemptedAt.toISOString();
      await tx.execute(sql`
        insert into ${webhookAttempts} (delivery_id, attempted_at, http_status, error, duration_ms)
        select ${delivery.id}, ${attemptedAt}::timestamptz, ${outcome.httpStatus}::int, ${outcome.error}, ${outcome.durationMs}::int
        where not exists (
          select 1 from ${webhookAttempts} where delivery_id = ${delivery.id} and attempted_at = ${attemptedAt}::timestamptz and not manual)`);
      if (outcome.result === "success") {
        await this.settle(delivery, { status: STATUS.delivered, lastError: null }, tx);
      } else {
        await this.reschedule(delivery, outcome.error, tx);
      }
    });
  }

  /** Where a delivery goes now, with the secrets that sign it; or why it goes nowhere. */
  private async target(endpointId: string): Promise<{ usable: true; url: string; secrets: string[] } | { usable: false; reason: string }> {
    const [endpoint] = await this.options.db
      .select({
        url: webhookEndpoints.url,
        enabled: webhookEndpoints.enabled,
        deleted: sql<boolean>`${webhookEndpoints.deletedAt} is not null`,
        secret: webhookEndpoints.secret,
        previousSecret: sql<string | null>`case when ${webhookEndpoints.previousSecretExpiresAt} > now() then ${webhookEndpoints.previousSecret} end`,
      })
      .from(webhookEndpoints)
      .where(eq(webhookEndpoints.id, endpointId));
    if (!endpoint || endpoint.deleted) return { usable: false, reason: "the endpoint was deleted" };
    if (!endpoint.enabled) return { usable: false, reason: "the endpoint is disabled" };
    return { usable: true, url: endpoint.url, secrets: endpoint.previousSecret ? [endpoint.secret, endpoint.previousSecret] : [endpoint.secret] };
  }

  /** Ends a claimed delivery, DELIVERED or FAILED, if nobody claimed it since. */
  private async settle(delivery: Claimed, next: { status: number; lastError: string | null }, tx: Pick<Db, "update"> = this.options.db): Promise<void> {
    const delivered = next.status === STATUS.delivered;
    const updated = await tx
      .update(webhookDeliveries)
      .set({
        status: next.status,
        lastError: next.lastError,
        nextAttemptAt: null,
        deliveredAt: delivered ? sql`now()` : undefined,
        updatedAt: sql`now()`,
      })
      .where(this.stillClaimed(delivery))
      .returning({ id: webhookDeliveries.id });
    if (updated.length > 0) webhookMetrics().deliveries.inc({ outcome: delivered ? "delivered" : "failed" });
  }

  /** After a failed attempt: the next one after the backoff, or FAILED past the retry window. */
  private async reschedule(delivery: Claimed, error: string, tx: Pick<Db, "update">): Promise<void> {
    const { retryBaseMs, retryMaxDelayMs, retryForMs } = this.options;
    const delayMs = retryDelayMs(delivery.attempts, retryBaseMs, retryMaxDelayMs);
    const nextAt = sql`now() + ${delayMs}::float8 * interval '1 millisecond'`;
    const windowEnds = sql`${webhookDeliveries.createdAt} + ${retryForMs}::float8 * interval '1 millisecond'`;
    const [row] = await tx
      .update(webhookDeliveries)
      .set({
        status: sql`case when ${nextAt} > ${windowEnds} then ${STATUS.failed}::smallint else ${STATUS.pending}::smallint end`,
        nextAttemptAt: sql`case when ${nextAt} > ${windowEnds} then null else ${nextAt} end`,
        lastError: error,
        updatedAt: sql`now()`,
      })
      .where(this.stillClaimed(delivery))
      .returning({ status: webhookDeliveries.status });
    if (row?.status === STATUS.failed) {
      webhookMetrics().deliveries.inc({ outcome: "failed" });
      this.options.log.info({ deliveryId: delivery.id, eventId: delivery.eventId, attempts: delivery.attempts }, "webhook delivery failed: its retry window passed");
    }
  }

  private stillClaimed(delivery: Claimed) {
    return and(
      eq(webhookDeliveries.id, delivery.id),
      eq(webhookDeliveries.status, STATUS.pending),
      eq(webhookDeliveries.attempts, delivery.attempts),
    );
  }

  private async refreshGauges(): Promise<void> {
    if (Date.now() - this.gaugesRefreshedAt < GAUGE_REFRESH_MS) return;
    this.gaugesRefreshedAt = Date.now();
    const [row] = await this.options.db
      .select({
        pending: sql<number>`count(*)::int`,
        oldestSeconds: sql<number>`coalesce(extract(epoch from now() - min(${webhookDeliveries.createdAt})), 0)::float8`,
      })
      .from(webhookDeliveries)
      .where(eq(webhookDeliveries.status, STATUS.pending));
    webhookMetrics().pending.set(Number(row?.pending ?? 0));
    webhookMetrics().oldestPendingSeconds.set(Number(row?.oldestSeconds ?? 0));
  }

  /**
   * RedeliverWebhook: one attempt now, logged as manual under the request's downstream key (a
   * re-execution of the same request finds it and sends nothing). A success marks the delivery
   * DELIVERED whatever its state; a failure changes nothing but the log.
   */
  async redeliver(tenantId: string, deliveryId: string, requestKey: string): Promise<{ delivery: WebhookDelivery; attempt: WebhookAttempt }> {
    const { db } = this.options;
    const [delivery] = await db
      .select()
      .from(webhookDeliveries)
      .where(and(eq(webhookDeliveries.id, deliveryId), eq(webhookDeliveries.tenantId, tenantId)));
    if (!delivery) throw notFound(`webhook delivery ${deliveryId}`);
    const [done] = await db
      .select()
      .from(webhookAttempts)
      .where(and(eq(webhookAttempts.deliveryId, deliveryId), eq(webhookAttempts.requestKey, requestKey)));
    if (done) return { delivery: (await deliveryMessages(db, [delivery]))[0] as WebhookDelivery, attempt: attemptMessage(done) };

    const endpoint = await this.target(delivery.endpointId);
    if (!endpoint.usable) throw new ConnectError(`${endpoint.reason}; nothing was sent`, Code.FailedPrecondition);
    const context = currentCallContext();
    // Keep back a little of the call's budget to record the attempt and answer.
    const budgetMs = context ? Math.floor(remainingMs(context)) - 200 : this.options.timeoutMs;
    if (budgetMs <= 0) throw new ConnectError("no time left in the call's deadline to send the webhook", Code.DeadlineExceeded);
    const outcome = await postWebhook({ ...delivery, url: endpoint.url, secrets: endpoint.secrets, deliveryId: delivery.id }, Math.min(this.options.timeoutMs, budgetMs));
    webhookMetrics().attempted(outcome.result, outcome.durationMs);
    // Recorded on the database handle, not bound to the call's deadline: the request went out.
    await db.transaction(async (tx) => {
      await tx.insert(webhookAttempts).values({
        deliveryId,
        attemptedAt: outcome.attemptedAt,
        httpStatus: outcome.httpStatus,
        error: outcome.error,
        durationMs: outcome.durationMs,
        manual: true,
        requestKey,
      }).onConflictDoNothing();
      if (outcome.result === "success") {
        const updated = await tx
          .update(webhookDeliveries)
          .set({ status: STATUS.delivered, nextAttemptAt: null, lastError: null, deliveredAt: sql`now()`, updatedAt: sql`now()` })
          .where(and(eq(webhookDeliveries.id, deliveryId), ne(webhookDeliveries.status, STATUS.delivered)))
          .returning({ id: webhookDeliveries.id });
        if (updated.length > 0) webhookMetrics().deliveries.inc({ outcome: "delivered" });
      }
    });
    const [after] = await db.select().from(webhookDeliveries).where(eq(webhookDeliveries.id, deliveryId));
    return {
      delivery: (await deliveryMessages(db, [after ?? delivery]))[0] as WebhookDelivery,
      attempt: attemptMessage({ ...outcome, manual: true }),
    };
  }
}

type DeliveryRow = typeof webhookDeliveries.$inferSelect;
type AttemptRow = Pick<typeof webhookAttempts.$inferSelect, "attemptedAt" | "httpStatus" | "error" | "durationMs" | "manual">;

function attemptMessage(row: AttemptRow): WebhookAttempt {
  return create(WebhookAttemptSchema, {
    attemptedAt: timestampFromDate(row.attemptedAt),
    httpStatus: row.httpStatus ?? 0,
    error: row.error,
    durationMs: row.durationMs,
    manual: row.manual,
  });
}

/** The public view of deliveries, each with its whole log, oldest attempt first. */
export async function deliveryMessages(db: Db, rows: DeliveryRow[]): Promise<WebhookDelivery[]> {
  if (rows.length === 0) return [];
  const attempts = await db
    .select()
    .from(webhookAttempts)
    .where(inArray(webhookAttempts.deliveryId, rows.map((row) => row.id)))
    .orderBy(asc(webhookAttempts.id));
  return rows.map((row) => create(WebhookDeliverySchema, {
    id: row.id,
    endpointId: row.endpointId,
    eventId: row.eventId,
    eventType: row.eventType,
    status: row.status,
    createdAt: timestampFromDate(row.createdAt),
    nextAttemptAt: row.status === STATUS.pending && row.nextAttemptAt ? timestampFromDate(row.nextAttemptAt) : undefined,
    deliveredAt: row.deliveredAt ? timestampFromDate(row.deliveredAt) : undefined,
    attempts: attempts.filter((attempt) => attempt.deliveryId === row.id).map(attemptMessage),
    payload: Buffer.from(row.body).toString("utf8"),
  }));
}
