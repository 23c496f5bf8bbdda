// Flutterwave v3's contract, as the simulator serves it under /flutterwave: Bearer secret key, JSON
// bodies, amounts in MAJOR units as decimal numbers (2500.5 is 250050 kobo), answers shaped
// {status: "success" | "error", message, data}. A reused tx_ref or transfer reference is refused.
// Transfers are asynchronous: creation answers "NEW" and the outcome is read back by reference.
// Webhooks carry verif-hash, the merchant's configured secret hash itself.
import { minorUnitExponent } from "../runtime/validate.js";
import { refundableMinor, type DeclineReason, type SimulatedRecord, type SimulatorCore } from "./core.js";
import {
  dateRange,
  pageOf,
  parseObject,
  positiveInteger,
  type GatewayContract,
  type WireReply,
  type WireRequest,
} from "./wire.js";

/** processor_response of a charge, and complete_message of a transfer, per decline reason. */
const DECLINE_TEXT: Record<DeclineReason, string> = {
  insufficient_funds: "Insufficient Funds",
  expired_card: "Expired Card",
  suspected_fraud: "Suspected Fraud",
  account_blocked: "Account Restricted",
  invalid_account: "Account resolve failed",
  card_declined: "Declined",
};

/** Flutterwave pages its lists by 10. */
const PAGE_SIZE = 10;

