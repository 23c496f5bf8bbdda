// The Ledger publishes its journal: one "ledger.batch.committed" event per committed batch, read
// straight from the journal after a cursor, so the write path writes no event rows and encodes
// nothing. Nothing is skipped: every commit holds the journal head's lock to its end, so batches
// become visible in batch order, and a batch the relay cannot see yet is numbered above every
// batch it has seen. The cursor moves in the relay's transaction once the broker confirmed.
import { toBinary } from "@bufbuild/protobuf";
import { sql } from "drizzle-orm";
import { EnvelopeSchema, LedgerBatchCommittedSchema } from "../../gen/cowrie/events/v1/events_pb.js";
import { rowsOf, type Tx } from "../runtime/db.js";
import { envelopeOf, type EventFeed, type FeedEvent } from "../runtime/events.js";
import { encodeBatchCommitted, type BatchTransfer } from "./batch-encoding.js";
import { journalRow, transferOf } from "./store.js";

export const LEDGER_BATCH_COMMITTED = "ledger.batch.committed";

/** At most this many transfers are read and published in one relay transaction (at least one batch). */
const TRANSFERS_PER_PASS_MAX = 20_000;

interface BatchEvent extends FeedEvent {
  readonly batch: bigint;
}

type Row = Record<string, unknown>;

/** The event id: the batch's hash as a UUID (version 8), the same every time the batch is published. */
export function batchEventId(hash: Uint8Array): string {
  const bytes = Buffer.from(hash.subarray(0, 16));
  bytes[6] = ((bytes[6] as number) & 0x0f) | 0x80;
  bytes[8] = ((bytes[8] as number) & 0x3f) | 0x80;
  const hex = bytes.toString("hex");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

async function unpublishedBatches(tx: Tx, limit: number): Promise<Row[]> {
  return rowsOf<Row>(await tx.execute(sql`
    select b.batch, b.first_sequence, b.last_sequence, b.hash, b.created_at from ledger.journal_batches b
    where b.batch > (select last_batch from ledger.relay_cursor where id = 1)
    order by b.batch limit ${limit}`));
}

export const journalFeed: EventFeed<BatchEvent> = {
  async next(tx, limit) {
    const batches: Row[] = [];
    let transfers = 0n;
    for (const row of await unpublishedBatches(tx, limit)) {
      const size = BigInt(row.last_sequence as bigint) - BigInt(row.first_sequence as bigint) + 1n;
      if (batches.length > 0 && transfers + size > BigInt(TRANSFERS_PER_PASS_MAX)) break;
      batches.push(row);
      transfers += size;
    }
    const first = batches[0];
    const last = batches[batches.length - 1];
    if (!first || !last) return [];
    const rows = rowsOf<Row>(await tx.execute(sql`
      select id, sequence, kind, debit_account_id, credit_account_id, amount_minor, currency, code, reference, metadata,
        linked, pending_id, timeout_seconds, created_at
      from ledger.transfers where sequence between ${first.first_sequence as bigint} and ${last.last_sequence as bigint} order by sequence`));
    let next = 0;
    return batches.map((row) => {
      const batch = BigInt(row.batch as bigint);
      const lastSequence = BigInt(row.last_sequence as bigint);
      const members: BatchTransfer[] = [];
      while (next < rows.length && BigInt((rows[next] as Row).sequence as bigint) <= lastSequence) {
        const member = rows[next++] as Row;
        members.push(journalRow(transferOf(member), BigInt(member.sequence as bigint), batch, new Date(member.created_at as string)));
      }
      const hash = row.hash as Uint8Array;
      const committedAt = new Date(row.created_at as string);
      const id = batchEventId(hash);
      const encoded = encodeBatchCommitted({ batch, firstSequence: BigInt(row.first_sequence as bigint), lastSequence, hash, transfers: members });
      const envelope = envelopeOf(id, "ledger", committedAt, { type: LEDGER_BATCH_COMMITTED, subject: `batch/${batch}`, schema: LedgerBatchCommittedSchema, encoded });
      return { id, type: LEDGER_BATCH_COMMITTED, payload: toBinary(EnvelopeSchema, envelope), committedAt, batch };
    });
  },
  async markPublished(tx, events) {
    const last = events[events.length - 1];
    if (last) await tx.execute(sql`update ledger.relay_cursor set last_batch = ${last.batch} where id = 1`);
  },
  async oldestUnpublishedAt(db) {
    const [row] = rowsOf<Row>(await db.execute(sql`
      select b.created_at from ledger.journal_batches b
      where b.batch > (select last_batch from ledger.relay_cursor where id = 1) order by b.batch limit 1`));
    return row ? new Date(row.created_at as string) : undefined;
  },
};
