// The Ledger's reads and writes in PostgreSQL. A transfer batch is one transaction: lock every
// account it names (in id order, so concurrent batches never deadlock), read what is already
// stored under its ids, plan it with the pure engine, and write transfers, refusals, new
// balance totals and outbox events together. A concurrent insert of the same id surfaces as a
// unique violation and the whole batch is re-planned, so each id is decided exactly once.
import { randomUUID } from "node:crypto";
import { create, toBinary } from "@bufbuild/protobuf";
import { anyPack, timestampNow } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { asc, inArray, sql } from "drizzle-orm";
import { EnvelopeSchema, LedgerTransferCreatedSchema } from "../../gen/cowrie/events/v1/events_pb.js";
import { CreateAccountResult, type CreateTransferResult } from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import { transact, type Db, type Tx } from "../runtime/db.js";
import { planTransfers, type AccountState, type ItemOutcome, type StoredOutcome, type TransferInput } from "./engine.js";
import { accounts, outbox, transferFailures, transfers } from "./schema.js";

export type AccountRow = typeof accounts.$inferSelect;
export type NewAccount = typeof accounts.$inferInsert;
export type TransferRow = typeof transfers.$inferSelect;

const UNIQUE_VIOLATION = "23505";
const SERIALIZATION_RETRIES_MAX = 4;

function isUniqueViolation(error: unknown): boolean {
  for (let cause = error; cause instanceof Error; cause = (cause as { cause?: unknown }).cause) {
    if ((cause as { code?: unknown }).code === UNIQUE_VIOLATION) return true;
  }
  return false;
}

const ACCOUNT_FIELDS: [keyof NewAccount, string][] = [
  ["currency", "currency"],
  ["code", "code"],
  ["ownerRef", "owner_ref"],
  ["debitsMustNotExceedCredits", "debits_must_not_exceed_credits"],
  ["creditsMustNotExceedDebits", "credits_must_not_exceed_debits"],
];

function differingAccountField(stored: AccountRow, incoming: NewAccount): string | undefined {
  for (const [key, field] of ACCOUNT_FIELDS) if (stored[key] !== incoming[key]) return field;
  const a = stored.metadata;
  const b = incoming.metadata ?? {};
  const same = Object.keys(a).length === Object.keys(b).length && Object.keys(a).every((key) => a[key] === b[key]);
  return same ? undefined : "metadata";
}

export function createAccounts(db: Db, batch: NewAccount[]): Promise<{ result: CreateAccountResult; field?: string }[]> {
  return transact(db, (tx) => insertAccounts(tx, batch));
}

async function insertAccounts(db: Tx, batch: NewAccount[]): Promise<{ result: CreateAccountResult; field?: string }[]> {
  const inserted = await db
    .insert(accounts)
    .values(batch)
    .onConflictDoNothing({ target: accounts.id })
    .returning({ id: accounts.id });
  const created = new Set(inserted.map((row) => row.id));
  const others = batch.filter((account) => !created.has(account.id));
  const existing = others.length
    ? new Map((await db.select().from(accounts).where(inArray(accounts.id, others.map((a) => a.id)))).map((row) => [row.id, row]))
    : new Map<string, AccountRow>();
  return batch.map((account) => {
    if (created.has(account.id)) return { result: CreateAccountResult.CREATED };
    const stored = existing.get(account.id) as AccountRow;
    const field = differingAccountField(stored, account);
    return field === undefined
      ? { result: CreateAccountResult.EXISTS }
      : { result: CreateAccountResult.EXISTS_WITH_DIFFERENT_FIELD, field };
  });
}

export function lookupAccounts(db: Db, ids: string[]): Promise<AccountRow[]> {
  return db.select().from(accounts).where(inArray(accounts.id, ids));
}

export function lookupTransfers(db: Db, ids: string[]): Promise<TransferRow[]> {
  return db.select().from(transfers).where(inArray(transfers.id, ids));
}

function toState(row: AccountRow): AccountState {
  return {
    id: row.id,
    currency: row.currency,
    debitsMustNotExceedCredits: row.debitsMustNotExceedCredits,
    creditsMustNotExceedDebits: row.creditsMustNotExceedDebits,
    debitsPosted: row.debitsPosted,
    creditsPosted: row.creditsPosted,
    debitsPending: row.debitsPending,
    creditsPending: row.creditsPending,
  };
}

