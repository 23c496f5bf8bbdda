// The Ledger's reads and writes in PostgreSQL. A group of transfer batches is one transaction:
// lock the journal head (so batches and sequences are consecutive even with several Ledger
// processes), read what is stored under the ids, the pending transfers they resolve and every
// account involved, plan with the pure engine, and append transfers, refusals, pending states,
// balance totals and the hash-chained batch record together (the relay publishes the journal
// itself: events.ts).
import { and, asc, eq, inArray, sql, type SQL } from "drizzle-orm";
import { CloseAccountResult, CreateAccountResult, TransferKind, type CreateTransferResult } from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import { rowsOf, transact, type Db, type Tx } from "../runtime/db.js";
import {
  PendingStatus,
  planTransfers,
  resolvesPending,
  sameMetadata,
  type AccountState,
  type ItemOutcome,
  type PendingState,
  type StoredOutcome,
  type TransferInput,
} from "./engine.js";
import { batchHash, type JournalRow } from "./journal.js";
import { accounts, pendingTransfers, transfers } from "./schema.js";

export type AccountRow = typeof accounts.$inferSelect;
export type NewAccount = typeof accounts.$inferInsert;
export type TransferRow = typeof transfers.$inferSelect;

// ---------------------------------------------------------------------------------------------
// Accounts

const ACCOUNT_FIELDS: [keyof NewAccount, string][] = [
  ["currency", "currency"],
  ["code", "code"],
  ["ownerRef", "owner_ref"],
  ["debitsMustNotExceedCredits", "debits_must_not_exceed_credits"],
  ["creditsMustNotExceedDebits", "credits_must_not_exceed_debits"],
];

function differingAccountField(stored: AccountRow, incoming: NewAccount): string | undefined {
  for (const [key, field] of ACCOUNT_FIELDS) if (stored[key] !== incoming[key]) return field;
  return sameMetadata(stored.metadata, incoming.metadata ?? {}) ? undefined : "metadata";
}

export function createAccounts(db: Db, batch: NewAccount[]): Promise<{ result: CreateAccountResult; field?: string }[]> {
  return transact(db, async (tx) => {
    const inserted = await tx.insert(accounts).values(batch).onConflictDoNothing({ target: accounts.id }).returning({ id: accounts.id });
    const created = new Set(inserted.map((row) => row.id));
    const others = batch.filter((account) => !created.has(account.id)).map((account) => account.id);
    const existing = others.length ? await tx.select().from(accounts).where(inArray(accounts.id, others)) : [];
    const byId = new Map(existing.map((row) => [row.id, row]));
    return batch.map((account) => {
      if (created.has(account.id)) return { result: CreateAccountResult.CREATED };
      const field = differingAccountField(byId.get(account.id) as AccountRow, account);
      return field === undefined ? { result: CreateAccountResult.EXISTS } : { result: CreateAccountResult.EXISTS_WITH_DIFFERENT_FIELD, field };
    });
  });
}

export function closeAccounts(db: Db, ids: string[]): Promise<CloseAccountResult[]> {
  return transact(db, async (tx) => {
    // The journal head's lock, as every commit takes it: a close never interleaves with one.
    await tx.execute(HEAD_LOCK);
    const locked = await tx.select().from(accounts).where(inArray(accounts.id, ids)).orderBy(asc(accounts.id)).for("update");
    const byId = new Map(locked.map((row) => [row.id, row]));
    const results = ids.map((id) => {
      const account = byId.get(id);
      if (!account) return CloseAccountResult.NOT_FOUND;
      if (account.closed) return CloseAccountResult.ALREADY_CLOSED;
      if (account.debitsPending !== 0n || account.creditsPending !== 0n) return CloseAccountResult.HAS_PENDING_TRANSFERS;
      if (account.debitsPosted !== account.creditsPosted) return CloseAccountResult.HAS_BALANCE;
      return CloseAccountResult.CLOSED;
    });
    const closing = ids.filter((_, index) => results[index] === CloseAccountResult.CLOSED);
    if (closing.length > 0) await tx.update(accounts).set({ closed: true }).where(inArray(accounts.id, closing));
    return results;
  });
}

