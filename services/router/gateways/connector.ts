// The one interface every payment gateway connector implements. The Router never speaks a
// gateway's dialect: a connector turns a Cowrie request into the gateway's HTTP call (endpoint,
// authentication, amount format, idempotency) and the gateway's answer, whatever its shape, into
// one GatewayResult: an outcome, one unified code, and the one next action the Router takes.
//
// Each connector keeps its own code table (codes.ts in its folder) from the gateway's statuses,
// HTTP statuses and error codes to (unified code, action). The table is the whole policy: the
// Router does not second-guess it.

export const GATEWAY_NAMES = ["paystack", "flutterwave", "stripe"] as const;
export type GatewayName = (typeof GATEWAY_NAMES)[number];

/** What a call asks the gateway to do. */
export type Operation = "charge" | "payout" | "refund";

/**
 * What the Router does next with a result:
 *  - none: the outcome is final (succeeded or declined); record it.
 *  - retry: call the same gateway again with the same reference, after backoff (or Retry-After).
 *    Safe because every request carries the attempt's reference, which the gateway deduplicates.
 *  - failover: the gateway certainly did not process the request; another gateway may be tried.
 *  - stop: a decline (insufficient funds, expired card, suspected fraud, blocked account, invalid
 *    details); never retried anywhere.
 *  - query_status: the request may or may not have been processed (timeout after send, connection
 *    reset, 502/504, a duplicate reference); ask the gateway's status endpoint before anything else.
 */
export type NextAction = "none" | "retry" | "failover" | "stop" | "query_status";

/**
 *  - succeeded: money moved at the gateway.
 *  - declined: the gateway refused for a business reason; final.
 *  - pending: the gateway accepted the request and is still processing it; ask again later.
 *  - not_found: (status queries only) the gateway has no record of the reference.
 *  - error: the call failed; `action` says whether it is retryable, ambiguous or a failover.
 */
export type Outcome = "succeeded" | "declined" | "pending" | "not_found" | "error";

/** The unified codes; each connector maps its gateway's own codes onto these. */
export type UnifiedCode =
  | "approved"
  | "processing"
  | "not_found"
  // declines (action stop)
  | "insufficient_funds"
  | "card_declined"
  | "expired_card"
  | "suspected_fraud"
  | "account_blocked"
  | "invalid_account"
  | "invalid_request"
  | "authentication_failed"
  // retry the same gateway
  | "rate_limited"
  | "gateway_error"
  // fail over
  | "gateway_unavailable"
  | "gateway_unreachable"
  // ask for status
  | "gateway_timeout"
  | "duplicate_reference";

export interface GatewayResult {
  readonly outcome: Outcome;
  readonly code: UnifiedCode;
  readonly action: NextAction;
  /** The gateway's own code or status, verbatim (for the record and for reconciliation). */
  readonly gatewayCode: string;
  /** Human-readable detail from the gateway, or of the transport failure. */
  readonly message: string;
  /** The gateway's own id of the transaction, when it gave one. */
  readonly gatewayId?: string;
  /** The HTTP status, when a response arrived. */
  readonly httpStatus?: number;
  /** From a Retry-After header, in milliseconds. */
  readonly retryAfterMs?: number;
}

/**
 * True when a result counts against the gateway's circuit breaker: transport failures, timeouts
 * and 5xx. Declines, invalid requests and rate limits never do.
 */
export function isGatewayFault(result: GatewayResult): boolean {
  return (
    result.code === "gateway_error" ||
    result.code === "gateway_unavailable" ||
    result.code === "gateway_unreachable" ||
    result.code === "gateway_timeout"
  );
}

export interface CallOptions {
  /** The most this call may take, from the payment's deadline budget. */
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
}

export interface ChargeRequest {
  /** Unique per payment and gateway attempt; the gateway's idempotency key for this charge. */
  readonly reference: string;
  readonly amountMinor: bigint;
  /** ISO 4217, upper case. */
  readonly currency: string;
  /** A reusable payment method token at the gateway (card authorization, token, PaymentMethod). */
  readonly paymentMethod: string;
  readonly customerEmail: string;
  readonly description: string;
}

