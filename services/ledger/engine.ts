// The Ledger's decision logic, pure and synchronous: given the locked accounts, the pending
// transfers a batch refers to, and whatever was already stored under the batch's ids, decide
// each transfer's outcome and the new balance totals. The store reads and writes PostgreSQL
// around it; tests drive it directly against a model. Nothing here does I/O.
import { CreateTransferResult, TransferKind } from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import { INT64_MAX } from "../runtime/validate.js";

export interface AccountState {
  readonly id: string;
  readonly currency: string;
  readonly debitsMustNotExceedCredits: boolean;
  readonly creditsMustNotExceedDebits: boolean;
  readonly closed: boolean;
  readonly debitsPosted: bigint;
  readonly creditsPosted: bigint;
  readonly debitsPending: bigint;
  readonly creditsPending: bigint;
}

export interface TransferInput {
  readonly id: string;
  readonly kind: TransferKind;
  /** Empty for POST/VOID means "the pending transfer's". */
  readonly debitAccountId: string;
  readonly creditAccountId: string;
  /** 0 for POST means "all of it", for VOID "the pending amount". */
  readonly amountMinor: bigint;
  /** Empty for POST/VOID means "the pending transfer's". */
  readonly currency: string;
  readonly code: number;
  readonly reference: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly linked: boolean;
  readonly pendingId: string;
  readonly timeoutSeconds: number;
}

/** The state of a transfer of kind PENDING. */
export enum PendingStatus {
  PENDING = 1,
  POSTED = 2,
  VOIDED = 3,
  EXPIRED = 4,
}

/** A transfer that a POST/VOID/EXPIRE names, as committed, with its resolution state. */
export interface PendingState {
  readonly transfer: TransferInput;
  /** Undefined when the named transfer is not of kind PENDING. */
  readonly status: PendingStatus | undefined;
  /** Epoch milliseconds after which it may no longer be posted; undefined for never. */
  readonly expiresAtMs: number | undefined;
}

/** What is already stored under a transfer id: the committed transfer or its recorded refusal. */
export type StoredOutcome =
  | { readonly kind: "created"; readonly transfer: TransferInput; readonly sequence: bigint }
  | { readonly kind: "failed"; readonly transfer: TransferInput; readonly result: CreateTransferResult };

export interface ItemOutcome {
  result: CreateTransferResult;
  /** For EXISTS_WITH_DIFFERENT_FIELD and PENDING_TRANSFER_HAS_DIFFERENT_FIELD. */
  field?: string;
  /** For EXISTS: the stored journal position. */
  sequence?: bigint;
}

export interface Plan {
  /** One outcome per input, in input order. */
  readonly outcomes: ItemOutcome[];
  /** Transfers to append to the journal, in input order, with pending references resolved. */
  readonly created: TransferInput[];
  /** New refusals to record (as submitted). */
  readonly failed: { transfer: TransferInput; result: CreateTransferResult }[];
  /** Accounts whose totals changed, with their new totals. */
  readonly changed: Map<string, AccountState>;
  /** Pending transfers created or resolved by this batch, with their new state. */
  readonly pendingChanges: Map<string, PendingState>;
}

const RESOLVING_KINDS = new Set([TransferKind.POST_PENDING, TransferKind.VOID_PENDING, TransferKind.EXPIRE_PENDING]);

export function resolvesPending(kind: TransferKind): boolean {
  return RESOLVING_KINDS.has(kind);
}

const COMPARED_FIELDS: [keyof TransferInput, string][] = [
  ["kind", "kind"],
  ["debitAccountId", "debit_account_id"],
  ["creditAccountId", "credit_account_id"],
  ["amountMinor", "amount_minor"],
  ["currency", "currency"],
  ["code", "code"],
  ["reference", "reference"],
  ["linked", "linked"],
  ["pendingId", "pending_id"],
  ["timeoutSeconds", "timeout_seconds"],
];

/**
 * Whether an incoming field matches the stored one. A POST or VOID may leave accounts, currency
 * and amount to the pending transfer; it is stored resolved, so an empty (or zero) incoming value
 * matches what was resolved.
 */
