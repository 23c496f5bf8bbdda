// Field validation shared by every service. Each check throws INVALID_ARGUMENT naming the field,
// before anything is written.
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import { invalidArgument } from "./errors.js";

const ID_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;
const CURRENCY_PATTERN = /^[A-Z]{3}$/;

// Currencies in use: CLDR's list of current ISO 4217 codes as shipped with Node's ICU (no
// historic codes, no funds, metals or test codes such as XAU and XTS).
const CURRENCIES = new Set(Intl.supportedValuesOf("currency"));

// ISO 4217 minor-unit exponents other than 2. ICU's display digits differ from ISO for some
// currencies (HUF, IDR), so the exponent comes from this table, not from Intl.
const EXPONENTS: Record<string, number> = {
  BIF: 0, CLP: 0, DJF: 0, GNF: 0, ISK: 0, JPY: 0, KMF: 0, KRW: 0, PYG: 0, RWF: 0, UGX: 0,
  UYI: 0, VND: 0, VUV: 0, XAF: 0, XOF: 0, XPF: 0,
  BHD: 3, IQD: 3, JOD: 3, KWD: 3, LYD: 3, OMR: 3, TND: 3,
  CLF: 4, UYW: 4,
};

/** The ISO 4217 minor-unit exponent of a known currency: 2 for USD (cents), 0 for JPY, 3 for KWD. */
export function minorUnitExponent(currency: string): number {
  return EXPONENTS[currency] ?? 2;
}
const IDEMPOTENCY_KEY_PATTERN = /^[\x21-\x7e]{1,255}$/;
export const INT64_MAX = 2n ** 63n - 1n;
/** The longest a Ledger reservation (a hold) may last before it expires: a year. */
export const PENDING_TIMEOUT_SECONDS_MAX = 31_536_000;

export function requireId(value: string, field: string): string {
  if (!ID_PATTERN.test(value)) {
    throw invalidArgument(field, "must be 1 to 64 characters of [A-Za-z0-9_.:-]");
  }
  return value;
}

export function requireCurrency(value: string, field: string): string {
  if (!CURRENCY_PATTERN.test(value)) {
    throw invalidArgument(field, "must be an ISO 4217 code of three upper-case letters");
  }
  if (!CURRENCIES.has(value)) throw invalidArgument(field, `${value} is not an ISO 4217 currency in use`);
  return value;
}

export function requireAmountMinor(value: bigint, field: string): bigint {
  if (value <= 0n) throw invalidArgument(field, "must be > 0 (minor units)");
  if (value > INT64_MAX) throw invalidArgument(field, "must be at most 2^63-1");
  return value;
}

export function requireText(value: string, field: string, maxLength: number): string {
  if (value.length === 0) throw invalidArgument(field, "is required");
  return limitText(value, field, maxLength);
}

export function limitText(value: string, field: string, maxLength: number): string {
  if (value.length > maxLength) throw invalidArgument(field, `must be at most ${maxLength} characters`);
  // PostgreSQL text cannot hold NUL: refuse it here, naming the field, not later as INTERNAL.
  if (value.includes("\u0000")) throw invalidArgument(field, "must not contain NUL characters");
  return value;
}

/** `page_size`: at most `max`; 0 means `defaultSize` (0 keeps it 0, for a caller that passes it on). */
export function requirePageSize(value: number, max: number, defaultSize = 0): number {
  if (value > max) throw invalidArgument("page_size", `must be at most ${max}`);
  return value === 0 ? defaultSize : value;
}

/** An id that may be empty (a filter that is not set). */
export function optionalId(value: string, field: string): string {
  return value === "" ? value : requireId(value, field);
}

export function requireIdempotencyKey(value: string | null | undefined, field: string): string {
  if (value === null || value === undefined || value === "") throw invalidArgument(field, "is required");
  if (!IDEMPOTENCY_KEY_PATTERN.test(value)) {
    throw invalidArgument(field, "must be 1 to 255 printable ASCII characters");
  }
  return value;
}

/** `known` is a generated enum or a map of allowed names to values; 0 (UNSPECIFIED) never passes. */
/** A time that may be unset; a set one must be a real instant. */
export function optionalTime(value: Timestamp | undefined, field: string): Date | undefined {
  if (!value) return undefined;
  const date = timestampDate(value);
  if (Number.isNaN(date.getTime())) throw invalidArgument(field, "is not a valid time");
  return date;
}

export function requireTime(value: Timestamp | undefined, field: string): Date {
  const date = optionalTime(value, field);
  if (!date) throw invalidArgument(field, "is required");
  return date;
}

/** An enum filter: 0 (unset) or a known value. */
export function optionalEnum(value: number, field: string, known: object): number {
  if (value !== 0 && !Object.values(known).includes(value)) throw invalidArgument(field, "must be a known value or unset");
  return value;
}

export function requireEnum(value: number, field: string, known: object): number {
  if (value === 0 || !Object.values(known).includes(value)) throw invalidArgument(field, "must be set to a known value");
  return value;
}

export function requireBatch<T>(items: T[], field: string, maxSize: number): T[] {
  if (items.length === 0) throw invalidArgument(field, "must not be empty");
  if (items.length > maxSize) throw invalidArgument(field, `must hold at most ${maxSize} items`);
  return items;
}

export function limitMetadata(metadata: Record<string, string>, field: string): Record<string, string> {
  const entries = Object.entries(metadata);
  if (entries.length > 16) throw invalidArgument(field, "must hold at most 16 entries");
  for (const [key, value] of entries) {
    if (key.length === 0 || key.length > 64) throw invalidArgument(`${field}.${key}`, "key must be 1 to 64 characters");
    limitText(value, `${field}.${key}`, 256);
  }
  return metadata;
}
