// The public WalletsService: each method validates the public request (errors name public
// fields), then calls the internal WalletService with the tenant of the API key. Tenant
// isolation is the Wallet's: another tenant's ids are NOT_FOUND there, so they are here.
import type { Client } from "@connectrpc/connect";
import { WalletKind, type WalletLimits, type WalletsService } from "../../gen/cowrie/edge/v1/wallets_pb.js";
import type { WalletService } from "../../gen/cowrie/wallet/v1/wallet_pb.js";
import { invalidArgument } from "../runtime/errors.js";
import {
  limitText,
  requireAmountMinor,
  requireCurrency,
  requireEnum,
  requireId,
  requireText,
  requirePageSize,
  PENDING_TIMEOUT_SECONDS_MAX,
} from "../runtime/validate.js";
import { mutate, read, type Endpoints } from "./endpoints.js";
import { limitPageToken, requireDifferent, requireNonNegativeMinor, requireTimeRange } from "./fields.js";
import { internalLimits, publicHold, publicStatementEntry, publicWallet } from "./mapping.js";


function checkLimits(limits: WalletLimits | undefined, field: string): void {
  if (!limits) return;
  requireNonNegativeMinor(limits.perTransactionMinor, `${field}.per_transaction_minor`);
  requireNonNegativeMinor(limits.dailyOutflowMinor, `${field}.daily_outflow_minor`);
}

/**
 * FundWallet mints test money from the platform's funding account, so only sandbox tenants may
 * call it; live tenants' money comes in through pay-ins.
 */
export type SandboxCheck = (tenantId: string) => Promise<void>;

export function walletsEndpoints(wallets: Client<typeof WalletService>, requireSandbox: SandboxCheck): Endpoints<typeof WalletsService> {
  return {
    createWallet: mutate((request) => {
      const ownerId = requireText(request.ownerId, "owner_id", 128);
      const currency = requireCurrency(request.currency, "currency");
      const kind = requireEnum(request.kind, "kind", WalletKind);
      checkLimits(request.limits, "limits");
      return async ({ tenantId }) => {
        const response = await wallets.createWallet({ tenantId, ownerId, currency, kind, limits: internalLimits(request.limits) });
        return { wallet: publicWallet(response.wallet), created: response.created };
      };
    }),

    getWallet: read(async (request, { tenantId }) => {
      const walletId = requireId(request.walletId, "wallet_id");
      const response = await wallets.getWallet({ tenantId, walletId });
      return { wallet: publicWallet(response.wallet) };
    }),

    listWallets: read(async (request, { tenantId }) => {
      const ownerId = limitText(request.ownerId, "owner_id", 128);
      const pageSize = requirePageSize(request.pageSize, 100);
      const pageToken = limitPageToken(request.pageToken, "page_token");
      const response = await wallets.listWallets({ tenantId, ownerId, pageSize, pageToken });
      return {
        wallets: response.wallets.map((wallet) => publicWallet(wallet)).filter((wallet) => wallet !== undefined),
        nextPageToken: response.nextPageToken,
      };
    }),

    freezeWallet: mutate((request) => {
      const walletId = requireId(request.walletId, "wallet_id");
      const reason = limitText(request.reason, "reason", 256);
      return async ({ tenantId }) => {
        const response = await wallets.freezeWallet({ tenantId, walletId, reason });
        return { wallet: publicWallet(response.wallet) };
      };
    }),

    unfreezeWallet: mutate((request) => {
      const walletId = requireId(request.walletId, "wallet_id");
      return async ({ tenantId }) => {
        const response = await wallets.unfreezeWallet({ tenantId, walletId });
        return { wallet: publicWallet(response.wallet) };
      };
    }),

    closeWallet: mutate((request) => {
      const walletId = requireId(request.walletId, "wallet_id");
      return async ({ tenantId }) => {
        const response = await wallets.closeWallet({ tenantId, walletId });
        return { wallet: publicWallet(response.wallet) };
      };
    }),

    setWalletLimits: mutate((request) => {
      const walletId = requireId(request.walletId, "wallet_id");
      // Required: an absent message would silently remove both limits.
      if (!request.limits) throw invalidArgument("limits", "is required (0 removes a limit)");
      checkLimits(request.limits, "limits");
      const limits = internalLimits(request.limits);
      return async ({ tenantId }) => {
        const response = await wallets.setWalletLimits({ tenantId, walletId, limits });
        return { wallet: publicWallet(response.wallet) };
      };
    }),

    fundWallet: mutate((request) => {
      const walletId = requireId(request.walletId, "wallet_id");
      const amountMinor = requireAmountMinor(request.amountMinor, "amount_minor");
      const currency = requireCurrency(request.currency, "currency");
      return async ({ tenantId, downstreamKey }) => {
        await requireSandbox(tenantId);
        const response = await wallets.fundWallet({ tenantId, walletId, amountMinor, currency, idempotencyKey: downstreamKey });
        return { transferId: response.transferId, wallet: publicWallet(response.wallet), replayed: response.replayed };
      };
    }),

    getStatement: read(async (request, { tenantId }) => {
      const walletId = requireId(request.walletId, "wallet_id");
      requireTimeRange(request.fromTime, request.toTime, "from_time", "to_time");
      const pageSize = requirePageSize(request.pageSize, 500);
      const pageToken = limitPageToken(request.pageToken, "page_token");
      const response = await wallets.getStatement({
        tenantId,
        walletId,
        fromTime: request.fromTime,
        toTime: request.toTime,
        pageSize,
        pageToken,
      });
      return {
        wallet: publicWallet(response.wallet),
        entries: response.entries.map(publicStatementEntry),
        nextPageToken: response.nextPageToken,
      };
    }),

    placeHold: mutate((request) => {
      const walletId = requireId(request.walletId, "wallet_id");
      const destinationWalletId = requireId(request.destinationWalletId, "destination_wallet_id");
      requireDifferent(destinationWalletId, walletId, "destination_wallet_id", "wallet_id");
      const amountMinor = requireAmountMinor(request.amountMinor, "amount_minor");
      const currency = requireCurrency(request.currency, "currency");
      if (request.timeoutSeconds > PENDING_TIMEOUT_SECONDS_MAX) {
        throw invalidArgument("timeout_seconds", `must be at most ${PENDING_TIMEOUT_SECONDS_MAX}`);
      }
      const reference = limitText(request.reference, "reference", 128);
      return async ({ tenantId, downstreamKey }) => {
        const response = await wallets.placeHold({
          tenantId,
          walletId,
          destinationWalletId,
          amountMinor,
          currency,
          idempotencyKey: downstreamKey,
          timeoutSeconds: request.timeoutSeconds,
          reference,
        });
        return { hold: publicHold(response.hold), replayed: response.replayed };
      };
    }),

    captureHold: mutate((request) => {
      const holdId = requireId(request.holdId, "hold_id");
      const amountMinor = requireNonNegativeMinor(request.amountMinor, "amount_minor");
      return async ({ tenantId }) => {
        const response = await wallets.captureHold({ tenantId, holdId, amountMinor });
        return { hold: publicHold(response.hold) };
      };
    }),

    releaseHold: mutate((request) => {
      const holdId = requireId(request.holdId, "hold_id");
      return async ({ tenantId }) => {
        const response = await wallets.releaseHold({ tenantId, holdId });
        return { hold: publicHold(response.hold) };
      };
    }),

    getHold: read(async (request, { tenantId }) => {
      const holdId = requireId(request.holdId, "hold_id");
      const response = await wallets.getHold({ tenantId, holdId });
      return { hold: publicHold(response.hold) };
    }),
  };
}
