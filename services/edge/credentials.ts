// Identifiers and API key material. An API key is "ck_" + the key id's random part + "_" + a
// secret of 256 random bits (base64url, 43 characters). The key id is public (safe to log and to
// look the key up by); only SHA-256 of the secret is stored. A fast hash is right here: the secret
// is high-entropy, so there is nothing to brute-force that a slow password hash would protect.
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { randomBase32, timeSortableId } from "../runtime/ids.js";

// Lower-case Crockford base32: no "_" or "-", so the parts of a key split unambiguously.
function randomChars(count: number): string {
  return randomBase32(count).toLowerCase();
}

/** "ten_" + 26 characters, sortable by creation time. */
export function newTenantId(nowMs = Date.now()): string {
  return `ten_${timeSortableId(nowMs).toLowerCase()}`;
}

const KEY_ID_RANDOM_LENGTH = 16;
const SECRET_BYTES = 32;
const API_KEY_PATTERN = /^ck_([0-9a-z]{16})_([A-Za-z0-9_-]{43})$/;

export interface NewApiKey {
  /** "key_" + 16 characters. */
  id: string;
  /** The whole key the client sends: shown once, never stored. */
  fullKey: string;
  secretHash: Buffer;
}

export function newApiKey(): NewApiKey {
  const random = randomChars(KEY_ID_RANDOM_LENGTH);
  const secret = randomBytes(SECRET_BYTES).toString("base64url");
  return { id: `key_${random}`, fullKey: `ck_${random}_${secret}`, secretHash: hashSecret(secret) };
}

/** The key id and secret of a presented key, or undefined when it is not shaped like one. */
export function parseApiKey(presented: string): { id: string; secret: string } | undefined {
  const match = API_KEY_PATTERN.exec(presented);
  if (!match) return undefined;
  return { id: `key_${match[1]}`, secret: match[2] as string };
}

export function hashSecret(secret: string): Buffer {
  return createHash("sha256").update(secret, "utf8").digest();
}

/** Constant-time comparison of a presented secret with a stored hash. */
export function secretMatches(secret: string, storedHash: Uint8Array): boolean {
  const presented = hashSecret(secret);
  return storedHash.length === presented.length && timingSafeEqual(presented, storedHash);
}

/** Constant-time comparison of two tokens of any length (hashing first equalizes lengths). */
export function tokensEqual(presented: string, expected: string): boolean {
  return timingSafeEqual(hashSecret(presented), hashSecret(expected));
}

/** A new operator token: 256 random bits. */
export function newOperatorToken(): string {
  return randomBytes(SECRET_BYTES).toString("base64url");
}

/** The token of an `Authorization: Bearer <token>` header, or undefined when absent or not Bearer. */
export function bearerToken(header: string | null): string | undefined {
  if (!header) return undefined;
  const match = /^Bearer[ ]+(\S+)\s*$/i.exec(header);
  return match?.[1];
}
