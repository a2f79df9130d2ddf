/**
 * Creates and upgrades the tables of one deployment (one Postgres schema).
 *
 * The SQL in `migrations/` is drizzle-kit's output for `schema.ts`: table
 * names are unqualified, so it runs with `search_path` set to the target
 * schema, on one dedicated connection, and drizzle's journal
 * (`__drizzle_migrations`) lives in that schema too — never in the `drizzle`
 * schema shared with the host application.
 *
 * Concurrency: every node may call `migrate()` at start-up. A session-level
 * advisory lock keyed on the schema name serializes them (waiting at most
 * `lockTimeoutMs`); the first applies what is missing, the others find
 * nothing to do.
 */
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type pg from "pg";
import { drizzle } from "drizzle-orm/node-postgres";
import { migrate as drizzleMigrate } from "drizzle-orm/node-postgres/migrator";
import { debug } from "./debug.js";
import { asError } from "./errors.js";
import { isValidIdentifier, qualifiedName, quoteIdentifier } from "./sql/identifiers.js";
import { guardCheckedOut } from "./sql/guard-client.js";

/** The journal table, inside the target schema. */
export const MIGRATIONS_TABLE = "__drizzle_migrations";

const DEFAULT_SCHEMA = "socket_io";
const DEFAULT_LOCK_TIMEOUT_MS = 60_000;
const PREFIX = "socket.io-postgres-recovery:";

/** `migrations/` of the package: one level above `src/` (tsx, vitest) and `dist/` (built). */
const MIGRATIONS_FOLDER = fileURLToPath(new URL("../migrations", import.meta.url));

export interface MigrateOptions {
  /**
   * Schema to create (if missing) and migrate; it also holds the journal.
   * @default "socket_io"
   */
  schema?: string;
  /**
   * Milliseconds to wait for the migration lock (another node migrating the
   * same schema) and for any table lock a migration needs. Past it, `migrate()`
   * fails instead of waiting forever behind a stuck session.
   * @default 60000
   */
  lockTimeoutMs?: number;
}

/** One migration shipped with this package. */
export interface KnownMigration {
  /** File name without `.sql`, e.g. `0000_init`. */
  readonly tag: string;
  /** drizzle-kit's `when` (ms since epoch); the journal's `created_at`. */
  readonly createdAt: number;
  /** sha256 of the SQL file, as drizzle stores it. */
  readonly hash: string;
}

/** A journal row that matches no migration of this package. */
export interface UnknownMigration {
  readonly createdAt: number;
  readonly hash: string;
}

export interface MigrationStatus {
  readonly schema: string;
  /** Known migrations recorded in the journal, oldest first. */
  readonly applied: readonly KnownMigration[];
  /** Known migrations not in the journal yet, oldest first. */
  readonly pending: readonly KnownMigration[];
  /** Journal rows this version does not know: the schema is newer than the code. */
  readonly unknown: readonly UnknownMigration[];
}

export interface MigrateResult {
  readonly schema: string;
  /** Tags applied by this call (empty when the schema was up to date). */
  readonly applied: readonly string[];
  /** Tags that were already applied before this call. */
  readonly alreadyApplied: readonly string[];
}

interface JournalFile {
  entries: { tag: string; when: number }[];
}

interface JournalRow {
  hash: string;
  created_at: string;
}

/** The migrations shipped with the package, oldest first (read on each call: a few small files). */
export function knownMigrations(): KnownMigration[] {
  let journal: JournalFile;
  try {
    journal = JSON.parse(readFileSync(`${MIGRATIONS_FOLDER}/meta/_journal.json`, "utf8")) as JournalFile;
  } catch (err) {
    throw new Error(
      `${PREFIX} cannot read the migrations journal in ${MIGRATIONS_FOLDER}/meta; is the package installed completely?`,
      { cause: err },
    );
  }
  return journal.entries.map(({ tag, when }) => ({
    tag,
    createdAt: when,
    // Same hash as drizzle's readMigrationFiles: sha256 of the whole file.
    hash: createHash("sha256").update(readFileSync(`${MIGRATIONS_FOLDER}/${tag}.sql`, "utf8")).digest("hex"),
  }));
}

