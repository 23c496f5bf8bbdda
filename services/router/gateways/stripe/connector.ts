// Stripe: Bearer secret key, form-encoded bodies, integer minor units, lower-case currencies, and
// Idempotency-Key = Cowrie's reference on every POST (a resend replays the first answer).
//   charge   POST /v1/payment_intents (confirm, off_session, metadata[cowrie_reference])
//   payout   POST /v1/payouts (destination: the beneficiary's external account id)
//   refund   POST /v1/refunds {payment_intent, amount, metadata[cowrie_reference]}
//   status   by metadata.cowrie_reference: PaymentIntents through search, and because search lags
//            writes by up to a minute, through the newest pages of the list before answering
//            not_found; payouts and refunds through the newest pages of their lists
//   list     GET /v1/payment_intents, /v1/payouts, /v1/refunds ?created[gte]&created[lte] (unix
//            seconds)&limit=100&starting_after, newest first; an object's time is its second
// Webhooks: Stripe-Signature t=<unix>,v1=<hex HMAC-SHA256 of "t.body">, refused past 300 s.
import { createHmac } from "node:crypto";
import type { CallOptions, Capabilities, Connector, ConnectorConfig, GatewayResult, GatewayTransaction, Operation } from "../connector.js";
import {
  adjusted,
  beforeMoneyCall,
  collectPages,
  findInPages,
  gatewayResult,
  headerOf,
  objectOf,
  objectsOf,
  overall,
  parseJson,
  refusedLocally,
  safeEqual,
  send,
  textOf,
  type AnswerDetail,
  type HttpAnswer,
  type Rule,
  windowOnly,
} from "../http.js";
import {
  CARD_DECLINES,
  ERROR_CODES,
  ERROR_TYPES,
  HTTP_STATUS,
  NOT_FOUND,
  OTHER_4XX,
  OTHER_5XX,
  PAYOUT_FAILURES,
  REFUND_ADJUSTMENTS,
  STATUSES,
  UNREADABLE,
  WEBHOOK_EVENTS,
  WEBHOOK_TOLERANCE_SECONDS,
} from "./codes.js";

// KES is left out on purpose: Stripe accounts cannot be opened in Kenya and cannot pay out to
// Kenyan banks, so Kenyan traffic belongs to Paystack and Flutterwave, which settle locally.
const CURRENCIES = ["USD", "EUR", "GBP", "CAD", "AUD"];
const CAPABILITIES: Capabilities = {
  currencies: new Set(CURRENCIES),
  countries: new Set(["US", "GB", "CA", "AU", "DE", "FR", "IE", "NL", "ES", "IT", "BE", "AT", "PT", "FI", "SE", "DK", "NO", "CH"]),
  // Stripe's documented ceiling: eight digits of minor units ($999,999.99).
  maxAmountMinor: Object.fromEntries(CURRENCIES.map((currency) => [currency, 99_999_999n])),
};

/** List lookups read at most this many pages of 100 (the newest 1,000 objects). */
const LIST_PAGES_MAX = 10;
const LISTS: Record<Operation, string> = { charge: "/v1/payment_intents", payout: "/v1/payouts", refund: "/v1/refunds" };

