// The journal verifier: replays the whole journal in sequence order, recomputing the hash chain
// and every account's four totals, and reports typed findings. It reads in bounded pages, so its
// memory is the accounts' totals and the amounts of pending transfers, not the journal.
import { create } from "@bufbuild/protobuf";
import { asc, gt } from "drizzle-orm";
import { FindingKind, FindingSchema, type Finding } from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import type { Db, Tx } from "../runtime/db.js";
import { applyToTotals, type TransferInput } from "./engine.js";
import { batchHash, GENESIS_HASH, type JournalRow } from "./journal.js";
import { accounts, journalBatches, journalHead, transfers } from "./schema.js";
import type { Totals } from "./store.js";
import { TransferKind } from "../../gen/cowrie/ledger/v1/ledger_pb.js";

const PAGE_ROWS = 5000;
const FINDINGS_MAX = 1000;
const TOTAL_FIELDS = ["debitsPosted", "creditsPosted", "debitsPending", "creditsPending"] as const;
const FIELD_NAMES: Record<(typeof TOTAL_FIELDS)[number], string> = {
  debitsPosted: "debits_posted",
  creditsPosted: "credits_posted",
  debitsPending: "debits_pending",
  creditsPending: "credits_pending",
};

type BatchRow = typeof journalBatches.$inferSelect;

function hex(bytes: Uint8Array): string {
  return Buffer.from(bytes).toString("hex");
}

export interface VerifyResult {
  findings: Finding[];
  transfersChecked: bigint;
  batchesChecked: bigint;
  accountsChecked: bigint;
}

class Findings {
  readonly list: Finding[] = [];
  add(kind: FindingKind, subject: string, detail: string): void {
    if (this.list.length < FINDINGS_MAX) this.list.push(create(FindingSchema, { kind, subject, detail }));
  }
}

/** Pages of journal rows in sequence order. */
async function* journalRows(db: Tx): AsyncGenerator<JournalRow> {
  let after = 0n;
  for (;;) {
    const page = await db.select().from(transfers).where(gt(transfers.sequence, after)).orderBy(asc(transfers.sequence)).limit(PAGE_ROWS);
    for (const row of page) yield row as JournalRow;
    if (page.length < PAGE_ROWS) return;
    after = (page[page.length - 1] as { sequence: bigint }).sequence;
  }
}

async function* batchRows(db: Tx): AsyncGenerator<BatchRow> {
  let after = 0n;
  for (;;) {
    const page = await db.select().from(journalBatches).where(gt(journalBatches.batch, after)).orderBy(asc(journalBatches.batch)).limit(PAGE_ROWS);
    yield* page;
    if (page.length < PAGE_ROWS) return;
    after = (page[page.length - 1] as BatchRow).batch;
  }
}

function zero(): Totals {
  return { debitsPosted: 0n, creditsPosted: 0n, debitsPending: 0n, creditsPending: 0n };
}

/**
 * Replays the journal in one read-only REPEATABLE READ transaction: the journal, the batch
 * records, the head and the accounts are read from one snapshot, so commits made while it runs
 * are either wholly seen or not at all and never show up as findings.
 */
export function verifyJournal(db: Db): Promise<VerifyResult> {
  return db.transaction((tx) => replayJournal(tx), { isolationLevel: "repeatable read", accessMode: "read only" });
}

