// What every connector shares: one fetch wrapper bounded by the call's deadline, the split of
// transport failures into "certainly not sent" and "maybe processed", Retry-After, and the small
// pieces of webhook checking. Gateway-specific meaning lives in each connector's codes.ts.
import { createHash, timingSafeEqual } from "node:crypto";
import { errorText } from "../../runtime/log.js";
import type { CallOptions, GatewayResult, NextAction, Outcome, UnifiedCode } from "./connector.js";

/** One line of a code table. */
export interface Rule {
  readonly code: UnifiedCode;
  readonly action: NextAction;
}

/** Pattern rules, first match wins. */
export type PatternTable = readonly (readonly [RegExp, Rule])[];

/**
 * The HTTP statuses that decide on their own, whatever the body says, the same at every gateway
 * Cowrie connects to; a gateway's codes.ts adds its own. A 500 is retried with the same reference
 * only because every one of them refuses (or replays) a reused reference, so a resend cannot act
 * twice.
 */
export const COMMON_HTTP_STATUS: Readonly<Record<number, Rule>> = {
  // A wrong or revoked secret key: configuration, which no retry fixes.
  401: { code: "authentication_failed", action: "stop" },
  403: { code: "authentication_failed", action: "stop" },
  // Refused before processing; Retry-After says when to come back.
  429: { code: "rate_limited", action: "retry" },
  500: { code: "gateway_error", action: "retry" },
  // A proxy lost its upstream, maybe after the gateway acted.
  502: { code: "gateway_timeout", action: "query_status" },
  // Down: the request was not taken.
  503: { code: "gateway_unavailable", action: "failover" },
  504: { code: "gateway_timeout", action: "query_status" },
};

function firstMatch(table: PatternTable, ...texts: (string | undefined)[]): Rule | undefined {
  for (const [pattern, rule] of table) if (texts.some((text) => text !== undefined && pattern.test(text))) return rule;
  return undefined;
}

/**
 * The outcome each unified code carries. invalid_request and authentication_failed count as
 * declines (final, action stop), as connector.ts groups them, on a money call; on a status query
 * they say nothing about the payment, so there they are errors.
 */
const OUTCOMES: Record<UnifiedCode, Outcome> = {
  approved: "succeeded",
  processing: "pending",
  not_found: "not_found",
  insufficient_funds: "declined",
  card_declined: "declined",
  expired_card: "declined",
  suspected_fraud: "declined",
  account_blocked: "declined",
  invalid_account: "declined",
  invalid_request: "declined",
  authentication_failed: "declined",
  rate_limited: "error",
  gateway_error: "error",
  gateway_unavailable: "error",
  gateway_unreachable: "error",
  gateway_timeout: "error",
  duplicate_reference: "error",
};

export interface ResultDetail {
  readonly gatewayCode: string;
  readonly message: string;
  readonly gatewayId?: string;
  readonly httpStatus?: number;
  readonly retryAfterMs?: number;
  /** A status query: only the gateway's record of the payment may decline it, never an error of the query. */
  readonly query?: boolean;
}

export function gatewayResult(rule: Rule, detail: ResultDetail): GatewayResult {
  const outcome = OUTCOMES[rule.code];
  const queryError = detail.query === true && (rule.code === "invalid_request" || rule.code === "authentication_failed");
  return {
    outcome: queryError ? "error" : outcome,
    code: rule.code,
    action: rule.action,
    gatewayCode: detail.gatewayCode,
    message: detail.message.slice(0, 500),
    ...(detail.gatewayId ? { gatewayId: detail.gatewayId } : {}),
    ...(detail.httpStatus !== undefined ? { httpStatus: detail.httpStatus } : {}),
    ...(detail.retryAfterMs !== undefined ? { retryAfterMs: detail.retryAfterMs } : {}),
  };
}

/** What an answer says besides its code and message: its HTTP status, Retry-After, whether it was a query. */
export type AnswerDetail = Omit<ResultDetail, "gatewayCode" | "message">;

/** The result with another rule applied (its outcome follows the new code). */
function withRule(result: GatewayResult, rule: Rule): GatewayResult {
  return { ...result, code: rule.code, action: rule.action, outcome: OUTCOMES[rule.code] };
}

/** The result with the table's rule for its code applied, when the table has one (a refund's adjustments). */
export function adjusted(result: GatewayResult, table: Readonly<Partial<Record<UnifiedCode, Rule>>>): GatewayResult {
  const rule = table[result.code];
  return rule ? withRule(result, rule) : result;
}

