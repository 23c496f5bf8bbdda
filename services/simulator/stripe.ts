// Stripe's contract, as the simulator serves it under /stripe: Bearer secret key, form-encoded
// bodies (metadata[key]=value), integer amounts in minor units, lower-case currencies, errors
// shaped {error: {type, code, decline_code, message}} (a decline is HTTP 402). A POST carrying an
// Idempotency-Key already seen gets the first answer again (Idempotent-Replayed: true), or 400 when
// its parameters differ; without the header, Stripe would happily create a second object, and so
// does the simulator. Webhooks carry Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">.
import { createHmac } from "node:crypto";
import { refundableMinor, type DeclineReason, type SimulatedRecord, type SimulatorCore } from "./core.js";
import {
  digitsAmount,
  parseTime,
  positiveInteger,
  type GatewayContract,
  type WireReply,
  type WireRequest,
} from "./wire.js";

/** How Stripe reports each decline on a card: error code, decline_code, message. */
const CARD_DECLINES: Record<DeclineReason, readonly [string, string, string]> = {
  insufficient_funds: ["card_declined", "insufficient_funds", "Your card has insufficient funds."],
  expired_card: ["expired_card", "expired_card", "Your card has expired."],
  suspected_fraud: ["card_declined", "fraudulent", "Your card was declined."],
  account_blocked: ["card_declined", "restricted_card", "Your card was declined."],
  invalid_account: ["card_declined", "invalid_account", "Your card was declined."],
  card_declined: ["card_declined", "generic_decline", "Your card was declined."],
};

/** A failed payout's failure_code. */
const PAYOUT_FAILURES: Record<DeclineReason, string> = {
  insufficient_funds: "insufficient_funds",
  expired_card: "declined",
  suspected_fraud: "declined",
  account_blocked: "account_frozen",
  invalid_account: "invalid_account_number",
  card_declined: "declined",
};

/** Idempotency keys remembered; the oldest are forgotten past this (Stripe keeps them 24 h). */
const IDEMPOTENCY_KEYS_MAX = 1_000_000;

