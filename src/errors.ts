/** Classifying database errors: what is worth retrying, and what needs a human. */

interface CodedError {
  code?: unknown;
  message?: unknown;
}

const TRANSIENT_NODE_CODES = new Set(["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH", "ENOTFOUND", "EAI_AGAIN"]);

/**
 * SQLSTATEs outside the classes below after which the same statement can
 * succeed without anyone changing anything: a statement timeout or a cancel
 * (57014, e.g. behind a lock held by another session), a read-only
 * transaction (25006: the connection reached a standby, or the primary was
 * demoted, during a failover) and a lock not obtained within `lock_timeout`
 * (55P03).
 */
const TRANSIENT_SQLSTATES = new Set(["57014", "25006", "55P03"]);

/**
 * Errors after which the same write can succeed later: the connection or the
 * server went away, the server is starting or shutting down, too many
 * connections, a serialization conflict, a failover in progress, a lock or
 * statement timeout, or no answer within the query's `query_timeout` (pg's
 * "Query read timeout": the pool then discards that connection).
 *
 * The log writer retries every failure whatever this says (an accepted event
 * is never dropped); the class only sets how fast it retries.
 */
export function isTransientDatabaseError(err: unknown): boolean {
  if (!err || typeof err !== "object") return false;
  const { code, message } = err as CodedError;
  if (typeof code === "string") {
    if (TRANSIENT_NODE_CODES.has(code)) return true;
    // SQLSTATE classes 08 (connection), 57P (operator intervention), 53 (resources), 40 (rollback).
    if (/^(08|57P|53|40)/.test(code) || TRANSIENT_SQLSTATES.has(code)) return true;
  }
  return (
    typeof message === "string" &&
    /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|Query read timeout/i.test(message)
  );
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
