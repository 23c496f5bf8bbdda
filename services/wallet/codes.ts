// The Wallet's shared vocabulary, in a module with no service code so that the Router and the
// Edge can import it cheaply: the Ledger transfer codes the Wallet writes (statements are typed
// by them), and the Refusal detail every FAILED_PRECONDITION from the Wallet carries.
import { Code, ConnectError } from "@connectrpc/connect";
import { EntryType, RefusalSchema } from "../../gen/cowrie/wallet/v1/wallet_pb.js";

/**
 * Ledger transfer codes of wallet movements. Each equals the EntryType it shows as in a
 * statement. TransferFunds takes walletTransfer (its default, code 0), payment or refund as its
 * `code`; a gateway hold's capture is payout or refund; the others are written by the Wallet
 * itself.
 */
export const TRANSFER_CODE = {
  funding: 1,
  walletTransfer: 2,
  payment: 3,
  refund: 4,
  fee: 5,
  holdCapture: 6,
  payIn: 7,
  payout: 8,
} as const;

export type TransferCode = (typeof TRANSFER_CODE)[keyof typeof TRANSFER_CODE];

/** Codes a TransferFunds caller may ask for (0 means walletTransfer). */
export const CALLER_TRANSFER_CODES: ReadonlySet<number> = new Set([TRANSFER_CODE.walletTransfer, TRANSFER_CODE.payment, TRANSFER_CODE.refund]);

const ENTRY_TYPES: Record<number, EntryType> = {
  [TRANSFER_CODE.funding]: EntryType.FUNDING,
  [TRANSFER_CODE.walletTransfer]: EntryType.TRANSFER,
  [TRANSFER_CODE.payment]: EntryType.PAYMENT,
  [TRANSFER_CODE.refund]: EntryType.REFUND,
  [TRANSFER_CODE.fee]: EntryType.FEE,
  [TRANSFER_CODE.holdCapture]: EntryType.HOLD_CAPTURE,
  [TRANSFER_CODE.payIn]: EntryType.PAY_IN,
  [TRANSFER_CODE.payout]: EntryType.PAYOUT,
};

/** The statement type of a Ledger transfer code; UNSPECIFIED for a code the Wallet did not write. */
export function entryTypeOf(code: number): EntryType {
  return ENTRY_TYPES[code] ?? EntryType.UNSPECIFIED;
}

/** The stable reasons in cowrie.wallet.v1.Refusal.code. */
export type RefusalCode =
  | "insufficient_funds"
  | "wallet_frozen"
  | "wallet_closed"
  | "limit_exceeded"
  | "currency_mismatch"
  | "wallet_not_empty"
  | "hold_not_held"
  | "exceeds_hold_amount";

/**
 * FAILED_PRECONDITION with the Refusal detail. Callers read the reason with
 * `ConnectError.from(error).findDetails(RefusalSchema)[0]?.code`, never from the message.
 */
export function refusal(code: RefusalCode, message: string): ConnectError {
  return new ConnectError(message, Code.FailedPrecondition, undefined, [{ desc: RefusalSchema, value: { code } }]);
}

/** The Refusal code an error carries, if it is one. */
export function refusalCodeOf(error: unknown): string | undefined {
  if (!(error instanceof ConnectError) || error.code !== Code.FailedPrecondition) return undefined;
  return error.findDetails(RefusalSchema)[0]?.code;
}
