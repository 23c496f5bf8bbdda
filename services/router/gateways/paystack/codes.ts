// Paystack's answers mapped to one unified code and one next action: the whole of Cowrie's policy
// for Paystack. The connector only reads fields and looks them up here, in this order: HTTP status,
// then the error message of a {status: false} answer, then data.status (refined for failures by
// gateway_response).
import { COMMON_HTTP_STATUS, type PatternTable, type Rule } from "../http.js";

/** Statuses that decide on their own, whatever the body says: the common ones. Paystack refuses a reused reference, so the common 500 retry is safe here. */
export const HTTP_STATUS: Readonly<Record<number, Rule>> = COMMON_HTTP_STATUS;

/** Error answers ({status: false, message, code}), matched on code or message. */
export const ERRORS: PatternTable = [
  // The first request with this reference got there: what became of it is a status question.
  [/duplicate.*reference|reference already exists/i, { code: "duplicate_reference", action: "query_status" }],
  // Verify of a reference Paystack never saw (400 "Transaction reference not found", 404 for transfers).
  [/reference not found|transaction not found|transfer not found|^transaction_not_found$|^transfer_not_found$/i, { code: "not_found", action: "failover" }],
  // POST /transferrecipient: the bank could not resolve the account.
  [/resolve account|account number is invalid|invalid (bank )?account|^invalid_bank_account$/i, { code: "invalid_account", action: "stop" }],
];

/** Any other 4xx: a request Paystack will never accept as sent. */
export const OTHER_4XX: Rule = { code: "invalid_request", action: "stop" };
export const OTHER_5XX: Rule = { code: "gateway_error", action: "retry" };
/** A 2xx whose body cannot be read: Paystack may have acted, so ask. */
export const UNREADABLE: Rule = { code: "gateway_error", action: "query_status" };

/** data.status of a transaction, transfer or refund. */
export const STATUSES: Readonly<Record<string, Rule>> = {
  success: { code: "approved", action: "none" },
  processed: { code: "approved", action: "none" }, // a refund that went through
  pending: { code: "processing", action: "query_status" },
  processing: { code: "processing", action: "query_status" },
  ongoing: { code: "processing", action: "query_status" },
  queued: { code: "processing", action: "query_status" },
  received: { code: "processing", action: "query_status" },
  failed: { code: "card_declined", action: "stop" }, // refined by DECLINES
  abandoned: { code: "card_declined", action: "stop" }, // never completed; final
  reversed: { code: "card_declined", action: "stop" }, // the money went back
  // A transfer waiting for an OTP: API transfers need OTP disabled on the integration.
  otp: { code: "invalid_request", action: "stop" },
  // Steps that need the customer present; an off-session charge cannot complete them.
  send_otp: { code: "card_declined", action: "stop" },
  send_pin: { code: "card_declined", action: "stop" },
  send_phone: { code: "card_declined", action: "stop" },
  send_birthday: { code: "card_declined", action: "stop" },
  send_address: { code: "card_declined", action: "stop" },
  open_url: { code: "card_declined", action: "stop" },
};

/** gateway_response of a failed charge or transfer; no match keeps the generic card_declined. */
export const DECLINES: PatternTable = [
  [/insufficient/i, { code: "insufficient_funds", action: "stop" }],
  [/expired/i, { code: "expired_card", action: "stop" }],
  [/fraud|stolen|lost card|pick ?up/i, { code: "suspected_fraud", action: "stop" }],
  [/blocked|restricted|frozen|closed|not permitted/i, { code: "account_blocked", action: "stop" }],
  [/resolve account|invalid account|account number/i, { code: "invalid_account", action: "stop" }],
];

/** A reference Paystack has no record of (refunds are looked up by merchant_note). */
export const NOT_FOUND: Rule = { code: "not_found", action: "failover" };

/**
 * Refunds carry no idempotency key at Paystack, so a resend after a 500 could refund twice: ask
 * instead. A refund of a charge Paystack does not know can never succeed.
 */
export const REFUND_ADJUSTMENTS: Readonly<Partial<Record<Rule["code"], Rule>>> = {
  gateway_error: { code: "gateway_error", action: "query_status" },
  not_found: { code: "invalid_request", action: "stop" },
};

/** Webhook events Cowrie acts on, and the operation each reports. */
export const WEBHOOK_EVENTS: Readonly<Record<string, "charge" | "payout" | "refund">> = {
  "charge.success": "charge",
  "transfer.success": "payout",
  "transfer.failed": "payout",
  "transfer.reversed": "payout",
  "refund.processed": "refund",
  "refund.failed": "refund",
  "refund.pending": "refund",
  "refund.processing": "refund",
};
