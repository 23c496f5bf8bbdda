// A payment request's fields, checked the same way by the Router and by the Edge (before it
// records an idempotency key), each problem naming its field: amounts and wallets by kind, the
// fields that take a gateway payment to the gateway (the payer's payment method for a PAY_IN, the
// bank account for a PAYOUT, the country used to route) and who pays, for Risk.
import { isIP } from "node:net";
import { PaymentKind } from "../../gen/cowrie/router/v1/router_pb.js";
import { invalidArgument } from "../runtime/errors.js";
import { limitText, requireAmountMinor, requireCurrency, requireId } from "../runtime/validate.js";
import type { Instrument, Payer } from "./schema.js";

const REFERENCE_MAX = 128;

const PAYMENT_METHOD_MAX = 128;
const ACCOUNT_NAME_MAX = 128;
const COUNTRY_PATTERN = /^[A-Z]{2}$/;
const EMAIL_PATTERN = /^[^\s@]{1,64}@[^\s@]{1,255}$/;
const BANK_CODE_PATTERN = /^[A-Za-z0-9-]{1,32}$/;
const ACCOUNT_NUMBER_PATTERN = /^[A-Za-z0-9_-]{1,34}$/;

/** The request fields, as both the public and the internal CreatePaymentRequest spell them. */
export interface InstrumentFields {
  country: string;
  paymentMethod: string;
  customerEmail: string;
  bankAccount?: { bankCode: string; accountNumber: string; accountName: string };
}

function requireEmpty(value: string, field: string, why: string): string {
  if (value !== "") throw invalidArgument(field, `must be empty: ${why}`);
  return value;
}

function requirePattern(value: string, field: string, pattern: RegExp, what: string): string {
  if (!pattern.test(value)) throw invalidArgument(field, `must be ${what}`);
  return value;
}

/** The payer's method (PAY_IN) or the bank account (PAYOUT), and the country; nothing else. */
export function validateInstrument(request: InstrumentFields, kind: PaymentKind.PAY_IN | PaymentKind.PAYOUT): Instrument {
  const country = requirePattern(request.country, "country", COUNTRY_PATTERN, "an ISO 3166-1 alpha-2 code in upper case, such as NG");
  if (kind === PaymentKind.PAY_IN) {
    if (request.bankAccount) throw invalidArgument("bank_account", "must be empty for a PAY_IN");
    const paymentMethod = limitText(request.paymentMethod, "payment_method", PAYMENT_METHOD_MAX);
    if (paymentMethod === "") throw invalidArgument("payment_method", "is required for a PAY_IN (the payer's token at the gateway)");
    const customerEmail = requirePattern(request.customerEmail, "customer_email", EMAIL_PATTERN, "an e-mail address");
    return { paymentMethod, customerEmail, country };
  }
  if (request.paymentMethod !== "") throw invalidArgument("payment_method", "must be empty for a PAYOUT");
  if (request.customerEmail !== "") throw invalidArgument("customer_email", "must be empty for a PAYOUT");
  const account = request.bankAccount;
  if (!account) throw invalidArgument("bank_account", "is required for a PAYOUT");
  return {
    country,
    bankAccount: {
      bankCode: requirePattern(account.bankCode, "bank_account.bank_code", BANK_CODE_PATTERN, "1 to 32 characters of [A-Za-z0-9-]"),
      accountNumber: requirePattern(account.accountNumber, "bank_account.account_number", ACCOUNT_NUMBER_PATTERN, "1 to 34 characters of [A-Za-z0-9_-]"),
      accountName: requireNonEmptyText(account.accountName, "bank_account.account_name"),
    },
  };
}

function requireNonEmptyText(value: string, field: string): string {
  const text = limitText(value, field, ACCOUNT_NAME_MAX);
  if (text.trim() === "") throw invalidArgument(field, "is required");
  return text;
}

const USER_ID_PATTERN = /^[A-Za-z0-9_.:@-]{1,64}$/;
const DEVICE_ID_MAX = 128;

/** Who pays, for Risk: the user (or `defaultUserId`), and the device and IP when given. */
export function validatePayer(request: { userId: string; deviceId: string; ipAddress: string }, defaultUserId: string): Payer {
  const userId = request.userId === "" ? defaultUserId.slice(0, 64) : requirePattern(request.userId, "user_id", USER_ID_PATTERN, "1 to 64 characters of [A-Za-z0-9_.:@-]");
  const deviceId = limitText(request.deviceId, "device_id", DEVICE_ID_MAX);
  if (request.ipAddress !== "" && isIP(request.ipAddress) === 0) throw invalidArgument("ip_address", "must be an IPv4 or IPv6 address");
  return { userId, ...(deviceId ? { deviceId } : {}), ...(request.ipAddress ? { ipAddress: request.ipAddress } : {}) };
}

/** The kinds CreatePayment makes (refunds have their own RPC). */
export type CreatedKind = PaymentKind.INTERNAL | PaymentKind.PAY_IN | PaymentKind.PAYOUT;

/** What a payment of `kind` moves, from where to where, and (gateway kinds) how it reaches the gateway. */
export function validatePaymentFields(
  request: InstrumentFields & { amountMinor: bigint; currency: string; sourceWalletId: string; destinationWalletId: string; feeMinor: bigint; reference: string },
  kind: CreatedKind,
) {
  const amountMinor = requireAmountMinor(request.amountMinor, "amount_minor");
  const currency = requireCurrency(request.currency, "currency");
  const sourceWalletId = kind === PaymentKind.PAY_IN ? requireEmpty(request.sourceWalletId, "source_wallet_id", "a PAY_IN's payer is outside Cowrie") : requireId(request.sourceWalletId, "source_wallet_id");
  const destinationWalletId = kind === PaymentKind.PAYOUT ? requireEmpty(request.destinationWalletId, "destination_wallet_id", "a PAYOUT pays bank_account") : requireId(request.destinationWalletId, "destination_wallet_id");
  if (sourceWalletId === destinationWalletId) throw invalidArgument("destination_wallet_id", "must differ from source_wallet_id");
  const feeMinor = request.feeMinor;
  if (feeMinor < 0n) throw invalidArgument("fee_minor", "must be >= 0 (minor units)");
  if (feeMinor >= amountMinor) throw invalidArgument("fee_minor", "must be less than amount_minor");
  if (kind !== PaymentKind.INTERNAL && feeMinor !== 0n) throw invalidArgument("fee_minor", "must be 0 for gateway payments");
  const reference = limitText(request.reference, "reference", REFERENCE_MAX);
  const instrument = kind === PaymentKind.INTERNAL ? undefined : validateInstrument(request, kind);
  return { amountMinor, currency, sourceWalletId, destinationWalletId, feeMinor, reference, instrument };
}
