// The Wallet service. Wallets keep identity, status and limits here; every balance comes from the
// Ledger account with the wallet's id, and every movement is a Ledger transfer whose id is
// derived from the tenant and the caller's idempotency key, so the Ledger's own "same id, same
// outcome" rule makes each operation exactly-once end to end. Holds are Ledger pending transfers
// with the hold's id. Daily outflow limits are counted in this service's own tables (outflows.ts)
// before the Ledger is asked, and given back when it refuses.
import { createHash } from "node:crypto";
import { fileURLToPath } from "node:url";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { and, desc, eq, inArray, ne, sql, type SQL } from "drizzle-orm";
import {
  AccountCode,
  CloseAccountResult,
  CreateAccountResult,
  CreateTransferResult,
  LedgerService,
  TransferKind,
  type Account,
  type GetAccountHistoryResponse_Entry,
  type TransferSchema,
} from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import {
  EntryDirection,
  EntryType,
  HoldSchema,
  HoldStatus,
  StatementEntrySchema,
  WalletKind,
  WalletLimitsSchema,
  WalletSchema,
  WalletService,
  WalletStatus,
  type Hold,
  type StatementEntry,
  type Wallet,
  type WalletLimits,
} from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import { expireTransferId } from "../ledger/service.js";
import { transact, transactPipelined, type Tx } from "../runtime/db.js";
import { appendEvents, eventsInsert, outboxFeed, type NewEvent } from "../runtime/events.js";
import { HoldChangedSchema, WalletChangedSchema } from "../../gen/cowrie/events/v1/events_pb.js";
import { invalidArgument, notFound } from "../runtime/errors.js";
import { pageOf, pagePosition } from "../runtime/pages.js";
import type { ServiceModule } from "../runtime/service.js";
import {
  INT64_MAX,
  limitText,
  minorUnitExponent,
  optionalId,
  requireAmountMinor,
  requireCurrency,
  requireEnum,
  requireId,
  requireIdempotencyKey,
  requireText,
  requirePageSize,
  PENDING_TIMEOUT_SECONDS_MAX,
} from "../runtime/validate.js";
import { CALLER_TRANSFER_CODES, TRANSFER_CODE, entryTypeOf, refusal, refusalCodeOf, type RefusalCode } from "./codes.js";
import {
  findOutflow,
  outflowToday,
  recordRefusedOutflow,
  refuseOutflow,
  releaseOutflow,
  reserveOutflow,
  type OutflowRecord,
} from "./outflows.js";
import { holds, outbox, wallets } from "./schema.js";


type WalletRow = typeof wallets.$inferSelect;
type HoldRow = typeof holds.$inferSelect;
type Ledger = Client<typeof LedgerService>;
type TransferInit = MessageInitShape<typeof TransferSchema>;

/** A hold with timeout_seconds 0 lasts 7 days; the Ledger allows at most a year. */
export const HOLD_TIMEOUT_DEFAULT_SECONDS = 604_800;
const LIST_PAGE_SIZE_DEFAULT = 20;
const LIST_PAGE_SIZE_MAX = 100;
const STATEMENT_PAGE_SIZE_DEFAULT = 50;
const STATEMENT_PAGE_SIZE_MAX = 500;
/** Ledger history pages one statement page may read while skipping entries with no posted effect. */
const STATEMENT_LEDGER_PAGES_MAX = 8;
const LEDGER_ID_MAX = 64;

function digest(...parts: string[]): string {
  return createHash("sha256").update(parts.join("\u0000")).digest("base64url");
}

/** Wallet ids are derived from (tenant, owner, currency): creating a wallet twice finds the same id. */
export function walletIdFor(tenantId: string, ownerId: string, currency: string): string {
  return `wal_${digest("wallet", tenantId, ownerId, currency).slice(0, 26)}`;
}

/** The Ledger transfer id for an operation: the same tenant and key always name the same transfer. */
export function transferIdFor(tenantId: string, idempotencyKey: string): string {
  return `wtx_${digest("wallet-operation", tenantId, idempotencyKey).slice(0, 40)}`;
}

/** The fee leg of a TransferFunds: the main leg's id with a suffix (48 characters). */
export function feeTransferIdFor(transferId: string): string {
  return `${transferId}:fee`;
}

/** A hold's id, which is also its Ledger pending transfer's id: "hld_" and 40 characters. */
export function holdIdFor(tenantId: string, idempotencyKey: string): string {
  return `hld_${digest("wallet-hold", tenantId, idempotencyKey).slice(0, 40)}`;
}

/** The Ledger POST_PENDING that captures a hold: one per hold, so a capture happens once. */
export function captureIdFor(holdId: string): string {
  return `${holdId}:post`;
}

/** The Ledger VOID_PENDING that releases a hold. */
export function releaseIdFor(holdId: string): string {
  return `${holdId}:void`;
}

export function fundingAccountId(currency: string): string {
  return `funding:${currency}`;
}

/** Money on its way in from, or out to, a payment gateway: "clearing:<gateway>:<CUR>". */
export function clearingAccountId(gateway: string, currency: string): string {
  return `clearing:${gateway}:${currency}`;
}

const GATEWAY_PATTERN = /^[a-z][a-z0-9_]{1,31}$/;

/** A gateway name as the Router sends it, or undefined when the field is empty. */
function optionalGateway(value: string, field: string): string | undefined {
  if (value === "") return undefined;
  if (!GATEWAY_PATTERN.test(value)) throw invalidArgument(field, "must be 2 to 32 characters of [a-z0-9_], starting with a letter");
  return value;
}

/** How a gateway hold's capture shows in statements. */
const GATEWAY_CAPTURE_CODES: Readonly<Partial<Record<EntryType, number>>> = {
  [EntryType.UNSPECIFIED]: TRANSFER_CODE.payout,
  [EntryType.PAYOUT]: TRANSFER_CODE.payout,
  [EntryType.REFUND]: TRANSFER_CODE.refund,
};

/**
 * The tenant's fee account for a currency: "fees:<tenant>:<CUR>", readable in statements, or
 * "fees_" and a hash when a long tenant id would pass the Ledger's 64 characters. The two forms
 * cannot collide (":" versus "_" after "fees").
 */
