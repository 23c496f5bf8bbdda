// Cowrie's webhook signatures, and the helper merchants copy to verify them. This file depends on
// node:crypto only: copy it into a receiver as it is.
//
// Every delivery carries
//   Cowrie-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>[,v1=<...>]
// (Stripe's scheme). The timestamp is signed with the body, so a captured request cannot be
// replayed later than the tolerance with a fresh timestamp; several v1 entries appear while a
// rotated secret's grace period runs (one per secret). A receiver must verify against the raw
// body bytes as received, before any JSON parsing.
import { createHmac, timingSafeEqual } from "node:crypto";

export const SIGNATURE_HEADER = "Cowrie-Signature";
/** Default tolerance between the signed timestamp and the receiver's clock, either way. */
export const DEFAULT_TOLERANCE_SECONDS = 300;

type Body = string | Uint8Array;

function hmacHex(secret: string, timestampSeconds: number, body: Body): string {
  return createHmac("sha256", secret).update(`${timestampSeconds}.`, "utf8").update(body).digest("hex");
}

/** The Cowrie-Signature header value for a body: one v1 entry per secret, in the order given. */
export function signWebhook(secret: string | readonly string[], body: Body, timestampSeconds: number): string {
  const secrets = typeof secret === "string" ? [secret] : secret;
  return [`t=${timestampSeconds}`, ...secrets.map((one) => `v1=${hmacHex(one, timestampSeconds, body)}`)].join(",");
}

export type VerifyFailure = "malformed_header" | "stale_timestamp" | "no_matching_signature";

export type VerifyResult = { ok: true; timestampSeconds: number } | { ok: false; reason: VerifyFailure };

export interface VerifyOptions {
  /** Your endpoint's signing secret, or several (while you switch to a rotated one). */
  secret?: string;
  secrets?: readonly string[];
  /** The Cowrie-Signature header as received. */
  signatureHeader: string | null | undefined;
  /** The raw request body, exactly as received. */
  body: Body;
  /** How far the signed time may be from now, either way. Default 300 seconds. */
  toleranceSeconds?: number;
  /** Now, in unix seconds; defaults to the clock. */
  nowSeconds?: number;
}

const HEX_SHA256 = /^[0-9a-f]{64}$/;

/** t and every v1 of a header, or undefined when it is not shaped like one. */
function parseHeader(header: string): { timestampSeconds: number; signatures: Buffer[] } | undefined {
  let timestampSeconds: number | undefined;
  const signatures: Buffer[] = [];
  for (const part of header.split(",")) {
    const equals = part.indexOf("=");
    if (equals < 1) return undefined;
    const key = part.slice(0, equals).trim();
    const value = part.slice(equals + 1).trim();
    if (key === "t") {
      if (!/^\d{1,12}$/.test(value) || timestampSeconds !== undefined) return undefined;
      timestampSeconds = Number(value);
    } else if (key === "v1") {
      // A malformed v1 entry is skipped, not fatal: future schemes may add their own entries.
      if (HEX_SHA256.test(value)) signatures.push(Buffer.from(value, "hex"));
    }
  }
  if (timestampSeconds === undefined || signatures.length === 0) return undefined;
  return { timestampSeconds, signatures };
}

/**
 * Checks a delivery: the header parses, its timestamp is within the tolerance of now, and one of
 * its v1 signatures is the HMAC of "<t>.<body>" under one of the secrets. Comparisons are
 * constant-time. On success, deduplicate by the Cowrie-Event-Id header: delivery is at least once.
 */
export function verifyWebhook(options: VerifyOptions): VerifyResult {
  const secrets = [...(options.secret === undefined ? [] : [options.secret]), ...(options.secrets ?? [])];
  if (secrets.length === 0) throw new TypeError("verifyWebhook needs a secret or secrets");
  const parsed = options.signatureHeader ? parseHeader(options.signatureHeader) : undefined;
  if (!parsed) return { ok: false, reason: "malformed_header" };
  const now = options.nowSeconds ?? Math.floor(Date.now() / 1000);
  const tolerance = options.toleranceSeconds ?? DEFAULT_TOLERANCE_SECONDS;
  if (Math.abs(now - parsed.timestampSeconds) > tolerance) return { ok: false, reason: "stale_timestamp" };
  let matched = false;
  // Every pair is compared, so the time taken does not say which one matched.
  for (const secret of secrets) {
    const expected = Buffer.from(hmacHex(secret, parsed.timestampSeconds, options.body), "hex");
    for (const signature of parsed.signatures) {
      if (timingSafeEqual(expected, signature)) matched = true;
    }
  }
  return matched ? { ok: true, timestampSeconds: parsed.timestampSeconds } : { ok: false, reason: "no_matching_signature" };
}
