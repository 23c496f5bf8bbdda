// Paystack's contract, as the simulator serves it under /paystack: Bearer secret key, JSON bodies,
// integer amounts in subunits (kobo), answers shaped {status: boolean, message, data}. A reused
// reference is refused ("Duplicate Transaction Reference") and records nothing. Webhooks carry
// x-paystack-signature, the hex HMAC-SHA512 of the raw body keyed with the secret key.
import { createHmac } from "node:crypto";
import { isTrigger, refundableMinor, type DeclineReason, type SimulatedRecord, type SimulatorCore } from "./core.js";
import {
  dateRange,
  digitsAmount,
  pageOf,
  parseObject,
  positiveInteger,
  type GatewayContract,
  type WireReply,
  type WireRequest,
} from "./wire.js";

/** Paystack's gateway_response text per decline reason. */
const DECLINE_TEXT: Record<DeclineReason, string> = {
  insufficient_funds: "Insufficient Funds",
  expired_card: "Expired Card",
  suspected_fraud: "Suspected Fraud",
  account_blocked: "Account Restricted",
  invalid_account: "Could Not Resolve Account",
  card_declined: "Declined",
};

const WIRE_STATUS = { succeeded: "success", failed: "failed", pending: "pending" } as const;

export function paystackContract(core: SimulatorCore, secretKey: string): GatewayContract {
  const ok = (message: string, data: unknown, status = 200): WireReply => ({ status, body: { status: true, message, data } });
  const error = (status: number, message: string, code = "error"): WireReply => ({
    status,
    body: { status: false, message, type: status >= 500 ? "api_error" : "validation_error", code },
  });

  function transaction(record: SimulatedRecord) {
    return {
      id: record.serial,
      domain: "test",
      status: WIRE_STATUS[record.status],
      reference: record.reference,
      amount: Number(record.amountMinor),
      currency: record.currency,
      gateway_response: record.declineCode ? DECLINE_TEXT[record.declineCode] : record.status === "pending" ? "Pending" : "Approved",
      channel: "card",
      paid_at: record.status === "succeeded" ? record.createdAt.toISOString() : null,
      created_at: record.createdAt.toISOString(),
      customer: { email: record.details.email ?? null },
      authorization: { authorization_code: record.details.authorization_code ?? null, reusable: true },
    };
  }

  function transfer(record: SimulatedRecord) {
    return {
      id: record.serial,
      domain: "test",
      amount: Number(record.amountMinor),
      currency: record.currency,
      source: "balance",
      reason: record.details.reason ?? null,
      reference: record.reference,
      recipient: record.details.recipient ?? null,
      status: WIRE_STATUS[record.status],
      transfer_code: record.gatewayId,
      gateway_response: record.declineCode ? DECLINE_TEXT[record.declineCode] : null,
      createdAt: record.createdAt.toISOString(),
      updatedAt: record.createdAt.toISOString(),
    };
  }

  function refund(record: SimulatedRecord) {
    return {
      id: record.serial,
      transaction: { id: record.parent?.serial, reference: record.parent?.reference, amount: Number(record.parent?.amountMinor ?? 0n) },
      amount: Number(record.amountMinor),
      currency: record.currency,
      status: "processed",
      merchant_note: record.details.merchant_note ?? null,
      refunded_at: record.createdAt.toISOString(),
      createdAt: record.createdAt.toISOString(),
    };
  }

  /** GET lists: from/to date filters and perPage/page paging, newest first, as Paystack pages. */
  function list(request: WireRequest, operation: "charge" | "payout" | "refund", render: (record: SimulatedRecord) => unknown, message: string): WireReply {
    const times = dateRange(request.query);
    if (!times) return error(400, "Invalid date: from and to must be ISO dates");
    let records = core.list({ gateway: "paystack", operation, ...times });
    const chargeReference = request.query.get("reference");
    if (operation === "refund" && chargeReference) records = records.filter((record) => record.parent?.reference === chargeReference);
    const perPage = positiveInteger(request.query.get("perPage"), 50, 100);
    const page = positiveInteger(request.query.get("page"), 1, 1_000_000);
    const slice = pageOf(records, page, perPage);
    return {
      status: 200,
      body: {
        status: true,
        message,
        data: slice.items.map((record) => render(core.query(record))),
        meta: { total: records.length, skipped: (page - 1) * perPage, perPage, page, pageCount: slice.pageCount },
      },
    };
  }

  function charge(body: Record<string, unknown>): WireReply {
    const amount = amountOf(body.amount);
    if (amount === undefined) return error(400, "Invalid amount: must be a positive integer in subunits");
    if (typeof body.authorization_code !== "string" || body.authorization_code === "") return error(400, "Authorization code is required");
    if (typeof body.email !== "string" || !body.email.includes("@")) return error(400, "Invalid email address");
    if (typeof body.reference !== "string" || body.reference === "") return error(400, "Reference is required");
    if (core.find("paystack", "charge", body.reference)) return error(400, "Duplicate Transaction Reference", "duplicate_reference");
    const { record, ambiguous } = core.create({
      gateway: "paystack",
      operation: "charge",
      reference: body.reference,
      amountMinor: amount,
      currency: typeof body.currency === "string" ? body.currency : "NGN",
      trigger: body.authorization_code,
      gatewayId: String,
      details: { email: body.email, authorization_code: body.authorization_code },
    });
    return { ...ok("Charge attempted", transaction(record)), withhold: ambiguous };
  }

  function createRecipient(body: Record<string, unknown>): WireReply {
    const account = [body.bank_code, body.account_number, body.name, body.currency];
    if (!account.every((field) => typeof field === "string" && field !== "")) {
      return error(400, "bank_code, account_number, name and currency are required");
    }
    if (isTrigger(body.account_number as string, "decline_invalid_account")) {
      return error(422, "Could not resolve account name. Check parameters or try again.", "invalid_bank_account");
    }
    // The code encodes the account: the same account gets the same code (as Paystack dedupes
    // recipients by account number), and codes a connector cached survive a simulator reset.
    const code = `RCP_${Buffer.from(JSON.stringify(account)).toString("base64url")}`;
    return ok("Transfer recipient created successfully", {
      recipient_code: code,
      type: body.type,
      name: body.name,
      currency: body.currency,
      active: true,
      details: { account_number: body.account_number, bank_code: body.bank_code, account_name: body.name },
    }, 201);
  }

  function createTransfer(body: Record<string, unknown>): WireReply {
    const amount = amountOf(body.amount);
    if (amount === undefined) return error(400, "Invalid amount: must be a positive integer in subunits");
    if (typeof body.reference !== "string" || body.reference === "") return error(400, "Reference is required");
    const account = decodeRecipient(body.recipient);
    if (!account) return error(404, "Recipient specified is invalid", "recipient_not_found");
    if (core.find("paystack", "payout", body.reference)) return error(400, "Duplicate Transaction Reference", "duplicate_reference");
    const { record, ambiguous } = core.create({
      gateway: "paystack",
      operation: "payout",
      reference: body.reference,
      amountMinor: amount,
      currency: typeof body.currency === "string" ? body.currency : account.currency,
      trigger: account.accountNumber,
      gatewayId: transferCode,
      details: { recipient: String(body.recipient), reason: typeof body.reason === "string" ? body.reason : "" },
    });
    return { ...ok("Transfer has been queued", transfer(record)), withhold: ambiguous };
  }

  function createRefund(body: Record<string, unknown>): WireReply {
    const target = typeof body.transaction === "string" || typeof body.transaction === "number" ? String(body.transaction) : "";
    const charge = core.find("paystack", "charge", target) ?? core.findById("paystack", "charge", target);
    const amount = body.amount === undefined ? refundableMinor(charge) : amountOf(body.amount);
    if (amount === undefined) return error(400, "Invalid amount: must be a positive integer in subunits");
    const note = typeof body.merchant_note === "string" && body.merchant_note !== "" ? body.merchant_note : undefined;
    const result = core.refund(charge, amount, note, String, note ? { merchant_note: note } : {});
    if (result === "charge_not_found") return error(404, "Transaction not found", "transaction_not_found");
    if (result === "charge_not_successful") return error(400, "Transaction has not been completed and cannot be refunded");
    if (result === "exceeds_charge") return error(400, "Refund amount cannot be more than the unrefunded transaction amount");
    return ok("Refund has been queued for processing", refund(result));
  }

  function verify(operation: "charge" | "payout", reference: string, render: (record: SimulatedRecord) => unknown): WireReply {
    const record = core.find("paystack", operation, reference);
    if (!record) {
      return operation === "charge"
        ? error(400, "Transaction reference not found", "transaction_not_found")
        : error(404, "Transfer not found", "transfer_not_found");
    }
    return ok(operation === "charge" ? "Verification successful" : "Transfer retrieved", render(core.query(record)));
  }

  return {
    name: "paystack",
    gatewayIdFor: (operation) => (operation === "payout" ? transferCode : String),
    authorized: (headers) => headers.authorization === `Bearer ${secretKey}`,
    error: (status, message) => error(status, message),
    handle(request) {
      const { method, path } = request;
      const verifyMatch = /^\/(transaction|transfer)\/verify\/([^/]+)$/.exec(path);
      if (method === "GET" && verifyMatch) {
        const reference = decodeURIComponent(verifyMatch[2] ?? "");
        return verifyMatch[1] === "transaction" ? verify("charge", reference, transaction) : verify("payout", reference, transfer);
      }
      if (method === "GET" && path === "/transaction") return list(request, "charge", transaction, "Transactions retrieved");
      if (method === "GET" && path === "/transfer") return list(request, "payout", transfer, "Transfers retrieved");
      if (method === "GET" && path === "/refund") return list(request, "refund", refund, "Refunds retrieved");
      if (method !== "POST") return error(404, `No route ${method} ${path}`);
      const body = parseObject(request.rawBody);
      if (!body) return error(400, "Request body must be a JSON object");
      if (path === "/transaction/charge_authorization") return charge(body);
      if (path === "/transferrecipient") return createRecipient(body);
      if (path === "/transfer") return createTransfer(body);
      if (path === "/refund") return createRefund(body);
      return error(404, `No route ${method} ${path}`);
    },
    webhook(record) {
      const event = webhookEvent(record);
      if (!event) return undefined;
      const data = record.operation === "charge" ? transaction(record) : record.operation === "payout" ? transfer(record) : {
        ...refund(record),
        transaction_reference: record.parent?.reference,
        refund_reference: record.gatewayId,
      };
      const body = JSON.stringify({ event, data });
      return { body, headers: { "x-paystack-signature": createHmac("sha512", secretKey).update(body).digest("hex") } };
    },
  };
}