export function flutterwaveContract(core: SimulatorCore, secretKey: string, webhookHash: string): GatewayContract {
  const ok = (message: string, data: unknown, extra: object = {}): WireReply => ({
    status: 200,
    body: { status: "success", message, ...extra, data },
  });
  const error = (status: number, message: string): WireReply => ({ status, body: { status: "error", message, data: null } });

  function transaction(record: SimulatedRecord) {
    const amount = majorNumber(record.amountMinor, record.currency);
    return {
      id: record.serial,
      tx_ref: record.reference,
      flw_ref: `FLW-SIM-${record.serial}`,
      amount,
      charged_amount: amount,
      currency: record.currency,
      processor_response: record.declineCode ? DECLINE_TEXT[record.declineCode] : record.status === "pending" ? "Pending" : "Approved",
      status: { succeeded: "successful", failed: "failed", pending: "pending" }[record.status],
      payment_type: "card",
      created_at: record.createdAt.toISOString(),
      customer: { email: record.details.email ?? null },
      card: { token: record.details.token ?? null },
    };
  }

  function transfer(record: SimulatedRecord, justCreated = false) {
    return {
      id: record.serial,
      account_number: record.details.account_number ?? null,
      bank_code: record.details.bank_code ?? null,
      full_name: record.details.beneficiary_name ?? null,
      created_at: record.createdAt.toISOString(),
      currency: record.currency,
      amount: majorNumber(record.amountMinor, record.currency),
      fee: 0,
      status: justCreated ? "NEW" : { succeeded: "SUCCESSFUL", failed: "FAILED", pending: "PENDING" }[record.status],
      reference: record.reference,
      narration: record.details.narration ?? null,
      complete_message: record.declineCode ? DECLINE_TEXT[record.declineCode] : record.status === "succeeded" && !justCreated ? "Successful" : "",
      requires_approval: 0,
      is_approved: 1,
    };
  }

  function refund(record: SimulatedRecord) {
    return {
      id: record.serial,
      tx_id: record.parent?.serial,
      flw_ref: `URF_SIM_${record.serial}`,
      amount_refunded: majorNumber(record.amountMinor, record.currency),
      status: "completed",
      destination: "payment_source",
      comments: record.details.comments ?? null,
      created_at: record.createdAt.toISOString(),
    };
  }

  function list(request: WireRequest, records: SimulatedRecord[], render: (record: SimulatedRecord) => unknown, message: string): WireReply {
    const page = positiveInteger(request.query.get("page"), 1, 1_000_000);
    const slice = pageOf(records, page, PAGE_SIZE);
    return ok(message, slice.items.map((record) => render(core.query(record))), {
      meta: { page_info: { total: records.length, current_page: page, total_pages: slice.pageCount } },
    });
  }

  function charge(body: Record<string, unknown>): WireReply {
    const currency = typeof body.currency === "string" ? body.currency : "NGN";
    const amount = minorOf(body.amount, currency);
    if (amount === undefined) return error(400, `Invalid amount: must be a positive ${currency} amount in major units`);
    if (typeof body.token !== "string" || body.token === "") return error(400, "token is required");
    if (typeof body.email !== "string" || !body.email.includes("@")) return error(400, "email is required");
    if (typeof body.tx_ref !== "string" || body.tx_ref === "") return error(400, "tx_ref is required");
    if (core.find("flutterwave", "charge", body.tx_ref)) return error(400, "Duplicate tx_ref: a transaction with this reference already exists");
    const { record, ambiguous } = core.create({
      gateway: "flutterwave",
      operation: "charge",
      reference: body.tx_ref,
      amountMinor: amount,
      currency,
      trigger: body.token,
      gatewayId: String,
      details: { email: body.email, token: body.token },
    });
    return { ...ok(record.status === "failed" ? "Charge failed" : "Charge successful", transaction(record)), withhold: ambiguous };
  }

  function createTransfer(body: Record<string, unknown>): WireReply {
    const currency = typeof body.currency === "string" ? body.currency : "NGN";
    const amount = minorOf(body.amount, currency);
    if (amount === undefined) return error(400, `Invalid amount: must be a positive ${currency} amount in major units`);
    const account = [body.account_bank, body.account_number, body.reference];
    if (!account.every((field) => typeof field === "string" && field !== "")) {
      return error(400, "account_bank, account_number and reference are required");
    }
    const reference = body.reference as string;
    if (core.find("flutterwave", "payout", reference)) return error(400, "Duplicate reference: a transfer with this reference already exists");
    const { record, ambiguous } = core.create({
      gateway: "flutterwave",
      operation: "payout",
      reference,
      amountMinor: amount,
      currency,
      trigger: body.account_number as string,
      gatewayId: String,
      details: {
        account_number: body.account_number as string,
        bank_code: body.account_bank as string,
        beneficiary_name: typeof body.beneficiary_name === "string" ? body.beneficiary_name : "",
        narration: typeof body.narration === "string" ? body.narration : "",
      },
    });
    return { ...ok("Transfer Queued Successfully", transfer(record, true)), withhold: ambiguous };
  }

  function createRefund(id: string, body: Record<string, unknown>): WireReply {
    const charge = core.findById("flutterwave", "charge", id);
    const amount = body.amount === undefined ? refundableMinor(charge) : minorOf(body.amount, charge?.currency ?? "NGN");
    if (amount === undefined) return error(400, "Invalid amount: must be a positive amount in major units");
    const comments = typeof body.comments === "string" && body.comments !== "" ? body.comments : undefined;
    const result = core.refund(charge, amount, comments, String, comments ? { comments } : {});
    if (result === "charge_not_found") return error(404, "Transaction not found");
    if (result === "charge_not_successful") return error(400, "Only successful transactions can be refunded");
    if (result === "exceeds_charge") return error(400, "Refund amount cannot be greater than the amount left to refund");
    return ok("Transaction refund initiated", refund(result));
  }

  return {
    name: "flutterwave",
    gatewayIdFor: () => String,
    authorized: (headers) => headers.authorization === `Bearer ${secretKey}`,
    error,
    handle(request) {
      const { method, path, query } = request;
      if (method === "GET" && path === "/v3/transactions/verify_by_reference") {
        const record = core.find("flutterwave", "charge", query.get("tx_ref") ?? "");
        if (!record) return error(400, "No transaction was found for this id");
        return ok("Transaction fetched successfully", transaction(core.query(record)));
      }
      if (method === "GET" && (path === "/v3/transactions" || path === "/v3/transfers" || path === "/v3/refunds")) {
        const times = dateRange(query);
        if (!times) return error(400, "from and to must be dates (YYYY-MM-DD)");
        const operation = path === "/v3/transactions" ? "charge" : path === "/v3/transfers" ? "payout" : "refund";
        const reference = operation === "payout" ? query.get("reference") ?? undefined : undefined;
        const records = core.list({ gateway: "flutterwave", operation, reference, ...times });
        if (operation === "charge") return list(request, records, transaction, "Transactions fetched");
        if (operation === "payout") return list(request, records, (record) => transfer(record), "Transfers fetched");
        return list(request, records, refund, "Refunds fetched");
      }
      if (method !== "POST") return error(404, `No route ${method} ${path}`);
      const body = parseObject(request.rawBody);
      if (!body) return error(400, "Request body must be a JSON object");
      if (path === "/v3/tokenized-charges") return charge(body);
      if (path === "/v3/transfers") return createTransfer(body);
      const refundMatch = /^\/v3\/transactions\/(\d+)\/refund$/.exec(path);
      if (refundMatch) return createRefund(refundMatch[1] ?? "", body);
      return error(404, `No route ${method} ${path}`);
    },
    webhook(record) {
      if (record.operation === "refund") return undefined;
      const body = JSON.stringify(
        record.operation === "charge"
          ? { event: "charge.completed", "event.type": "CARD_TRANSACTION", data: transaction(record) }
          : { event: "transfer.completed", "event.type": "Transfer", data: transfer(record) },
      );
      return { body, headers: { "verif-hash": webhookHash } };
    },
  };
}

// The simulator's own reading of major-unit amounts, written apart from the connector's on purpose:
// the two sides of the wire must agree without sharing code, or a shared bug would pass unseen.

/** Minor units as the JSON number Flutterwave shows: 250050n NGN → 2500.5. */
function majorNumber(amountMinor: bigint, currency: string): number {
  const exponent = minorUnitExponent(currency);
  const divisor = 10n ** BigInt(exponent);
  const fraction = (amountMinor % divisor).toString().padStart(exponent, "0");
  return Number(exponent === 0 ? `${amountMinor}` : `${amountMinor / divisor}.${fraction}`);
}

/** A positive major-unit amount (JSON number or decimal string) as exact minor units. */
function minorOf(value: unknown, currency: string): bigint | undefined {
  const text = typeof value === "number" && Number.isFinite(value) ? String(value) : value;
  if (typeof text !== "string") return undefined;
  const match = /^(\d{1,15})(?:\.(\d{1,15}))?$/.exec(text);
  if (!match) return undefined;
  const exponent = minorUnitExponent(currency);
  const fraction = (match[2] ?? "").replace(/0+$/, "");
  if (fraction.length > exponent) return undefined;
  const amount = BigInt(`${match[1]}${fraction.padEnd(exponent, "0")}`);
  return amount > 0n ? amount : undefined;
}
