import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { knownMigrations, migrate, migrationStatus, MIGRATIONS_TABLE } from "../src/migrate.js";
import { createTestDatabase, type TestDatabase } from "./helpers/database.js";

const TABLES = ["expired_sessions", "log_entries", "log_gaps", "log_writers", "maintenance", "namespaces", "nodes", "sessions", "socket_io_attachments", "staged_events"];

const cleanups: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function database(label: string, migrated = false): Promise<TestDatabase> {
  const db = await createTestDatabase(label, { migrated });
  cleanups.push(() => db.drop());
  return db;
}

function pool(db: TestDatabase, max = 2): pg.Pool {
  const p = new pg.Pool({ connectionString: db.url, max });
  // The database may be dropped before the pool ends (cleanups): its idle clients are then terminated.
  p.on("error", () => undefined);
  cleanups.push(() => p.end());
  return p;
}

async function tablesOf(p: pg.Pool, schema: string): Promise<string[]> {
  const { rows } = await p.query<{ table_name: string }>(
    "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name",
    [schema],
  );
  return rows.map((r) => r.table_name);
}

async function journalOf(p: pg.Pool, schema: string): Promise<{ hash: string; created_at: string }[]> {
  const { rows } = await p.query<{ hash: string; created_at: string }>(
    `SELECT hash, created_at::text AS created_at FROM ${pg.escapeIdentifier(schema)}.${MIGRATIONS_TABLE} ORDER BY id`,
  );
  return rows;
}

/** Advisory locks in this test's database (other files' databases and the clone lock are elsewhere). */
const OUR_ADVISORY_LOCKS =
  "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())";

const known = knownMigrations();
const allTags = known.map((m) => m.tag);