export function feeAccountId(tenantId: string, currency: string): string {
  const plain = `fees:${tenantId}:${currency}`;
  return plain.length <= LEDGER_ID_MAX ? plain : `fees_${digest("fees", tenantId, currency).slice(0, 40)}`;
}

// ---------------------------------------------------------------------------------------------
// Validation

function requireLimit(value: bigint, field: string): bigint {
  if (value < 0n || value > INT64_MAX) throw invalidArgument(field, "must be 0 (no limit) to 2^63-1");
  return value;
}

function requireLimits(limits: WalletLimits | undefined, field: string): { perTransaction: bigint; daily: bigint } {
  return {
    perTransaction: requireLimit(limits?.perTransactionMinor ?? 0n, `${field}.per_transaction_minor`),
    daily: requireLimit(limits?.dailyOutflowMinor ?? 0n, `${field}.daily_outflow_minor`),
  };
}


/** Which of two requests for the same hold key differ, by proto field name. */
function differingHoldField(row: HoldRow, request: Pick<HoldRow, "walletId" | "destinationWalletId" | "amountMinor" | "currency" | "reference" | "timeoutSeconds">): string | undefined {
  const fields: [keyof typeof request, string][] = [
    ["walletId", "wallet_id"],
    ["destinationWalletId", "destination_wallet_id"],
    ["amountMinor", "amount_minor"],
    ["currency", "currency"],
    ["reference", "reference"],
    ["timeoutSeconds", "timeout_seconds"],
  ];
  return fields.find(([key]) => row[key] !== request[key])?.[1];
}

function keyReused(field: string): ConnectError {
  return new ConnectError(`idempotency key was already used for a different request (${field} differs)`, Code.AlreadyExists);
}

// ---------------------------------------------------------------------------------------------
// Messages

function walletMessage(row: WalletRow, account: Account | undefined, outflowTodayMinor: bigint): Wallet {
  if (!account) throw new ConnectError(`ledger account of wallet ${row.id} is missing`, Code.Internal);
  const posted = account.creditsPosted - account.debitsPosted;
  return create(WalletSchema, {
    ...walletFields(row),
    postedBalanceMinor: posted,
    pendingDebitsMinor: account.debitsPending,
    availableBalanceMinor: posted - account.debitsPending,
    outflowTodayMinor,
  });
}

/** What the wallet row itself says; balances come from the Ledger. */
function walletFields(row: WalletRow): MessageInitShape<typeof WalletSchema> {
  return {
    id: row.id,
    tenantId: row.tenantId,
    ownerId: row.ownerId,
    currency: row.currency,
    kind: row.kind,
    status: row.status,
    createdAt: timestampFromDate(row.createdAt),
    minorUnitExponent: minorUnitExponent(row.currency),
    limits: create(WalletLimitsSchema, {
      perTransactionMinor: row.perTransactionLimitMinor,
      dailyOutflowMinor: row.dailyOutflowLimitMinor,
    }),
    frozenReason: row.frozenReason,
    updatedAt: timestampFromDate(row.updatedAt),
  };
}

/**
 * A hold as callers see it. A HELD hold whose expiry time has passed is EXPIRED even before the
 * Ledger's background task has journaled the expiry: from that instant the Ledger refuses to
 * post or void it.
 */
function holdMessage(row: HoldRow, nowMs = Date.now()): Hold {
  const expired = row.status === HoldStatus.HELD && row.expiresAt.getTime() <= nowMs;
  return create(HoldSchema, {
    id: row.id,
    tenantId: row.tenantId,
    walletId: row.walletId,
    destinationWalletId: row.destinationWalletId,
    amountMinor: row.amountMinor,
    currency: row.currency,
    status: expired ? HoldStatus.EXPIRED : row.status,
    capturedMinor: row.capturedMinor,
    reference: row.reference,
    createdAt: timestampFromDate(row.createdAt),
    expiresAt: timestampFromDate(row.expiresAt),
    updatedAt: timestampFromDate(row.updatedAt),
  });
}

// ---------------------------------------------------------------------------------------------
// Events, written in the transaction of the change they describe (runtime/events.ts)

/** The rows a write returned, with an event of `type` for each, in the same transaction. */
async function withWalletEvent(tx: Tx, type: string, write: Promise<WalletRow[]>): Promise<WalletRow[]> {
  const rows = await write;
  await appendEvents(tx, outbox, "wallet", rows.map((row) => ({
    type,
    subject: `wallet/${row.id}`,
    tenantId: row.tenantId,
    schema: WalletChangedSchema,
    data: create(WalletChangedSchema, { wallet: create(WalletSchema, walletFields(row)) }),
  })));
  return rows;
}

/** The event of a hold entering each status. */
const HOLD_EVENT_TYPES: Readonly<Record<number, string>> = {
  [HoldStatus.HELD]: "wallet.hold.placed",
  [HoldStatus.CAPTURED]: "wallet.hold.captured",
  [HoldStatus.RELEASED]: "wallet.hold.released",
  [HoldStatus.EXPIRED]: "wallet.hold.expired",
};

function holdChanged(row: HoldRow): NewEvent<typeof HoldChangedSchema> {
  return {
    type: HOLD_EVENT_TYPES[row.status] ?? `wallet.hold.${row.status}`,
    subject: `hold/${row.id}`,
    tenantId: row.tenantId,
    schema: HoldChangedSchema,
    data: create(HoldChangedSchema, { hold: holdMessage(row) }),
  };
}

/** A posted movement of the wallet, or undefined for entries that only reserve or release. */
function statementEntry(walletId: string, entry: GetAccountHistoryResponse_Entry): StatementEntry | undefined {
  const transfer = entry.transfer;
  const balance = entry.balanceAfter;
  if (!transfer || !balance) return undefined;
  if (transfer.kind !== TransferKind.POSTED && transfer.kind !== TransferKind.POST_PENDING) return undefined;
  const credit = transfer.creditAccountId === walletId;
  return create(StatementEntrySchema, {
    transferId: transfer.id,
    time: transfer.createdAt,
    direction: credit ? EntryDirection.CREDIT : EntryDirection.DEBIT,
    type: entryTypeOf(transfer.code),
    amountMinor: transfer.amountMinor,
    balanceAfterMinor: balance.creditsPosted - balance.debitsPosted,
    counterparty: credit ? transfer.debitAccountId : transfer.creditAccountId,
    reference: transfer.reference,
  });
}

