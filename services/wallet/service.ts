// The Wallet service. Wallets keep identity and status here; every balance comes from the
// Ledger account with the wallet's id, and every movement is a Ledger transfer whose id is
// derived from the tenant and the caller's idempotency key, so the Ledger's own "same id, same
// outcome" rule makes each operation exactly-once end to end.
import { createHash } from "node:crypto";
import { fileURLToPath } from "node:url";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { and, eq } from "drizzle-orm";
import {
  AccountCode,
  CreateAccountResult,
  CreateTransferResult,
  LedgerService,
  TransferKind,
  type Account,
} from "../../gen/cowrie/ledger/v1/ledger_pb.js";
import {
  WalletKind,
  WalletSchema,
  WalletService,
  WalletStatus,
  type Wallet,
} from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import { transact, type Db } from "../runtime/db.js";
import { failedPrecondition, invalidArgument, notFound } from "../runtime/errors.js";
import type { ServiceModule } from "../runtime/service.js";
import {
  limitText,
  requireAmountMinor,
  requireCurrency,
  requireEnum,
  requireId,
  requireIdempotencyKey,
  requireText,
} from "../runtime/validate.js";
import { wallets } from "./schema.js";

type WalletRow = typeof wallets.$inferSelect;
type Ledger = Client<typeof LedgerService>;

/** Ledger transfer codes the Wallet service writes. */
export const TRANSFER_CODE = { funding: 1, walletTransfer: 2 } as const;

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

export function fundingAccountId(currency: string): string {
  return `funding:${currency}`;
}

function walletMessage(row: WalletRow, account: Account | undefined): Wallet {
  if (!account) throw new ConnectError(`ledger account of wallet ${row.id} is missing`, Code.Internal);
  const posted = account.creditsPosted - account.debitsPosted;
  return create(WalletSchema, {
    id: row.id,
    tenantId: row.tenantId,
    ownerId: row.ownerId,
    currency: row.currency,
    kind: row.kind,
    status: row.status,
    postedBalanceMinor: posted,
    pendingDebitsMinor: account.debitsPending,
    availableBalanceMinor: posted - account.debitsPending,
    createdAt: timestampFromDate(row.createdAt),
  });
}

async function findWallet(db: Db, tenantId: string, walletId: string): Promise<WalletRow | undefined> {
  const [row] = await db.select().from(wallets).where(and(eq(wallets.id, walletId), eq(wallets.tenantId, tenantId)));
  return row;
}

async function requireWallet(db: Db, tenantId: string, walletId: string, field: string): Promise<WalletRow> {
  const row = await findWallet(db, tenantId, requireId(walletId, field));
  if (!row) throw notFound(`wallet ${walletId}`);
  return row;
}

async function withBalances(ledger: Ledger, rows: WalletRow[]): Promise<Wallet[]> {
  const { accounts } = await ledger.lookupAccounts({ ids: rows.map((row) => row.id) });
  const byId = new Map(accounts.map((account) => [account.id, account]));
  return rows.map((row) => walletMessage(row, byId.get(row.id)));
}

/** Turns a Ledger refusal into the error the wallet's caller sees; the outcome is final. */
function refusal(result: CreateTransferResult, field: string, sourceWalletId: string): ConnectError {
  switch (result) {
    case CreateTransferResult.EXISTS_WITH_DIFFERENT_FIELD:
      return new ConnectError(`idempotency key was already used for a different request (${field} differs)`, Code.AlreadyExists);
    case CreateTransferResult.EXCEEDS_CREDITS:
      return failedPrecondition(`insufficient funds in wallet ${sourceWalletId}`);
    default:
      return failedPrecondition(`ledger refused the transfer: ${CreateTransferResult[result]}`);
  }
}

function requireUsable(row: WalletRow, currency: string, role: "source" | "destination"): void {
  if (row.currency !== currency) {
    throw failedPrecondition(`${role} wallet ${row.id} holds ${row.currency}, not ${currency}`);
  }
  if (row.status === WalletStatus.CLOSED) throw failedPrecondition(`${role} wallet ${row.id} is closed`);
  if (role === "source" && row.status === WalletStatus.FROZEN) throw failedPrecondition(`source wallet ${row.id} is frozen`);
}

