// The Ledger service: validates requests field by field, then hands transfers to the group
// committer and reads to the store. A bounded background task releases expired reservations
// through the same write path, so expiry is journaled like any other transfer.
import { createHash } from "node:crypto";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  AccountCode,
  AccountSchema,
  BalanceSchema,
  CloseAccountsResponse_ItemSchema,
  CreateAccountsResponse_ItemSchema,
  CreateTransfersResponse_ItemSchema,
  GetAccountHistoryResponse_EntrySchema,
  LedgerService,
  TransferKind,
  TransferSchema,
  type Account,
  type Transfer,
} from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import { currentCallContext } from "../runtime/call-context.js";
import { invalidArgument, notFound } from "../runtime/errors.js";
import type { Db } from "../runtime/db.js";
import { every } from "../runtime/periodic.js";
import type { ServiceModule } from "../runtime/service.js";
import {
  limitMetadata,
  limitText,
  requireAmountMinor,
  requireBatch,
  requireCurrency,
  requireEnum,
  requireId,
  requirePageSize,
  PENDING_TIMEOUT_SECONDS_MAX,
} from "../runtime/validate.js";
import { resolvesPending, type TransferInput } from "./engine.js";
import { journalFeed } from "./events.js";
import { GroupCommitter } from "./group-commit.js";
import {
  accountHistory,
  balanceAt,
  closeAccounts,
  commitTransfers,
  createAccounts,
  expiredPendingIds,
  lookupAccounts,
  lookupTransfers,
  type AccountRow,
  type NewAccount,
  type Totals,
  type TransferRow,
} from "./store.js";
import { verifyJournal } from "./verifier.js";

/** Largest batch of accounts, transfers or ids in one call. */
export const BATCH_SIZE_MAX = 8000;
/** Most transfers committed together by group commit. */
const GROUP_TRANSFERS_MAX = 8000;
const CODE_MAX = 65535;
const EXPIRY_INTERVAL_MS = 1000;
const EXPIRY_BATCH_MAX = 1000;
const HISTORY_PAGE_SIZE_DEFAULT = 100;
const HISTORY_PAGE_SIZE_MAX = 1000;

function requireDistinct(ids: string[], field: string): void {
  const seen = new Map<string, number>();
  ids.forEach((id, index) => {
    const first = seen.get(id);
    if (first !== undefined) throw invalidArgument(`${field}[${index}].id`, `duplicates ${field}[${first}].id`);
    seen.set(id, index);
  });
}

function validateAccount(account: Account, index: number): NewAccount {
  const field = `accounts[${index}]`;
  if (account.debitsMustNotExceedCredits && account.creditsMustNotExceedDebits) {
    throw invalidArgument(`${field}.credits_must_not_exceed_debits`, "cannot be set together with debits_must_not_exceed_credits");
  }
  return {
    id: requireId(account.id, `${field}.id`),
    currency: requireCurrency(account.currency, `${field}.currency`),
    code: requireEnum(account.code, `${field}.code`, AccountCode),
    ownerRef: limitText(account.ownerRef, `${field}.owner_ref`, 128),
    metadata: limitMetadata(account.metadata, `${field}.metadata`),
    debitsMustNotExceedCredits: account.debitsMustNotExceedCredits,
    creditsMustNotExceedDebits: account.creditsMustNotExceedDebits,
  };
}

const CLIENT_KINDS = { POSTED: 1, PENDING: 2, POST_PENDING: 3, VOID_PENDING: 4 };

/** Ids of the EXPIRE_PENDING transfers the ledger writes; clients may not use them. */
const EXPIRE_PREFIX = "expire:";

/**
 * The id of the transfer that expires `pendingId`: "expire:<pendingId>", or, when that would pass
 * 64 characters, "expire:" and a hash of the id, so two long ids never share one expiry id.
 */
export function expireTransferId(pendingId: string): string {
  const plain = `${EXPIRE_PREFIX}${pendingId}`;
  if (plain.length <= 64) return plain;
  return `${EXPIRE_PREFIX}${createHash("sha256").update(pendingId).digest("hex").slice(0, 64 - EXPIRE_PREFIX.length)}`;
}

/** Accounts, currency and amount may be left to the pending transfer by POST and VOID. */
function optional<T>(value: T, empty: T, check: (value: T) => T): T {
  return value === empty ? value : check(value);
}

