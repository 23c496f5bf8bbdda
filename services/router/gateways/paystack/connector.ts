// Paystack: Bearer secret key, JSON, integer amounts in subunits (kobo, pesewas, cents).
//   charge   POST /transaction/charge_authorization   status GET /transaction/verify/:reference
//   payout   POST /transferrecipient, POST /transfer   status GET /transfer/verify/:reference
//   refund   POST /refund {transaction, amount, merchant_note}
//   list     GET /transaction, /transfer, /refund ?from&to (ISO times)&perPage=100&page, newest first
//            status: Paystack finds refunds only by their transaction, so the newest refunds are
//            searched for our reference in merchant_note
// Paystack refuses a reused reference, so a resent charge or transfer cannot happen twice.
// Webhooks: x-paystack-signature, hex HMAC-SHA512 of the raw body keyed with the secret key.
import { createHmac } from "node:crypto";
import type { CallOptions, Capabilities, Connector, ConnectorConfig, GatewayResult, GatewayTransaction, Operation, PayoutRequest } from "../connector.js";
import {
  adjusted,
  bearerJsonApi,
  beforeMoneyCall,
  collectPages,
  envelopeReader,
  findInPages,
  gatewayResult,
  headerOf,
  objectOf,
  objectsOf,
  overall,
  parseJson,
  refusedLocally,
  safeEqual,
  safeJsonInteger,
  textOf,
  windowOnly,
} from "../http.js";
import * as codes from "./codes.js";

const LIST_PATHS: Record<Operation, string> = { charge: "/transaction", payout: "/transfer", refund: "/refund" };

const CAPABILITIES: Capabilities = {
  currencies: new Set(["NGN", "GHS", "ZAR", "KES", "USD"]),
  countries: new Set(["NG", "GH", "ZA", "KE"]),
  // Plausible single-transaction ceilings for a business account, in subunits; not contractual.
  maxAmountMinor: {
    NGN: 1_000_000_000n, // ₦10,000,000
    GHS: 10_000_000n, // GH₵100,000
    ZAR: 100_000_000n, // R1,000,000
    KES: 100_000_000n, // KSh1,000,000
    USD: 1_000_000n, // $10,000 (international cards on a Nigerian or Ghanaian account)
  },
};

/** Paystack's recipient type for a bank account in each country. */
const RECIPIENT_TYPES: Readonly<Record<string, string>> = { NG: "nuban", GH: "ghipss", ZA: "basa", KE: "kepss" };
/** Recipient codes remembered per account; the oldest are forgotten past this. */
const RECIPIENTS_MAX = 10_000;
/** Refund lookups read at most this many pages of 100 (the newest 1,000 refunds). */
const REFUND_PAGES_MAX = 10;

