/**
 * At a node's start, checks that the tables its options name exist, and says
 * so loudly (errorHandler, naming the option) when they do not: a forgotten
 * `migrate`, a wrong `schema`, or a `tableName` that upstream's nodes resolve
 * to a table that is not there. The node goes on either way (recovery
 * retries its start; the attachments table is looked up again on each use).
 */
import type { AttachmentsTable } from "./attachments-table.js";
import { asError } from "./errors.js";
import type { Queryable } from "./sql/bounded-queries.js";
import { qualifiedName } from "./sql/identifiers.js";

/** The tables of `schema` every node uses (log, sessions, pruning). */
const SCHEMA_TABLES = ["namespaces", "log_entries", "log_writers", "log_gaps", "sessions", "maintenance", "expired_sessions"];

/**
 * Columns this version writes that a later migration added, with that
 * migration: a schema an older version migrated has the tables but not
 * these, and every append would fail on them (a new node must not start
 * before `migrate`; an old node keeps working on the new schema).
 */
const SCHEMA_COLUMNS: ReadonlyArray<readonly [table: string, column: string, migration: string]> = [["log_entries", "room_keys", "0010_room_keys"]];

export function checkTablesAtStart(pool: Queryable, schema: string, attachments: AttachmentsTable, report: (err: Error) => void): void {
  // Reported by the attachments table itself (it names the option).
  attachments.name().catch(() => undefined);
  missingTables(pool, schema)
    .then(async (missing) => {
      if (missing.length === 0) {
        const columns = await missingColumns(pool, schema);
        if (columns.length === 0) return;
        report(
          new Error(
            `socket.io-postgres-recovery: option "schema" ("${schema}"): ${columns.join(", ")} missing: ` +
              "the schema was migrated by an older version of this package (run `socket.io-postgres-recovery migrate` or call migrate(pool)); " +
              "appends to the log fail until it is",
          ),
        );
        return;
      }
      report(
        new Error(
          `socket.io-postgres-recovery: option "schema" ("${schema}"): ${missing.join(", ")} missing: ` +
            "the schema is not migrated (run `socket.io-postgres-recovery migrate` or call migrate(pool)); " +
            "connection state recovery cannot start and pruning fails until it is",
        ),
      );
    })
    .catch((err: unknown) => report(new Error("socket.io-postgres-recovery: could not check the tables at start", { cause: asError(err) })));
}

async function missingColumns(pool: Queryable, schema: string): Promise<string[]> {
  const { rows } = await pool.query<{ tbl: string; col: string; migration: string }>(
    `SELECT c.tbl, c.col, c.migration FROM unnest($1::text[], $2::text[], $3::text[]) AS c(tbl, col, migration)
     WHERE NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(c.tbl) AND attname = c.col AND NOT attisdropped)`,
    [SCHEMA_COLUMNS.map(([t]) => qualifiedName(schema, t)), SCHEMA_COLUMNS.map(([, c]) => c), SCHEMA_COLUMNS.map(([, , m]) => m)],
  );
  return rows.map((row) => `${row.tbl}.${row.col} (migration ${row.migration})`);
}

async function missingTables(pool: Queryable, schema: string): Promise<string[]> {
  const names = SCHEMA_TABLES.map((table) => qualifiedName(schema, table));
  const { rows } = await pool.query<{ name: string; found: boolean }>(
    "SELECT name, to_regclass(name) IS NOT NULL AS found FROM unnest($1::text[]) AS name",
    [names],
  );
  return rows.filter((row) => !row.found).map((row) => row.name);
}
