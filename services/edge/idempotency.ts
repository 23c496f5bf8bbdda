// Stripe-style idempotency for every mutating public call, keyed by (tenant, Idempotency-Key).
//
// Why this is exactly-once. Two records cooperate:
//   1. The EFFECT's own idempotency lives in the service that owns the effect, durable in the
//      same PostgreSQL transaction as the effect: the Wallet derives the Ledger transfer id (or
//      hold id) from the tenant and the key it is given, and the Ledger decides each transfer id
//      once, forever; the Router stores the payment under a unique (tenant, idempotency key) in
//      the transaction that records it. The Edge passes a downstream key derived
//      deterministically from (method, Idempotency-Key), so any number of executions of one
//      public request - a retry, a takeover of a dead executor's lease, the completer - name the
//      same effect and can apply it at most once.
//   2. The EDGE record (edge.idempotency_keys) stores the request's fingerprint and, once decided,
//      the response or the decided error. It turns retries into replays of the first outcome,
//      refuses a key reused for a different request (ALREADY_EXISTS), and keeps concurrent
//      duplicates out while one runs (ABORTED) so they do not pile up on the services below.
// The edge record may be released (a retryable failure ends its lease, so a retry takes over) or
// lost (the reaper deletes it after COWRIE_IDEMPOTENCY_TTL_HOURS) without risking a double effect, because (1) alone already
// guarantees at most once; the record adds the stable replayed answer and the conflict checks.
//
// Flow: the request is validated BEFORE anything is written (a bad request leaves no row). Then
// Redis (a cache of completed outcomes, never the truth: an outage only costs speed) and then
// PostgreSQL: INSERT ... ON CONFLICT DO NOTHING claims the key with a lease (locked_until = now +
// the call's remaining deadline). An existing row replays its outcome, conflicts, answers ABORTED
// while its lease holds, or is taken over by compare-and-set once its lease expired. Decided
// outcomes (success, INVALID_ARGUMENT / NOT_FOUND / FAILED_PRECONDITION / ALREADY_EXISTS /
// PERMISSION_DENIED from below) are stored; anything else (UNAVAILABLE, DEADLINE_EXCEEDED,
// ABORTED, INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED, ...) ends the lease so a retry runs again.
// A background completer finishes rows whose executor died, and a reaper deletes expired rows.
import { createHash, randomUUID } from "node:crypto";
import { create, fromBinary, toBinary, toJson, type DescMethod, type Message } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { and, asc, eq, lt, sql } from "drizzle-orm";
import { currentCallContext, remainingMs, runInCallContext } from "../runtime/call-context.js";
import type { Cache } from "../runtime/cache.js";
import { rowsOf, type Db } from "../runtime/db.js";
import { errorText, throttledWarning, type Logger } from "../runtime/log.js";
import { every, type Periodic } from "../runtime/periodic.js";
import { IDEMPOTENCY_STATE, SCOPE, apiKeys, idempotencyKeys } from "./schema.js";

export const IDEMPOTENCY_KEY_HEADER = "idempotency-key";
export const REPLAYED_HEADER = "idempotent-replayed";

/** Outcomes decided for good: stored and replayed. Every other code ends the key's lease. */
export const DECIDED_CODES: ReadonlySet<Code> = new Set([
  Code.InvalidArgument,
  Code.NotFound,
  Code.FailedPrecondition,
  Code.AlreadyExists,
  Code.PermissionDenied,
]);

const REAP_BATCH = 1000;
const REAP_ROUNDS_MAX = 10;
const COMPLETER_BATCH = 100;
/** Executions (first run and takeovers) after which the completer leaves a request alone. */
export const COMPLETER_ATTEMPTS_MAX = 5;
const CACHE_TTL_MAX_MS = 60 * 60 * 1000;
/** Lease slack beyond the call's own deadline, so a slow but live executor keeps its lease. */
const LEASE_MARGIN_MS = 1_000;

/** A mutating public RPC as the store runs it: live, on a takeover, or from the completer. */
export interface Mutation {
  readonly method: DescMethod;
  /** Validates and runs the request against the internal services; ConnectError for outcomes. */
  execute(request: Message, call: { tenantId: string; downstreamKey: string }): Promise<Message>;
}

export function qualifiedName(method: DescMethod): string {
  return `${method.parent.typeName}/${method.name}`;
}