function checkSchema(schema: unknown): string {
  if (!isValidIdentifier(schema)) {
    throw new Error(
      `${PREFIX} invalid schema name ${JSON.stringify(schema)}: use a letter or _ followed by letters, digits or _, at most 63 characters`,
    );
  }
  return schema;
}

function compare(schema: string, known: readonly KnownMigration[], rows: readonly JournalRow[]): MigrationStatus {
  const byCreatedAt = new Map(rows.map((r) => [Number(r.created_at), r.hash]));
  const applied: KnownMigration[] = [];
  const pending: KnownMigration[] = [];
  for (const m of known) {
    const hash = byCreatedAt.get(m.createdAt);
    if (hash === undefined) {
      pending.push(m);
    } else if (hash !== m.hash) {
      throw new Error(
        `${PREFIX} migration ${m.tag} in schema "${schema}" was applied from a different file (hash ${hash.slice(0, 12)}…, expected ${m.hash.slice(0, 12)}…); the schema was migrated by another build of this package — use that version or a fresh schema`,
      );
    } else {
      applied.push(m);
    }
  }
  const knownTimes = new Set(known.map((m) => m.createdAt));
  const unknown = rows
    .filter((r) => !knownTimes.has(Number(r.created_at)))
    .map((r) => ({ createdAt: Number(r.created_at), hash: r.hash }));
  return { schema, applied, pending, unknown };
}

async function readJournal(db: pg.Pool | pg.PoolClient, schema: string): Promise<JournalRow[]> {
  const table = qualifiedName(schema, MIGRATIONS_TABLE);
  const exists = await db.query<{ t: string | null }>("SELECT to_regclass($1)::text AS t", [table]);
  if (exists.rows[0]?.t == null) return [];
  const result = await db.query<JournalRow>(`SELECT hash, created_at::text AS created_at FROM ${table} ORDER BY created_at`);
  return result.rows;
}

function refuseNewer(status: MigrationStatus): void {
  if (status.unknown.length === 0) return;
  const newest = new Date(Math.max(...status.unknown.map((u) => u.createdAt))).toISOString();
  throw new Error(
    `${PREFIX} schema "${status.schema}" has ${status.unknown.length} migration(s) this version does not know (newest from ${newest}); it was migrated by a newer socket.io-postgres-recovery — upgrade this package, or use another schema`,
  );
}

function refuseOutOfOrder(status: MigrationStatus): void {
  // drizzle applies only migrations newer than the last journal row; an older pending one would be skipped silently.
  const last = Math.max(-Infinity, ...status.applied.map((m) => m.createdAt));
  const skipped = status.pending.filter((m) => m.createdAt < last);
  if (skipped.length > 0) {
    throw new Error(
      `${PREFIX} migration(s) ${skipped.map((m) => m.tag).join(", ")} are older than the last applied one in schema "${status.schema}" and would be skipped; the migrations folder is inconsistent`,
    );
  }
}

/** Which migrations of this package are applied to `schema`, without changing anything. */
export async function migrationStatus(pool: pg.Pool, options: { schema?: string } = {}): Promise<MigrationStatus> {
  const schema = checkSchema(options.schema ?? DEFAULT_SCHEMA);
  const known = knownMigrations();
  let rows: JournalRow[];
  try {
    rows = await readJournal(pool, schema);
  } catch (err) {
    throw new Error(`${PREFIX} cannot read the migrations journal of schema "${schema}": ${messageOf(err)}`, { cause: err });
  }
  return compare(schema, known, rows);
}

/**
 * Creates `schema` if needed and applies the migrations it is missing.
 * Safe to call from every node at once, and again and again. Uses one client
 * of `pool` for the duration and never ends the pool.
 */