/**
 * The failure of a call made before any money call (a lookup, a transfer recipient): nothing that
 * moves money was asked for, so an ambiguous failure cannot mean money moved. Fail over instead.
 */
export function beforeMoneyCall(result: GatewayResult): GatewayResult {
  return result.action === "query_status" ? { ...result, action: "failover" } : result;
}

/** A request refused before sending (it could never be valid at this gateway). */
export function refusedLocally(message: string): GatewayResult {
  return gatewayResult({ code: "invalid_request", action: "stop" }, { gatewayCode: "cowrie_refused", message });
}

/**
 * One deadline over several calls (a payout's recipient then transfer, a paged lookup): every call
 * gets this signal, so together they never outlast options.timeoutMs.
 */
export function overall(options: CallOptions): CallOptions {
  const deadline = AbortSignal.timeout(Math.max(1, options.timeoutMs));
  return { timeoutMs: options.timeoutMs, signal: options.signal ? AbortSignal.any([options.signal, deadline]) : deadline };
}

/**
 * Transport failures. A request that never left (no connection, no DNS answer, a TLS handshake
 * refused) was certainly not processed: another gateway may take it. Anything after the request
 * may have been written (our deadline, a reset or closed socket, undici's own timeouts, anything
 * unrecognised) is ambiguous: the gateway may have acted, so ask it before anything else.
 */
const TRANSPORT: { readonly notSent: Rule; readonly ambiguous: Rule } = {
  notSent: { code: "gateway_unreachable", action: "failover" },
  ambiguous: { code: "gateway_timeout", action: "query_status" },
};

/** error.cause.code values (Node, undici, OpenSSL) that mean no byte of the request was sent. */
const NOT_SENT_CODES = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "UND_ERR_CONNECT_TIMEOUT",
  "ERR_INVALID_URL",
  "CERT_HAS_EXPIRED",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "ERR_TLS_CERT_ALTNAME_INVALID",
]);

/** The first error code found on an error, its cause chain, or an AggregateError's members. */
function errorCode(error: unknown, depth = 0): string | undefined {
  if (typeof error !== "object" || error === null || depth > 5) return undefined;
  const { code, cause, errors } = error as { code?: unknown; cause?: unknown; errors?: unknown };
  if (typeof code === "string") return code;
  return errorCode(cause, depth + 1) ?? (Array.isArray(errors) ? errorCode(errors[0], depth + 1) : undefined);
}

export function transportResult(error: unknown): GatewayResult {
  const name = error instanceof Error ? error.name : "";
  const code = name === "TimeoutError" || name === "AbortError" ? name : errorCode(error) ?? "UNKNOWN";
  const rule = NOT_SENT_CODES.has(code) ? TRANSPORT.notSent : TRANSPORT.ambiguous;
  const cause = (error as { cause?: unknown } | null)?.cause;
  const message = cause instanceof Error ? `${errorText(error)}: ${cause.message}` : errorText(error);
  return gatewayResult(rule, { gatewayCode: code, message });
}

export interface HttpRequest {
  readonly method: "GET" | "POST";
  readonly url: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly body?: string;
}

export type HttpAnswer =
  | { readonly kind: "response"; readonly status: number; readonly json: unknown; readonly text: string; readonly retryAfterMs?: number }
  | { readonly kind: "failure"; readonly result: GatewayResult };

/** Longest Retry-After honoured; a longer one is treated as this (the Router may still fail over). */
const RETRY_AFTER_MAX_MS = 3_600_000;

/**
 * Sends one request, bounded by options.timeoutMs and options.signal together, and reads the whole
 * answer inside the same bound: a socket that dies mid-body is as ambiguous as one that never answers.
 * Never throws.
 */
export async function send(request: HttpRequest, options: CallOptions): Promise<HttpAnswer> {
  if (options.timeoutMs <= 0 || options.signal?.aborted) {
    // Nothing sent: the budget was spent before the call. Not the gateway's fault, but not a success either.
    return { kind: "failure", result: gatewayResult(TRANSPORT.notSent, { gatewayCode: "DEADLINE_EXHAUSTED", message: "no time left to call the gateway" }) };
  }
  try {
    const { signal } = overall(options);
    const response = await fetch(request.url, { method: request.method, headers: request.headers, body: request.body, signal, redirect: "error" });
    const text = await response.text();
    const retryAfterMs = parseRetryAfter(response.headers.get("retry-after"), Date.now());
    return { kind: "response", status: response.status, text, json: parseJson(text), ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) };
  } catch (error) {
    return { kind: "failure", result: transportResult(error) };
  }
}