function sha256(...parts: (string | Uint8Array)[]): Buffer {
  const hash = createHash("sha256");
  for (const part of parts) hash.update(part).update("\u0000");
  return hash.digest();
}

/**
 * The idempotency key passed to the Wallet or Router: deterministic in (method, key) so every
 * execution of one public request names the same effect, at most 255 characters as internal keys
 * must be, and distinct per method so one key can never name two different effects below.
 */
export function downstreamKeyFor(methodName: string, key: string): string {
  return `edge:${sha256(methodName, key).toString("base64url")}`;
}

/** Canonical bytes: fields in number order, unknown fields dropped. */
function requestBytes(method: DescMethod, request: Message): Uint8Array {
  return toBinary(method.input, request, { writeUnknownFields: false });
}

/** SHA-256 over the method's name and the request's canonical bytes. */
export function fingerprintOf(method: DescMethod, request: Message): Buffer {
  return sha256(qualifiedName(method), requestBytes(method, request));
}

interface StoredDetail {
  type: string;
  value: string;
}

type Outcome =
  | { kind: "response"; bytes: Uint8Array }
  | { kind: "error"; code: Code; message: string; details: StoredDetail[] };

function detailsOf(error: ConnectError): StoredDetail[] {
  return error.details.map((detail) => {
    if ("desc" in detail) {
      const bytes = toBinary(detail.desc, create(detail.desc, detail.value));
      return { type: detail.desc.typeName, value: Buffer.from(bytes).toString("base64") };
    }
    return { type: detail.type, value: Buffer.from(detail.value).toString("base64") };
  });
}

function errorFromOutcome(outcome: Extract<Outcome, { kind: "error" }>): ConnectError {
  const error = new ConnectError(outcome.message, outcome.code, { [REPLAYED_HEADER]: "true" });
  // Details go back out exactly as they were stored (type name and bytes).
  error.details = outcome.details.map((detail) => ({ type: detail.type, value: Buffer.from(detail.value, "base64") }));
  return error;
}

interface ExistingRow {
  method: string;
  fingerprint: Uint8Array;
  request: Uint8Array;
  state: number;
  response: Uint8Array | null;
  errorCode: number | null;
  errorMessage: string | null;
  errorDetails: string | null;
  expiresAt: Date;
  leased: boolean;
}

function outcomeOfRow(row: Pick<ExistingRow, "response" | "errorCode" | "errorMessage" | "errorDetails">): Outcome {
  if (row.errorCode !== null) {
    return {
      kind: "error",
      code: row.errorCode as Code,
      message: row.errorMessage ?? "",
      details: row.errorDetails ? (JSON.parse(row.errorDetails) as StoredDetail[]) : [],
    };
  }
  return { kind: "response", bytes: row.response ?? new Uint8Array() };
}

/** What a cached completed outcome looks like in Redis. */
interface CachedOutcome {
  method: string;
  fingerprint: string;
  outcome: { response: string } | { code: Code; message: string; details: StoredDetail[] };
}

export interface IdempotencyOptions {
  db: Db;
  cache: Cache;
  log: Logger;
  ttlHours: number;
  recoveryAfterMs: number;
  completerIntervalMs: number;
  /** The deadline the completer gives one re-execution. */
  completerDeadlineMs: number;
}

export class IdempotencyStore {
  private readonly mutations = new Map<string, Mutation>();
  private background: Periodic[] = [];
  private readonly stopping = new AbortController();
  private readonly warnCache: (error: unknown) => void;

  constructor(private readonly options: IdempotencyOptions) {
    this.warnCache = throttledWarning(options.log, "idempotency cache unavailable; using PostgreSQL only");
  }

  /** Makes a method known to the completer, which re-executes stored requests by method name. */
  register(mutation: Mutation): void {
    this.mutations.set(qualifiedName(mutation.method), mutation);
  }