/** A transfer's code: TRF_ and the serial in base 36. */
function transferCode(serial: number): string {
  return `TRF_${serial.toString(36).padStart(10, "0")}`;
}

/** Paystack sends no event for a failed charge. */
function webhookEvent(record: SimulatedRecord): string | undefined {
  if (record.operation === "charge") return record.status === "succeeded" ? "charge.success" : undefined;
  if (record.operation === "payout") return record.status === "succeeded" ? "transfer.success" : "transfer.failed";
  return "refund.processed";
}

function decodeRecipient(code: unknown): { accountNumber: string; currency: string } | undefined {
  if (typeof code !== "string" || !code.startsWith("RCP_")) return undefined;
  try {
    const [, accountNumber, , currency] = JSON.parse(Buffer.from(code.slice(4), "base64url").toString()) as string[];
    return accountNumber && currency ? { accountNumber, currency } : undefined;
  } catch {
    return undefined;
  }
}

/** Paystack takes subunits as an integer, or a string of digits. */
function amountOf(value: unknown): bigint | undefined {
  const text = typeof value === "number" && Number.isSafeInteger(value) ? String(value) : value;
  const amount = typeof text === "string" ? digitsAmount(text) : undefined;
  return amount !== undefined && amount <= BigInt(Number.MAX_SAFE_INTEGER) ? amount : undefined;
}