export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** Retry-After as delay-seconds or an HTTP date, in ms from now; undefined when absent or malformed. */
export function parseRetryAfter(value: string | null, nowMs: number): number | undefined {
  if (value === null) return undefined;
  const trimmed = value.trim();
  const ms = /^\d+$/.test(trimmed) ? Number(trimmed) * 1000 : Date.parse(trimmed) - nowMs;
  if (!Number.isFinite(ms)) return undefined;
  return Math.min(Math.max(0, ms), RETRY_AFTER_MAX_MS);
}

/** The object at a JSON value, or an empty one: connectors read gateway answers defensively. */
export function objectOf(value: unknown): Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
}

/** The objects of a JSON array (a list's data), or none. */
export function objectsOf(value: unknown): Record<string, unknown>[] {
  return Array.isArray(value) ? value.map(objectOf) : [];
}

export function textOf(value: unknown): string | undefined {
  return typeof value === "string" ? value : typeof value === "number" ? String(value) : undefined;
}

/** A header by case-insensitive name. */
export function headerOf(headers: Readonly<Record<string, string | undefined>>, name: string): string | undefined {
  const wanted = name.toLowerCase();
  for (const [key, value] of Object.entries(headers)) if (key.toLowerCase() === wanted) return value;
  return undefined;
}

/** Constant-time equality of two strings of any lengths (both are hashed to equal length first). */
export function safeEqual(a: string, b: string): boolean {
  const digest = (text: string) => createHash("sha256").update(text).digest();
  return timingSafeEqual(digest(a), digest(b));
}

/** Amounts go on the wire as JSON numbers; beyond 2^53 they would silently round. */
export function safeJsonInteger(amountMinor: bigint): number | undefined {
  return amountMinor > 0n && amountMinor <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(amountMinor) : undefined;
}

/** One page of a gateway's list, or the failure that stopped reading it. */
export type Page<T> = { readonly items: readonly T[]; readonly more: boolean; readonly cursor?: string } | { readonly failed: GatewayResult };

/**
 * Looks through a newest-first list, page by page, for one item: the only lookup some gateways
 * offer for some objects by the merchant's reference. At most pagesMax pages are read.
 */
export async function findInPages<T>(
  pagesMax: number,
  fetchPage: (index: number, cursor: string | undefined) => Promise<Page<T>>,
  matches: (item: T) => boolean,
): Promise<{ readonly found?: T; readonly failed?: GatewayResult }> {
  let cursor: string | undefined;
  for (let index = 1; index <= pagesMax; index++) {
    const page = await fetchPage(index, cursor);
    if ("failed" in page) return { failed: page.failed };
    const found = page.items.find(matches);
    if (found !== undefined) return { found };
    if (!page.more) return {};
    cursor = page.cursor;
  }
  return {};
}

/** A JSON API with a bearer secret key (Paystack, Flutterwave): one call, never throws. */
export function bearerJsonApi(baseUrl: string, secretKey: string) {
  const base = baseUrl.replace(/\/+$/, "");
  return (method: "GET" | "POST", path: string, body: object | undefined, options: CallOptions): Promise<HttpAnswer> => {
    const headers: Record<string, string> = { authorization: `Bearer ${secretKey}`, accept: "application/json" };
    if (body) headers["content-type"] = "application/json";
    return send({ method, url: `${base}${path}`, headers, body: body && JSON.stringify(body) }, options);
  };
}

/** The code tables of a gateway that answers {status, message, data}: its codes.ts module itself. */
export interface EnvelopeCodes {
  readonly HTTP_STATUS: Readonly<Record<number, Rule>>;
  readonly ERRORS: PatternTable;
  readonly OTHER_4XX: Rule;
  readonly OTHER_5XX: Rule;
  readonly UNREADABLE: Rule;
  readonly STATUSES: Readonly<Record<string, Rule>>;
  readonly DECLINES: PatternTable;
}