  /**
   * Runs one mutating call under its Idempotency-Key: executes it once, or replays the stored
   * outcome (marking the response header `idempotent-replayed: true`), or refuses.
   * The request must already be validated.
   */
  async run(args: {
    mutation: Mutation;
    tenantId: string;
    /** The API key that sent it, for the completer's check. */
    apiKeyId: string;
    key: string;
    request: Message;
    responseHeader: Headers;
  }): Promise<Message> {
    const { mutation, tenantId, apiKeyId, key, request, responseHeader } = args;
    const methodName = qualifiedName(mutation.method);
    const bytes = requestBytes(mutation.method, request);
    const fingerprint = fingerprintOf(mutation.method, request);

    const cached = await this.cachedOutcome(tenantId, key);
    // A cached outcome of another request falls through to PostgreSQL, which explains the conflict.
    if (cached && cached.method === methodName && cached.fingerprint === fingerprint.toString("base64")) {
      return this.replay(mutation.method, cachedToOutcome(cached), responseHeader);
    }

    // A row can vanish between the INSERT and the SELECT (released by a failed execution): try again.
    for (let attempt = 0; attempt < 3; attempt++) {
      const leaseMs = this.liveLeaseMs();
      const inserted = await this.options.db
        .insert(idempotencyKeys)
        .values({
          tenantId,
          key,
          method: methodName,
          fingerprint,
          request: Buffer.from(bytes),
          apiKeyId,
          state: IDEMPOTENCY_STATE.inProgress,
          lockedUntil: sql`now() + ${leaseMs}::float8 * interval '1 millisecond'`,
          expiresAt: sql`now() + ${this.options.ttlHours}::float8 * interval '1 hour'`,
        })
        .onConflictDoNothing()
        .returning({ attempts: idempotencyKeys.attempts, expiresAt: idempotencyKeys.expiresAt });
      const claimed = inserted[0];
      if (claimed) return this.executeOwned({ mutation, tenantId, key, request, ...claimed });

      const existing = await this.existing(tenantId, key);
      if (!existing) continue;
      if (existing.method !== methodName || !fingerprint.equals(existing.fingerprint)) {
        throw this.conflict(mutation.method, request, existing);
      }
      if (existing.state === IDEMPOTENCY_STATE.completed) {
        const outcome = outcomeOfRow(existing);
        await this.cacheOutcome(tenantId, key, methodName, fingerprint, outcome, existing.expiresAt);
        return this.replay(mutation.method, outcome, responseHeader);
      }
      if (!existing.leased) {
        // The first executor's lease expired (it died, or its deadline passed): take over.
        const taken = await this.takeOver(tenantId, key, leaseMs, 0);
        if (taken) return this.executeOwned({ mutation, tenantId, key, request, ...taken });
      }
      throw new ConnectError("a request with this Idempotency-Key is in progress; retry later", Code.Aborted);
    }
    throw new ConnectError("a request with this Idempotency-Key is in progress; retry later", Code.Aborted);
  }

  /** Starts the completer and the reaper, one pass every completerIntervalMs. */
  start(): void {
    const { completerIntervalMs, log } = this.options;
    this.background = [
      every(completerIntervalMs, "idempotency completer", () => this.completeAbandoned(), log),
      every(completerIntervalMs, "idempotency reaper", () => this.reapExpired(), log),
    ];
  }

  async stop(): Promise<void> {
    // A pass in flight stops between requests, and the request it runs is cut off: its row's
    // lease then runs out and another process (or the next start) finishes it.
    this.stopping.abort(new ConnectError("edge is stopping", Code.Unavailable));
    await Promise.all(this.background.map((task) => task.stop()));
    this.background = [];
  }