async function replayJournal(db: Tx): Promise<VerifyResult> {
  const findings = new Findings();
  const replayed = new Map<string, Totals>();
  const pendingAmounts = new Map<string, bigint>();
  const totalsOf = (id: string): Totals => {
    let totals = replayed.get(id);
    if (!totals) replayed.set(id, (totals = zero()));
    return totals;
  };

  // The hash chain: each stored batch against the rows that carry its number.
  const batches = batchRows(db);
  let previousHash: Uint8Array = GENESIS_HASH;
  let batchesChecked = 0n;
  let pendingRows: JournalRow[] = [];
  let currentBatch: bigint | undefined;
  // A batch record read ahead that belongs to later journal rows.
  let lookahead: BatchRow | undefined;
  const nextBatch = async (): Promise<BatchRow | undefined> => {
    if (lookahead) {
      const record = lookahead;
      lookahead = undefined;
      return record;
    }
    const next = await batches.next();
    return next.done ? undefined : next.value;
  };
  const closeBatch = async (): Promise<void> => {
    if (currentBatch === undefined) return;
    let stored = await nextBatch();
    // Records of batches whose rows are all gone: reported each, and the chain continues from
    // their stored hash so that the batches after them still line up with their records.
    while (stored && stored.batch < currentBatch) {
      batchesChecked++;
      findings.add(FindingKind.HASH_MISMATCH, `batch ${stored.batch}`, "batch record has no journal rows");
      previousHash = stored.hash;
      stored = await nextBatch();
    }
    batchesChecked++;
    if (!stored || stored.batch !== currentBatch) {
      findings.add(FindingKind.HASH_MISMATCH, `batch ${currentBatch}`, `no batch record matches (next record is ${stored?.batch ?? "none"})`);
      lookahead = stored;
    } else {
      const computed = batchHash(previousHash, pendingRows);
      if (hex(computed) !== hex(stored.hash) || hex(stored.previousHash) !== hex(previousHash)) {
        findings.add(FindingKind.HASH_MISMATCH, `batch ${currentBatch}`, `stored ${hex(stored.hash).slice(0, 16)}…, journal rows hash to ${hex(computed).slice(0, 16)}…`);
      }
      // Continue from the stored hash so that one altered batch is reported once, not forever.
      previousHash = stored.hash;
    }
    pendingRows = [];
  };

  let expectedSequence = 1n;
  let transfersChecked = 0n;
  for await (const row of journalRows(db)) {
    transfersChecked++;
    if (row.sequence !== expectedSequence) {
      findings.add(FindingKind.SEQUENCE_GAP, `sequence ${row.sequence}`, `expected ${expectedSequence}`);
    }
    expectedSequence = row.sequence + 1n;
    if (row.batch !== currentBatch) {
      await closeBatch();
      currentBatch = row.batch;
    }
    pendingRows.push(row);
    const transfer = row as TransferInput;
    if (transfer.kind === TransferKind.PENDING) pendingAmounts.set(transfer.id, transfer.amountMinor);
    const reserved = pendingAmounts.get(transfer.pendingId) ?? 0n;
    applyToTotals(totalsOf(transfer.debitAccountId), transfer, "debit", reserved);
    applyToTotals(totalsOf(transfer.creditAccountId), transfer, "credit", reserved);
  }
  await closeBatch();
  for (let extra = await nextBatch(); extra; extra = await nextBatch()) {
    batchesChecked++;
    findings.add(FindingKind.HASH_MISMATCH, `batch ${extra.batch}`, "batch record has no journal rows");
  }

  const [head] = await db.select().from(journalHead);
  if (head && head.lastSequence !== expectedSequence - 1n) {
    findings.add(FindingKind.SEQUENCE_GAP, `sequence ${expectedSequence}`, `journal head says the last sequence is ${head.lastSequence}`);
  }

  // Every account's stored totals against the replay, and debits against credits per currency.
  let accountsChecked = 0n;
  const perCurrency = new Map<string, { debits: bigint; credits: bigint }>();
  let after = "";
  for (;;) {
    const page = await db.select().from(accounts).where(gt(accounts.id, after)).orderBy(asc(accounts.id)).limit(PAGE_ROWS);
    for (const account of page) {
      accountsChecked++;
      const expected = replayed.get(account.id) ?? zero();
      replayed.delete(account.id);
      for (const field of TOTAL_FIELDS) {
        if (account[field] !== expected[field]) {
          findings.add(FindingKind.BALANCE_MISMATCH, `account ${account.id} ${FIELD_NAMES[field]}`, `stored ${account[field]}, journal says ${expected[field]}`);
        }
      }
      const sums = perCurrency.get(account.currency) ?? { debits: 0n, credits: 0n };
      sums.debits += account.debitsPosted + account.debitsPending;
      sums.credits += account.creditsPosted + account.creditsPending;
      perCurrency.set(account.currency, sums);
    }
    if (page.length < PAGE_ROWS) break;
    after = (page[page.length - 1] as { id: string }).id;
  }
  for (const id of replayed.keys()) findings.add(FindingKind.BALANCE_MISMATCH, `account ${id}`, "journal moves money for an account that does not exist");
  for (const [currency, sums] of perCurrency) {
    if (sums.debits !== sums.credits) {
      findings.add(FindingKind.DEBITS_NOT_EQUAL_CREDITS, `currency ${currency}`, `debits ${sums.debits}, credits ${sums.credits}`);
    }
  }
  return { findings: findings.list, transfersChecked, batchesChecked, accountsChecked };
}
