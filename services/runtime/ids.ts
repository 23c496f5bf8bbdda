// Identifiers that sort by creation time, as ULIDs do: 10 characters of milliseconds since the
// epoch in Crockford's base32 (no I, L, O, U), then random ones.
import { randomBytes } from "node:crypto";

const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/** `count` random Crockford base32 characters (5 bits each). */
export function randomBase32(count: number): string {
  return Array.from(randomBytes(count), (byte) => CROCKFORD[byte & 31]).join("");
}

/** 26 characters: the time to the millisecond, then 80 random bits. Later ids sort after. */
export function timeSortableId(nowMs = Date.now()): string {
  let time = "";
  for (let rest = nowMs, i = 0; i < 10; i++, rest = Math.floor(rest / 32)) time = CROCKFORD[rest % 32] + time;
  return time + randomBase32(16);
}