  /**
   * Re-executes in-progress requests whose lease expired more than recoveryAfterMs ago (their
   * executor died and no client retried), with the stored request and tenant, and stores the
   * outcome as the live path would.
   */
  async completeAbandoned(): Promise<number> {
    const { db, recoveryAfterMs, completerDeadlineMs, log } = this.options;
    const stale = await db
      .select({
        tenantId: idempotencyKeys.tenantId,
        key: idempotencyKeys.key,
        method: idempotencyKeys.method,
        request: idempotencyKeys.request,
        // Whether the key that sent it may still mutate (no key recorded: legacy row, yes).
        keyStillWrites: sql<boolean>`${idempotencyKeys.apiKeyId} is null or exists (
          select 1 from ${apiKeys} where ${apiKeys.id} = ${idempotencyKeys.apiKeyId}
            and ${apiKeys.revokedAt} is null and ${apiKeys.scope} = ${SCOPE.readWrite})`,
      })
      .from(idempotencyKeys)
      .where(and(
        eq(idempotencyKeys.state, IDEMPOTENCY_STATE.inProgress),
        sql`${idempotencyKeys.lockedUntil} < now() - ${recoveryAfterMs}::float8 * interval '1 millisecond'`,
        // A request that keeps failing with a retryable error is left to its client (or the
        // reaper) after a few rounds instead of being run every recoveryAfterMs for a day.
        lt(idempotencyKeys.attempts, COMPLETER_ATTEMPTS_MAX),
      ))
      .orderBy(asc(idempotencyKeys.lockedUntil))
      .limit(COMPLETER_BATCH);
    let completed = 0;
    for (const row of stale) {
      if (this.stopping.signal.aborted) break;
      const mutation = this.mutations.get(row.method);
      if (!mutation) {
        log.warn({ method: row.method, tenantId: row.tenantId }, "idempotency completer: unknown method; leaving the row");
        continue;
      }
      if (!row.keyStillWrites) {
        // Revoked (or made read-only) since it sent the request: nobody may finish it now. The
        // decision is stored, so a retry under the same Idempotency-Key gets it too.
        await this.refuseAbandoned(row.tenantId, row.key, recoveryAfterMs);
        log.info({ method: row.method, tenantId: row.tenantId }, "idempotency completer: the request's API key can no longer write; refused it");
        continue;
      }
      const taken = await this.takeOver(row.tenantId, row.key, completerDeadlineMs, recoveryAfterMs);
      if (!taken) continue; // another executor claimed it first
      const requestId = `edge-completer-${randomUUID()}`;
      const context = {
        requestId,
        deadlineAtMs: Date.now() + completerDeadlineMs,
        signal: AbortSignal.any([AbortSignal.timeout(completerDeadlineMs), this.stopping.signal]),
      };
      await runInCallContext(context, async () => {
        try {
          const request = fromBinary(mutation.method.input, row.request);
          await this.executeOwned({ mutation, tenantId: row.tenantId, key: row.key, request, ...taken });
          log.info({ method: row.method, tenantId: row.tenantId, requestId }, "idempotency completer finished a request");
        } catch (error) {
          const code = error instanceof ConnectError ? Code[error.code] : "unknown";
          log.info({ method: row.method, tenantId: row.tenantId, requestId, code }, "idempotency completer ran a request; it failed");
        }
      });
      completed++;
    }
    return completed;
  }

  /** Deletes records past expires_at, REAP_BATCH per round, a bounded number of rounds per pass. */
  async reapExpired(): Promise<number> {
    let total = 0;
    for (let round = 0; round < REAP_ROUNDS_MAX; round++) {
      const deleted = rowsOf<{ tenant_id: string }>(
        await this.options.db.execute(sql`
          delete from ${idempotencyKeys}
          where (tenant_id, key) in (
            select tenant_id, key from ${idempotencyKeys} where expires_at < now() limit ${REAP_BATCH}
          )
          returning tenant_id`),
      ).length;
      total += deleted;
      if (deleted < REAP_BATCH) break;
    }
    if (total > 0) this.options.log.info({ deleted: total }, "idempotency reaper deleted expired keys");
    return total;
  }

  /** The lease of a live call: what is left of its deadline, plus a margin. */
  private liveLeaseMs(): number {
    const context = currentCallContext();
    const left = context ? remainingMs(context) : this.options.completerDeadlineMs;
    return Math.max(0, Math.ceil(left)) + LEASE_MARGIN_MS;
  }

  private async existing(tenantId: string, key: string): Promise<ExistingRow | undefined> {
    const [row] = await this.options.db
      .select({
        method: idempotencyKeys.method,
        fingerprint: idempotencyKeys.fingerprint,
        request: idempotencyKeys.request,
        state: idempotencyKeys.state,
        response: idempotencyKeys.response,
        errorCode: idempotencyKeys.errorCode,
        errorMessage: idempotencyKeys.errorMessage,
        errorDetails: idempotencyKeys.errorDetails,
        expiresAt: idempotencyKeys.expiresAt,
        leased: sql<boolean>`${idempotencyKeys.lockedUntil} > now()`,
      })
      .from(idempotencyKeys)
      .where(and(eq(idempotencyKeys.tenantId, tenantId), eq(idempotencyKeys.key, key)));
    return row;
  }