function sameField(key: keyof TransferInput, stored: TransferInput, incoming: TransferInput): boolean {
  if (stored[key] === incoming[key]) return true;
  if (!resolvesPending(incoming.kind)) return false;
  if (key === "debitAccountId" || key === "creditAccountId" || key === "currency") return incoming[key] === "";
  return key === "amountMinor" && incoming.amountMinor === 0n;
}

/** The first proto field in which two transfers with the same id differ, or undefined. */
export function differingField(stored: TransferInput, incoming: TransferInput): string | undefined {
  for (const [key, field] of COMPARED_FIELDS) if (!sameField(key, stored, incoming)) return field;
  return sameMetadata(stored.metadata, incoming.metadata) ? undefined : "metadata";
}

export function sameMetadata(a: Readonly<Record<string, string>>, b: Readonly<Record<string, string>>): boolean {
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

/** State as a chain sees it: its own staged changes over the batch's working state. */
class Overlay<T> {
  readonly staged = new Map<string, T>();
  constructor(private readonly base: ReadonlyMap<string, T>) {}
  get(id: string): T | undefined {
    return this.staged.get(id) ?? this.base.get(id);
  }
  set(id: string, value: T): void {
    this.staged.set(id, value);
  }
}

interface View {
  accounts: Overlay<AccountState>;
  pendings: Overlay<PendingState>;
  nowMs: number;
}

type Decision = { result: CreateTransferResult; field?: string; resolved?: TransferInput };

const rejected = (result: CreateTransferResult, field?: string): Decision => (field ? { result, field } : { result });

function exceedsInt64(...values: bigint[]): boolean {
  return values.some((value) => value > INT64_MAX);
}

/** POSTED and PENDING: money moves (or is reserved) between two open accounts within limits. */
function applyNew(transfer: TransferInput, view: View): Decision {
  const debit = view.accounts.get(transfer.debitAccountId);
  if (!debit) return rejected(CreateTransferResult.DEBIT_ACCOUNT_NOT_FOUND);
  const credit = view.accounts.get(transfer.creditAccountId);
  if (!credit) return rejected(CreateTransferResult.CREDIT_ACCOUNT_NOT_FOUND);
  if (debit.currency !== transfer.currency || credit.currency !== transfer.currency) {
    return rejected(CreateTransferResult.CURRENCY_MISMATCH);
  }
  if (debit.closed) return rejected(CreateTransferResult.DEBIT_ACCOUNT_CLOSED);
  if (credit.closed) return rejected(CreateTransferResult.CREDIT_ACCOUNT_CLOSED);
  const amount = transfer.amountMinor;
  const pending = transfer.kind === TransferKind.PENDING;
  const debitsPosted = debit.debitsPosted + (pending ? 0n : amount);
  const debitsPending = debit.debitsPending + (pending ? amount : 0n);
  const creditsPosted = credit.creditsPosted + (pending ? 0n : amount);
  const creditsPending = credit.creditsPending + (pending ? amount : 0n);
  if (exceedsInt64(debitsPosted + debitsPending, creditsPosted + creditsPending)) {
    return rejected(CreateTransferResult.OVERFLOWS);
  }
  // Reserved money counts against the limit: it is not available to spend twice.
  if (debit.debitsMustNotExceedCredits && debitsPosted + debitsPending > debit.creditsPosted) {
    return rejected(CreateTransferResult.EXCEEDS_CREDITS);
  }
  if (credit.creditsMustNotExceedDebits && creditsPosted + creditsPending > credit.debitsPosted) {
    return rejected(CreateTransferResult.EXCEEDS_DEBITS);
  }
  view.accounts.set(debit.id, { ...debit, debitsPosted, debitsPending });
  const creditNow = view.accounts.get(credit.id) as AccountState;
  view.accounts.set(credit.id, { ...creditNow, creditsPosted, creditsPending });
  if (pending) {
    const expiresAtMs = transfer.timeoutSeconds > 0 ? view.nowMs + transfer.timeoutSeconds * 1000 : undefined;
    view.pendings.set(transfer.id, { transfer, status: PendingStatus.PENDING, expiresAtMs });
  }
  return { result: CreateTransferResult.CREATED, resolved: transfer };
}

const RESOLVED_RESULT: Record<PendingStatus, CreateTransferResult> = {
  [PendingStatus.PENDING]: CreateTransferResult.CREATED,
  [PendingStatus.POSTED]: CreateTransferResult.PENDING_TRANSFER_ALREADY_POSTED,
  [PendingStatus.VOIDED]: CreateTransferResult.PENDING_TRANSFER_ALREADY_VOIDED,
  [PendingStatus.EXPIRED]: CreateTransferResult.PENDING_TRANSFER_EXPIRED,
};

/** POST_PENDING, VOID_PENDING and EXPIRE_PENDING: resolve a reservation, at most once. */
function applyResolution(transfer: TransferInput, view: View): Decision {
  const target = view.pendings.get(transfer.pendingId);
  if (!target) return rejected(CreateTransferResult.PENDING_TRANSFER_NOT_FOUND);
  if (target.status === undefined) return rejected(CreateTransferResult.PENDING_TRANSFER_NOT_PENDING);
  if (target.status !== PendingStatus.PENDING) return rejected(RESOLVED_RESULT[target.status]);
  const expired = target.expiresAtMs !== undefined && target.expiresAtMs <= view.nowMs;
  if (expired && transfer.kind !== TransferKind.EXPIRE_PENDING) return rejected(CreateTransferResult.PENDING_TRANSFER_EXPIRED);
  const pending = target.transfer;
  for (const [key, field] of [["debitAccountId", "debit_account_id"], ["creditAccountId", "credit_account_id"], ["currency", "currency"]] as const) {
    if (transfer[key] !== "" && transfer[key] !== pending[key]) {
      return rejected(CreateTransferResult.PENDING_TRANSFER_HAS_DIFFERENT_FIELD, field);
    }
  }
  const posting = transfer.kind === TransferKind.POST_PENDING;
  const amount = transfer.amountMinor === 0n ? pending.amountMinor : transfer.amountMinor;
  if (amount > pending.amountMinor || (!posting && amount !== pending.amountMinor)) {
    return rejected(CreateTransferResult.EXCEEDS_PENDING_TRANSFER_AMOUNT);
  }
  const debit = view.accounts.get(pending.debitAccountId) as AccountState;
  const credit = view.accounts.get(pending.creditAccountId) as AccountState;
  const posted = posting ? amount : 0n;
  if (exceedsInt64(debit.debitsPosted + posted, credit.creditsPosted + posted)) return rejected(CreateTransferResult.OVERFLOWS);
  view.accounts.set(debit.id, {
    ...debit,
    debitsPending: debit.debitsPending - pending.amountMinor,
    debitsPosted: debit.debitsPosted + posted,
  });
  const creditNow = view.accounts.get(credit.id) as AccountState;
  view.accounts.set(credit.id, {
    ...creditNow,
    creditsPending: creditNow.creditsPending - pending.amountMinor,
    creditsPosted: creditNow.creditsPosted + posted,
  });
  const status = posting ? PendingStatus.POSTED : transfer.kind === TransferKind.VOID_PENDING ? PendingStatus.VOIDED : PendingStatus.EXPIRED;
  view.pendings.set(pending.id, { ...target, status });
  const resolved: TransferInput = {
    ...transfer,
    debitAccountId: pending.debitAccountId,
    creditAccountId: pending.creditAccountId,
    currency: pending.currency,
    amountMinor: amount,
  };
  return { result: CreateTransferResult.CREATED, resolved };
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
  pendings: ReadonlyMap<string, PendingState>,
  stored: ReadonlyMap<string, StoredOutcome>,
  nowMs: number,
): Plan {
  const working = { accounts: new Map(lockedAccounts), pendings: new Map(pendings) };
  const outcomes: ItemOutcome[] = new Array(batch.length);
  const created: TransferInput[] = [];
  const failed: Plan["failed"] = [];
  for (const chain of chainsOf(batch)) {
    const view: View = { accounts: new Overlay(working.accounts), pendings: new Overlay(working.pendings), nowMs };
    const resolved: TransferInput[] = [];
    for (const index of chain) {
      const transfer = batch[index] as TransferInput;
      const previous = stored.get(transfer.id);
      if (previous) {
        outcomes[index] = replay(previous, transfer);
        continue;
      }
      const decision = resolvesPending(transfer.kind) ? applyResolution(transfer, view) : applyNew(transfer, view);
      outcomes[index] = decision.field ? { result: decision.result, field: decision.field } : { result: decision.result };
      if (decision.resolved) resolved.push(decision.resolved);
    }
    const results = chain.map((index) => (outcomes[index] as ItemOutcome).result);
    if (results.every((result) => result === CreateTransferResult.CREATED)) {
      for (const [id, account] of view.accounts.staged) working.accounts.set(id, account);
      for (const [id, pending] of view.pendings.staged) working.pendings.set(id, pending);
      created.push(...resolved);
      continue;
    }
    if (results.every((result) => result === CreateTransferResult.EXISTS)) continue;
    for (const index of chain) {
      const outcome = outcomes[index] as ItemOutcome;
      const transfer = batch[index] as TransferInput;
      if (stored.has(transfer.id)) continue;
      if (SUCCESS.has(outcome.result)) outcome.result = CreateTransferResult.LINKED_EVENT_FAILED;
      failed.push({ transfer, result: outcome.result });
    }
  }
  const changed = new Map<string, AccountState>();
  for (const [id, account] of working.accounts) if (account !== lockedAccounts.get(id)) changed.set(id, account);
  const pendingChanges = new Map<string, PendingState>();
  for (const [id, pending] of working.pendings) if (pending !== pendings.get(id)) pendingChanges.set(id, pending);
  assertConserved(lockedAccounts, changed);
  return { outcomes, created, failed, changed, pendingChanges };
}

/**
 * Double entry, asserted before anything is written: per currency, what the batch added to
 * debits equals what it added to credits. A failure is a bug in the ledger, never an input error.
 */
export function assertConserved(before: ReadonlyMap<string, AccountState>, after: ReadonlyMap<string, AccountState>): void {
  const drift = new Map<string, bigint>();
  for (const [id, next] of after) {
    const previous = before.get(id);
    if (!previous) throw new Error(`ledger invariant: account ${id} changed without being read for the batch`);
    const debits = next.debitsPosted - previous.debitsPosted + next.debitsPending - previous.debitsPending;
    const credits = next.creditsPosted - previous.creditsPosted + next.creditsPending - previous.creditsPending;
    drift.set(next.currency, (drift.get(next.currency) ?? 0n) + debits - credits);
  }
  for (const [currency, difference] of drift) {
    if (difference !== 0n) throw new Error(`ledger invariant: ${currency} debits and credits differ by ${difference}`);
  }
}

/** An account's totals after one journal entry: the same rules as the write path, for replay. */
export function applyToTotals(
  totals: { debitsPosted: bigint; creditsPosted: bigint; debitsPending: bigint; creditsPending: bigint },
  transfer: Pick<TransferInput, "kind" | "amountMinor" | "debitAccountId" | "creditAccountId">,
  side: "debit" | "credit",
  pendingAmountMinor: bigint,
): void {
  const posted = side === "debit" ? "debitsPosted" : "creditsPosted";
  const reserved = side === "debit" ? "debitsPending" : "creditsPending";
  switch (transfer.kind) {
    case TransferKind.POSTED:
      totals[posted] += transfer.amountMinor;
      return;
    case TransferKind.PENDING:
      totals[reserved] += transfer.amountMinor;
      return;
    case TransferKind.POST_PENDING:
      totals[reserved] -= pendingAmountMinor;
      totals[posted] += transfer.amountMinor;
      return;
    default:
      totals[reserved] -= pendingAmountMinor;
  }
}