export function lookupAccounts(db: Db, ids: string[]): Promise<AccountRow[]> {
  return db.select().from(accounts).where(inArray(accounts.id, ids));
}

export function lookupTransfers(db: Db, ids: string[]): Promise<TransferRow[]> {
  return db.select().from(transfers).where(inArray(transfers.id, ids));
}

// ---------------------------------------------------------------------------------------------
// The write path
//
// Every commit holds the journal head's row lock from its first statement to its end, so commits
// (of any number of Ledger processes) follow one another, and so do closeAccounts, which takes the
// same lock. Under READ COMMITTED each later statement of the transaction reads what the previous
// holder committed, so the accounts need no row locks of their own: nothing else writes them.
// A commit is four round trips whatever its size: BEGIN; the head lock with every read pipelined
// behind it; every write pipelined; COMMIT.

const HEAD_LOCK = sql`select last_batch, last_sequence, last_hash from ledger.journal_head where id = 1 for update`;

interface Head {
  lastBatch: bigint;
  lastSequence: bigint;
  lastHash: Uint8Array;
}

const TRANSFER_COLUMNS = sql.raw(
  "t.id, t.kind, t.debit_account_id, t.credit_account_id, t.amount_minor, t.currency, t.code, t.reference, t.metadata, t.linked, t.pending_id, t.timeout_seconds",
);

/** A journal or refusal row read by raw SQL: the same shape on postgres.js and on PGlite. */
export function transferOf(row: Record<string, unknown>): TransferInput {
  return {
    id: row.id as string,
    kind: Number(row.kind) as TransferKind,
    debitAccountId: row.debit_account_id as string,
    creditAccountId: row.credit_account_id as string,
    amountMinor: BigInt(row.amount_minor as bigint),
    currency: row.currency as string,
    code: Number(row.code),
    reference: row.reference as string,
    metadata: (typeof row.metadata === "string" ? JSON.parse(row.metadata) : row.metadata) as Record<string, string>,
    linked: row.linked as boolean,
    pendingId: row.pending_id as string,
    timeoutSeconds: Number(row.timeout_seconds),
  };
}

function accountStateOf(row: Record<string, unknown>): AccountState {
  return {
    id: row.id as string,
    currency: row.currency as string,
    debitsMustNotExceedCredits: row.debits_must_not_exceed_credits as boolean,
    creditsMustNotExceedDebits: row.credits_must_not_exceed_debits as boolean,
    closed: row.closed as boolean,
    debitsPosted: BigInt(row.debits_posted as bigint),
    creditsPosted: BigInt(row.credits_posted as bigint),
    debitsPending: BigInt(row.debits_pending as bigint),
    creditsPending: BigInt(row.credits_pending as bigint),
  };
}

/**
 * Locks the journal head, then reads what the batch needs, all in one round trip: what is stored
 * under its ids, the pending transfers it resolves, and every account it or they touch.
 */
