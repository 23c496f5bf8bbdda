// Checks of public request fields the shared validate.ts does not cover, with the same
// "field: problem" INVALID_ARGUMENT messages, so every refusal names the public field.
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { invalidArgument } from "../runtime/errors.js";
import { INT64_MAX, limitText } from "../runtime/validate.js";

/** Minor units where 0 has a meaning (no limit, everything): 0 to 2^63-1. */
export function requireNonNegativeMinor(value: bigint, field: string): bigint {
  if (value < 0n) throw invalidArgument(field, "must be >= 0 (minor units)");
  if (value > INT64_MAX) throw invalidArgument(field, "must be at most 2^63-1");
  return value;
}


/** Page tokens are opaque and short; anything long is not one of ours. */
export function limitPageToken(value: string, field: string): string {
  return limitText(value, field, 512);
}

/** An enum filter: 0 (UNSPECIFIED) means no filter; anything else must be a known value. */
export function requireDifferent(value: string, other: string, field: string, otherField: string): void {
  if (value === other) throw invalidArgument(field, `must differ from ${otherField}`);
}

function timestampMs(value: Timestamp): number {
  return Number(value.seconds) * 1000 + Math.floor(value.nanos / 1_000_000);
}

/** A time range with optional ends; the end must not come before the start. */
export function requireTimeRange(from: Timestamp | undefined, to: Timestamp | undefined, fromField: string, toField: string): void {
  for (const [value, field] of [[from, fromField], [to, toField]] as const) {
    if (value && (value.nanos < 0 || value.nanos > 999_999_999)) throw invalidArgument(field, "nanos must be 0 to 999,999,999");
  }
  if (from && to && timestampMs(to) < timestampMs(from)) throw invalidArgument(toField, `must not be before ${fromField}`);
}