  /** Stores PERMISSION_DENIED as the outcome of an abandoned request, if it is still abandoned. */
  private async refuseAbandoned(tenantId: string, key: string, expiredForMs: number): Promise<void> {
    await this.options.db
      .update(idempotencyKeys)
      .set({
        state: IDEMPOTENCY_STATE.completed,
        errorCode: Code.PermissionDenied,
        errorMessage: "the API key that sent this request was revoked or made read-only before it finished",
        errorDetails: "[]",
        completedAt: sql`now()`,
        lockedUntil: sql`now()`,
      })
      .where(and(
        eq(idempotencyKeys.tenantId, tenantId),
        eq(idempotencyKeys.key, key),
        eq(idempotencyKeys.state, IDEMPOTENCY_STATE.inProgress),
        sql`${idempotencyKeys.lockedUntil} <= now() - ${expiredForMs}::float8 * interval '1 millisecond'`,
      ));
  }

  /**
   * Compare-and-set on the lease: claims an in-progress row only if its lease expired (more
   * than `expiredForMs` ago). PostgreSQL re-checks the condition on the latest row version under
   * the row lock, so of two concurrent takeovers exactly one matches.
   */
  private async takeOver(tenantId: string, key: string, leaseMs: number, expiredForMs: number) {
    const [taken] = await this.options.db
      .update(idempotencyKeys)
      .set({
        lockedUntil: sql`now() + ${leaseMs}::float8 * interval '1 millisecond'`,
        attempts: sql`${idempotencyKeys.attempts} + 1`,
      })
      .where(and(
        eq(idempotencyKeys.tenantId, tenantId),
        eq(idempotencyKeys.key, key),
        eq(idempotencyKeys.state, IDEMPOTENCY_STATE.inProgress),
        sql`${idempotencyKeys.lockedUntil} <= now() - ${expiredForMs}::float8 * interval '1 millisecond'`,
      ))
      .returning({ attempts: idempotencyKeys.attempts, expiresAt: idempotencyKeys.expiresAt });
    return taken;
  }

  /**
   * Executes a claimed request and records its outcome. `attempts` fences the record: an
   * executor whose lease was taken over meanwhile writes nothing (the new owner will).
   */
  private async executeOwned(args: {
    mutation: Mutation;
    tenantId: string;
    key: string;
    request: Message;
    attempts: number;
    expiresAt: Date;
  }): Promise<Message> {
    const { mutation, tenantId, key, request, attempts, expiresAt } = args;
    const methodName = qualifiedName(mutation.method);
    const fingerprint = fingerprintOf(mutation.method, request);
    const owned = and(
      eq(idempotencyKeys.tenantId, tenantId),
      eq(idempotencyKeys.key, key),
      eq(idempotencyKeys.state, IDEMPOTENCY_STATE.inProgress),
      eq(idempotencyKeys.attempts, attempts),
    );
    let response: Message;
    try {
      response = await mutation.execute(request, { tenantId, downstreamKey: downstreamKeyFor(methodName, key) });
    } catch (error) {
      if (error instanceof ConnectError && DECIDED_CODES.has(error.code)) {
        const outcome: Outcome = { kind: "error", code: error.code, message: error.rawMessage, details: detailsOf(error) };
        await this.record(owned, tenantId, outcome, () =>
          this.cacheOutcome(tenantId, key, methodName, fingerprint, outcome, expiresAt),
        );
      } else {
        // Not decided: end the lease so that a retry takes over and executes again at once
        // (downstream keys make that safe). The row and its fingerprint stay, so the key still
        // cannot be reused for a different request, whose downstream key would name this one's
        // effects; if nobody retries, the completer finishes it.
        await this.releaseLease(owned, tenantId);
      }
      throw error;
    }
    const outcome: Outcome = { kind: "response", bytes: toBinary(mutation.method.output, response) };
    await this.record(owned, tenantId, outcome, () => this.cacheOutcome(tenantId, key, methodName, fingerprint, outcome, expiresAt));
    return response;
  }

  /** Ends the lease of a request in progress, so that a retry executes it again at once. */
  private async releaseLease(owned: ReturnType<typeof and>, tenantId: string): Promise<void> {
    await this.options.db.update(idempotencyKeys).set({ lockedUntil: sql`now()` }).where(owned).catch((error: unknown) => {
      // The row stays in progress; the lease runs out and a retry or the completer takes over.
      this.options.log.warn({ err: errorText(error), tenantId }, "could not release an idempotency key");
    });
  }