async function readForCommit(tx: Tx, batch: readonly TransferInput[]) {
  const ids = arrayLiteral(batch, (transfer) => transfer.id);
  const pendingIds = [...new Set(batch.filter((t) => resolvesPending(t.kind)).map((t) => t.pendingId))];
  const accountIds = new Set<string>();
  for (const transfer of batch) accountIds.add(transfer.debitAccountId).add(transfer.creditAccountId);
  accountIds.delete("");
  const pendingList = arrayLiteral(pendingIds, itself);
  const pendingAccounts =
    pendingIds.length === 0
      ? sql``
      : sql` || array(select unnest(array[t.debit_account_id, t.credit_account_id]) from ledger.transfers t where t.id = any(${pendingList}::text[]))`;
  const [head, committed, refused, pendingRows, accountRows] = await Promise.all([
    tx.execute(HEAD_LOCK),
    tx.execute(sql`select ${TRANSFER_COLUMNS}, t.sequence from ledger.transfers t where t.id = any(${ids}::text[])`),
    tx.execute(sql`select ${TRANSFER_COLUMNS}, t.result from ledger.transfer_failures t where t.id = any(${ids}::text[])`),
    pendingIds.length === 0
      ? []
      : tx.execute(sql`
          select ${TRANSFER_COLUMNS}, p.status, (extract(epoch from p.expires_at) * 1000)::int8 as expires_ms
          from ledger.transfers t left join ledger.pending_transfers p on p.id = t.id
          where t.id = any(${pendingList}::text[])`),
    tx.execute(sql`
      select id, currency, debits_must_not_exceed_credits, credits_must_not_exceed_debits, closed,
        debits_posted, credits_posted, debits_pending, credits_pending
      from ledger.accounts where id = any(${arrayLiteral([...accountIds], itself)}::text[]${pendingAccounts})`),
  ]);
  const [headRow] = rowsOf<Record<string, unknown>>(head);
  if (!headRow) throw new Error("ledger invariant: journal head row is missing");
  const stored = new Map<string, StoredOutcome>();
  for (const row of rowsOf<Record<string, unknown>>(committed)) {
    stored.set(row.id as string, { kind: "created", transfer: transferOf(row), sequence: BigInt(row.sequence as bigint) });
  }
  for (const row of rowsOf<Record<string, unknown>>(refused)) {
    stored.set(row.id as string, { kind: "failed", transfer: transferOf(row), result: Number(row.result) as CreateTransferResult });
  }
  const pendings = new Map<string, PendingState>();
  for (const row of rowsOf<Record<string, unknown>>(pendingRows)) {
    const transfer = transferOf(row);
    pendings.set(transfer.id, {
      transfer,
      status: transfer.kind === TransferKind.PENDING && row.status !== null ? (Number(row.status) as PendingStatus) : undefined,
      expiresAtMs: row.expires_ms === null || row.expires_ms === undefined ? undefined : Number(row.expires_ms),
    });
  }
  const accountStates = new Map(rowsOf<Record<string, unknown>>(accountRows).map((row) => [row.id as string, accountStateOf(row)]));
  const headState: Head = {
    lastBatch: BigInt(headRow.last_batch as bigint),
    lastSequence: BigInt(headRow.last_sequence as bigint),
    lastHash: headRow.last_hash as Uint8Array,
  };
  return { head: headState, stored, pendings, accounts: accountStates };
}

type Scalar = string | bigint | number | boolean | null;