export async function migrate(pool: pg.Pool, options: MigrateOptions = {}): Promise<MigrateResult> {
  const schema = checkSchema(options.schema ?? DEFAULT_SCHEMA);
  const lockTimeoutMs = options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS;
  if (!Number.isInteger(lockTimeoutMs) || lockTimeoutMs < 1) {
    throw new Error(`${PREFIX} migrate option "lockTimeoutMs" must be a positive integer (ms); got ${String(lockTimeoutMs)}`);
  }
  const known = knownMigrations();
  const lockKey = `socket.io-postgres-recovery:migrate:${schema}`;

  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (err) {
    throw new Error(`${PREFIX} migrate cannot connect to the database: ${messageOf(err)}`, { cause: err });
  }
  const unguard = guardCheckedOut(client);

  let failure: Error | undefined;
  let locked = false;
  try {
    await client.query("SELECT set_config('lock_timeout', $1, false)", [`${lockTimeoutMs}ms`]);
    try {
      await client.query("SELECT pg_advisory_lock(hashtext($1))", [lockKey]);
    } catch (err) {
      if (codeOf(err) === "55P03") {
        throw new Error(
          `${PREFIX} waited ${lockTimeoutMs} ms for another migration of schema "${schema}" to finish; retry, or find the session holding the advisory lock in pg_locks`,
          { cause: err },
        );
      }
      throw err;
    }
    locked = true;

    await client.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdentifier(schema)}`);
    const before = compare(schema, known, await readJournal(client, schema));
    refuseNewer(before);
    refuseOutOfOrder(before);

    if (before.pending.length > 0) {
      debug("migrate: applying %o to schema %s", before.pending.map((m) => m.tag), schema);
      await client.query(`SET search_path TO ${quoteIdentifier(schema)}`);
      try {
        await drizzleMigrate(drizzle(client), {
          migrationsFolder: MIGRATIONS_FOLDER,
          migrationsSchema: schema,
          migrationsTable: MIGRATIONS_TABLE,
        });
      } catch (err) {
        throw new Error(
          `${PREFIX} applying ${before.pending.map((m) => m.tag).join(", ")} to schema "${schema}" failed (rolled back): ${messageOf(err)}`,
          { cause: err },
        );
      }
    }
    return {
      schema,
      applied: before.pending.map((m) => m.tag),
      alreadyApplied: before.applied.map((m) => m.tag),
    };
  } catch (err) {
    failure = asError(err);
    if (failure.message.startsWith(PREFIX)) throw failure;
    throw new Error(`${PREFIX} migrating schema "${schema}" failed: ${failure.message}`, { cause: failure });
  } finally {
    if (failure === undefined) {
      try {
        await client.query("RESET search_path; RESET lock_timeout");
        if (locked) await client.query("SELECT pg_advisory_unlock(hashtext($1))", [lockKey]);
      } catch (err) {
        failure = asError(err);
      }
    }
    // A client that failed may hold the lock or odd settings: destroy it (the server drops the lock).
    const lost = unguard();
    client.release(failure ?? lost);
  }
}

function codeOf(err: unknown): unknown {
  return typeof err === "object" && err !== null && "code" in err ? err.code : undefined;
}

/** The message of `err` and of its causes, on one line. */
function messageOf(err: unknown): string {
  const parts: string[] = [];
  let current: unknown = err;
  for (let depth = 0; current !== undefined && current !== null && depth < 5; depth++) {
    const message = current instanceof Error ? current.message : String(current);
    const code = codeOf(current);
    const text = message || (typeof code === "string" ? code : current instanceof Error ? current.name : "");
    if (text && !parts.some((p) => p.includes(text))) parts.push(text);
    if (current instanceof AggregateError && current.errors.length > 0) {
      current = current.errors[0];
    } else {
      current = current instanceof Error ? current.cause : undefined;
    }
  }
  return parts.join(": ").replace(/\s*\n\s*/g, " ");
}
