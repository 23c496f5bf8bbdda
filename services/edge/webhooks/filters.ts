// What a webhook endpoint may be: its URL and its event type filter, checked with the same
// "field: problem" INVALID_ARGUMENT messages as every public field, and how a filter matches.
import { invalidArgument } from "../../runtime/errors.js";

export const EVENT_TYPES_MAX = 32;
const EVENT_TYPE_LENGTH_MAX = 128;
const URL_LENGTH_MAX = 2048;

// Event types are dotted lower-case words: "payment.succeeded", "ledger.batch.committed".
const EVENT_TYPE = /^[a-z0-9_]+(\.[a-z0-9_]+)*$/;

/** Refuses anything that is not an exact type, "prefix.*" or "*"; drops repeats, keeps order. */
export function requireEventTypes(values: readonly string[], field: string): string[] {
  if (values.length === 0) throw invalidArgument(field, `must hold 1 to ${EVENT_TYPES_MAX} event types ("*" for every event)`);
  if (values.length > EVENT_TYPES_MAX) throw invalidArgument(field, `must hold at most ${EVENT_TYPES_MAX} event types`);
  values.forEach((value, index) => {
    const exact = value.endsWith(".*") ? value.slice(0, -2) : value;
    if (value.length > EVENT_TYPE_LENGTH_MAX || (value !== "*" && !EVENT_TYPE.test(exact))) {
      throw invalidArgument(`${field}[${index}]`, 'must be an event type such as "payment.succeeded", a prefix such as "payment.*", or "*"');
    }
  });
  return [...new Set(values)];
}

/** "*" matches everything, "payment.*" every type under "payment.", anything else itself only. */
export function matchesEventType(filters: readonly string[], type: string): boolean {
  return filters.some((filter) =>
    filter === "*" || filter === type || (filter.endsWith(".*") && type.startsWith(filter.slice(0, -1))));
}

/**
 * An absolute http(s) URL with a host and without credentials (fetch refuses them, and they
 * would sit in the delivery log) or a fragment (never sent anyway). Returns it normalized.
 */
export function requireWebhookUrl(value: string, field: string): string {
  if (value.length === 0) throw invalidArgument(field, "is required");
  if (value.length > URL_LENGTH_MAX) throw invalidArgument(field, `must be at most ${URL_LENGTH_MAX} characters`);
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw invalidArgument(field, "must be an absolute http:// or https:// URL");
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") throw invalidArgument(field, "must use https:// (or http:// for a sandbox tenant)");
  if (url.hostname === "") throw invalidArgument(field, "must name a host");
  if (url.username !== "" || url.password !== "") throw invalidArgument(field, "must not contain credentials");
  if (url.hash !== "" || value.includes("#")) throw invalidArgument(field, "must not contain a fragment");
  return url.toString();
}

/** Live tenants move real money: their events must not cross the network in clear text. */
export function requireSchemeForTenant(url: string, live: boolean, field: string): void {
  if (live && new URL(url).protocol !== "https:") throw invalidArgument(field, "must use https:// for a live tenant");
}