export function stripeContract(core: SimulatorCore, secretKey: string, webhookSecret: string): GatewayContract {
  const replies = new Map<string, { fingerprint: string; reply: WireReply }>();
  const error = (status: number, message: string, fields: Record<string, unknown> = {}): WireReply => ({
    status,
    body: { error: { type: status >= 500 ? "api_error" : "invalid_request_error", message, ...fields } },
  });

  const unix = (date: Date) => Math.floor(date.getTime() / 1000);

  function metadata(record: SimulatedRecord): Record<string, string> {
    return Object.fromEntries(
      Object.entries(record.details).flatMap(([key, value]) => (key.startsWith("metadata.") ? [[key.slice(9), value]] : [])),
    );
  }

  function paymentIntent(record: SimulatedRecord) {
    const decline = record.declineCode ? CARD_DECLINES[record.declineCode] : undefined;
    return {
      id: record.gatewayId,
      object: "payment_intent",
      amount: Number(record.amountMinor),
      amount_received: record.status === "succeeded" ? Number(record.amountMinor) : 0,
      currency: record.currency.toLowerCase(),
      status: { succeeded: "succeeded", pending: "processing", failed: "requires_payment_method" }[record.status],
      payment_method: record.details.payment_method ?? null,
      description: record.details.description ?? null,
      latest_charge: stripeId("ch", record.serial),
      created: unix(record.createdAt),
      metadata: metadata(record),
      last_payment_error: decline ? { type: "card_error", code: decline[0], decline_code: decline[1], message: decline[2] } : null,
      livemode: false,
    };
  }

  function payout(record: SimulatedRecord) {
    return {
      id: record.gatewayId,
      object: "payout",
      amount: Number(record.amountMinor),
      currency: record.currency.toLowerCase(),
      status: { succeeded: "paid", pending: "pending", failed: "failed" }[record.status],
      destination: record.details.destination ?? null,
      description: record.details.description ?? null,
      failure_code: record.declineCode ? PAYOUT_FAILURES[record.declineCode] : null,
      failure_message: record.declineCode ? `The payout failed: ${record.declineCode.replaceAll("_", " ")}.` : null,
      method: "standard",
      created: unix(record.createdAt),
      arrival_date: unix(record.createdAt),
      metadata: metadata(record),
      livemode: false,
    };
  }

  function refund(record: SimulatedRecord) {
    return {
      id: record.gatewayId,
      object: "refund",
      amount: Number(record.amountMinor),
      currency: record.currency.toLowerCase(),
      status: "succeeded",
      payment_intent: record.parent?.gatewayId ?? null,
      charge: record.parent ? stripeId("ch", record.parent.serial) : null,
      created: unix(record.createdAt),
      metadata: metadata(record),
    };
  }

  /** The Charge behind a PaymentIntent, with its refunds, as charge.refunded carries it. */
  function chargeOf(intent: SimulatedRecord) {
    const refunds = core.list({ gateway: "stripe", operation: "refund" }).filter((record) => record.parent === intent);
    return {
      id: stripeId("ch", intent.serial),
      object: "charge",
      amount: Number(intent.amountMinor),
      amount_refunded: Number(intent.refundedMinor),
      currency: intent.currency.toLowerCase(),
      payment_intent: intent.gatewayId,
      refunded: intent.refundedMinor === intent.amountMinor,
      status: "succeeded",
      metadata: metadata(intent),
      refunds: { object: "list", has_more: false, data: refunds.reverse().map(refund) },
    };
  }

  /** GET lists: created[gte]/created[lte] in unix seconds, limit and starting_after, newest first. */
  function list(request: WireRequest, operation: "charge" | "payout" | "refund", render: (record: SimulatedRecord) => unknown): WireReply {
    const fromMs = parseTime(request.query.get("created[gte]"));
    const toMs = parseTime(request.query.get("created[lte]"));
    if (Number.isNaN(fromMs) || Number.isNaN(toMs)) return error(400, "created[gte] and created[lte] must be unix timestamps");
    let records = core.list({ gateway: "stripe", operation, fromMs, toMs }).reverse();
    const intent = request.query.get("payment_intent");
    if (intent) records = records.filter((record) => record.parent?.gatewayId === intent);
    const after = request.query.get("starting_after");
    if (after) records = records.slice(records.findIndex((record) => record.gatewayId === after) + 1);
    const limit = positiveInteger(request.query.get("limit"), 10, 100);
    return {
      status: 200,
      body: {
        object: "list",
        url: request.path,
        has_more: records.length > limit,
        data: records.slice(0, limit).map((record) => render(core.query(record))),
      },
    };
  }

  function search(request: WireRequest): WireReply {
    const match = /^metadata\[['"]([^'"]+)['"]\]:['"]([^'"]*)['"]$/.exec(request.query.get("query") ?? "");
    if (!match) return error(400, "The simulator searches only metadata['key']:'value'", { code: "parameter_invalid_string", param: "query" });
    const [, key = "", value = ""] = match;
    const limit = positiveInteger(request.query.get("limit"), 10, 100);
    const records = core.list({ gateway: "stripe", operation: "charge" }).filter((record) => record.details[`metadata.${key}`] === value);
    return {
      status: 200,
      body: {
        object: "search_result",
        url: "/v1/payment_intents/search",
        has_more: records.length > limit,
        next_page: null,
        data: records.reverse().slice(0, limit).map((record) => paymentIntent(core.query(record))),
      },
    };
  }

  const invalidAmount = () => error(400, "Invalid integer: amount", { code: "parameter_invalid_integer", param: "amount" });

  /** The amount and currency of a PaymentIntent or payout, or the error Stripe answers for them. */
  function moneyOf(form: Form): { amountMinor: bigint; currency: string } | WireReply {
    const amountMinor = amountOf(form.get("amount"));
    if (amountMinor === undefined) return invalidAmount();
    const currency = form.get("currency") ?? "";
    if (!/^[a-z]{3}$/.test(currency)) return error(400, "Invalid currency", { code: "parameter_invalid_string", param: "currency" });
    return { amountMinor, currency: currency.toUpperCase() };
  }

  function createIntent(form: Form): WireReply {
    const money = moneyOf(form);
    if ("status" in money) return money;
    const paymentMethod = form.get("payment_method");
    if (!paymentMethod) return error(400, "Missing required param: payment_method.", { code: "parameter_missing", param: "payment_method" });
    const meta = form.metadata();
    const { record, ambiguous } = core.create({
      gateway: "stripe",
      operation: "charge",
      reference: meta.cowrie_reference,
      ...money,
      trigger: paymentMethod,
      gatewayId: (serial) => stripeId("pi", serial),
      details: { ...form.details(), payment_method: paymentMethod },
    });
    const intent = paymentIntent(record);
    if (record.status === "failed") {
      const [code, declineCode, message] = CARD_DECLINES[record.declineCode ?? "card_declined"];
      return error(402, message, { type: "card_error", code, decline_code: declineCode, payment_intent: intent, charge: intent.latest_charge });
    }
    return { status: 200, body: intent, withhold: ambiguous };
  }

  function createPayout(form: Form): WireReply {
    const money = moneyOf(form);
    if ("status" in money) return money;
    const destination = form.get("destination") ?? "";
    const { record, ambiguous } = core.create({
      gateway: "stripe",
      operation: "payout",
      reference: form.metadata().cowrie_reference,
      ...money,
      trigger: destination,
      gatewayId: (serial) => stripeId("po", serial),
      details: { ...form.details(), destination },
    });
    return { status: 200, body: payout(record), withhold: ambiguous };
  }

  function createRefund(form: Form): WireReply {
    const intentId = form.get("payment_intent") ?? "";
    const charge = core.findById("stripe", "charge", intentId);
    const amount = form.get("amount") === undefined ? refundableMinor(charge) : amountOf(form.get("amount"));
    if (amount === undefined) return invalidAmount();
    const result = core.refund(charge, amount, form.metadata().cowrie_reference, (serial) => stripeId("re", serial), form.details());
    if (result === "charge_not_found") {
      return error(404, `No such payment_intent: '${intentId}'`, { code: "resource_missing", param: "payment_intent" });
    }
    if (result === "charge_not_successful") {
      return error(400, "This PaymentIntent does not have a successful charge to refund.", { code: "charge_not_refundable" });
    }
    if (result === "exceeds_charge") {
      return error(400, "Refund amount is greater than unrefunded amount on charge.", { code: "amount_too_large", param: "amount" });
    }
    return { status: 200, body: refund(result) };
  }

  function post(request: WireRequest): WireReply {
    const form = new Form(request.rawBody);
    if (request.path === "/v1/payment_intents") return createIntent(form);
    if (request.path === "/v1/payouts") return createPayout(form);
    if (request.path === "/v1/refunds") return createRefund(form);
    return error(404, `Unrecognized request URL (POST: ${request.path}).`);
  }

  /** Stripe saves the first answer of every executed POST with a key, errors included. */
  function idempotent(request: WireRequest): WireReply {
    const key = request.headers["idempotency-key"];
    if (!key) return post(request);
    const fingerprint = `${request.path}\n${request.rawBody}`;
    const saved = replies.get(key);
    if (saved && saved.fingerprint !== fingerprint) {
      return error(400, `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${key}' if you meant to execute a different request.`, { type: "idempotency_error" });
    }
    if (saved) return { ...saved.reply, withhold: false, headers: { ...saved.reply.headers, "idempotent-replayed": "true" } };
    const reply = post(request);
    if (replies.size >= IDEMPOTENCY_KEYS_MAX) replies.delete(replies.keys().next().value ?? "");
    replies.set(key, { fingerprint, reply });
    return reply;
  }

  return {
    name: "stripe",
    gatewayIdFor: (operation) => (serial) => stripeId(operation === "charge" ? "pi" : operation === "payout" ? "po" : "re", serial),
    authorized: (headers) => headers.authorization === `Bearer ${secretKey}`,
    error(status, message) {
      if (status === 401) return error(401, "Invalid API Key provided.");
      if (status === 429) return error(429, message, { code: "rate_limit" });
      return error(status, message);
    },
    handle(request) {
      const { method, path } = request;
      if (method === "POST") return idempotent(request);
      if (method === "GET" && path === "/v1/payment_intents/search") return search(request);
      if (method === "GET" && path === "/v1/payment_intents") return list(request, "charge", paymentIntent);
      if (method === "GET" && path === "/v1/payouts") return list(request, "payout", payout);
      if (method === "GET" && path === "/v1/refunds") return list(request, "refund", refund);
      return error(404, `Unrecognized request URL (${method}: ${path}).`);
    },
    reset() {
      replies.clear();
    },
    webhook(record, nowMs) {
      const type = webhookType(record);
      const object = record.operation === "charge" ? paymentIntent(record) : record.operation === "payout" ? payout(record) : chargeOf(record.parent ?? record);
      const created = Math.floor(nowMs / 1000);
      const body = JSON.stringify({ id: `evt_sim${record.serial}`, object: "event", api_version: "2024-06-20", created, livemode: false, type, data: { object } });
      const signature = createHmac("sha256", webhookSecret).update(`${created}.${body}`).digest("hex");
      return { body, headers: { "stripe-signature": `t=${created},v1=${signature}` } };
    },
  };
}

