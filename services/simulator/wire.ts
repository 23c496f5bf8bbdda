// What a gateway's wire file implements (a parsed request in, a JSON reply out), and the small
// parsing helpers the three share.
import type { SimulatedGateway, SimulatedOperation, SimulatedRecord } from "./core.js";

export interface WireRequest {
  readonly method: string;
  /** The path after the gateway's prefix, for example /transaction/verify/ref_1. */
  readonly path: string;
  readonly query: URLSearchParams;
  /** Lower-case names. */
  readonly headers: Readonly<Record<string, string | undefined>>;
  readonly rawBody: string;
}

export interface WireReply {
  readonly status: number;
  /** Serialised as JSON. */
  readonly body: unknown;
  readonly headers?: Readonly<Record<string, string>>;
  /** The request was processed but its answer is withheld: the ambiguous case. */
  readonly withhold?: boolean;
}

export interface SignedWebhook {
  readonly body: string;
  readonly headers: Readonly<Record<string, string>>;
}

export interface GatewayContract {
  readonly name: SimulatedGateway;
  authorized(headers: WireRequest["headers"]): boolean;
  handle(request: WireRequest): WireReply;
  /** The gateway's own error shape, for statuses the simulator imposes (401, 404, 429, 500). */
  error(status: number, message: string): WireReply;
  /** The signed event for a record that just became final; undefined when the gateway sends none. */
  webhook(record: SimulatedRecord, nowMs: number): SignedWebhook | undefined;
  /** How this gateway spells the id of a record of `operation` with `serial` (for imported records). */
  gatewayIdFor(operation: SimulatedOperation): (serial: number) => string;
  /** Forgets contract-local state (Stripe's idempotency keys) with the records. */
  reset?(): void;
}

/** A time filter value: an ISO date or date-time; undefined when absent, NaN when malformed. */
export function parseTime(value: string | null, endOfDay = false): number | undefined {
  if (value === null || value === "") return undefined;
  if (/^\d{4}-\d{2}-\d{2}$/.test(value) && endOfDay) return Date.parse(`${value}T23:59:59.999Z`);
  return /^\d+$/.test(value) ? Number(value) * 1000 : Date.parse(value);
}

/**
 * The from/to filter of a list (Paystack, Flutterwave): a to date alone means the end of that day.
 * Undefined when either is malformed.
 */
export function dateRange(query: URLSearchParams): { fromMs?: number; toMs?: number } | undefined {
  const fromMs = parseTime(query.get("from"));
  const toMs = parseTime(query.get("to"), true);
  return Number.isNaN(fromMs) || Number.isNaN(toMs) ? undefined : { fromMs, toMs };
}

/** A page (1-based) of a newest-first list, from items kept oldest first (read without copying them all). */
export function pageOf<T>(items: readonly T[], page: number, perPage: number): { items: T[]; pageCount: number } {
  const end = Math.max(0, items.length - (page - 1) * perPage);
  return {
    items: items.slice(Math.max(0, end - perPage), end).reverse(),
    pageCount: Math.max(1, Math.ceil(items.length / perPage)),
  };
}

/** A positive integer query parameter, clamped to max; the fallback when absent or malformed. */
export function positiveInteger(value: string | null, fallback: number, max: number): number {
  const parsed = value !== null && /^\d+$/.test(value) ? Number(value) : fallback;
  return Math.min(Math.max(parsed, 1), max);
}

/** A positive whole amount of minor units written as at most 16 digits; undefined otherwise. */
export function digitsAmount(text: string): bigint | undefined {
  if (!/^\d{1,16}$/.test(text)) return undefined;
  const amount = BigInt(text);
  return amount > 0n ? amount : undefined;
}

/** A JSON object body, or undefined when the body is not one. */
export function parseObject(raw: string): Record<string, unknown> | undefined {
  try {
    const value: unknown = JSON.parse(raw);
    return typeof value === "object" && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}