  /**
   * Stores a decided outcome. If that fails the caller is not given the outcome, which a replay
   * could then contradict (a payment answered PROCESSING now, replayed SUCCEEDED later), but
   * UNAVAILABLE: a retry with the same key, or the completer once the lease runs out, executes
   * again (downstream keys make that safe) and records what it gets.
   */
  private async record(owned: ReturnType<typeof and>, tenantId: string, outcome: Outcome, cacheIt: () => Promise<void>): Promise<void> {
    const fields = outcome.kind === "response"
      ? { response: Buffer.from(outcome.bytes) }
      : { errorCode: outcome.code, errorMessage: outcome.message, errorDetails: JSON.stringify(outcome.details) };
    let updated: { attempts: number }[];
    try {
      updated = await this.options.db
        .update(idempotencyKeys)
        .set({ ...fields, state: IDEMPOTENCY_STATE.completed, completedAt: sql`now()`, lockedUntil: sql`now()` })
        .where(owned)
        .returning({ attempts: idempotencyKeys.attempts });
    } catch (error) {
      this.options.log.warn({ err: errorText(error), tenantId }, "could not record an idempotent outcome; answering UNAVAILABLE, a retry or the completer records it");
      await this.releaseLease(owned, tenantId);
      throw new ConnectError("the request's outcome could not be recorded; retry with the same Idempotency-Key", Code.Unavailable);
    }
    if (updated.length > 0) await cacheIt();
  }

  private replay(method: DescMethod, outcome: Outcome, responseHeader: Headers): Message {
    if (outcome.kind === "error") throw errorFromOutcome(outcome);
    responseHeader.set(REPLAYED_HEADER, "true");
    const response = fromBinary(method.output, outcome.bytes) as Message & { replayed?: boolean };
    if (method.output.fields.some((field) => field.localName === "replayed")) response.replayed = true;
    return response;
  }

  /** ALREADY_EXISTS naming the other method, or the fields that differ. */
  private conflict(method: DescMethod, request: Message, existing: ExistingRow): ConnectError {
    const base = "Idempotency-Key was used for a different request";
    const methodName = qualifiedName(method);
    if (existing.method !== methodName) {
      return new ConnectError(`${base} (${existing.method.split("/")[1]}, not ${method.name})`, Code.AlreadyExists);
    }
    let differing: string[] = [];
    try {
      const before = toJson(method.input, fromBinary(method.input, existing.request)) as Record<string, unknown>;
      const now = toJson(method.input, request) as Record<string, unknown>;
      differing = method.input.fields
        .filter((field) => JSON.stringify(before[field.jsonName]) !== JSON.stringify(now[field.jsonName]))
        .map((field) => field.name);
    } catch {
      // The explanation is a courtesy; the refusal stands without it.
    }
    const detail = differing.length > 0 ? ` (${differing.join(", ")} ${differing.length === 1 ? "differs" : "differ"})` : "";
    return new ConnectError(`${base}${detail}`, Code.AlreadyExists);
  }

  private cacheKey(tenantId: string, key: string): string {
    return `edge:idem:${tenantId}:${sha256(key).toString("base64url")}`;
  }

  private async cachedOutcome(tenantId: string, key: string): Promise<CachedOutcome | undefined> {
    try {
      const raw = await this.options.cache.get(this.cacheKey(tenantId, key));
      return raw ? (JSON.parse(raw) as CachedOutcome) : undefined;
    } catch (error) {
      this.warnCache(error);
      return undefined;
    }
  }

  private async cacheOutcome(
    tenantId: string,
    key: string,
    method: string,
    fingerprint: Buffer,
    outcome: Outcome,
    expiresAt: Date,
  ): Promise<void> {
    // Never outlive the PostgreSQL record: after the reaper, the key is free again.
    const ttlMs = Math.min(CACHE_TTL_MAX_MS, expiresAt.getTime() - Date.now());
    if (ttlMs < 1) return;
    const entry: CachedOutcome = {
      method,
      fingerprint: fingerprint.toString("base64"),
      outcome: outcome.kind === "response"
        ? { response: Buffer.from(outcome.bytes).toString("base64") }
        : { code: outcome.code, message: outcome.message, details: outcome.details },
    };
    try {
      await this.options.cache.set(this.cacheKey(tenantId, key), JSON.stringify(entry), { ttlMs: Math.floor(ttlMs) });
    } catch (error) {
      this.warnCache(error);
    }
  }

}

function cachedToOutcome(cached: CachedOutcome): Outcome {
  if ("response" in cached.outcome) return { kind: "response", bytes: Buffer.from(cached.outcome.response, "base64") };
  return { kind: "error", ...cached.outcome };
}

