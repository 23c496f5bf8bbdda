// The Edge: Cowrie's public API. It validates each request against the public contract (so
// errors name the public fields), takes the Idempotency-Key header of mutating calls, and calls
// the internal services with the caller's deadline.
import { create } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import {
  WalletKind,
  WalletSchema as PublicWalletSchema,
  WalletsService,
  type Wallet as PublicWallet,
} from "../../gen/cowrie/edge/v1/wallets_pb.js";
import { WalletService, type Wallet } from "../../gen/cowrie/wallet/v1/wallet_pb.js";
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

export const IDEMPOTENCY_KEY_HEADER = "idempotency-key";

/**
 * The tenant every Edge call acts for until API keys land (the Wallets and Edge issue): keys will
 * resolve to a tenant here, and nothing below the Edge changes.
 */
export const DEFAULT_TENANT_ID = "default";

function publicWallet(wallet: Wallet | undefined): PublicWallet | undefined {
  if (!wallet) return undefined;
  const { tenantId: _tenantId, $typeName: _type, ...fields } = wallet;
  return create(PublicWalletSchema, fields);
}

function idempotencyKey(context: HandlerContext): string {
  return requireIdempotencyKey(context.requestHeader.get(IDEMPOTENCY_KEY_HEADER), "Idempotency-Key header");
}

export const edgeModule: ServiceModule = {
  name: "edge",
  services: [WalletsService],
  uses: { cache: true },
  create({ client }) {
    const wallets = client(WalletService, "wallet");
    const tenantId = DEFAULT_TENANT_ID;
    return {
      routes(router) {
        router.service(WalletsService, {
          async createWallet(request) {
            const ownerId = requireText(request.ownerId, "owner_id", 128);
            const currency = requireCurrency(request.currency, "currency");
            const kind = requireEnum(request.kind, "kind", WalletKind);
            const response = await wallets.createWallet({ tenantId, ownerId, currency, kind });
            return { wallet: publicWallet(response.wallet), created: response.created };
          },
          async getWallet(request) {
            const walletId = requireId(request.walletId, "wallet_id");
            const response = await wallets.getWallet({ tenantId, walletId });
            return { wallet: publicWallet(response.wallet) };
          },
          async fundWallet(request, context) {
            const key = idempotencyKey(context);
            const walletId = requireId(request.walletId, "wallet_id");
            const amountMinor = requireAmountMinor(request.amountMinor, "amount_minor");
            const currency = requireCurrency(request.currency, "currency");
            const response = await wallets.fundWallet({ tenantId, walletId, amountMinor, currency, idempotencyKey: key });
            return { transferId: response.transferId, wallet: publicWallet(response.wallet), replayed: response.replayed };
          },
          async transferFunds(request, context) {
            const key = idempotencyKey(context);
            const response = await wallets.transferFunds({
              tenantId,
              sourceWalletId: requireId(request.sourceWalletId, "source_wallet_id"),
              destinationWalletId: requireId(request.destinationWalletId, "destination_wallet_id"),
              amountMinor: requireAmountMinor(request.amountMinor, "amount_minor"),
              currency: requireCurrency(request.currency, "currency"),
              reference: limitText(request.reference, "reference", 128),
              idempotencyKey: key,
            });
            return {
              transferId: response.transferId,
              sourceWallet: publicWallet(response.sourceWallet),
              destinationWallet: publicWallet(response.destinationWallet),
              replayed: response.replayed,
            };
          },
        });
      },
    };
  },
};
