// Flutterwave v3: Bearer secret key, JSON, amounts in MAJOR units as decimal numbers.
//   charge   POST /v3/tokenized-charges              status GET /v3/transactions/verify_by_reference?tx_ref=
//   payout   POST /v3/transfers (always answers NEW)  status GET /v3/transfers?reference=
//   refund   POST /v3/transactions/:id/refund {amount, comments}
//            status: the newest refunds are searched for our reference in comments
//   list     GET /v3/transactions, /v3/transfers, /v3/refunds ?from&to (dates)&page, 10 a page,
//            newest first; a refund states no currency, so its amount is read in the currency of
//            the charge it refunds when that charge is in the window, and left unread otherwise
// Flutterwave refuses a reused tx_ref or transfer reference. Webhooks carry verif-hash, the secret
// hash configured on the dashboard, compared in constant time.
//
// Money: Cowrie's bigint minor units become a decimal string here and a JSON number only on the
// wire. A decimal of at most 15 significant digits survives double conversion exactly (IEEE 754
// guarantees 15), so amounts up to MAJOR_EXACT_MAX_MINOR round-trip; larger ones are refused.
import { minorUnitExponent } from "../../../runtime/validate.js";
import type { CallOptions, Capabilities, Connector, ConnectorConfig, GatewayResult, GatewayTransaction, Operation } from "../connector.js";
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
  textOf,
  windowOnly,
} from "../http.js";
import * as codes from "./codes.js";

const LIST_PATHS: Record<Operation, string> = { charge: "/v3/transactions", payout: "/v3/transfers", refund: "/v3/refunds" };

