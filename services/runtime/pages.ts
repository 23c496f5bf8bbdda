// Cursor pagination for list RPCs: opaque page tokens that carry the position after the last item
// returned, and pages read with a limit of page_size + 1.
import { invalidArgument } from "./errors.js";

/** Opaque page tokens: a prefix and the position after the last item returned. */
function pageToken(prefix: string, position: string): string {
  return Buffer.from(`${prefix}:${position}`, "utf8").toString("base64url");
}

/** One page of rows read with a limit of pageSize + 1: the extra row only says that a next page exists. */
export function pageOf<T>(rows: T[], pageSize: number, prefix: string, positionOf: (last: T) => string): { page: T[]; nextPageToken: string } {
  const page = rows.slice(0, pageSize);
  const last = page[page.length - 1];
  return { page, nextPageToken: rows.length > pageSize && last ? pageToken(prefix, positionOf(last)) : "" };
}

export function pagePosition(token: string, prefix: string, pattern: RegExp): string | undefined {
  if (token === "") return undefined;
  const decoded = Buffer.from(token, "base64url").toString("utf8");
  const position = decoded.startsWith(`${prefix}:`) ? decoded.slice(prefix.length + 1) : "";
  if (!pattern.test(position)) throw invalidArgument("page_token", "is not a token this service issued");
  return position;
}