/** Where a gateway that answers {status, message, data} (Paystack, Flutterwave) puts what a result needs. */
export interface EnvelopeDialect {
  readonly codes: EnvelopeCodes;
  /** True for an error answer, whatever its HTTP status says ({status: false}, {status: "error"}). */
  isError(body: Record<string, unknown>): boolean;
  /** The error answer's own code, matched before its message; absent where the gateway sends none (Flutterwave). */
  errorCode?(body: Record<string, unknown>): string | undefined;
  /** An object's status as STATUSES spells it; the status itself when absent. */
  statusKey?(status: string): string;
  /** An object's failure reason (refined by DECLINES when it failed) and the gateway's id of it. */
  describe(data: Record<string, unknown>): { readonly reason: string | undefined; readonly gatewayId: string | undefined };
}

export interface EnvelopeReader {
  /** HTTP status first, then an error answer (its code, then its message), then data's own status. */
  classify(answer: HttpAnswer, query: boolean): GatewayResult;
  /** A transaction, transfer or refund object, by its status. */
  fromObject(data: Record<string, unknown>, detail: AnswerDetail, fallbackMessage?: string): GatewayResult;
}

/** Reads the answers of a gateway that wraps them in {status, message, data}, through its code tables. */
export function envelopeReader(dialect: EnvelopeDialect): EnvelopeReader {
  const { codes } = dialect;

  function fromObject(data: Record<string, unknown>, detail: AnswerDetail, fallbackMessage = ""): GatewayResult {
    const status = textOf(data.status);
    const key = status === undefined ? undefined : (dialect.statusKey?.(status) ?? status);
    const { reason = fallbackMessage, gatewayId } = dialect.describe(data);
    let rule = (key !== undefined ? codes.STATUSES[key] : undefined) ?? codes.UNREADABLE;
    if (key === "failed") rule = firstMatch(codes.DECLINES, reason) ?? rule;
    return gatewayResult(rule, { ...detail, gatewayCode: status ?? "unreadable", message: reason, gatewayId });
  }

  function classify(answer: HttpAnswer, query: boolean): GatewayResult {
    if (answer.kind === "failure") return answer.result;
    const body = objectOf(answer.json);
    const message = textOf(body.message) ?? answer.text.slice(0, 200);
    const detail: AnswerDetail = { httpStatus: answer.status, retryAfterMs: answer.retryAfterMs, query };
    const fixed = codes.HTTP_STATUS[answer.status];
    if (fixed) return gatewayResult(fixed, { ...detail, gatewayCode: `http_${answer.status}`, message });
    if (answer.status >= 400 || dialect.isError(body)) {
      const code = dialect.errorCode?.(body);
      const rule = firstMatch(codes.ERRORS, code, message) ?? (answer.status >= 500 ? codes.OTHER_5XX : codes.OTHER_4XX);
      return gatewayResult(rule, { ...detail, gatewayCode: code ?? `http_${answer.status}`, message });
    }
    return fromObject(objectOf(body.data), detail, message);
  }

  return { classify, fromObject };
}

/** Most pages one window listing reads; past it the listing fails rather than come back partial. */
export const LIST_PAGES_MAX = 50_000;

/**
 * Reads a list to its end, page by page, for reconciliation. Unlike findInPages a partial answer
 * is worthless here (every missing item would look like a mismatch), so running out of pages is
 * a failure, not an empty result. `fetchPage` says `more: false` once a page reaches items older
 * than the window, so newest-first lists stop there.
 */
export async function collectPages<T>(fetchPage: (index: number, cursor: string | undefined) => Promise<Page<T>>): Promise<{ readonly items: T[] } | { readonly failed: GatewayResult }> {
  const items: T[] = [];
  let cursor: string | undefined;
  for (let index = 1; index <= LIST_PAGES_MAX; index++) {
    const page = await fetchPage(index, cursor);
    if ("failed" in page) return { failed: page.failed };
    items.push(...page.items);
    if (!page.more) return { items };
    cursor = page.cursor;
  }
  return { failed: gatewayResult({ code: "gateway_error", action: "retry" }, { gatewayCode: "list_too_long", message: `listing passed ${LIST_PAGES_MAX} pages`, query: true }) };
}

/** Only the window's items, each gateway id once (a newest-first list shifts while it is paged), oldest first. */
export function windowOnly<T extends { readonly gatewayId: string; readonly createdAt: Date }>(items: readonly T[], fromMs: number, toMs: number): T[] {
  const seen = new Map<string, T>();
  for (const item of items) {
    const at = item.createdAt.getTime();
    if (at >= fromMs && at < toMs && item.gatewayId !== "") seen.set(item.gatewayId, item);
  }
  return [...seen.values()].sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime());
}