const QUOTE_OR_BACKSLASH = /["\\]/;

/**
 * A PostgreSQL array literal of `pick` over `items`, passed as one text parameter: one round trip
 * for any batch size. Built in one pass; a batch's 14 columns of 1,000 rows are on the hot path.
 */
function arrayLiteral<T>(items: readonly T[], pick: (item: T) => Scalar): string {
  let literal = "{";
  for (let index = 0; index < items.length; index++) {
    const value = pick(items[index] as T);
    if (index > 0) literal += ",";
    if (typeof value === "string") {
      literal += QUOTE_OR_BACKSLASH.test(value) ? `"${value.replace(/["\\]/g, "\\$&")}"` : `"${value}"`;
    } else if (value === null) literal += "NULL";
    else if (typeof value === "boolean") literal += value ? "t" : "f";
    else literal += String(value);
  }
  return `${literal}}`;
}

const itself = (value: string): string => value;

function column<T>(rows: readonly T[], pick: (row: T) => Scalar, type: string): SQL {
  return sql`${arrayLiteral(rows, pick)}::${sql.raw(type)}[]`;
}

/** The journal rows, and the hash-chained batch record with the new head. */
function journalStatements(rows: JournalRow[], head: Head): SQL[] {
  if (rows.length === 0) return [];
  const batch = head.lastBatch + 1n;
  const hash = batchHash(head.lastHash, rows);
  const hashHex = Buffer.from(hash).toString("hex");
  const first = rows[0] as JournalRow;
  const last = rows[rows.length - 1] as JournalRow;
  return [
    sql`
      insert into ledger.transfers (id, sequence, batch, kind, debit_account_id, credit_account_id, amount_minor, currency, code, reference, metadata, linked, pending_id, timeout_seconds, created_at)
      select *, ${first.createdAt.toISOString()}::timestamptz from unnest(
        ${column(rows, (r) => r.id, "text")}, ${column(rows, (r) => r.sequence, "int8")}, ${column(rows, () => batch, "int8")},
        ${column(rows, (r) => r.kind, "int2")}, ${column(rows, (r) => r.debitAccountId, "text")}, ${column(rows, (r) => r.creditAccountId, "text")},
        ${column(rows, (r) => r.amountMinor, "int8")}, ${column(rows, (r) => r.currency, "text")}, ${column(rows, (r) => r.code, "int4")},
        ${column(rows, (r) => r.reference, "text")}, ${column(rows, (r) => JSON.stringify(r.metadata), "jsonb")}, ${column(rows, (r) => r.linked, "bool")},
        ${column(rows, (r) => r.pendingId, "text")}, ${column(rows, (r) => r.timeoutSeconds, "int4")})`,
    sql`
      with recorded as (
        insert into ledger.journal_batches (batch, first_sequence, last_sequence, previous_hash, hash, created_at)
        values (${batch}, ${first.sequence}, ${last.sequence}, decode(${Buffer.from(head.lastHash).toString("hex")}, 'hex'), decode(${hashHex}, 'hex'), ${first.createdAt.toISOString()}::timestamptz)
      )
      update ledger.journal_head set last_batch = ${batch}, last_sequence = ${last.sequence}, last_hash = decode(${hashHex}, 'hex') where id = 1`,
  ];
}

/** Pending transfers created by the batch, and those it resolved (upserted: one may be both). */
function pendingStatements(changes: Map<string, PendingState>, resolvedBy: Map<string, string>): SQL[] {
  const created = [...changes.values()].filter((pending) => pending.status === PendingStatus.PENDING);
  const resolved = [...changes.values()].filter((pending) => pending.status !== PendingStatus.PENDING);
  const statements: SQL[] = [];
  if (created.length > 0) {
    statements.push(sql`
      insert into ledger.pending_transfers (id, status, expires_at)
      select id, ${PendingStatus.PENDING}, case when expires_ms is null then null else to_timestamp(expires_ms / 1000.0) end
      from unnest(${column(created, (p) => p.transfer.id, "text")}, ${column(created, (p) => p.expiresAtMs ?? null, "int8")}) as p(id, expires_ms)
      on conflict (id) do nothing`);
  }
  if (resolved.length > 0) {
    // A pending transfer created and resolved in the same group has no row yet: upsert.
    statements.push(sql`
      insert into ledger.pending_transfers (id, status, expires_at, resolved_by)
      select id, status, case when expires_ms is null then null else to_timestamp(expires_ms / 1000.0) end, resolved_by
      from unnest(${column(resolved, (p) => p.transfer.id, "text")}, ${column(resolved, (p) => p.status as number, "int2")},
        ${column(resolved, (p) => p.expiresAtMs ?? null, "int8")}, ${column(resolved, (p) => resolvedBy.get(p.transfer.id) ?? null, "text")})
        as p(id, status, expires_ms, resolved_by)
      on conflict (id) do update set status = excluded.status, resolved_by = excluded.resolved_by`);
  }
  return statements;
}

function failureStatements(failed: { transfer: TransferInput; result: CreateTransferResult }[]): SQL[] {
  if (failed.length === 0) return [];
  const rows = failed.map(({ transfer, result }) => ({ ...transfer, result }));
  return [sql`
    insert into ledger.transfer_failures (id, result, kind, debit_account_id, credit_account_id, amount_minor, currency, code, reference, metadata, linked, pending_id, timeout_seconds)
    select * from unnest(
      ${column(rows, (r) => r.id, "text")}, ${column(rows, (r) => r.result, "int4")}, ${column(rows, (r) => r.kind, "int2")},
      ${column(rows, (r) => r.debitAccountId, "text")}, ${column(rows, (r) => r.creditAccountId, "text")}, ${column(rows, (r) => r.amountMinor, "int8")},
      ${column(rows, (r) => r.currency, "text")}, ${column(rows, (r) => r.code, "int4")}, ${column(rows, (r) => r.reference, "text")},
      ${column(rows, (r) => JSON.stringify(r.metadata), "jsonb")}, ${column(rows, (r) => r.linked, "bool")}, ${column(rows, (r) => r.pendingId, "text")},
      ${column(rows, (r) => r.timeoutSeconds, "int4")})`];
}

function balanceStatements(changed: Map<string, AccountState>): SQL[] {
  if (changed.size === 0) return [];
  const rows = [...changed.values()];
  return [sql`
    update ledger.accounts as a set
      debits_posted = v.debits_posted, credits_posted = v.credits_posted,
      debits_pending = v.debits_pending, credits_pending = v.credits_pending
    from unnest(${column(rows, (r) => r.id, "text")}, ${column(rows, (r) => r.debitsPosted, "int8")}, ${column(rows, (r) => r.creditsPosted, "int8")},
      ${column(rows, (r) => r.debitsPending, "int8")}, ${column(rows, (r) => r.creditsPending, "int8")})
      as v(id, debits_posted, credits_posted, debits_pending, credits_pending)
    where a.id = v.id`];
}

/** A journal row, built field by field: every row has the same shape, which keeps reading them fast. */
export function journalRow(transfer: TransferInput, sequence: bigint, batch: bigint, createdAt: Date): JournalRow {
  return {
    id: transfer.id,
    kind: transfer.kind,
    debitAccountId: transfer.debitAccountId,
    creditAccountId: transfer.creditAccountId,
    amountMinor: transfer.amountMinor,
    currency: transfer.currency,
    code: transfer.code,
    reference: transfer.reference,
    metadata: transfer.metadata,
    linked: transfer.linked,
    pendingId: transfer.pendingId,
    timeoutSeconds: transfer.timeoutSeconds,
    sequence,
    batch,
    createdAt,
  };
}

/**
 * Commits one batch of validated transfers (in the Ledger, a group of callers' batches) in one
 * transaction. `nowMs` is the commit time: it stamps the transfers and decides expiry.
 */
export async function commitTransfers(db: Db, batch: TransferInput[], nowMs = Date.now()): Promise<ItemOutcome[]> {
  return db.transaction(async (tx) => {
    const { head, stored, pendings, accounts: accountStates } = await readForCommit(tx, batch);
    const plan = planTransfers(batch, accountStates, pendings, stored, nowMs);
    const createdAt = new Date(nowMs);
    const batchNumber = head.lastBatch + 1n;
    const rows = plan.created.map((transfer, index) => journalRow(transfer, head.lastSequence + BigInt(index + 1), batchNumber, createdAt));
    const resolvedBy = new Map(plan.created.filter((t) => resolvesPending(t.kind)).map((t) => [t.pendingId, t.id]));
    // One pipelined wave. Statements run in the order given, so the journal rows are in before
    // the pending states that reference them.
    const writes = [
      ...journalStatements(rows, head),
      ...pendingStatements(plan.pendingChanges, resolvedBy),
      ...failureStatements(plan.failed),
      ...balanceStatements(plan.changed),
    ];
    await Promise.all(writes.map((statement) => tx.execute(statement)));
    const sequences = new Map(rows.map((row) => [row.id, row.sequence]));
    return plan.outcomes.map((outcome, index) => {
      const sequence = sequences.get((batch[index] as TransferInput).id);
      return sequence === undefined ? outcome : { ...outcome, sequence };
    });
  });
}

/** Pending transfers whose timeout has passed, oldest first, at most `limit`. */
export async function expiredPendingIds(db: Db, nowMs: number, limit: number): Promise<string[]> {
  const rows = await db
    .select({ id: pendingTransfers.id })
    .from(pendingTransfers)
    .where(and(eq(pendingTransfers.status, PendingStatus.PENDING), sql`${pendingTransfers.expiresAt} <= ${new Date(nowMs).toISOString()}::timestamptz`))
    .orderBy(asc(pendingTransfers.expiresAt))
    .limit(limit);
  return rows.map((row) => row.id);
}

// ---------------------------------------------------------------------------------------------
// History

export interface Totals {
  debitsPosted: bigint;
  creditsPosted: bigint;
  debitsPending: bigint;
  creditsPending: bigint;
}

/**
 * The change one journal row makes to an account's four totals, as SQL over `t` (the transfer)
 * and `p` (the pending transfer it resolves). Mirrors applyToTotals in the engine.
 */
function deltaSql(accountId: string): Record<keyof Totals, SQL> {
  const side = (which: "debit" | "credit"): SQL => sql.raw(`t.${which}_account_id`);
  const posted = (which: "debit" | "credit") => sql`case when ${side(which)} = ${accountId} then
    case t.kind when ${TransferKind.POSTED} then t.amount_minor when ${TransferKind.POST_PENDING} then t.amount_minor else 0 end else 0 end`;
  const pending = (which: "debit" | "credit") => sql`case when ${side(which)} = ${accountId} then
    case t.kind when ${TransferKind.PENDING} then t.amount_minor when ${TransferKind.POSTED} then 0 else -coalesce(p.amount_minor, 0) end else 0 end`;
  return { debitsPosted: posted("debit"), creditsPosted: posted("credit"), debitsPending: pending("debit"), creditsPending: pending("credit") };
}

export interface HistoryEntry {
  transfer: TransferRow;
  balanceAfter: Totals;
}

/**
 * Transfers of an account in journal order with the totals after each. A page costs its own size:
 * each side (debit, credit) is read in sequence order through its per-account index and merged,
 * and the totals run on from `before`, the totals after the previous page (which the page token
 * carries); a first page sums the account's entries before it once.
 *
 * Time filters select which entries are returned, never which are counted: every entry in
 * sequence order moves the totals. Transfers of one batch share a time, and batches from several
 * Ledger processes can be a few milliseconds out of time order, so reading stops only at an entry
 * more than TIME_ORDER_SLACK_MS past `toTime`.
 */
export async function accountHistory(
  db: Db,
  accountId: string,
  options: { fromTime?: Date; toTime?: Date; afterSequence: bigint; before?: Totals; limit: number },
): Promise<HistoryEntry[]> {
  let after = options.afterSequence;
  let totals = options.before;
  if (!totals) {
    // The first page starts at the first entry in the window.
    const [first] = await entriesAfter(db, accountId, after, 1, options.fromTime);
    if (!first) return [];
    after = BigInt(first.sequence as string) - 1n;
    totals = await totalsBefore(db, accountId, after + 1n);
  }
  const running = { ...totals };
  const fromMs = options.fromTime?.getTime() ?? -Infinity;
  const toMs = options.toTime?.getTime() ?? Infinity;
  const entries: HistoryEntry[] = [];
  for (;;) {
    const rows = await entriesAfter(db, accountId, after, Math.max(options.limit, 100));
    for (const row of rows) {
      const entry = historyEntry(row, accountId, running);
      after = entry.transfer.sequence;
      const atMs = entry.transfer.createdAt.getTime();
      if (atMs >= toMs + TIME_ORDER_SLACK_MS) return entries;
      if (atMs >= fromMs && atMs < toMs) entries.push(entry);
      if (entries.length === options.limit) return entries;
    }
    if (rows.length < Math.max(options.limit, 100)) return entries;
  }
}

/** Entries of batches written by several Ledger processes may be this far out of time order. */
const TIME_ORDER_SLACK_MS = 60_000;

/** The account's next `limit` entries after `sequence` in journal order, each side through its index. */
async function entriesAfter(db: Db, accountId: string, sequence: bigint, limit: number, fromTime?: Date): Promise<Record<string, unknown>[]> {
  const side = (column: SQL) => sql`(
    select t.id, t.sequence, t.batch, t.kind, t.debit_account_id, t.credit_account_id, t.amount_minor, t.currency, t.code,
      t.reference, t.metadata, t.linked, t.pending_id, t.timeout_seconds, t.created_at, p.amount_minor as pending_amount_minor
    from ledger.transfers t left join ledger.transfers p on p.id = t.pending_id and t.pending_id <> ''
    where ${column} = ${accountId} and t.sequence > ${sequence}
      ${fromTime ? sql`and t.created_at >= ${fromTime.toISOString()}::timestamptz` : sql``}
    order by t.sequence limit ${limit})`;
  return rowsOf<Record<string, unknown>>(await db.execute(sql`
    select * from (${side(sql.raw("t.debit_account_id"))} union all ${side(sql.raw("t.credit_account_id"))}) h
    order by h.sequence limit ${limit}`));
}

/** One history entry; moves `running` by the transfer. */
function historyEntry(row: Record<string, unknown>, accountId: string, running: Totals): HistoryEntry {
  const transfer: TransferRow = {
    id: row.id as string,
    sequence: BigInt(row.sequence as string),
    batch: BigInt(row.batch as string),
    kind: Number(row.kind),
    debitAccountId: row.debit_account_id as string,
    creditAccountId: row.credit_account_id as string,
    amountMinor: BigInt(row.amount_minor as string),
    currency: row.currency as string,
    code: Number(row.code),
    reference: row.reference as string,
    metadata: (typeof row.metadata === "string" ? JSON.parse(row.metadata) : row.metadata) as Record<string, string>,
    linked: row.linked as boolean,
    pendingId: row.pending_id as string,
    timeoutSeconds: Number(row.timeout_seconds),
    createdAt: new Date(row.created_at as string),
  };
  applyDelta(running, accountId, transfer, row.pending_amount_minor === null ? 0n : BigInt(row.pending_amount_minor as string));
  return { transfer, balanceAfter: { ...running } };
}

/** What one transfer does to an account's totals: the same rules as deltaSql, in JavaScript. */
function applyDelta(totals: Totals, accountId: string, transfer: TransferRow, pendingAmountMinor: bigint): void {
  const posted = transfer.kind === TransferKind.POSTED || transfer.kind === TransferKind.POST_PENDING ? transfer.amountMinor : 0n;
  const pending =
    transfer.kind === TransferKind.PENDING ? transfer.amountMinor : transfer.kind === TransferKind.POSTED ? 0n : -pendingAmountMinor;
  if (transfer.debitAccountId === accountId) {
    totals.debitsPosted += posted;
    totals.debitsPending += pending;
  }
  if (transfer.creditAccountId === accountId) {
    totals.creditsPosted += posted;
    totals.creditsPending += pending;
  }
}

/** An account's totals after every transfer before `sequence`. */
async function totalsBefore(db: Db, accountId: string, sequence: bigint): Promise<Totals> {
  const delta = deltaSql(accountId);
  const [row] = rowsOf<Record<string, string>>(await db.execute(sql`
    select coalesce(sum(${delta.debitsPosted}), 0) as debits_posted, coalesce(sum(${delta.creditsPosted}), 0) as credits_posted,
      coalesce(sum(${delta.debitsPending}), 0) as debits_pending, coalesce(sum(${delta.creditsPending}), 0) as credits_pending
    from ledger.transfers t left join ledger.transfers p on p.id = t.pending_id and t.pending_id <> ''
    where (t.debit_account_id = ${accountId} or t.credit_account_id = ${accountId}) and t.sequence < ${sequence}`));
  return {
    debitsPosted: BigInt(row?.debits_posted ?? 0),
    creditsPosted: BigInt(row?.credits_posted ?? 0),
    debitsPending: BigInt(row?.debits_pending ?? 0),
    creditsPending: BigInt(row?.credits_pending ?? 0),
  };
}

/** An account's totals after every transfer committed at or before `time`, and the last sequence. */
export async function balanceAt(db: Db, accountId: string, time: Date): Promise<{ totals: Totals; sequence: bigint }> {
  const delta = deltaSql(accountId);
  const result = await db.execute(sql`
    select coalesce(sum(${delta.debitsPosted}), 0) as debits_posted, coalesce(sum(${delta.creditsPosted}), 0) as credits_posted,
      coalesce(sum(${delta.debitsPending}), 0) as debits_pending, coalesce(sum(${delta.creditsPending}), 0) as credits_pending,
      coalesce(max(t.sequence), 0) as sequence
    from ledger.transfers t left join ledger.transfers p on p.id = t.pending_id and t.pending_id <> ''
    where (t.debit_account_id = ${accountId} or t.credit_account_id = ${accountId}) and t.created_at <= ${time.toISOString()}::timestamptz`);
  const row = rowsOf<Record<string, string>>(result)[0] as Record<string, string>;
  return {
    totals: {
      debitsPosted: BigInt(row.debits_posted as string),
      creditsPosted: BigInt(row.credits_posted as string),
      debitsPending: BigInt(row.debits_pending as string),
      creditsPending: BigInt(row.credits_pending as string),
    },
    sequence: BigInt(row.sequence as string),
  };
}