export const walletModule: ServiceModule = {
  name: "wallet",
  services: [WalletService],
  uses: { database: true },
  migrationsFolder: fileURLToPath(new URL("./migrations", import.meta.url)),
  create({ database, client }) {
    const db = database.db;
    const ledger = client(LedgerService, "ledger");
    const fundingAccounts = new Set<string>();

    async function ensureFundingAccount(currency: string): Promise<string> {
      const id = fundingAccountId(currency);
      if (fundingAccounts.has(id)) return id;
      await ledger.createAccounts({
        accounts: [{ id, currency, code: AccountCode.FUNDING, ownerRef: "platform:funding" }],
      });
      fundingAccounts.add(id);
      return id;
    }

    /** Moves money through the Ledger and reports whether this key had already been applied. */
    async function move(transfer: {
      id: string; debitAccountId: string; creditAccountId: string; amountMinor: bigint; currency: string; code: number; reference: string; tenantId: string;
    }): Promise<boolean> {
      const { tenantId, ...fields } = transfer;
      const { results } = await ledger.createTransfers({
        transfers: [{ ...fields, kind: TransferKind.POSTED, metadata: { tenant_id: tenantId } }],
      });
      const outcome = results[0];
      if (!outcome) throw new ConnectError("ledger returned no result", Code.Internal);
      if (outcome.result === CreateTransferResult.CREATED) return false;
      if (outcome.result === CreateTransferResult.EXISTS) return true;
      throw refusal(outcome.result, outcome.field, transfer.debitAccountId);
    }

    return {
      routes(router) {
        router.service(WalletService, {
          async createWallet(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const ownerId = requireText(request.ownerId, "owner_id", 128);
            const currency = requireCurrency(request.currency, "currency");
            const kind = requireEnum(request.kind, "kind", WalletKind) as WalletKind;
            const id = walletIdFor(tenantId, ownerId, currency);
            const existing = await findWallet(db, tenantId, id);
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
            if (accountResult !== CreateAccountResult.CREATED && accountResult !== CreateAccountResult.EXISTS) {
              throw new ConnectError(`ledger account ${id} conflicts (${results[0]?.field})`, Code.Internal);
            }
            const inserted = await transact(db, (tx) =>
              tx
                .insert(wallets)
                .values({ id, tenantId, ownerId, currency, kind, status: WalletStatus.ACTIVE })
                .onConflictDoNothing({ target: wallets.id })
                .returning(),
            );
            const row = inserted[0] ?? (await findWallet(db, tenantId, id));
            if (!row) throw new ConnectError(`wallet ${id} vanished`, Code.Internal);
            const [wallet] = await withBalances(ledger, [row]);
            return { wallet, created: inserted.length > 0 };
          },

          async getWallet(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const row = await requireWallet(db, tenantId, request.walletId, "wallet_id");
            const [wallet] = await withBalances(ledger, [row]);
            return { wallet };
          },

          async fundWallet(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const amountMinor = requireAmountMinor(request.amountMinor, "amount_minor");
            const currency = requireCurrency(request.currency, "currency");
            const key = requireIdempotencyKey(request.idempotencyKey, "idempotency_key");
            const row = await requireWallet(db, tenantId, request.walletId, "wallet_id");
            requireUsable(row, currency, "destination");
            const transferId = transferIdFor(tenantId, key);
            const replayed = await move({
              id: transferId,
              debitAccountId: await ensureFundingAccount(currency),
              creditAccountId: row.id,
              amountMinor,
              currency,
              code: TRANSFER_CODE.funding,
              reference: "",
              tenantId,
            });
            const [wallet] = await withBalances(ledger, [row]);
            return { transferId, wallet, replayed };
          },

          async transferFunds(request) {
            const tenantId = requireId(request.tenantId, "tenant_id");
            const amountMinor = requireAmountMinor(request.amountMinor, "amount_minor");
            const currency = requireCurrency(request.currency, "currency");
            const key = requireIdempotencyKey(request.idempotencyKey, "idempotency_key");
            const reference = limitText(request.reference, "reference", 128);
            if (request.sourceWalletId === request.destinationWalletId) {
              throw invalidArgument("destination_wallet_id", "must differ from source_wallet_id");
            }
            const source = await requireWallet(db, tenantId, request.sourceWalletId, "source_wallet_id");
            const destination = await requireWallet(db, tenantId, request.destinationWalletId, "destination_wallet_id");
            requireUsable(source, currency, "source");
            requireUsable(destination, currency, "destination");
            const transferId = transferIdFor(tenantId, key);
            const replayed = await move({
              id: transferId,
              debitAccountId: source.id,
              creditAccountId: destination.id,
              amountMinor,
              currency,
              code: TRANSFER_CODE.walletTransfer,
              reference,
              tenantId,
            });
            const [sourceWallet, destinationWallet] = await withBalances(ledger, [source, destination]);
            return { transferId, sourceWallet, destinationWallet, replayed };
          },
        });
      },
    };
  },
};
