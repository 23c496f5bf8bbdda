// The Ledger's decision logic, pure and synchronous: given the locked accounts and whatever was
// already stored under the batch's ids, decide each transfer's outcome and the new balance
// totals. The service reads and writes PostgreSQL around it; tests drive it directly against a
// model. Nothing here does I/O.
import { CreateTransferResult } from "../../gen/cowrie/ledger/v1/ledger_pb.js";

export const INT64_MAX = 2n ** 63n - 1n;

export interface AccountState {
  readonly id: string;
  readonly currency: string;
  readonly debitsMustNotExceedCredits: boolean;
  readonly creditsMustNotExceedDebits: boolean;
  debitsPosted: bigint;
  creditsPosted: bigint;
  debitsPending: bigint;
  creditsPending: bigint;
}

export interface TransferInput {
  readonly id: string;
  readonly debitAccountId: string;
  readonly creditAccountId: string;
  readonly amountMinor: bigint;
  readonly currency: string;
  readonly code: number;
  readonly reference: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly linked: boolean;
}

/** What is already stored under a transfer id: the committed transfer or its recorded refusal. */
export type StoredOutcome =
  | { readonly kind: "created"; readonly transfer: TransferInput; readonly sequence: bigint }
  | { readonly kind: "failed"; readonly transfer: TransferInput; readonly result: CreateTransferResult };

export interface ItemOutcome {
  result: CreateTransferResult;
  /** For EXISTS_WITH_DIFFERENT_FIELD: the proto field name that differs. */
  field?: string;
  /** For EXISTS: the stored journal position. */
  sequence?: bigint;
}

export interface Plan {
  /** One outcome per input, in input order. */
  readonly outcomes: ItemOutcome[];
  /** Transfers to insert, in input order. */
  readonly created: TransferInput[];
  /** New refusals to record. */
  readonly failed: { transfer: TransferInput; result: CreateTransferResult }[];
  /** Accounts whose totals changed, with their new totals. */
  readonly changed: Map<string, AccountState>;
}

const COMPARED_FIELDS: [keyof TransferInput, string][] = [
  ["debitAccountId", "debit_account_id"],
  ["creditAccountId", "credit_account_id"],
  ["amountMinor", "amount_minor"],
  ["currency", "currency"],
  ["code", "code"],
  ["reference", "reference"],
  ["linked", "linked"],
];

/** The first proto field in which two transfers with the same id differ, or undefined. */
export function differingField(stored: TransferInput, incoming: TransferInput): string | undefined {
  for (const [key, field] of COMPARED_FIELDS) if (stored[key] !== incoming[key]) return field;
  return sameMetadata(stored.metadata, incoming.metadata) ? undefined : "metadata";
}

function sameMetadata(a: Readonly<Record<string, string>>, b: Readonly<Record<string, string>>): boolean {
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((key) => a[key] === b[key]);
}

/** The outcome of a retry: the stored one, or a conflict naming the field that differs. */
function replay(stored: StoredOutcome, incoming: TransferInput): ItemOutcome {
  const field = differingField(stored.transfer, incoming);
  if (field !== undefined) return { result: CreateTransferResult.EXISTS_WITH_DIFFERENT_FIELD, field };
  if (stored.kind === "created") return { result: CreateTransferResult.EXISTS, sequence: stored.sequence };
  return { result: stored.result };
}

/** Balances as a chain sees them: its own staged changes over the batch's working state. */
class Overlay {
  readonly staged = new Map<string, AccountState>();
  constructor(private readonly base: ReadonlyMap<string, AccountState>) {}
  get(id: string): AccountState | undefined {
    return this.staged.get(id) ?? this.base.get(id);
  }
  set(id: string, account: AccountState): void {
    this.staged.set(id, account);
  }
}

