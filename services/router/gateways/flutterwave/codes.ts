// Flutterwave v3's answers mapped to one unified code and one next action: the whole of Cowrie's
// policy for Flutterwave. The connector looks them up in this order: HTTP status, then the message
// of a {status: "error"} answer, then data.status (refined for failures by processor_response or
// complete_message). Statuses are looked up in lower case: charges say "successful", transfers
// "SUCCESSFUL".
import { COMMON_HTTP_STATUS, type PatternTable, type Rule } from "../http.js";

/** Statuses that decide on their own, whatever the body says: the common ones. Flutterwave refuses a reused tx_ref or transfer reference, so the common 500 retry is safe here. */
export const HTTP_STATUS: Readonly<Record<number, Rule>> = COMMON_HTTP_STATUS;

/** Error answers ({status: "error", message}), matched on the message. */
export const ERRORS: PatternTable = [
  // The first request with this reference got there: what became of it is a status question.
  [/duplicate|already exists/i, { code: "duplicate_reference", action: "query_status" }],
  // verify_by_reference of a tx_ref Flutterwave never saw; a refund of an unknown transaction id.
  [/no transaction was found|transaction not found|transfer not found/i, { code: "not_found", action: "failover" }],
  [/account resolve failed|could not resolve|invalid account/i, { code: "invalid_account", action: "stop" }],
];

/** Any other 4xx: a request Flutterwave will never accept as sent. */
export const OTHER_4XX: Rule = { code: "invalid_request", action: "stop" };
export const OTHER_5XX: Rule = { code: "gateway_error", action: "retry" };
/** A 2xx whose body cannot be read: Flutterwave may have acted, so ask. */
export const UNREADABLE: Rule = { code: "gateway_error", action: "query_status" };
/** A reference Flutterwave has no record of (an empty transfer list, a refund not among the newest). */
export const NOT_FOUND: Rule = { code: "not_found", action: "failover" };

/** data.status, lower-cased, of a charge, transfer or refund. */
export const STATUSES: Readonly<Record<string, Rule>> = {
  successful: { code: "approved", action: "none" },
  completed: { code: "approved", action: "none" }, // a refund that went through
  // Every transfer starts NEW; its outcome arrives later (webhook or status).
  new: { code: "processing", action: "query_status" },
  pending: { code: "processing", action: "query_status" },
  processing: { code: "processing", action: "query_status" },
  failed: { code: "card_declined", action: "stop" }, // refined by DECLINES
  cancelled: { code: "card_declined", action: "stop" },
};

/** processor_response of a failed charge, complete_message of a failed transfer. */
export const DECLINES: PatternTable = [
  [/insufficient/i, { code: "insufficient_funds", action: "stop" }],
  [/expired/i, { code: "expired_card", action: "stop" }],
  [/fraud|stolen|lost card|pick ?up/i, { code: "suspected_fraud", action: "stop" }],
  [/blocked|restricted|frozen|closed|not permitted/i, { code: "account_blocked", action: "stop" }],
  [/resolve|invalid account|account number/i, { code: "invalid_account", action: "stop" }],
];

/**
 * Refunds carry no idempotency key at Flutterwave, so a resend after a 500 could refund twice: ask
 * instead. A refund of a charge Flutterwave does not know can never succeed.
 */
export const REFUND_ADJUSTMENTS: Readonly<Partial<Record<Rule["code"], Rule>>> = {
  gateway_error: { code: "gateway_error", action: "query_status" },
  not_found: { code: "invalid_request", action: "stop" },
};

/** Webhook events Cowrie acts on, the operation each reports, and where its reference is. */
export const WEBHOOK_EVENTS: Readonly<Record<string, { operation: "charge" | "payout"; referenceField: string }>> = {
  "charge.completed": { operation: "charge", referenceField: "tx_ref" },
  "transfer.completed": { operation: "payout", referenceField: "reference" },
};