export function createPaystackConnector(config: ConnectorConfig): Connector {
  const call = bearerJsonApi(config.baseUrl, config.secretKey);
  const recipients = new Map<string, string>();
  const { classify, fromObject } = envelopeReader({
    codes,
    isError: (body) => body.status === false,
    errorCode: (body) => textOf(body.code),
    describe: (data) => ({
      reason: textOf(data.gateway_response) ?? textOf(data.failures),
      gatewayId: textOf(data.transfer_code) ?? textOf(data.id),
    }),
  });

  /** The recipient code of a bank account, created once and remembered. */
  async function recipientFor(request: PayoutRequest, options: CallOptions): Promise<string | GatewayResult> {
    const account = request.bankAccount;
    const key = JSON.stringify([account.bankCode, account.accountNumber, account.accountName, request.currency]);
    const known = recipients.get(key);
    if (known) return known;
    const answer = await call("POST", "/transferrecipient", {
      type: RECIPIENT_TYPES[account.country] ?? "nuban",
      name: account.accountName,
      account_number: account.accountNumber,
      bank_code: account.bankCode,
      currency: request.currency,
    }, options);
    const code = answer.kind === "response" && answer.status < 300 ? textOf(objectOf(objectOf(answer.json).data).recipient_code) : undefined;
    if (code) {
      if (recipients.size >= RECIPIENTS_MAX) recipients.delete(recipients.keys().next().value ?? "");
      recipients.set(key, code);
      return code;
    }
    // No transfer was asked for yet, so whatever happened here moved no money: never a status question.
    return beforeMoneyCall(classify(answer, false));
  }

  return {
    name: "paystack",
    capabilities: CAPABILITIES,

    async charge(request, options) {
      const amount = safeJsonInteger(request.amountMinor);
      if (amount === undefined) return refusedLocally("amount must be 1 to 2^53-1 subunits");
      const answer = await call("POST", "/transaction/charge_authorization", {
        email: request.customerEmail,
        amount,
        authorization_code: request.paymentMethod,
        reference: request.reference,
        currency: request.currency,
        metadata: { description: request.description },
      }, options);
      return classify(answer, false);
    },

    async payout(request, options) {
      const amount = safeJsonInteger(request.amountMinor);
      if (amount === undefined) return refusedLocally("amount must be 1 to 2^53-1 subunits");
      const bounded = overall(options);
      const recipient = await recipientFor(request, bounded);
      if (typeof recipient !== "string") return recipient;
      const answer = await call("POST", "/transfer", {
        source: "balance",
        amount,
        recipient,
        reference: request.reference,
        reason: request.description,
        currency: request.currency,
      }, bounded);
      return classify(answer, false);
    },

    async refund(request, options) {
      const amount = safeJsonInteger(request.amountMinor);
      if (amount === undefined) return refusedLocally("amount must be 1 to 2^53-1 subunits");
      const answer = await call("POST", "/refund", {
        transaction: request.chargeReference,
        amount,
        currency: request.currency,
        merchant_note: request.reference,
      }, options);
      return adjusted(classify(answer, false), codes.REFUND_ADJUSTMENTS);
    },

    async status(operation, reference, options) {
      const path = encodeURIComponent(reference);
      if (operation === "charge") return classify(await call("GET", `/transaction/verify/${path}`, undefined, options), true);
      if (operation === "payout") return classify(await call("GET", `/transfer/verify/${path}`, undefined, options), true);
      const bounded = overall(options);
      const { found, failed } = await findInPages(REFUND_PAGES_MAX, async (page) => {
        const answer = await call("GET", `/refund?perPage=100&page=${page}`, undefined, bounded);
        if (answer.kind === "failure" || answer.status >= 300) return { failed: classify(answer, true) };
        const body = objectOf(answer.json);
        const meta = objectOf(body.meta);
        return { items: objectsOf(body.data), more: Number(meta.page) < Number(meta.pageCount) };
      }, (refund) => refund.merchant_note === reference);
      if (failed) return failed;
      if (!found) {
        const message = `no refund with merchant_note ${reference} among the newest ${REFUND_PAGES_MAX * 100}`;
        return gatewayResult(codes.NOT_FOUND, { gatewayCode: "refund_not_found", message, query: true });
      }
      return fromObject(found, { httpStatus: 200, query: true });
    },

    async listTransactions(window, options) {
      const from = new Date(window.fromMs).toISOString();
      // Paystack's `to` is inclusive.
      const to = new Date(window.toMs - 1).toISOString();
      const listed = await collectPages<GatewayTransaction>(async (page) => {
        const answer = await call("GET", `${LIST_PATHS[window.operation]}?from=${from}&to=${to}&perPage=100&page=${page}`, undefined, options);
        if (answer.kind === "failure" || answer.status >= 300) return { failed: classify(answer, true) };
        const body = objectOf(answer.json);
        const meta = objectOf(body.meta);
        const items = objectsOf(body.data).map((item) => {
          const createdAt = new Date(textOf(item.created_at) ?? textOf(item.createdAt) ?? "");
          const amount = textOf(item.amount);
          return {
            gateway: "paystack" as const,
            operation: window.operation,
            // A refund carries Cowrie's reference in its merchant note.
            reference: (window.operation === "refund" ? textOf(item.merchant_note) : textOf(item.reference)) ?? "",
            gatewayId: (window.operation === "payout" ? textOf(item.transfer_code) : undefined) ?? textOf(item.id) ?? "",
            amountMinor: amount !== undefined && /^\d+$/.test(amount) ? BigInt(amount) : undefined,
            currency: (textOf(item.currency) ?? "").toUpperCase(),
            outcome: fromObject(item, { query: true }).outcome,
            gatewayStatus: textOf(item.status) ?? "",
            createdAt,
          };
        });
        return { items, more: Number(meta.page) < Number(meta.pageCount) && !items.some((item) => item.createdAt.getTime() < window.fromMs) };
      });
      if ("failed" in listed) return listed;
      return { transactions: windowOnly(listed.items, window.fromMs, window.toMs) };
    },

    verifyWebhook(headers, rawBody) {
      const signature = headerOf(headers, "x-paystack-signature");
      if (!signature) return undefined;
      const expected = createHmac("sha512", config.webhookSecret).update(rawBody).digest("hex");
      if (!safeEqual(signature.trim().toLowerCase(), expected)) return undefined;
      const event = objectOf(parseJson(rawBody));
      const operation = codes.WEBHOOK_EVENTS[textOf(event.event) ?? ""];
      const data = objectOf(event.data);
      const reference = operation === "refund" ? textOf(data.merchant_note) : textOf(data.reference);
      if (!operation || !reference) return undefined;
      return { operation, reference, result: fromObject(data, {}) };
    },
  };
}
