// Stripe's answers mapped to one unified code and one next action: the whole of Cowrie's policy for
// Stripe. The connector looks them up in this order: HTTP status, then error.type / error.code /
// error.decline_code, then the object's own status (a PaymentIntent's refined by
// last_payment_error, a payout's by failure_code).
import { COMMON_HTTP_STATUS, type Rule } from "../http.js";

/** Statuses that decide on their own, whatever the body says: the common ones (every Stripe POST carries Idempotency-Key = reference, so a 500 retry is safe), and 409. */
export const HTTP_STATUS: Readonly<Record<number, Rule>> = {
  ...COMMON_HTTP_STATUS,
  // Another request with this Idempotency-Key is still running; retrying replays its answer.
  409: { code: "duplicate_reference", action: "retry" },
};

/** error.type of other error answers. */
export const ERROR_TYPES: Readonly<Record<string, Rule>> = {
  // The key was used before with other parameters: the first request is what counts; ask about it.
  idempotency_error: { code: "duplicate_reference", action: "query_status" },
  api_error: { code: "gateway_error", action: "retry" },
  invalid_request_error: { code: "invalid_request", action: "stop" },
  card_error: { code: "card_declined", action: "stop" }, // refined by CARD_DECLINES
};

/** error.code values that mean more than their type. */
export const ERROR_CODES: Readonly<Record<string, Rule>> = {
  resource_missing: { code: "not_found", action: "failover" },
  rate_limit: { code: "rate_limited", action: "retry" },
};

/** A card decline by decline_code, else by code; anything else is a generic card_declined. */
export const CARD_DECLINES: Readonly<Record<string, Rule>> = {
  insufficient_funds: { code: "insufficient_funds", action: "stop" },
  expired_card: { code: "expired_card", action: "stop" },
  fraudulent: { code: "suspected_fraud", action: "stop" },
  stolen_card: { code: "suspected_fraud", action: "stop" },
  lost_card: { code: "suspected_fraud", action: "stop" },
  pickup_card: { code: "suspected_fraud", action: "stop" },
  merchant_blacklist: { code: "suspected_fraud", action: "stop" },
  security_violation: { code: "suspected_fraud", action: "stop" },
  restricted_card: { code: "account_blocked", action: "stop" },
  transaction_not_allowed: { code: "account_blocked", action: "stop" },
  invalid_account: { code: "invalid_account", action: "stop" },
  new_account_information_available: { code: "invalid_account", action: "stop" },
};

/** Object statuses, per object type. */
export const STATUSES: Readonly<Record<string, Readonly<Record<string, Rule>>>> = {
  payment_intent: {
    succeeded: { code: "approved", action: "none" },
    processing: { code: "processing", action: "query_status" },
    // Confirmation failed (refined by last_payment_error); nothing was captured.
    requires_payment_method: { code: "card_declined", action: "stop" },
    // 3-D Secure wanted: an off-session charge cannot get it.
    requires_action: { code: "card_declined", action: "stop" },
    requires_confirmation: { code: "card_declined", action: "stop" },
    // Cowrie captures automatically; an intent waiting for capture is a misconfigured account.
    requires_capture: { code: "invalid_request", action: "stop" },
    canceled: { code: "card_declined", action: "stop" },
  },
  payout: {
    paid: { code: "approved", action: "none" },
    pending: { code: "processing", action: "query_status" },
    in_transit: { code: "processing", action: "query_status" },
    failed: { code: "card_declined", action: "stop" }, // refined by PAYOUT_FAILURES
    canceled: { code: "card_declined", action: "stop" },
  },
  refund: {
    succeeded: { code: "approved", action: "none" },
    pending: { code: "processing", action: "query_status" },
    requires_action: { code: "processing", action: "query_status" },
    failed: { code: "card_declined", action: "stop" },
    canceled: { code: "card_declined", action: "stop" },
  },
};

/** A failed payout's failure_code; anything else is a generic decline. */
export const PAYOUT_FAILURES: Readonly<Record<string, Rule>> = {
  insufficient_funds: { code: "insufficient_funds", action: "stop" },
  account_closed: { code: "account_blocked", action: "stop" },
  account_frozen: { code: "account_blocked", action: "stop" },
  bank_account_restricted: { code: "account_blocked", action: "stop" },
  invalid_account_number: { code: "invalid_account", action: "stop" },
  no_account: { code: "invalid_account", action: "stop" },
  incorrect_account_holder_name: { code: "invalid_account", action: "stop" },
  incorrect_account_holder_address: { code: "invalid_account", action: "stop" },
  bank_ownership_changed: { code: "invalid_account", action: "stop" },
  invalid_currency: { code: "invalid_account", action: "stop" },
};

export const OTHER_4XX: Rule = { code: "invalid_request", action: "stop" };
export const OTHER_5XX: Rule = { code: "gateway_error", action: "retry" };
/** A 2xx whose body cannot be read: Stripe may have acted, so ask. */
export const UNREADABLE: Rule = { code: "gateway_error", action: "query_status" };
/** No object carries our reference in metadata (search and the newest pages of the list). */
export const NOT_FOUND: Rule = { code: "not_found", action: "failover" };

/** A refund of a PaymentIntent Stripe does not know can never succeed. */
export const REFUND_ADJUSTMENTS: Readonly<Partial<Record<Rule["code"], Rule>>> = {
  not_found: { code: "invalid_request", action: "stop" },
};

/** Webhook events Cowrie acts on, and the operation each reports. */
export const WEBHOOK_EVENTS: Readonly<Record<string, "charge" | "payout" | "refund">> = {
  "payment_intent.succeeded": "charge",
  "payment_intent.payment_failed": "charge",
  "payment_intent.processing": "charge",
  "payment_intent.canceled": "charge",
  "payout.paid": "payout",
  "payout.failed": "payout",
  "payout.canceled": "payout",
  "charge.refunded": "refund",
  "refund.updated": "refund",
};

/** Stripe's own libraries refuse a signature older than this. */
export const WEBHOOK_TOLERANCE_SECONDS = 300;