export function createStripeConnector(config: ConnectorConfig): Connector {
  const base = config.baseUrl.replace(/\/+$/, "");

  function call(method: "GET" | "POST", path: string, form: Record<string, string> | undefined, idempotencyKey: string | undefined, options: CallOptions): Promise<HttpAnswer> {
    const headers: Record<string, string> = { authorization: `Bearer ${config.secretKey}`, accept: "application/json" };
    if (form) headers["content-type"] = "application/x-www-form-urlencoded";
    if (idempotencyKey) headers["idempotency-key"] = idempotencyKey;
    return send({ method, url: `${base}${path}`, headers, body: form && new URLSearchParams(form).toString() }, options);
  }

  /** HTTP status first, then the error object, then the returned object's status. */
  function classify(answer: HttpAnswer, query: boolean): GatewayResult {
    if (answer.kind === "failure") return answer.result;
    const body = objectOf(answer.json);
    const error = objectOf(body.error);
    const message = textOf(error.message) ?? answer.text.slice(0, 200);
    const detail: AnswerDetail = { httpStatus: answer.status, retryAfterMs: answer.retryAfterMs, query };
    const fixed = HTTP_STATUS[answer.status];
    if (fixed) return gatewayResult(fixed, { ...detail, gatewayCode: textOf(error.code) ?? `http_${answer.status}`, message });
    if (answer.status >= 400) {
      const type = textOf(error.type) ?? "";
      const code = textOf(error.code) ?? "";
      const declineCode = textOf(error.decline_code) ?? "";
      let rule: Rule = ERROR_CODES[code] ?? ERROR_TYPES[type] ?? (answer.status >= 500 ? OTHER_5XX : OTHER_4XX);
      if (type === "card_error") rule = CARD_DECLINES[declineCode] ?? CARD_DECLINES[code] ?? rule;
      const gatewayId = textOf(objectOf(error.payment_intent).id);
      return gatewayResult(rule, { ...detail, gatewayCode: declineCode || code || type || `http_${answer.status}`, message, gatewayId });
    }
    return fromObject(body, detail);
  }

  /** A PaymentIntent, payout or refund, by its status and its failure detail. */
  function fromObject(object: Record<string, unknown>, detail: AnswerDetail): GatewayResult {
    const kind = textOf(object.object) ?? "";
    const status = textOf(object.status) ?? "";
    let rule = STATUSES[kind]?.[status] ?? UNREADABLE;
    const lastError = objectOf(object.last_payment_error);
    let gatewayCode = status || "unreadable";
    let message = status;
    if (kind === "payment_intent" && rule.action === "stop" && textOf(lastError.type)) {
      const reason = textOf(lastError.decline_code) ?? textOf(lastError.code) ?? "";
      rule = CARD_DECLINES[reason] ?? rule;
      gatewayCode = reason || gatewayCode;
      message = textOf(lastError.message) ?? message;
    }
    if (kind === "payout" && status === "failed") {
      const failure = textOf(object.failure_code) ?? "";
      rule = PAYOUT_FAILURES[failure] ?? rule;
      gatewayCode = failure || gatewayCode;
      message = textOf(object.failure_message) ?? message;
    }
    return gatewayResult(rule, { ...detail, gatewayCode, message, gatewayId: textOf(object.id) });
  }

  /** The newest object of a kind carrying our reference in metadata.cowrie_reference. */
  async function lookup(operation: Operation, reference: string, options: CallOptions): Promise<{ found?: Record<string, unknown>; failed?: GatewayResult }> {
    const matches = (item: Record<string, unknown>) => objectOf(item.metadata).cowrie_reference === reference;
    if (operation === "charge") {
      const query = `metadata['cowrie_reference']:'${reference.replace(/['\\]/g, "\\$&")}'`;
      const answer = await call("GET", `/v1/payment_intents/search?query=${encodeURIComponent(query)}&limit=10`, undefined, undefined, options);
      if (answer.kind === "failure" || answer.status >= 300) return { failed: classify(answer, true) };
      const found = objectsOf(objectOf(answer.json).data).find(matches);
      if (found) return { found };
    }
    return findInPages(LIST_PAGES_MAX, async (_page, cursor) => {
      const after = cursor ? `&starting_after=${encodeURIComponent(cursor)}` : "";
      const answer = await call("GET", `${LISTS[operation]}?limit=100${after}`, undefined, undefined, options);
      if (answer.kind === "failure" || answer.status >= 300) return { failed: classify(answer, true) };
      const body = objectOf(answer.json);
      const items = objectsOf(body.data);
      return { items, more: body.has_more === true, cursor: textOf(items.at(-1)?.id) };
    }, matches);
  }

  async function post(path: string, form: Record<string, string>, reference: string, options: CallOptions): Promise<GatewayResult> {
    return classify(await call("POST", path, form, reference, options), false);
  }

  return {
    name: "stripe",
    capabilities: CAPABILITIES,

    charge(request, options) {
      return post("/v1/payment_intents", {
        amount: request.amountMinor.toString(),
        currency: request.currency.toLowerCase(),
        payment_method: request.paymentMethod,
        confirm: "true",
        off_session: "true",
        description: request.description,
        "metadata[cowrie_reference]": request.reference,
      }, request.reference, options);
    },

    payout(request, options) {
      const account = request.bankAccount;
      return post("/v1/payouts", {
        amount: request.amountMinor.toString(),
        currency: request.currency.toLowerCase(),
        // On Stripe a payout goes to an external account registered beforehand (ba_...): that id
        // is what Cowrie keeps as the account number; the rest rides along for the record.
        destination: account.accountNumber,
        description: request.description,
        "metadata[cowrie_reference]": request.reference,
        "metadata[bank_code]": account.bankCode,
        "metadata[account_name]": account.accountName,
        "metadata[country]": account.country,
      }, request.reference, options);
    },

    async refund(request, options) {
      if (request.amountMinor <= 0n) return refusedLocally("amount must be positive");
      const bounded = overall(options);
      let intent = request.chargeGatewayId;
      if (!intent) {
        const { found, failed } = await lookup("charge", request.chargeReference, bounded);
        // Only the lookup failed; no refund was asked for, so nothing can have been refunded.
        if (failed) return beforeMoneyCall(failed);
        if (!found) return refusedLocally(`Stripe has no PaymentIntent for ${request.chargeReference}`);
        intent = textOf(found.id) ?? "";
      }
      const result = await post("/v1/refunds", {
        payment_intent: intent,
        amount: request.amountMinor.toString(),
        "metadata[cowrie_reference]": request.reference,
      }, request.reference, bounded);
      return adjusted(result, REFUND_ADJUSTMENTS);
    },

    async status(operation, reference, options) {
      const { found, failed } = await lookup(operation, reference, overall(options));
      if (failed) return failed;
      if (!found) return gatewayResult(NOT_FOUND, { gatewayCode: `${operation}_not_found`, message: `no ${operation} with metadata.cowrie_reference ${reference}`, query: true });
      return fromObject(found, { httpStatus: 200, query: true });
    },

    async listTransactions(window, options) {
      const range = `created[gte]=${Math.floor(window.fromMs / 1000)}&created[lte]=${Math.ceil(window.toMs / 1000)}`;
      const listed = await collectPages<GatewayTransaction>(async (_page, cursor) => {
        const after = cursor ? `&starting_after=${encodeURIComponent(cursor)}` : "";
        const answer = await call("GET", `${LISTS[window.operation]}?${range}&limit=100${after}`, undefined, undefined, options);
        if (answer.kind === "failure" || answer.status >= 300) return { failed: classify(answer, true) };
        const body = objectOf(answer.json);
        const objects = objectsOf(body.data);
        const items = objects.map((object) => {
          const amount = textOf(object.amount);
          return {
            gateway: "stripe" as const,
            operation: window.operation,
            reference: textOf(objectOf(object.metadata).cowrie_reference) ?? "",
            gatewayId: textOf(object.id) ?? "",
            amountMinor: amount !== undefined && /^\d+$/.test(amount) ? BigInt(amount) : undefined,
            currency: (textOf(object.currency) ?? "").toUpperCase(),
            outcome: fromObject(object, { query: true }).outcome,
            gatewayStatus: textOf(object.status) ?? "",
            createdAt: new Date(Number(object.created) * 1000),
          };
        });
        return { items, more: body.has_more === true, cursor: textOf(objects.at(-1)?.id) };
      });
      if ("failed" in listed) return listed;
      return { transactions: windowOnly(listed.items, window.fromMs, window.toMs) };
    },

    verifyWebhook(headers, rawBody, nowMs = Date.now()) {
      const header = headerOf(headers, "stripe-signature");
      if (!header) return undefined;
      const parts = header.split(",").map((part) => part.trim().split("="));
      const timestamp = parts.find(([key]) => key === "t")?.[1] ?? "";
      const signatures = parts.filter(([key]) => key === "v1").map(([, value]) => value ?? "");
      if (!/^\d+$/.test(timestamp) || signatures.length === 0) return undefined;
      if (Math.abs(nowMs / 1000 - Number(timestamp)) > WEBHOOK_TOLERANCE_SECONDS) return undefined;
      const expected = createHmac("sha256", config.webhookSecret).update(`${timestamp}.${rawBody}`).digest("hex");
      if (!signatures.some((signature) => safeEqual(signature, expected))) return undefined;
      const event = objectOf(parseJson(rawBody));
      const operation = WEBHOOK_EVENTS[textOf(event.type) ?? ""];
      let object = objectOf(objectOf(event.data).object);
      // charge.refunded carries the Charge; the refund that just happened is the newest in it.
      if (object.object === "charge") object = objectOf((objectOf(object.refunds).data as unknown[] | undefined)?.[0]);
      const reference = textOf(objectOf(object.metadata).cowrie_reference);
      if (!operation || !reference) return undefined;
      return { operation, reference, result: fromObject(object, {}) };
    },
  };
}