/** A date as Flutterwave's list filters take it: YYYY-MM-DD, UTC. */
function day(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

const CAPABILITIES: Capabilities = {
  currencies: new Set(["NGN", "GHS", "KES", "UGX", "ZAR", "USD", "EUR", "GBP"]),
  countries: new Set(["NG", "GH", "KE", "UG", "ZA", "US", "GB", "DE", "FR", "IE", "NL", "ES", "IT", "BE"]),
  // Plausible single-transaction ceilings, in minor units; not contractual.
  maxAmountMinor: {
    NGN: 1_000_000_000n, // ₦10,000,000
    GHS: 10_000_000n, // GH₵100,000
    KES: 100_000_000n, // KSh1,000,000
    UGX: 50_000_000n, // USh50,000,000 (no minor unit)
    ZAR: 100_000_000n, // R1,000,000
    USD: 1_000_000n, // $10,000
    EUR: 1_000_000n, // €10,000
    GBP: 1_000_000n, // £10,000
  },
};

/** The largest amount, in minor units, whose major-unit JSON number is exact: 15 significant digits. */
export const MAJOR_EXACT_MAX_MINOR = 10n ** 15n - 1n;
/** Refund lookups read at most this many pages (Flutterwave pages by 10). */
const REFUND_PAGES_MAX = 20;

/** Minor units as the decimal string of major units: 250050n, 2 → "2500.50"; 5n, 0 → "5"; 1234n, 3 → "1.234". */
export function minorToMajor(amountMinor: bigint, exponent: number): string {
  const sign = amountMinor < 0n ? "-" : "";
  const digits = (amountMinor < 0n ? -amountMinor : amountMinor).toString();
  if (exponent === 0) return `${sign}${digits}`;
  const padded = digits.padStart(exponent + 1, "0");
  return `${sign}${padded.slice(0, -exponent)}.${padded.slice(-exponent)}`;
}

/**
 * A major-unit amount as Flutterwave sends it (a JSON number or a decimal string) in exact minor
 * units; undefined when it is not a whole number of minor units or not a plain decimal.
 */
export function majorToMinor(amount: number | string, exponent: number): bigint | undefined {
  const text = typeof amount === "number" ? (Number.isFinite(amount) ? String(amount) : "") : amount.trim();
  const match = /^(-?)(\d+)(?:\.(\d+))?$/.exec(text);
  if (!match) return undefined;
  const fraction = (match[3] ?? "").replace(/0+$/, "");
  if (fraction.length > exponent) return undefined;
  const minor = BigInt(`${match[2]}${fraction.padEnd(exponent, "0")}`);
  return match[1] === "-" ? -minor : minor;
}

/** The JSON number for an amount, or undefined past the exact range. */
function wireAmount(amountMinor: bigint, currency: string): number | undefined {
  if (amountMinor <= 0n || amountMinor > MAJOR_EXACT_MAX_MINOR) return undefined;
  return Number(minorToMajor(amountMinor, minorUnitExponent(currency)));
}

export function createFlutterwaveConnector(config: ConnectorConfig): Connector {
  const call = bearerJsonApi(config.baseUrl, config.secretKey);
  const { classify, fromObject } = envelopeReader({
    codes,
    isError: (body) => body.status === "error",
    // Charges say "successful", transfers "SUCCESSFUL".
    statusKey: (status) => status.toLowerCase(),
    describe: (data) => ({
      reason: textOf(data.processor_response) || textOf(data.complete_message) || undefined,
      gatewayId: textOf(data.id),
    }),
  });

  /** Flutterwave refunds by its own transaction id; look it up when the Router does not have it. */
  async function transactionId(chargeReference: string, options: CallOptions): Promise<string | GatewayResult> {
    const answer = await call("GET", `/v3/transactions/verify_by_reference?tx_ref=${encodeURIComponent(chargeReference)}`, undefined, options);
    const id = answer.kind === "response" && answer.status < 300 ? textOf(objectOf(objectOf(answer.json).data).id) : undefined;
    return id ?? classify(answer, true);
  }

  return {
    name: "flutterwave",
    capabilities: CAPABILITIES,

    async charge(request, options) {
      const amount = wireAmount(request.amountMinor, request.currency);
      if (amount === undefined) return refusedLocally(`amount must be 1 to ${MAJOR_EXACT_MAX_MINOR} minor units`);
      const answer = await call("POST", "/v3/tokenized-charges", {
        token: request.paymentMethod,
        currency: request.currency,
        amount,
        email: request.customerEmail,
        tx_ref: request.reference,
        narration: request.description,
      }, options);
      return classify(answer, false);
    },

    async payout(request, options) {
      const amount = wireAmount(request.amountMinor, request.currency);
      if (amount === undefined) return refusedLocally(`amount must be 1 to ${MAJOR_EXACT_MAX_MINOR} minor units`);
      const answer = await call("POST", "/v3/transfers", {
        account_bank: request.bankAccount.bankCode,
        account_number: request.bankAccount.accountNumber,
        amount,
        currency: request.currency,
        debit_currency: request.currency,
        reference: request.reference,
        narration: request.description,
        beneficiary_name: request.bankAccount.accountName,
      }, options);
      return classify(answer, false);
    },

    async refund(request, options) {
      const amount = wireAmount(request.amountMinor, request.currency);
      if (amount === undefined) return refusedLocally(`amount must be 1 to ${MAJOR_EXACT_MAX_MINOR} minor units`);
      const bounded = overall(options);
      const id = request.chargeGatewayId ?? (await transactionId(request.chargeReference, bounded));
      // Only the lookup failed; no refund was asked for, so nothing can have been refunded.
      if (typeof id !== "string") return adjusted(beforeMoneyCall(id), codes.REFUND_ADJUSTMENTS);
      const answer = await call("POST", `/v3/transactions/${encodeURIComponent(id)}/refund`, { amount, comments: request.reference }, bounded);
      return adjusted(classify(answer, false), codes.REFUND_ADJUSTMENTS);
    },

    async status(operation, reference, options) {
      const ref = encodeURIComponent(reference);
      if (operation === "charge") return classify(await call("GET", `/v3/transactions/verify_by_reference?tx_ref=${ref}`, undefined, options), true);
      const bounded = overall(options);
      const { found, failed } = await findInPages(operation === "payout" ? 1 : REFUND_PAGES_MAX, async (page) => {
        const path = operation === "payout" ? `/v3/transfers?reference=${ref}` : `/v3/refunds?page=${page}`;
        const answer = await call("GET", path, undefined, bounded);
        if (answer.kind === "failure" || answer.status >= 300) return { failed: classify(answer, true) };
        const body = objectOf(answer.json);
        const pageInfo = objectOf(objectOf(body.meta).page_info);
        return { items: objectsOf(body.data), more: Number(pageInfo.current_page) < Number(pageInfo.total_pages) };
      }, (item) => (operation === "payout" ? item.reference : item.comments) === reference);
      if (failed) return failed;
      if (!found) return gatewayResult(codes.NOT_FOUND, { gatewayCode: `${operation}_not_found`, message: `no ${operation} with reference ${reference}`, query: true });
      return fromObject(found, { httpStatus: 200, query: true });
    },

    async listTransactions(window, options) {
      // Flutterwave filters by whole days; the window is cut exactly here. Its lists are newest
      // first, so paging stops at the first page reaching past the window's start.
      const range = `from=${day(window.fromMs)}&to=${day(window.toMs - 1)}`;
      const read = (operation: Operation) => collectPages<GatewayTransaction & { parentId: string; amountMajor: string }>(async (page) => {
        const answer = await call("GET", `${LIST_PATHS[operation]}?${range}&page=${page}`, undefined, options);
        if (answer.kind === "failure" || answer.status >= 300) return { failed: classify(answer, true) };
        const body = objectOf(answer.json);
        const pageInfo = objectOf(objectOf(body.meta).page_info);
        const items = objectsOf(body.data).map((item) => {
          const currency = (textOf(item.currency) ?? "").toUpperCase();
          const amountMajor = textOf(operation === "refund" ? item.amount_refunded : item.amount) ?? "";
          return {
            gateway: "flutterwave" as const,
            operation,
            reference: textOf(operation === "charge" ? item.tx_ref : operation === "payout" ? item.reference : item.comments) ?? "",
            gatewayId: textOf(item.id) ?? "",
            amountMinor: currency === "" || amountMajor === "" ? undefined : majorToMinor(amountMajor, minorUnitExponent(currency)),
            currency,
            outcome: fromObject(item, { query: true }).outcome,
            gatewayStatus: textOf(item.status) ?? "",
            createdAt: new Date(textOf(item.created_at) ?? ""),
            parentId: textOf(item.tx_id) ?? "",
            amountMajor,
          };
        });
        return { items, more: Number(pageInfo.current_page) < Number(pageInfo.total_pages) && !items.some((item) => item.createdAt.getTime() < window.fromMs) };
      });
      const listed = await read(window.operation);
      if ("failed" in listed) return listed;
      let items: GatewayTransaction[] = listed.items;
      if (window.operation === "refund" && items.length > 0) {
        // The charges of the refunds' days give the refunds their currency.
        const charges = await read("charge");
        if ("failed" in charges) return charges;
        const currencies = new Map(charges.items.map((charge) => [charge.gatewayId, charge.currency]));
        items = listed.items.map((refund) => {
          const currency = currencies.get(refund.parentId) ?? "";
          return { ...refund, currency, amountMinor: currency === "" ? undefined : majorToMinor(refund.amountMajor, minorUnitExponent(currency)) };
        });
      }
      return { transactions: windowOnly(items, window.fromMs, window.toMs).map(({ parentId: _p, amountMajor: _a, ...transaction }: GatewayTransaction & { parentId?: string; amountMajor?: string }) => transaction) };
    },

    verifyWebhook(headers, rawBody) {
      const hash = headerOf(headers, "verif-hash");
      if (!hash || !safeEqual(hash, config.webhookSecret)) return undefined;
      const event = objectOf(parseJson(rawBody));
      const kind = codes.WEBHOOK_EVENTS[textOf(event.event) ?? ""];
      const data = objectOf(event.data);
      const reference = kind ? textOf(data[kind.referenceField]) : undefined;
      if (!kind || !reference) return undefined;
      return { operation: kind.operation, reference, result: fromObject(data, {}) };
    },
  };
}
