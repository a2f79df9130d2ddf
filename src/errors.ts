/** Classifying database errors: what is worth retrying, and what needs a human. */

interface CodedError {
  code?: unknown;
  message?: unknown;
}

const TRANSIENT_NODE_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH", "ENOTFOUND", "EAI_AGAIN"]);

/**
 * Errors after which the same write can succeed later: the connection or the
 * server went away, the server is starting or shutting down, too many
 * connections, or a serialization conflict.
 */
export function isTransientDatabaseError(err: unknown): boolean {
  if (!err || typeof err !== "object") return false;
  const { code, message } = err as CodedError;
  if (typeof code === "string") {
    if (TRANSIENT_NODE_CODES.has(code)) return true;
    // SQLSTATE classes 08 (connection), 57P (operator intervention), 53 (resources), 40 (rollback).
    if (/^(08|57P|53|40)/.test(code)) return true;
  }
  return typeof message === "string" && /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error/i.test(message);
}

/** Postgres' "relation / schema / column does not exist": the schema was not migrated (or not lately). */
export function isMissingSchemaError(err: unknown): boolean {
  if (!err || typeof err !== "object") return false;
  const { code } = err as CodedError;
  return code === "42P01" || code === "3F000" || code === "42703";
}

export function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