async function readStored(tx: Tx, ids: string[]): Promise<Map<string, StoredOutcome>> {
  const stored = new Map<string, StoredOutcome>();
  const [committed, refused] = await Promise.all([
    tx.select().from(transfers).where(inArray(transfers.id, ids)),
    tx.select().from(transferFailures).where(inArray(transferFailures.id, ids)),
  ]);
  for (const row of committed) stored.set(row.id, { kind: "created", transfer: row, sequence: row.sequence });
  for (const row of refused) stored.set(row.id, { kind: "failed", transfer: row, result: row.result as CreateTransferResult });
  return stored;
}

function transferCreatedEvent(transfer: TransferInput, sequence: bigint): typeof outbox.$inferInsert {
  const id = randomUUID();
  const data = create(LedgerTransferCreatedSchema, {
    transferId: transfer.id,
    debitAccountId: transfer.debitAccountId,
    creditAccountId: transfer.creditAccountId,
    amountMinor: transfer.amountMinor,
    currency: transfer.currency,
    code: transfer.code,
    reference: transfer.reference,
    sequence,
  });
  const envelope = create(EnvelopeSchema, {
    id,
    type: LedgerTransferCreatedSchema.typeName,
    source: "ledger",
    subject: `transfer/${transfer.id}`,
    time: timestampNow(),
    data: anyPack(LedgerTransferCreatedSchema, data),
  });
  return { id, eventType: envelope.type, subject: envelope.subject, payload: toBinary(EnvelopeSchema, envelope) };
}

async function writePlan(tx: Tx, plan: ReturnType<typeof planTransfers>): Promise<Map<string, bigint>> {
  const sequences = new Map<string, bigint>();
  if (plan.created.length > 0) {
    const rows = await tx
      .insert(transfers)
      .values(plan.created.map((transfer) => ({ ...transfer, metadata: { ...transfer.metadata } })))
      .returning({ id: transfers.id, sequence: transfers.sequence });
    for (const row of rows) sequences.set(row.id, row.sequence);
    await tx.insert(outbox).values(plan.created.map((transfer) => transferCreatedEvent(transfer, sequences.get(transfer.id) as bigint)));
  }
  if (plan.failed.length > 0) {
    await tx.insert(transferFailures).values(
      plan.failed.map(({ transfer, result }) => ({ ...transfer, metadata: { ...transfer.metadata }, result })),
    );
  }
  if (plan.changed.size > 0) {
    const values = sql.join(
      [...plan.changed.values()].map(
        (account) =>
          sql`(${account.id}, ${account.debitsPosted}::bigint, ${account.creditsPosted}::bigint, ${account.debitsPending}::bigint, ${account.creditsPending}::bigint)`,
      ),
      sql`, `,
    );
    await tx.execute(sql`
      update ledger.accounts as a set
        debits_posted = v.debits_posted, credits_posted = v.credits_posted,
        debits_pending = v.debits_pending, credits_pending = v.credits_pending
      from (values ${values}) as v(id, debits_posted, credits_posted, debits_pending, credits_pending)
      where a.id = v.id`);
  }
  return sequences;
}

/** Creates a batch of validated transfers, in a transaction bound to the call's deadline. */
export async function createTransfers(db: Db, batch: TransferInput[]): Promise<ItemOutcome[]> {
  const ids = batch.map((transfer) => transfer.id);
  const accountIds = [...new Set(batch.flatMap((t) => [t.debitAccountId, t.creditAccountId]))].sort();
  for (let attempt = 1; ; attempt++) {
    try {
      return await transact(db, async (tx) => {
        const locked = await tx
          .select()
          .from(accounts)
          .where(inArray(accounts.id, accountIds))
          .orderBy(asc(accounts.id))
          .for("update");
        // Read after locking: a concurrent batch with the same ids has committed by now.
        const stored = await readStored(tx, ids);
        const plan = planTransfers(batch, new Map(locked.map((row) => [row.id, toState(row)])), stored);
        const sequences = await writePlan(tx, plan);
        return plan.outcomes.map((outcome, index) => {
          const sequence = sequences.get((batch[index] as TransferInput).id);
          return sequence === undefined ? outcome : { ...outcome, sequence };
        });
      });
    } catch (error) {
      if (!isUniqueViolation(error)) throw error;
      if (attempt >= SERIALIZATION_RETRIES_MAX) {
        throw new ConnectError("the same transfer ids are being written concurrently; retry", Code.Aborted);
      }
    }
  }
}