function validateTransfer(transfer: Transfer, index: number): TransferInput {
  const field = `transfers[${index}]`;
  if (transfer.id.startsWith(EXPIRE_PREFIX)) {
    throw invalidArgument(`${field}.id`, `ids starting with "${EXPIRE_PREFIX}" are reserved for the ledger's expiry transfers`);
  }
  const kind = requireEnum(transfer.kind, `${field}.kind`, CLIENT_KINDS) as TransferKind;
  const resolving = resolvesPending(kind);
  const accountId = (value: string, name: string) => (resolving ? optional(value, "", (v) => requireId(v, name)) : requireId(value, name));
  const debitAccountId = accountId(transfer.debitAccountId, `${field}.debit_account_id`);
  const creditAccountId = accountId(transfer.creditAccountId, `${field}.credit_account_id`);
  if (debitAccountId !== "" && debitAccountId === creditAccountId) {
    throw invalidArgument(`${field}.credit_account_id`, "must differ from debit_account_id");
  }
  if (transfer.code > CODE_MAX) throw invalidArgument(`${field}.code`, `must be at most ${CODE_MAX}`);
  if (resolving) requireId(transfer.pendingId, `${field}.pending_id`);
  else if (transfer.pendingId !== "") throw invalidArgument(`${field}.pending_id`, "is only for POST_PENDING and VOID_PENDING");
  if (kind !== TransferKind.PENDING && transfer.timeoutSeconds !== 0) {
    throw invalidArgument(`${field}.timeout_seconds`, "is only for PENDING");
  }
  if (transfer.timeoutSeconds > PENDING_TIMEOUT_SECONDS_MAX) throw invalidArgument(`${field}.timeout_seconds`, `must be at most ${PENDING_TIMEOUT_SECONDS_MAX}`);
  const amountField = `${field}.amount_minor`;
  return {
    id: requireId(transfer.id, `${field}.id`),
    kind,
    debitAccountId,
    creditAccountId,
    amountMinor: resolving ? optional(transfer.amountMinor, 0n, (v) => requireAmountMinor(v, amountField)) : requireAmountMinor(transfer.amountMinor, amountField),
    currency: resolving ? optional(transfer.currency, "", (v) => requireCurrency(v, `${field}.currency`)) : requireCurrency(transfer.currency, `${field}.currency`),
    code: transfer.code,
    reference: limitText(transfer.reference, `${field}.reference`, 128),
    metadata: limitMetadata(transfer.metadata, `${field}.metadata`),
    linked: transfer.linked,
    pendingId: transfer.pendingId,
    timeoutSeconds: transfer.timeoutSeconds,
  };
}

export function validateTransfers(list: Transfer[]): TransferInput[] {
  requireBatch(list, "transfers", BATCH_SIZE_MAX);
  const batch = list.map(validateTransfer);
  requireDistinct(batch.map((transfer) => transfer.id), "transfers");
  if (batch[batch.length - 1]?.linked) {
    throw invalidArgument(`transfers[${batch.length - 1}].linked`, "the last transfer of a batch must close its chain (linked = false)");
  }
  return batch;
}

function requireIds(ids: string[]): string[] {
  requireBatch(ids, "ids", BATCH_SIZE_MAX);
  return ids.map((id, index) => requireId(id, `ids[${index}]`));
}

function inRequestOrder<T extends { id: string }>(ids: string[], rows: T[]): T[] {
  const byId = new Map(rows.map((row) => [row.id, row]));
  return ids.flatMap((id) => byId.get(id) ?? []);
}

export function availableMinor(row: Totals & { creditsMustNotExceedDebits: boolean }): bigint {
  return row.creditsMustNotExceedDebits
    ? row.debitsPosted - row.creditsPosted - row.creditsPending
    : row.creditsPosted - row.debitsPosted - row.debitsPending;
}

export function accountMessage(row: AccountRow): Account {
  return create(AccountSchema, { ...row, createdAt: timestampFromDate(row.createdAt), availableMinor: availableMinor(row) });
}

function transferMessage(row: TransferRow | (Omit<TransferRow, "kind"> & { kind: number })): Transfer {
  return create(TransferSchema, { ...row, createdAt: timestampFromDate(row.createdAt) });
}

async function requireAccountExists(db: Db, id: string): Promise<void> {
  if ((await lookupAccounts(db, [id])).length === 0) throw notFound(`account ${id}`);
}

function optionalTime(value: Timestamp | undefined): Date | undefined {
  return value ? timestampDate(value) : undefined;
}

function pageSize(requested: number): number {
  return requirePageSize(requested, HISTORY_PAGE_SIZE_MAX, HISTORY_PAGE_SIZE_DEFAULT);
}

/** Page tokens are the last sequence returned, opaque to clients. */
/**
 * A page token: the last sequence returned and, for account history, the account's totals after
 * it, so that the next page's running balances continue from there instead of being summed again
 * from the start of the account (a token a client alters only misleads that client's own view).
 */