export interface BankAccount {
  /** The bank's code in the gateway's directory (for example "058"), or a routing number. */
  readonly bankCode: string;
  readonly accountNumber: string;
  readonly accountName: string;
  /** ISO 3166-1 alpha-2. */
  readonly country: string;
}

export interface PayoutRequest {
  readonly reference: string;
  readonly amountMinor: bigint;
  readonly currency: string;
  readonly bankAccount: BankAccount;
  readonly description: string;
}

export interface RefundRequest {
  /** The refund's own reference. */
  readonly reference: string;
  /** The reference of the charge being refunded (as sent in ChargeRequest.reference). */
  readonly chargeReference: string;
  /** The gateway's id of the charge, when known. */
  readonly chargeGatewayId?: string;
  readonly amountMinor: bigint;
  readonly currency: string;
}

/** What a connector can do, for routing rules. */
export interface Capabilities {
  /** ISO 4217 codes it can charge and pay out in. */
  readonly currencies: ReadonlySet<string>;
  /** ISO 3166-1 alpha-2 countries of payers and bank accounts it serves. */
  readonly countries: ReadonlySet<string>;
  /** Largest single amount in minor units it accepts, per currency (absent: no limit). */
  readonly maxAmountMinor: Readonly<Record<string, bigint>>;
}

/** A notification the gateway pushed, after its signature was verified. */
export interface WebhookEvent {
  readonly operation: Operation;
  readonly reference: string;
  readonly result: GatewayResult;
}

/**
 * One transaction as the gateway's own list shows it (a charge, payout or refund), for
 * reconciliation. The gateway's word, read back: never what Cowrie sent.
 */
export interface GatewayTransaction {
  readonly gateway: GatewayName;
  readonly operation: Operation;
  /** The reference Cowrie sent; "" when the gateway object carries none (not made by Cowrie). */
  readonly reference: string;
  /** The gateway's own id of it. */
  readonly gatewayId: string;
  /** Undefined when the gateway's object does not state it exactly (then it is not compared). */
  readonly amountMinor: bigint | undefined;
  /** ISO 4217, upper case; "" when the gateway's object does not say (then it is not compared). */
  readonly currency: string;
  /** succeeded (money moved), declined, or pending, as the connector's code table reads its status. */
  readonly outcome: Outcome;
  /** The gateway's status, verbatim. */
  readonly gatewayStatus: string;
  readonly createdAt: Date;
}

/** Transactions of one kind created in [fromMs, toMs), the gateway's clock. */
export interface TransactionWindow {
  readonly operation: Operation;
  readonly fromMs: number;
  readonly toMs: number;
}

/** A whole window's transactions, oldest first, or the failure that stopped the listing. */
export type TransactionList = { readonly transactions: readonly GatewayTransaction[] } | { readonly failed: GatewayResult };

export interface Connector {
  readonly name: GatewayName;
  readonly capabilities: Capabilities;
  charge(request: ChargeRequest, options: CallOptions): Promise<GatewayResult>;
  payout(request: PayoutRequest, options: CallOptions): Promise<GatewayResult>;
  refund(request: RefundRequest, options: CallOptions): Promise<GatewayResult>;
  /** The gateway's status of an earlier request, looked up by the reference Cowrie sent. */
  status(operation: Operation, reference: string, options: CallOptions): Promise<GatewayResult>;
  /**
   * Verifies a webhook's signature over the raw body (and its timestamp, where the gateway signs
   * one) and parses it; undefined when the signature is wrong, missing or too old.
   */
  verifyWebhook(headers: Readonly<Record<string, string | undefined>>, rawBody: string, nowMs?: number): WebhookEvent | undefined;
  /**
   * Every transaction of one kind the gateway created in the window, read from its list API page
   * by page (each page bounded by options.timeoutMs), for reconciliation.
   */
  listTransactions(window: TransactionWindow, options: CallOptions): Promise<TransactionList>;
}

export interface ConnectorConfig {
  /** Where the gateway's API is (the simulator by default). */
  readonly baseUrl: string;
  /** The API secret key sent on every call. */
  readonly secretKey: string;
  /** The secret webhooks are signed with. */
  readonly webhookSecret: string;
}
