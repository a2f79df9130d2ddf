/**
 * Identifiers that reach SQL text. Everything else is a bound parameter.
 *
 * Names from options are validated (so a mistake gets a message that says
 * what to fix) and then always quoted (so even a valid name cannot change the
 * statement's meaning).
 */

/** Unquoted-identifier rules, and at most 63 bytes (Postgres' NAMEDATALEN - 1). */
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

export function isValidIdentifier(name: unknown): name is string {
  return typeof name === "string" && IDENTIFIER.test(name);
}

/** Double-quotes an identifier, doubling embedded quotes (what `pg`'s escapeIdentifier does). */
export function quoteIdentifier(name: string): string {
  if (name.includes("\0")) {
    throw new Error("socket.io-postgres-recovery: an identifier cannot contain a NUL byte");
  }
  return `"${name.replace(/"/g, '""')}"`;
}

/** `"schema"."table"`, both parts quoted. */
export function qualifiedName(schema: string, table: string): string {
  return `${quoteIdentifier(schema)}.${quoteIdentifier(table)}`;
}