function afterPosition(token: string): { sequence: bigint; totals?: Totals } {
  if (token === "") return { sequence: 0n };
  const decoded = Buffer.from(token, "base64url").toString("utf8");
  const match = /^s:(\d{1,19})(?::(\d{1,19}):(\d{1,19}):(\d{1,19}):(\d{1,19}))?$/.exec(decoded);
  if (!match) throw invalidArgument("page_token", "is not a token this service issued");
  const [, sequence, debitsPosted, creditsPosted, debitsPending, creditsPending] = match;
  const totals = debitsPosted === undefined
    ? undefined
    : { debitsPosted: BigInt(debitsPosted), creditsPosted: BigInt(creditsPosted!), debitsPending: BigInt(debitsPending!), creditsPending: BigInt(creditsPending!) };
  return { sequence: BigInt(sequence!), totals };
}

function pageToken(sequence: bigint, totals: Totals): string {
  return Buffer.from(`s:${sequence}:${totals.debitsPosted}:${totals.creditsPosted}:${totals.debitsPending}:${totals.creditsPending}`, "utf8").toString("base64url");
}

export const ledgerModule: ServiceModule = {
  name: "ledger",
  services: [LedgerService],
  uses: { database: true },
  migrationsFolder: fileURLToPath(new URL("./migrations", import.meta.url)),
  eventFeed: journalFeed,
  create({ database, log }) {
    const db = database.db;
    const committer = new GroupCommitter((batch) => commitTransfers(db, batch), GROUP_TRANSFERS_MAX);

    // Releases expired reservations a bounded number at a time. The ids are derived from the
    // pending transfer, so two Ledger processes expiring the same one write it once.
    const expiry = every(EXPIRY_INTERVAL_MS, "expiry", async () => {
      const ids = await expiredPendingIds(db, Date.now(), EXPIRY_BATCH_MAX);
      if (ids.length === 0) return;
      const outcomes = await committer.submit(ids.map((pendingId) => ({
        id: expireTransferId(pendingId), kind: TransferKind.EXPIRE_PENDING, debitAccountId: "", creditAccountId: "",
        amountMinor: 0n, currency: "", code: 0, reference: "", metadata: {}, linked: false, pendingId, timeoutSeconds: 0,
      })));
      log.info({ expired: outcomes.length }, "released expired pending transfers");
    }, log);

    return {
      async stop() {
        await expiry.stop();
        await committer.idle();
      },
      routes(router) {
        router.service(LedgerService, {
          async createAccounts(request) {
            requireBatch(request.accounts, "accounts", BATCH_SIZE_MAX);
            const batch = request.accounts.map(validateAccount);
            requireDistinct(batch.map((account) => account.id), "accounts");
            const results = await createAccounts(db, batch);
            return { results: results.map((item, index) => create(CreateAccountsResponse_ItemSchema, { index, ...item })) };
          },
          async createTransfers(request) {
            const batch = validateTransfers(request.transfers);
            const outcomes = await committer.submit(batch, currentCallContext()?.signal);
            return { results: outcomes.map((item, index) => create(CreateTransfersResponse_ItemSchema, { index, ...item })) };
          },
          async closeAccounts(request) {
            const ids = requireIds(request.ids);
            const results = await closeAccounts(db, ids);
            return { results: results.map((result, index) => create(CloseAccountsResponse_ItemSchema, { index, result })) };
          },
          async lookupAccounts(request) {
            const ids = requireIds(request.ids);
            return { accounts: inRequestOrder(ids, await lookupAccounts(db, ids)).map(accountMessage) };
          },
          async lookupTransfers(request) {
            const ids = requireIds(request.ids);
            return { transfers: inRequestOrder(ids, await lookupTransfers(db, ids)).map(transferMessage) };
          },
          async getAccountHistory(request) {
            const accountId = requireId(request.accountId, "account_id");
            const limit = pageSize(request.pageSize);
            const after = afterPosition(request.pageToken);
            await requireAccountExists(db, accountId);
            const entries = await accountHistory(db, accountId, {
              fromTime: optionalTime(request.fromTime),
              toTime: optionalTime(request.toTime),
              afterSequence: after.sequence,
              before: after.totals,
              limit: limit + 1,
            });
            const page = entries.slice(0, limit);
            const last = page[page.length - 1];
            return {
              entries: page.map((entry) =>
                create(GetAccountHistoryResponse_EntrySchema, {
                  transfer: transferMessage(entry.transfer),
                  balanceAfter: create(BalanceSchema, entry.balanceAfter),
                }),
              ),
              nextPageToken: entries.length > limit && last ? pageToken(last.transfer.sequence, last.balanceAfter) : "",
            };
          },
          async getAccountBalanceAt(request) {
            const accountId = requireId(request.accountId, "account_id");
            if (!request.time) throw invalidArgument("time", "is required");
            await requireAccountExists(db, accountId);
            const { totals, sequence } = await balanceAt(db, accountId, timestampDate(request.time));
            return { balance: create(BalanceSchema, totals), sequence };
          },
          async verifyJournal() {
            return verifyJournal(db);
          },
        });
      },
    };
  },
};
