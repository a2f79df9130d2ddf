/**
 * The check every reader of a deployment's tables makes first (`status`,
 * `prune`, `inspect`): the schema exists and has exactly the migrations this
 * package ships, so a wrong `--schema` or a forgotten `migrate` gets one
 * sentence saying so instead of a "relation does not exist".
 */
import type pg from "pg";
import { migrationStatus, type MigrationStatus } from "./migrate.js";

const PREFIX = "socket.io-postgres-recovery:";

export type SchemaNotReadyReason = "missing-schema" | "pending-migrations" | "newer-schema";

/** The schema is absent, behind or ahead of this package: its tables cannot be read safely. */
export class SchemaNotReadyError extends Error {
  override name = "SchemaNotReadyError";
  constructor(
    message: string,
    readonly reason: SchemaNotReadyReason,
    readonly migrations: MigrationStatus,
  ) {
    super(message);
  }
}

async function schemaExists(pool: pg.Pool, schema: string): Promise<boolean> {
  const { rows } = await pool.query<{ exists: boolean }>(
    "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) AS exists",
    [schema],
  );
  return rows[0]?.exists === true;
}

/**
 * Resolves with the migration state when `schema` (default `socket_io`) is
 * up to date; throws `SchemaNotReadyError` otherwise.
 */
export async function requireMigratedSchema(pool: pg.Pool, schemaOption?: string): Promise<MigrationStatus> {
  const migrations = await migrationStatus(pool, { schema: schemaOption });
  const { schema } = migrations;
  if (!(await schemaExists(pool, schema))) {
    throw new SchemaNotReadyError(
      `${PREFIX} schema "${schema}" does not exist (wrong --schema, or never migrated: run \`socket.io-postgres-recovery migrate\`)`,
      "missing-schema",
      migrations,
    );
  }
  if (migrations.unknown.length > 0) {
    throw new SchemaNotReadyError(
      `${PREFIX} schema "${schema}" has ${migrations.unknown.length} migration(s) this version does not know; it was migrated by a newer socket.io-postgres-recovery — upgrade this package`,
      "newer-schema",
      migrations,
    );
  }
  if (migrations.pending.length > 0) {
    throw new SchemaNotReadyError(
      `${PREFIX} schema "${schema}" lacks ${migrations.pending.length} migration(s) (${migrations.pending.map((m) => m.tag).join(", ")}): run \`socket.io-postgres-recovery migrate\``,
      "pending-migrations",
      migrations,
    );
  }
  return migrations;
}