describe("migrate()", () => {
  it("lets five nodes migrate at once: one applies, all succeed, one journal row per migration", async () => {
    const db = await database("migrate_concurrent");
    const pools = Array.from({ length: 5 }, () => pool(db));

    const results = await Promise.all(pools.map((p) => migrate(p)));

    const appliers = results.filter((r) => r.applied.length > 0);
    expect(appliers).toHaveLength(1);
    expect(appliers[0]?.applied).toEqual(allTags);
    for (const r of results.filter((r) => r.applied.length === 0)) expect(r.alreadyApplied).toEqual(allTags);

    const journal = await journalOf(pools[0]!, "socket_io");
    expect(journal.map((r) => r.hash)).toEqual(known.map((m) => m.hash));
    expect(journal.map((r) => Number(r.created_at))).toEqual(known.map((m) => m.createdAt));
    expect(await tablesOf(pools[0]!, "socket_io")).toEqual([MIGRATIONS_TABLE, ...TABLES].sort());
  });

  it("is idempotent and leaves the caller's pool open with its settings untouched", async () => {
    const db = await database("migrate_idempotent");
    const p = pool(db, 1); // one client: the one migrate() used is handed back to us
    const { rows: before } = await p.query<{ search_path: string }>("SHOW search_path");

    expect((await migrate(p)).applied).toEqual(allTags);
    const again = await migrate(p);
    expect(again).toEqual({ schema: "socket_io", applied: [], alreadyApplied: allTags });

    expect(await journalOf(p, "socket_io")).toHaveLength(known.length);
    const { rows: after } = await p.query<{ search_path: string }>("SHOW search_path");
    expect(after).toEqual(before);
    const { rows: locks } = await p.query(OUR_ADVISORY_LOCKS);
    expect(locks).toEqual([]);
  });

  it("keeps two schemas of one database independent", async () => {
    const db = await database("migrate_two_schemas");
    const p = pool(db);

    await migrate(p, { schema: "app_a" });
    await migrate(p, { schema: "app_b" });

    for (const schema of ["app_a", "app_b"]) {
      expect(await tablesOf(p, schema)).toEqual([MIGRATIONS_TABLE, ...TABLES].sort());
      expect(await journalOf(p, schema)).toHaveLength(known.length);
    }
    // Nothing outside our schemas: no drizzle default journal, nothing in public.
    expect(await tablesOf(p, "drizzle")).toEqual([]);
    expect(await tablesOf(p, "public")).toEqual([]);

    await p.query(`INSERT INTO app_a.namespaces (name, head) VALUES ('/', 7)`);
    const a = await p.query("SELECT name, head FROM app_a.namespaces");
    const b = await p.query("SELECT name, head FROM app_b.namespaces");
    expect(a.rows).toEqual([{ name: "/", head: "7" }]);
    expect(b.rows).toEqual([]);

    // Each schema's emit() stages into its own table and notifies its own channel, whatever the search_path.
    await p.query(`SET search_path TO app_b`);
    await p.query(`SELECT app_a.emit('/', 'ev', '[1]')`);
    await p.query(`RESET search_path`);
    const staged = await p.query("SELECT (SELECT count(*) FROM app_a.staged_events)::int AS a, (SELECT count(*) FROM app_b.staged_events)::int AS b");
    expect(staged.rows).toEqual([{ a: 1, b: 0 }]);
    const defs = await p.query<{ schema: string; def: string }>(
      "SELECT n.nspname AS schema, pg_get_functiondef(f.oid) AS def FROM pg_proc f JOIN pg_namespace n ON n.oid = f.pronamespace WHERE f.proname = 'emit' ORDER BY 1",
    );
    expect(defs.rows.map((r) => [r.schema, r.def.includes(`pg_notify('${r.schema}:emit'`), r.def.includes(`INSERT INTO ${r.schema}.staged_events`)])).toEqual([
      ["app_a", true, true],
      ["app_b", true, true],
    ]);
  });

  it("indexes what pruning filters on (a namespace's idle writers), in the configured schema", async () => {
    const db = await database("migrate_indexes");
    const p = pool(db);
    await migrate(p, { schema: "app_i" });
    const { rows } = await p.query<{ indexdef: string }>(
      "SELECT indexdef FROM pg_indexes WHERE schemaname = 'app_i' AND tablename = 'log_writers' AND indexname = 'log_writers_namespace_updated_at_idx'",
    );
    expect(rows.map((r) => r.indexdef)).toEqual([
      "CREATE INDEX log_writers_namespace_updated_at_idx ON app_i.log_writers USING btree (namespace_id, updated_at)",
    ]);
  });

  it("refuses an invalid schema name before touching the database", async () => {
    const db = await database("migrate_bad_schema");
    const p = pool(db);
    for (const schema of ["bad-name", 'x"; DROP TABLE y; --', "", "1abc", "a".repeat(64)]) {
      await expect(migrate(p, { schema })).rejects.toThrow(/invalid schema name .* use a letter or _/);
      await expect(migrationStatus(p, { schema })).rejects.toThrow(/invalid schema name/);
    }
    const { rows } = await p.query(
      "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' AND nspname NOT IN ('public', 'information_schema')",
    );
    expect(rows).toEqual([]);
  });

  it("refuses a schema migrated by a newer version", async () => {
    const db = await database("migrate_newer", true);
    const p = pool(db);
    const newest = Math.max(...known.map((m) => m.createdAt));
    await p.query(`INSERT INTO socket_io.${MIGRATIONS_TABLE} (hash, created_at) VALUES ('from-the-future', $1)`, [
      newest + 1000,
    ]);

    await expect(migrate(p)).rejects.toThrow(/schema "socket_io" has 1 migration\(s\) this version does not know .*upgrade/);
    const status = await migrationStatus(p);
    expect(status.unknown).toEqual([{ createdAt: newest + 1000, hash: "from-the-future" }]);
    expect(status.pending).toEqual([]);
    // Refused under the lock, and the lock was given back.
    const { rows } = await p.query(OUR_ADVISORY_LOCKS);
    expect(rows).toEqual([]);
  });

  it("gives up after lockTimeoutMs while another migration holds the lock", async () => {
    const db = await database("migrate_lock_timeout");
    const p = pool(db);
    const holder = await p.connect();
    try {
      await holder.query("SELECT pg_advisory_lock(hashtext('socket.io-postgres-recovery:migrate:socket_io'))");
      await expect(migrate(p, { lockTimeoutMs: 200 })).rejects.toThrow(
        /waited 200 ms for another migration of schema "socket_io"/,
      );
    } finally {
      holder.release(true);
    }
    expect((await migrate(p)).applied).toEqual(allTags);
  });

  it("reports a connection failure as an Error with a cause", async () => {
    const p = new pg.Pool({ connectionString: "postgres://postgres@127.0.0.1:1/postgres", connectionTimeoutMillis: 2000 });
    cleanups.push(() => p.end());
    const err: unknown = await migrate(p).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/migrate cannot connect to the database: .*ECONNREFUSED/);
    expect((err as Error).cause).toBeDefined();
  });
});

describe("migrationStatus()", () => {
  it("lists pending migrations before migrate() and applied ones after", async () => {
    const db = await database("migrate_status");
    const p = pool(db);
    expect(await migrationStatus(p)).toEqual({ schema: "socket_io", applied: [], pending: known, unknown: [] });
    await migrate(p);
    expect(await migrationStatus(p)).toEqual({ schema: "socket_io", applied: known, pending: [], unknown: [] });
  });

  it("sees the template clone as fully migrated", async () => {
    const db = await database("migrate_clone", true);
    const p = pool(db);
    expect((await migrationStatus(p)).pending).toEqual([]);
    expect(await tablesOf(p, "socket_io")).toEqual([MIGRATIONS_TABLE, ...TABLES].sort());
  });
});
