// Field validation shared by every service. Each check throws INVALID_ARGUMENT naming the field,
// before anything is written.
import { invalidArgument } from "./errors.js";

const ID_PATTERN = /^[A-Za-z0-9_.:-]{1,64}$/;
const CURRENCY_PATTERN = /^[A-Z]{3}$/;
const IDEMPOTENCY_KEY_PATTERN = /^[\x21-\x7e]{1,255}$/;
export const INT64_MAX = 2n ** 63n - 1n;

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
  return value;
}

export function requireIdempotencyKey(value: string | null | undefined, field: string): string {
  if (value === null || value === undefined || value === "") throw invalidArgument(field, "is required");
  if (!IDEMPOTENCY_KEY_PATTERN.test(value)) {
    throw invalidArgument(field, "must be 1 to 255 printable ASCII characters");
  }
  return value;
}

/** `known` is a generated enum or a map of allowed names to values; 0 (UNSPECIFIED) never passes. */
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