// ---------------------------------------------------------------------------------------------
// Wallet-side checks (for operations the Ledger has not decided yet)

function requireCurrencyOf(row: WalletRow, currency: string, role: string): void {
  if (row.currency !== currency) throw refusal("currency_mismatch", `${role} wallet ${row.id} holds ${row.currency}, not ${currency}`);
}

/** Money may leave only an ACTIVE wallet. */
function requireCanPayOut(row: WalletRow): void {
  if (row.status === WalletStatus.CLOSED) throw refusal("wallet_closed", `wallet ${row.id} is closed`);
  if (row.status === WalletStatus.FROZEN) throw refusal("wallet_frozen", `wallet ${row.id} is frozen`);
}

/** Money may come into an ACTIVE or FROZEN wallet. */
function requireCanReceive(row: WalletRow): void {
  if (row.status === WalletStatus.CLOSED) throw refusal("wallet_closed", `wallet ${row.id} is closed`);
}

function requireWithinPerTransaction(row: WalletRow, amountMinor: bigint): void {
  const limit = row.perTransactionLimitMinor;
  if (limit > 0n && amountMinor > limit) {
    throw refusal("limit_exceeded", `${amountMinor} is over wallet ${row.id}'s per-transaction limit of ${limit}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Ledger outcomes

type Submitted =
  | { status: "created" | "exists" }
  | { status: "refused"; result: CreateTransferResult; error: ConnectError };

/** The error a caller sees for a Ledger refusal; final for the key, like the refusal itself. */
function ledgerRefusal(result: CreateTransferResult, field: string, transfer: TransferInit): ConnectError {
  const R = CreateTransferResult;
  switch (result) {
    case R.EXISTS_WITH_DIFFERENT_FIELD:
      return keyReused(field);
    case R.EXCEEDS_CREDITS:
      return refusal("insufficient_funds", `insufficient funds in wallet ${transfer.debitAccountId}`);
    case R.DEBIT_ACCOUNT_CLOSED:
      return refusal("wallet_closed", `wallet ${transfer.debitAccountId} is closed`);
    case R.CREDIT_ACCOUNT_CLOSED:
      return refusal("wallet_closed", `wallet ${transfer.creditAccountId} is closed`);
    case R.CURRENCY_MISMATCH:
      return refusal("currency_mismatch", `${transfer.debitAccountId} and ${transfer.creditAccountId} do not both hold ${transfer.currency}`);
    case R.OVERFLOWS:
      return refusal("limit_exceeded", "the transfer would take a balance past 2^63-1");
    case R.PENDING_TRANSFER_ALREADY_POSTED:
      return refusal("hold_not_held", `hold ${transfer.pendingId} was already captured`);
    case R.PENDING_TRANSFER_ALREADY_VOIDED:
      return refusal("hold_not_held", `hold ${transfer.pendingId} was already released`);
    case R.PENDING_TRANSFER_EXPIRED:
      return refusal("hold_not_held", `hold ${transfer.pendingId} has expired`);
    case R.EXCEEDS_PENDING_TRANSFER_AMOUNT:
      return refusal("exceeds_hold_amount", `the capture is more than hold ${transfer.pendingId} reserved`);
    default:
      return new ConnectError(`ledger refused transfer ${transfer.id}: ${R[result]}`, Code.Internal);
  }
}

const SETTLED = new Set([CreateTransferResult.CREATED, CreateTransferResult.EXISTS]);

export const walletModule: ServiceModule = {
  name: "wallet",
  services: [WalletService],
  uses: { database: true },
  migrationsFolder: fileURLToPath(new URL("./migrations", import.meta.url)),
  eventFeed: outboxFeed(outbox),
  create({ database, client, log }) {
    const db = database.db;
    const ledger: Ledger = client(LedgerService, "ledger");
    const platformAccounts = new Set<string>();

    // -------------------------------------------------------------------------------------------
    // Rows

    async function findWallet(tenantId: string, walletId: string): Promise<WalletRow | undefined> {
      const [row] = await db.select().from(wallets).where(and(eq(wallets.id, walletId), eq(wallets.tenantId, tenantId)));
      return row;
    }

    /** The wallet within the tenant; another tenant's wallet is NOT_FOUND like an unknown one. */
    async function requireWallet(tenantId: string, walletId: string): Promise<WalletRow> {
      return (await requireWalletsOf(tenantId, [walletId]))[0] as WalletRow;
    }

    /**
     * The wallets of a transfer or hold within the tenant, in one query, in the order asked; the
     * first one missing is NOT_FOUND.
     */
    async function requireWalletsOf(tenantId: string, walletIds: readonly string[]): Promise<WalletRow[]> {
      const rows = await db.select().from(wallets).where(and(eq(wallets.tenantId, tenantId), inArray(wallets.id, [...walletIds])));
      const byId = new Map(rows.map((row) => [row.id, row]));
      return walletIds.map((walletId) => {
        const row = byId.get(walletId);
        if (!row) throw notFound(`wallet ${walletId}`);
        return row;
      });
    }

    async function findHold(tenantId: string, holdId: string): Promise<HoldRow | undefined> {
      const [row] = await db.select().from(holds).where(and(eq(holds.id, holdId), eq(holds.tenantId, tenantId)));
      return row;
    }

    async function requireHold(tenantId: string, holdId: string): Promise<HoldRow> {
      const row = await findHold(tenantId, holdId);
      if (!row) throw notFound(`hold ${holdId}`);
      return row;
    }

    async function withBalances(rows: WalletRow[]): Promise<Wallet[]> {
      if (rows.length === 0) return [];
      const ids = rows.map((row) => row.id);
      const [{ accounts }, outflow] = await Promise.all([ledger.lookupAccounts({ ids }), outflowToday(db, ids)]);
      const byId = new Map(accounts.map((account) => [account.id, account]));
      return rows.map((row) => walletMessage(row, byId.get(row.id), outflow.get(row.id) ?? 0n));
    }

    async function oneWithBalances(row: WalletRow): Promise<Wallet> {
      return (await withBalances([row]))[0] as Wallet;
    }

    // -------------------------------------------------------------------------------------------
    // Platform accounts, created on first use

    async function ensurePlatformAccount(account: { id: string; currency: string; code: AccountCode; ownerRef: string }): Promise<string> {
      if (platformAccounts.has(account.id)) return account.id;
      const { results } = await ledger.createAccounts({ accounts: [account] });
      const result = results[0]?.result;
      if (result !== CreateAccountResult.CREATED && result !== CreateAccountResult.EXISTS) {
        throw new ConnectError(`ledger account ${account.id} conflicts (${results[0]?.field})`, Code.Internal);
      }
      platformAccounts.add(account.id);
      return account.id;
    }

    function ensureFundingAccount(currency: string): Promise<string> {
      return ensurePlatformAccount({ id: fundingAccountId(currency), currency, code: AccountCode.FUNDING, ownerRef: "platform:funding" });
    }

    /**
     * A gateway's clearing account: no balance constraint, since it is debited by pay-ins before
     * the gateway settles them to the platform and credited by payouts.
     */
    function ensureClearingAccount(gateway: string, currency: string): Promise<string> {
      return ensurePlatformAccount({ id: clearingAccountId(gateway, currency), currency, code: AccountCode.GATEWAY_CLEARING, ownerRef: `gateway:${gateway}` });
    }

    /** The tenant's fee account: plain credit account, no balance constraint (it only receives). */
    function ensureFeeAccount(tenantId: string, currency: string): Promise<string> {
      return ensurePlatformAccount({ id: feeAccountId(tenantId, currency), currency, code: AccountCode.FEES, ownerRef: `tenant:${tenantId}:fees` });
    }

    // -------------------------------------------------------------------------------------------
    // Ledger writes

    /** Submits one linked chain (or one transfer) and reduces the per-item results to one outcome. */
    async function submit(transfers: TransferInit[]): Promise<Submitted> {
      const { results } = await ledger.createTransfers({ transfers });
      if (results.length !== transfers.length) throw new ConnectError("ledger returned the wrong number of results", Code.Internal);
      if (results.every((item) => item.result === CreateTransferResult.CREATED)) return { status: "created" };
      if (results.every((item) => item.result === CreateTransferResult.EXISTS)) return { status: "exists" };
      // The member that failed the chain; the others say LINKED_EVENT_FAILED.
      const index = results.findIndex((item) => !SETTLED.has(item.result) && item.result !== CreateTransferResult.LINKED_EVENT_FAILED);
      const cause = results[index < 0 ? 0 : index];
      if (index < 0 || !cause) {
        throw new ConnectError(`ledger settled only part of chain ${transfers[0]?.id}`, Code.Internal);
      }
      return { status: "refused", result: cause.result, error: ledgerRefusal(cause.result, cause.field, transfers[index] as TransferInit) };
    }

    /**
     * After the Ledger refused an operation that reserved outflow: a refusal of this id gives the
     * day's allowance back and is remembered; "key reused for something else" only undoes the
     * reservation if this very call made it.
     */
    async function settleRefusedOutflow(operationId: string, outcome: Extract<Submitted, { status: "refused" }>, reservedHere: boolean): Promise<never> {
      if (outcome.result === CreateTransferResult.EXISTS_WITH_DIFFERENT_FIELD) {
        if (reservedHere) await releaseOutflow(db, operationId);
      } else {
        await refuseOutflow(db, operationId, refusalCodeOf(outcome.error) ?? CreateTransferResult[outcome.result] ?? "refused");
      }
      throw outcome.error;
    }

    /**
     * Decides, once per operation id, whether the Wallet lets a transfer out or a hold reach the
     * Ledger. The first decision is written as the operation's outflow row (reserved and counted
     * against the source's day, or refused with its code), and every later attempt, concurrent or
     * after a crash, follows that row instead of checking again. So a refusal for a frozen wallet
     * stays a refusal after it is unfrozen, and a retry of an admitted operation goes back to the
     * Ledger even if the wallet was frozen since: the Router can never record a payment FAILED
     * while a racing retry of the same key moved its money. Returns whether this call reserved.
     */
    async function admit(
      source: WalletRow, destination: WalletRow | undefined, currency: string, operationId: string, amountMinor: bigint,
    ): Promise<boolean> {
      // No look-up first: both ways below end in an insert that finds an earlier decision (a
      // retry's, or a concurrent attempt's) and then follow it, so a replay after a freeze still
      // goes to the Ledger and a refusal stays a refusal.
      let refused: ConnectError | undefined;
      try {
        requireCurrencyOf(source, currency, "source");
        // No destination wallet: a platform account (a gateway's clearing), which always receives.
        if (destination) requireCurrencyOf(destination, currency, "destination");
        requireCanPayOut(source);
        if (destination) requireCanReceive(destination);
        requireWithinPerTransaction(source, amountMinor);
      } catch (error) {
        if (!(error instanceof ConnectError)) throw error;
        refused = error;
      }
      if (!refused) {
        const reservation = await reserveOutflow(db, {
          operationId,
          walletId: source.id,
          amountMinor,
          dailyLimitMinor: source.dailyOutflowLimitMinor,
        });
        if (reservation === "reserved") return true;
        if (reservation === "known") return followRecorded(await findOutflow(db, operationId), source, amountMinor);
        refused = refusal("limit_exceeded", `${amountMinor} would pass wallet ${source.id}'s daily outflow limit of ${source.dailyOutflowLimitMinor}`);
      }
      const code = refusalCodeOf(refused) ?? "refused";
      if (await recordRefusedOutflow(db, { operationId, walletId: source.id, amountMinor, code })) throw refused;
      return followRecorded(await findOutflow(db, operationId), source, amountMinor);
    }

    /**
     * An operation decided before: its refusal again, or false (admitted, not reserved by this
     * call). The record must be of this very request: the key reused from another wallet or for
     * another amount would otherwise skip the checks (frozen, limits) made for the first one.
     */
    function followRecorded(record: OutflowRecord | undefined, source: WalletRow, amountMinor: bigint): false {
      if (record && record.walletId !== source.id) throw keyReused("source wallet");
      if (record && record.amountMinor !== amountMinor) throw keyReused("amount_minor");
      // Stored codes are Refusal codes (or, for an unexpected Ledger refusal, its result name).
      if (record?.refused) throw refusal(record.refused as RefusalCode, `this operation was refused before (${record.refused}); use a new key`);
      return false;
    }

    // -------------------------------------------------------------------------------------------
    // Holds

    /** Writes a hold's new state if it is still HELD; the Ledger decided it, so no deadline applies. */
    async function resolveHold(row: HoldRow, change: { status: HoldStatus; capturedMinor?: bigint }): Promise<HoldRow> {
      const updated = await transactPipelined(db, async (tx) => {
        const [moved] = await tx
          .update(holds)
          .set({ ...change, updatedAt: sql`now()` })
          .where(and(eq(holds.id, row.id), eq(holds.status, HoldStatus.HELD)))
          .returning();
        return { result: moved, finish: moved ? [eventsInsert(tx, outbox, "wallet", [holdChanged(moved)])] : [] };
      }, null);
      return updated ?? (await findHold(row.tenantId, row.id)) ?? row;
    }

    /**
     * Brings a HELD row up to date with the Ledger: captured by "<id>:post", released by
     * "<id>:void", expired by the Ledger's "expire:<id>". Rows fall behind only when a call
     * stopped between the Ledger and the row update, or when the Ledger expired the hold.
     */
    async function syncHold(row: HoldRow): Promise<HoldRow> {
      if (row.status !== HoldStatus.HELD) return row;
      const ids = [captureIdFor(row.id), releaseIdFor(row.id), expireTransferId(row.id)] as const;
      const { transfers } = await ledger.lookupTransfers({ ids: [...ids] });
      const byId = new Map(transfers.map((transfer) => [transfer.id, transfer]));
      const capture = byId.get(ids[0]);
      if (capture) return resolveHold(row, { status: HoldStatus.CAPTURED, capturedMinor: capture.amountMinor });
      if (byId.has(ids[1])) return resolveHold(row, { status: HoldStatus.RELEASED });
      if (byId.has(ids[2])) return resolveHold(row, { status: HoldStatus.EXPIRED });
      return row;
    }

    function holdNotHeld(row: HoldRow): ConnectError {
      const status = holdMessage(row).status;
      return refusal("hold_not_held", `hold ${row.id} is ${HoldStatus[status].toLowerCase()}`);
    }

    return {
      routes(router) {
        router.service(WalletService, {
          async createWallet(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const ownerId = requireText(request.ownerId, "owner_id", 128);
            const currency = requireCurrency(request.currency, "currency");
            const kind = requireEnum(request.kind, "kind", WalletKind) as WalletKind;
            const limits = requireLimits(request.limits, "limits");
            const id = walletIdFor(tenantId, ownerId, currency);
            const existing = await findWallet(tenantId, id);
            if (existing && existing.kind !== kind) {
              throw new ConnectError(`wallet ${id} already exists with kind ${WalletKind[existing.kind]}`, Code.AlreadyExists);
            }
            // The Ledger account first: a crash between the two steps leaves an account without a
            // wallet row, which the retry completes, never a wallet without its account.
            const { results } = await ledger.createAccounts({
              accounts: [{
                id,
                currency,
                code: kind === WalletKind.MERCHANT ? AccountCode.MERCHANT_WALLET : AccountCode.CUSTOMER_WALLET,
                ownerRef: `wallet:${id}`,
                debitsMustNotExceedCredits: true,
              }],
            });
            const accountResult = results[0]?.result;
            if (accountResult === CreateAccountResult.EXISTS_WITH_DIFFERENT_FIELD && results[0]?.field === "code") {
              // A concurrent (or crashed) create for the same owner and currency with the other kind.
              throw new ConnectError(`wallet ${id} already exists with another kind`, Code.AlreadyExists);
            }
            if (accountResult !== CreateAccountResult.CREATED && accountResult !== CreateAccountResult.EXISTS) {
              throw new ConnectError(`ledger account ${id} conflicts (${results[0]?.field})`, Code.Internal);
            }
            // An existing wallet is returned as it is: its limits are changed by SetWalletLimits.
            const inserted = await transact(db, (tx) =>
              withWalletEvent(tx, "wallet.created", tx
                .insert(wallets)
                .values({
                  id,
                  tenantId,
                  ownerId,
                  currency,
                  kind,
                  status: WalletStatus.ACTIVE,
                  perTransactionLimitMinor: limits.perTransaction,
                  dailyOutflowLimitMinor: limits.daily,
                })
                .onConflictDoNothing({ target: wallets.id })
                .returning()),
            );
            const row = inserted[0] ?? (await findWallet(tenantId, id));
            if (!row) throw new ConnectError(`wallet ${id} vanished`, Code.Internal);
            return { wallet: await oneWithBalances(row), created: inserted.length > 0 };
          },

          async getWallet(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const walletId = requireId(request.walletId, "wallet_id");
            return { wallet: await oneWithBalances(await requireWallet(tenantId, walletId)) };
          },

          async listWallets(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const ownerId = limitText(request.ownerId, "owner_id", 128);
            const pageSize = requirePageSize(request.pageSize, LIST_PAGE_SIZE_MAX, LIST_PAGE_SIZE_DEFAULT);
            // ListWallets page tokens name the last wallet returned.
            const afterId = pagePosition(request.pageToken, "w", /^[A-Za-z0-9_.:-]{1,64}$/);
            const conditions: SQL[] = [eq(wallets.tenantId, tenantId)];
            if (ownerId !== "") conditions.push(eq(wallets.ownerId, ownerId));
            if (afterId !== undefined) {
              if (!(await findWallet(tenantId, afterId))) throw invalidArgument("page_token", "is not a token this service issued");
              // Keyset on (created_at, id), read from the row itself: timestamps keep microseconds
              // that a JavaScript Date would lose.
              conditions.push(sql`(${wallets.createdAt}, ${wallets.id}) < (select c.created_at, c.id from wallet.wallets c where c.id = ${afterId})`);
            }
            const rows = await db
              .select()
              .from(wallets)
              .where(and(...conditions))
              .orderBy(desc(wallets.createdAt), desc(wallets.id))
              .limit(pageSize + 1);
            const { page, nextPageToken } = pageOf(rows, pageSize, "w", (last) => last.id);
            return { wallets: await withBalances(page), nextPageToken };
          },

          async freezeWallet(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const walletId = requireId(request.walletId, "wallet_id");
            const reason = limitText(request.reason, "reason", 256);
            await requireWallet(tenantId, walletId);
            // Compare-and-set from ACTIVE. Freezing a frozen wallet changes nothing (the first
            // reason stays); a closed wallet cannot be frozen.
            const [frozen] = await transact(db, (tx) =>
              withWalletEvent(tx, "wallet.frozen", tx
                .update(wallets)
                .set({ status: WalletStatus.FROZEN, frozenReason: reason, updatedAt: sql`now()` })
                .where(and(eq(wallets.id, walletId), eq(wallets.tenantId, tenantId), eq(wallets.status, WalletStatus.ACTIVE)))
                .returning()),
            );
            const row = frozen ?? (await requireWallet(tenantId, walletId));
            if (row.status === WalletStatus.CLOSED) throw refusal("wallet_closed", `wallet ${walletId} is closed`);
            return { wallet: await oneWithBalances(row) };
          },

          async unfreezeWallet(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const walletId = requireId(request.walletId, "wallet_id");
            await requireWallet(tenantId, walletId);
            const [active] = await transact(db, (tx) =>
              withWalletEvent(tx, "wallet.unfrozen", tx
                .update(wallets)
                .set({ status: WalletStatus.ACTIVE, frozenReason: "", updatedAt: sql`now()` })
                .where(and(eq(wallets.id, walletId), eq(wallets.tenantId, tenantId), eq(wallets.status, WalletStatus.FROZEN)))
                .returning()),
            );
            const row = active ?? (await requireWallet(tenantId, walletId));
            if (row.status === WalletStatus.CLOSED) throw refusal("wallet_closed", `wallet ${walletId} is closed`);
            return { wallet: await oneWithBalances(row) };
          },

          async closeWallet(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const walletId = requireId(request.walletId, "wallet_id");
            const row = await requireWallet(tenantId, walletId);
            if (row.status === WalletStatus.CLOSED) return { wallet: await oneWithBalances(row) };
            // The Ledger closes the account only if it holds nothing, posted or pending, under its
            // own account lock: from then on it refuses every transfer in or out, so no money can
            // slip in between the check and the close. A retry after a crash finds the account
            // ALREADY_CLOSED and finishes the job.
            const result = (await ledger.closeAccounts({ ids: [walletId] })).results[0]?.result;
            if (result === CloseAccountResult.HAS_PENDING_TRANSFERS) {
              throw refusal("wallet_not_empty", `wallet ${walletId} has open holds or pending transfers`);
            }
            if (result === CloseAccountResult.HAS_BALANCE) {
              throw refusal("wallet_not_empty", `wallet ${walletId} still holds money; move it out before closing`);
            }
            if (result !== CloseAccountResult.CLOSED && result !== CloseAccountResult.ALREADY_CLOSED) {
              throw new ConnectError(`ledger could not close account ${walletId}: ${CloseAccountResult[result ?? 0]}`, Code.Internal);
            }
            const [closed] = await transact(db, (tx) =>
              withWalletEvent(tx, "wallet.closed", tx
                .update(wallets)
                .set({ status: WalletStatus.CLOSED, frozenReason: "", updatedAt: sql`now()` })
                .where(and(eq(wallets.id, walletId), ne(wallets.status, WalletStatus.CLOSED)))
                .returning()),
            );
            return { wallet: await oneWithBalances(closed ?? row) };
          },

          async setWalletLimits(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const walletId = requireId(request.walletId, "wallet_id");
            if (!request.limits) throw invalidArgument("limits", "is required (0 removes a limit)");
            const limits = requireLimits(request.limits, "limits");
            await requireWallet(tenantId, walletId);
            const [updated] = await transact(db, (tx) =>
              withWalletEvent(tx, "wallet.limits_changed", tx
                .update(wallets)
                .set({ perTransactionLimitMinor: limits.perTransaction, dailyOutflowLimitMinor: limits.daily, updatedAt: sql`now()` })
                .where(and(eq(wallets.id, walletId), eq(wallets.tenantId, tenantId), ne(wallets.status, WalletStatus.CLOSED)))
                .returning()),
            );
            if (!updated) throw refusal("wallet_closed", `wallet ${walletId} is closed`);
            return { wallet: await oneWithBalances(updated) };
          },

          async fundWallet(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const walletId = requireId(request.walletId, "wallet_id");
            const amountMinor = requireAmountMinor(request.amountMinor, "amount_minor");
            const currency = requireCurrency(request.currency, "currency");
            const key = requireIdempotencyKey(request.idempotencyKey, "idempotency_key");
            const gateway = optionalGateway(request.gateway, "gateway");
            const row = await requireWallet(tenantId, walletId);
            // No wallet-side checks: everything that can refuse a top-up (currency, a closed
            // account) the Ledger decides and records under the transfer id, so a retry always
            // gets the first outcome.
            const transferId = transferIdFor(tenantId, key);
            const transfer: TransferInit = {
              id: transferId,
              kind: TransferKind.POSTED,
              debitAccountId: gateway ? await ensureClearingAccount(gateway, currency) : await ensureFundingAccount(currency),
              creditAccountId: row.id,
              amountMinor,
              currency,
              code: gateway ? TRANSFER_CODE.payIn : TRANSFER_CODE.funding,
              metadata: { tenant_id: tenantId },
            };
            const outcome = await submit([transfer]);
            if (outcome.status === "refused") throw outcome.error;
            return { transferId, wallet: await oneWithBalances(row), replayed: outcome.status === "exists" };
          },

          async transferFunds(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const sourceId = requireId(request.sourceWalletId, "source_wallet_id");
            const destinationId = requireId(request.destinationWalletId, "destination_wallet_id");
            if (sourceId === destinationId) throw invalidArgument("destination_wallet_id", "must differ from source_wallet_id");
            const amountMinor = requireAmountMinor(request.amountMinor, "amount_minor");
            const currency = requireCurrency(request.currency, "currency");
            const key = requireIdempotencyKey(request.idempotencyKey, "idempotency_key");
            const reference = limitText(request.reference, "reference", 128);
            const feeMinor = request.feeMinor;
            if (feeMinor < 0n || feeMinor >= amountMinor) throw invalidArgument("fee_minor", "must be 0 to amount_minor - 1");
            const code = request.code === 0 ? TRANSFER_CODE.walletTransfer : request.code;
            if (!CALLER_TRANSFER_CODES.has(code)) {
              throw invalidArgument("code", `must be 0 or one of ${[...CALLER_TRANSFER_CODES].join(", ")} (transfer, payment, refund)`);
            }
            const releaseHoldId = optionalId(request.releaseHoldId, "release_hold_id");
            const [source, destination] = (await requireWalletsOf(tenantId, [sourceId, destinationId])) as [WalletRow, WalletRow];
            const transferId = transferIdFor(tenantId, key);
            const feeTransferId = feeMinor > 0n ? feeTransferIdFor(transferId) : "";
            const metadata = { tenant_id: tenantId };
            const legs: TransferInit[] = [];
            let reservedHere = false;
            let held: HoldRow | undefined;
            if (releaseHoldId === "") {
              reservedHere = await admit(source, destination, currency, transferId, amountMinor);
            } else {
              // The hold was admitted when it was placed; its release and the transfer form one
              // linked chain, committed together or not at all.
              held = await syncHold(await requireHold(tenantId, releaseHoldId));
              if (held.walletId !== source.id) throw invalidArgument("release_hold_id", `hold ${releaseHoldId} is on another wallet than source_wallet_id`);
              if (held.amountMinor !== amountMinor || held.currency !== currency) {
                throw invalidArgument("release_hold_id", `hold ${releaseHoldId} holds ${held.amountMinor} ${held.currency}, not amount_minor ${amountMinor} ${currency}`);
              }
              requireCurrencyOf(destination, currency, "destination");
              // A hold no longer HELD pays nothing more; only the transfer that released it goes on (its retry replays).
              if (held.status !== HoldStatus.HELD && (await ledger.lookupTransfers({ ids: [transferId] })).transfers.length === 0) throw holdNotHeld(held);
              legs.push({ id: releaseIdFor(held.id), kind: TransferKind.VOID_PENDING, pendingId: held.id, amountMinor, metadata, linked: true });
            }
            legs.push({
              id: transferId,
              kind: TransferKind.POSTED,
              debitAccountId: source.id,
              creditAccountId: destination.id,
              amountMinor: amountMinor - feeMinor,
              currency,
              code,
              reference,
              metadata,
              linked: feeMinor > 0n,
            });
            if (feeMinor > 0n) {
              legs.push({
                id: feeTransferId,
                kind: TransferKind.POSTED,
                debitAccountId: source.id,
                creditAccountId: await ensureFeeAccount(tenantId, currency),
                amountMinor: feeMinor,
                currency,
                code: TRANSFER_CODE.fee,
                reference,
                metadata,
              });
            }
            const outcome = await submit(legs);
            if (outcome.status === "refused") {
              if (!held) return settleRefusedOutflow(transferId, outcome, reservedHere);
              // As in releaseHold: a hold resolved some other way meanwhile is named as such.
              const synced = await syncHold(held);
              throw synced.status === HoldStatus.HELD ? outcome.error : holdNotHeld(synced);
            }
            if (held) await resolveHold(held, { status: HoldStatus.RELEASED });
            const replayed = outcome.status === "exists";
            if (request.omitWallets) return { transferId, feeTransferId, replayed };
            const [sourceWallet, destinationWallet] = await withBalances([source, destination]);
            return { transferId, feeTransferId, sourceWallet, destinationWallet, replayed };
          },

          async getStatement(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const walletId = requireId(request.walletId, "wallet_id");
            const pageSize = requirePageSize(request.pageSize, STATEMENT_PAGE_SIZE_MAX, STATEMENT_PAGE_SIZE_DEFAULT);
            const row = await requireWallet(tenantId, walletId);
            // The Ledger's history of the account, keeping only entries that moved posted money
            // (holds placed, released or expired do not). Each Ledger page asks for no more than
            // the statement page still needs, so the Ledger's own token always marks where this
            // page stopped; a page may come back short when there were many such entries.
            const entries: StatementEntry[] = [];
            let pageToken = request.pageToken;
            for (let pages = 0; pages < STATEMENT_LEDGER_PAGES_MAX; pages++) {
              const history = await ledger.getAccountHistory({
                accountId: row.id,
                fromTime: request.fromTime,
                toTime: request.toTime,
                pageSize: pageSize - entries.length,
                pageToken,
              });
              for (const entry of history.entries) {
                const mapped = statementEntry(row.id, entry);
                if (mapped) entries.push(mapped);
              }
              pageToken = history.nextPageToken;
              if (pageToken === "" || entries.length >= pageSize) break;
            }
            return { wallet: await oneWithBalances(row), entries, nextPageToken: pageToken };
          },

          async placeHold(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const sourceId = requireId(request.walletId, "wallet_id");
            const gateway = optionalGateway(request.gateway, "gateway");
            if (gateway && request.destinationWalletId !== "") throw invalidArgument("destination_wallet_id", "must be empty when gateway is set");
            const destinationId = gateway ? undefined : requireId(request.destinationWalletId, "destination_wallet_id");
            if (sourceId === destinationId) throw invalidArgument("destination_wallet_id", "must differ from wallet_id");
            const captureCode = gateway ? GATEWAY_CAPTURE_CODES[request.captureType] : request.captureType === EntryType.UNSPECIFIED ? TRANSFER_CODE.holdCapture : undefined;
            if (captureCode === undefined) {
              throw invalidArgument("capture_type", gateway ? "must be PAYOUT or REFUND (or unset) for a gateway hold" : "is only for gateway holds; leave it unset");
            }
            const amountMinor = requireAmountMinor(request.amountMinor, "amount_minor");
            const currency = requireCurrency(request.currency, "currency");
            const key = requireIdempotencyKey(request.idempotencyKey, "idempotency_key");
            if (request.timeoutSeconds > PENDING_TIMEOUT_SECONDS_MAX) {
              throw invalidArgument("timeout_seconds", `must be at most ${PENDING_TIMEOUT_SECONDS_MAX}`);
            }
            const timeoutSeconds = request.timeoutSeconds === 0 ? HOLD_TIMEOUT_DEFAULT_SECONDS : request.timeoutSeconds;
            const reference = limitText(request.reference, "reference", 128);
            const [source, destination] = (await requireWalletsOf(tenantId, destinationId ? [sourceId, destinationId] : [sourceId])) as [WalletRow, WalletRow?];
            const creditAccountId = destination?.id ?? (await ensureClearingAccount(gateway as string, currency));
            const holdId = holdIdFor(tenantId, key);
            const asked = { walletId: sourceId, destinationWalletId: creditAccountId, amountMinor, currency, reference, timeoutSeconds };

            const existing = await findHold(tenantId, holdId);
            if (existing) {
              const field = differingHoldField(existing, asked);
              if (field) throw keyReused(field);
              return { hold: holdMessage(await syncHold(existing)), replayed: true };
            }
            const reservedHere = await admit(source, destination, currency, holdId, amountMinor);
            // The Ledger's pending transfer reserves the amount in the source account at once; its
            // debits_must_not_exceed_credits counts pending debits, so concurrent holds and
            // spends can never reserve more than the balance between them.
            const pending: TransferInit = {
              id: holdId,
              kind: TransferKind.PENDING,
              debitAccountId: source.id,
              creditAccountId,
              amountMinor,
              currency,
              code: captureCode,
              reference,
              metadata: { tenant_id: tenantId },
              timeoutSeconds,
            };
            const outcome = await submit([pending]);
            if (outcome.status === "refused") await settleRefusedOutflow(holdId, outcome, reservedHere);
            // The row is written after the Ledger accepted: a crash in between leaves a pending
            // transfer that the retry (which finds the reservation, then EXISTS) records.
            const committed = (await ledger.lookupTransfers({ ids: [holdId] })).transfers[0];
            if (!committed?.createdAt) throw new ConnectError(`ledger lost pending transfer ${holdId}`, Code.Internal);
            const createdAt = timestampDate(committed.createdAt);
            await transactPipelined(db, async (tx) => {
              const [placed] = await tx
                .insert(holds)
                .values({
                  id: holdId,
                  tenantId,
                  ...asked,
                  captureCode,
                  status: HoldStatus.HELD,
                  createdAt,
                  expiresAt: new Date(createdAt.getTime() + timeoutSeconds * 1000),
                })
                .onConflictDoNothing({ target: holds.id })
                .returning();
              return { result: undefined, finish: placed ? [eventsInsert(tx, outbox, "wallet", [holdChanged(placed)])] : [] };
            }, null);
            const row = await requireHold(tenantId, holdId);
            return { hold: holdMessage(outcome.status === "exists" ? await syncHold(row) : row), replayed: outcome.status === "exists" };
          },

          async captureHold(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const holdId = requireId(request.holdId, "hold_id");
            if (request.amountMinor < 0n || request.amountMinor > INT64_MAX) {
              throw invalidArgument("amount_minor", "must be 0 (all of it) to the held amount");
            }
            const row = await requireHold(tenantId, holdId);
            // Always an explicit amount to the Ledger, so "0 = all" and the same amount spelled
            // out are one capture, and any other amount is a different one.
            const amountMinor = request.amountMinor === 0n ? row.amountMinor : request.amountMinor;
            if (amountMinor > row.amountMinor) {
              throw refusal("exceeds_hold_amount", `${amountMinor} is more than hold ${holdId} reserved (${row.amountMinor})`);
            }
            if (row.status === HoldStatus.CAPTURED) {
              if (row.capturedMinor === amountMinor) return { hold: holdMessage(row) };
              throw holdNotHeld(row);
            }
            if (row.status !== HoldStatus.HELD) throw holdNotHeld(row);
            const outcome = await submit([{
              id: captureIdFor(holdId),
              kind: TransferKind.POST_PENDING,
              pendingId: holdId,
              amountMinor,
              code: row.captureCode,
              reference: row.reference,
              metadata: { tenant_id: tenantId },
            }]);
            if (outcome.status === "refused") {
              // Released, expired, or captured with another amount by a call whose row update
              // has not landed: learn which from the Ledger and say so.
              const synced = await syncHold(row);
              if (synced.status !== HoldStatus.HELD) throw holdNotHeld(synced);
              if (outcome.result === CreateTransferResult.EXISTS_WITH_DIFFERENT_FIELD) {
                // The one capture id of this hold already holds a refused attempt with another
                // amount: that attempt decided the capture.
                throw refusal("hold_not_held", `hold ${holdId} already had a capture attempt of another amount`);
              }
              throw outcome.error;
            }
            return { hold: holdMessage(await resolveHold(row, { status: HoldStatus.CAPTURED, capturedMinor: amountMinor })) };
          },

          async releaseHold(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const holdId = requireId(request.holdId, "hold_id");
            const row = await requireHold(tenantId, holdId);
            // A released hold keeps its amount counted in the day's outflow (and so does an
            // expired one, and the uncaptured rest of a capture): the allowance is spent when money
            // is reserved. Giving it back would let a place-and-release loop reserve past the limit
            // within a day, and an expiry is only noticed lazily, so it could not be given back
            // consistently anyway.
            if (row.status === HoldStatus.RELEASED) return { hold: holdMessage(row) };
            if (row.status !== HoldStatus.HELD) throw holdNotHeld(row);
            const outcome = await submit([{
              id: releaseIdFor(holdId),
              kind: TransferKind.VOID_PENDING,
              pendingId: holdId,
              amountMinor: row.amountMinor,
              metadata: { tenant_id: tenantId },
            }]);
            if (outcome.status === "refused") {
              const synced = await syncHold(row);
              if (synced.status === HoldStatus.HELD) throw outcome.error;
              throw holdNotHeld(synced);
            }
            return { hold: holdMessage(await resolveHold(row, { status: HoldStatus.RELEASED })) };
          },

          async getHold(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const holdId = requireId(request.holdId, "hold_id");
            return { hold: holdMessage(await syncHold(await requireHold(tenantId, holdId))) };
          },
        });
      },
    };
  },
};