function webhookType(record: SimulatedRecord): string {
  if (record.operation === "charge") return record.status === "succeeded" ? "payment_intent.succeeded" : "payment_intent.payment_failed";
  if (record.operation === "payout") return record.status === "succeeded" ? "payout.paid" : "payout.failed";
  return "charge.refunded";
}

function amountOf(value: string | undefined): bigint | undefined {
  return value === undefined ? undefined : digitsAmount(value);
}

/** The simulator's id of a Stripe object: its prefix and the record's serial (pi_sim000000000042). */
function stripeId(prefix: string, serial: number): string {
  return `${prefix}_sim${serial.toString().padStart(12, "0")}`;
}

/** A form-encoded body; metadata[key] entries are kept in details as "metadata.key". */
class Form {
  private readonly params: URLSearchParams;
  constructor(raw: string) {
    this.params = new URLSearchParams(raw);
  }
  get(name: string): string | undefined {
    return this.params.get(name) ?? undefined;
  }
  metadata(): Record<string, string> {
    const entries = [...this.params].flatMap(([key, value]) => {
      const match = /^metadata\[(.+)\]$/.exec(key);
      return match ? [[match[1] ?? "", value]] : [];
    });
    return Object.fromEntries(entries);
  }
  details(): Record<string, string> {
    const metadata = Object.entries(this.metadata()).map(([key, value]) => [`metadata.${key}`, value]);
    return Object.fromEntries([...metadata, ["description", this.get("description") ?? ""]]);
  }
}
