// Every error a Cowrie RPC returns carries a deliberate code. Handlers throw ConnectError for
// decided outcomes; anything else that escapes a handler is classified here: a lost backend is
// UNAVAILABLE (the caller may retry with the same idempotency key), everything else is INTERNAL
// with its message kept out of the response (it is logged instead).
import { Code, ConnectError } from "@connectrpc/connect";

/** INVALID_ARGUMENT naming the field, in the form clients can parse: "field: problem". */
export function invalidArgument(field: string, problem: string): ConnectError {
  return new ConnectError(`${field}: ${problem}`, Code.InvalidArgument);
}

export function notFound(what: string): ConnectError {
  return new ConnectError(`${what} not found`, Code.NotFound);
}

export function failedPrecondition(reason: string): ConnectError {
  return new ConnectError(reason, Code.FailedPrecondition);
}

const CONNECTION_ERROR_CODES = new Set([
  "ECONNREFUSED", "ECONNRESET", "EPIPE", "ETIMEDOUT", "EHOSTUNREACH", "ENOTFOUND",
  "CONNECTION_CLOSED", "CONNECTION_ENDED", "CONNECTION_DESTROYED", "CONNECT_TIMEOUT",
  // PostgreSQL: admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections.
  "57P01", "57P02", "57P03", "53300",
]);

/** True when the error says a backend (database, cache, broker) could not be reached. */
export function isBackendUnavailable(error: unknown): boolean {
  for (let cause = error; cause instanceof Error; cause = (cause as { cause?: unknown }).cause) {
    const code = (cause as { code?: unknown }).code;
    if (typeof code === "string" && CONNECTION_ERROR_CODES.has(code)) return true;
    if (/Connection is closed|Stream isn't writeable|enableOfflineQueue/i.test(cause.message)) {
      return true;
    }
  }
  return false;
}

/** Maps anything a handler threw to a ConnectError with a deliberate code. */
export function toConnectError(error: unknown): ConnectError {
  if (error instanceof ConnectError) return error;
  if (isBackendUnavailable(error)) {
    return new ConnectError("a backend this service depends on is unavailable", Code.Unavailable);
  }
  return new ConnectError("internal error", Code.Internal);
}