/** Decides one new transfer against the chain's view, applying it when it is accepted. */
function apply(transfer: TransferInput, accounts: Overlay): CreateTransferResult {
  const debit = accounts.get(transfer.debitAccountId);
  if (!debit) return CreateTransferResult.DEBIT_ACCOUNT_NOT_FOUND;
  const credit = accounts.get(transfer.creditAccountId);
  if (!credit) return CreateTransferResult.CREDIT_ACCOUNT_NOT_FOUND;
  if (debit.currency !== transfer.currency || credit.currency !== transfer.currency) {
    return CreateTransferResult.CURRENCY_MISMATCH;
  }
  const amount = transfer.amountMinor;
  if (debit.debitsPosted + amount > INT64_MAX || credit.creditsPosted + amount > INT64_MAX) {
    return CreateTransferResult.OVERFLOWS;
  }
  // Pending debits count against the limit: reserved money is not available to spend twice.
  if (debit.debitsMustNotExceedCredits && debit.debitsPosted + debit.debitsPending + amount > debit.creditsPosted) {
    return CreateTransferResult.EXCEEDS_CREDITS;
  }
  if (credit.creditsMustNotExceedDebits && credit.creditsPosted + credit.creditsPending + amount > credit.debitsPosted) {
    return CreateTransferResult.EXCEEDS_DEBITS;
  }
  accounts.set(debit.id, { ...debit, debitsPosted: debit.debitsPosted + amount });
  const creditNow = accounts.get(credit.id) as AccountState;
  accounts.set(credit.id, { ...creditNow, creditsPosted: creditNow.creditsPosted + amount });
  return CreateTransferResult.CREATED;
}

/** Splits a batch into linked chains: each chain ends at the first transfer with linked = false. */
export function chainsOf(batch: readonly TransferInput[]): number[][] {
  const chains: number[][] = [];
  let current: number[] = [];
  batch.forEach((transfer, index) => {
    current.push(index);
    if (!transfer.linked) {
      chains.push(current);
      current = [];
    }
  });
  if (current.length > 0) chains.push(current);
  return chains;
}

const SUCCESS = new Set([CreateTransferResult.CREATED, CreateTransferResult.EXISTS]);

/**
 * Plans a batch. A chain commits when every member is new and accepted, or is a replay when
 * every member already exists; any other mix fails the chain as a whole, and its otherwise
 * acceptable members report LINKED_EVENT_FAILED.
 */
export function planTransfers(
  batch: readonly TransferInput[],
  lockedAccounts: ReadonlyMap<string, AccountState>,
  stored: ReadonlyMap<string, StoredOutcome>,
): Plan {
  const working = new Map(lockedAccounts);
  const outcomes: ItemOutcome[] = new Array(batch.length);
  const created: TransferInput[] = [];
  const failed: Plan["failed"] = [];
  for (const chain of chainsOf(batch)) {
    const staged = new Overlay(working);
    for (const index of chain) {
      const transfer = batch[index] as TransferInput;
      const previous = stored.get(transfer.id);
      outcomes[index] = previous ? replay(previous, transfer) : { result: apply(transfer, staged) };
    }
    const results = chain.map((index) => (outcomes[index] as ItemOutcome).result);
    const allCreated = results.every((result) => result === CreateTransferResult.CREATED);
    const allExist = results.every((result) => result === CreateTransferResult.EXISTS);
    if (allCreated) {
      for (const [id, account] of staged.staged) working.set(id, account);
      for (const index of chain) created.push(batch[index] as TransferInput);
      continue;
    }
    if (allExist) continue;
    for (const index of chain) {
      const outcome = outcomes[index] as ItemOutcome;
      const transfer = batch[index] as TransferInput;
      if (stored.has(transfer.id)) continue;
      if (SUCCESS.has(outcome.result)) outcome.result = CreateTransferResult.LINKED_EVENT_FAILED;
      failed.push({ transfer, result: outcome.result });
    }
  }
  const changed = new Map<string, AccountState>();
  for (const [id, account] of working) if (account !== lockedAccounts.get(id)) changed.set(id, account);
  assertConserved(lockedAccounts, changed);
  return { outcomes, created, failed, changed };
}

/**
 * Double entry, asserted before anything is written: per currency, what the batch added to
 * debits equals what it added to credits. A failure is a bug in the ledger, never an input error.
 */
export function assertConserved(before: ReadonlyMap<string, AccountState>, after: ReadonlyMap<string, AccountState>): void {
  const drift = new Map<string, bigint>();
  for (const [id, next] of after) {
    const previous = before.get(id);
    if (!previous) throw new Error(`ledger invariant: account ${id} changed without being locked`);
    const debits = next.debitsPosted - previous.debitsPosted + next.debitsPending - previous.debitsPending;
    const credits = next.creditsPosted - previous.creditsPosted + next.creditsPending - previous.creditsPending;
    drift.set(next.currency, (drift.get(next.currency) ?? 0n) + debits - credits);
  }
  for (const [currency, difference] of drift) {
    if (difference !== 0n) throw new Error(`ledger invariant: ${currency} debits and credits differ by ${difference}`);
  }
}
