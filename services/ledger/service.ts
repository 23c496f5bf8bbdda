// The Ledger service: validates requests field by field, then hands them to the store.
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  AccountCode,
  AccountSchema,
  CreateAccountsResponse_ItemSchema,
  CreateTransfersResponse_ItemSchema,
  LedgerService,
  TransferSchema,
  type Account,
  type Transfer,
} from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import { invalidArgument } from "../runtime/errors.js";
import type { ServiceModule } from "../runtime/service.js";
import {
  limitMetadata,
  limitText,
  requireAmountMinor,
  requireBatch,
  requireCurrency,
  requireEnum,
  requireId,
} from "../runtime/validate.js";
import type { TransferInput } from "./engine.js";
import { createAccounts, createTransfers, lookupAccounts, lookupTransfers, type AccountRow, type NewAccount, type TransferRow } from "./store.js";

/** Largest batch of accounts, transfers or ids in one call. */
export const BATCH_SIZE_MAX = 8000;
const CODE_MAX = 65535;

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

function validateTransfer(transfer: Transfer, index: number): TransferInput {
  const field = `transfers[${index}]`;
  const debitAccountId = requireId(transfer.debitAccountId, `${field}.debit_account_id`);
  const creditAccountId = requireId(transfer.creditAccountId, `${field}.credit_account_id`);
  if (debitAccountId === creditAccountId) {
    throw invalidArgument(`${field}.credit_account_id`, "must differ from debit_account_id");
  }
  if (transfer.code > CODE_MAX) throw invalidArgument(`${field}.code`, `must be at most ${CODE_MAX}`);
  return {
    id: requireId(transfer.id, `${field}.id`),
    debitAccountId,
    creditAccountId,
    amountMinor: requireAmountMinor(transfer.amountMinor, `${field}.amount_minor`),
    currency: requireCurrency(transfer.currency, `${field}.currency`),
    code: transfer.code,
    reference: limitText(transfer.reference, `${field}.reference`, 128),
    metadata: limitMetadata(transfer.metadata, `${field}.metadata`),
    linked: transfer.linked,
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

export function accountMessage(row: AccountRow): Account {
  return create(AccountSchema, { ...row, createdAt: timestampFromDate(row.createdAt) });
}

function transferMessage(row: TransferRow): Transfer {
  return create(TransferSchema, { ...row, createdAt: timestampFromDate(row.createdAt) });
}

export const ledgerModule: ServiceModule = {
  name: "ledger",
  services: [LedgerService],
  uses: { database: true },
  migrationsFolder: fileURLToPath(new URL("./migrations", import.meta.url)),
  create({ database }) {
    const db = database.db;
    return {
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
            const outcomes = await createTransfers(db, batch);
            return { results: outcomes.map((item, index) => create(CreateTransfersResponse_ItemSchema, { index, ...item })) };
          },
          async lookupAccounts(request) {
            const ids = requireIds(request.ids);
            return { accounts: inRequestOrder(ids, await lookupAccounts(db, ids)).map(accountMessage) };
          },
          async lookupTransfers(request) {
            const ids = requireIds(request.ids);
            return { transfers: inRequestOrder(ids, await lookupTransfers(db, ids)).map(transferMessage) };
          },
        });
      },
    };
  },
};

