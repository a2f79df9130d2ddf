/**
 * Details of the log's SQL that only show against a real Postgres:
 * - the append's prepared statement name must stay unique within Postgres'
 *   63-byte names, for any two schemas sharing one pool (and one connection);
 * - a namespace's start (`namespace()`) must not take the row lock that
 *   serializes the namespace's writers when it has nothing to change;
 * - the append moves its writer row's indexed `updated_at` at most once a
 *   minute (a HOT update otherwise), and still moves a mark over a minute old.
 */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrate } from "../src/migrate.js";
import { LogQueries } from "../src/sql/log-queries.js";
import { createTestDatabase, type TestDatabase } from "./helpers/database.js";

let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase("log_queries", { migrated: true });
});

afterAll(async () => {
  await db.drop();
});

describe("the append's prepared statement", () => {
  it("has a distinct name for two long schema names sharing a 60-character prefix on one connection", async () => {
    const prefix = "s".repeat(60);
    const schemas = [`${prefix}_aa`, `${prefix}_bb`]; // 63 bytes, Postgres' longest identifier
    const pool = new pg.Pool({ connectionString: db.url, max: 1 }); // one connection: both statements on it
    pool.on("error", () => {});
    try {
      for (const schema of schemas) await migrate(pool, { schema });
      const logs = schemas.map((schema) => new LogQueries(pool, schema));
      const names = logs.map((log) => log.appendStatementName!);
      for (const name of names) expect(Buffer.byteLength(name)).toBeLessThanOrEqual(63);
      expect(new Set(names).size).toBe(2);
      for (const [i, log] of logs.entries()) {
        const { id } = await log.namespace("/");
        await log.registerWriter(`w${i}`, id);
        for (let batch = 1; batch <= 2; batch++) {
          // The second batch reuses the statement prepared by the first on this connection.
          const { from } = await log.append(id, `w${i}`, batch, [Buffer.from([0x90])], "socket.io:test:log", "");
          expect(from).toBe(batch);
        }
      }
      const { rows } = await pool.query<{ name: string }>("SELECT name FROM pg_prepared_statements ORDER BY name");
      expect(rows.map((r) => r.name)).toEqual([...names].sort());
    } finally {
      await pool.end();
    }
  });
});

describe("starting a namespace", () => {
  it("does not wait for the namespace row's lock when the row is already as it should be", async () => {
    const pool = new pg.Pool({ connectionString: db.url, max: 1, options: "-c lock_timeout=200" });
    pool.on("error", () => {});
    const writer = new pg.Client({ connectionString: db.url });
    await writer.connect();
    try {
      const log = new LogQueries(pool, "socket_io");
      const first = await log.namespace("/lock", 60_000);
      // A writer in the middle of an append holds the row (UPDATE … SET head = head + n).
      await writer.query("BEGIN");
      await writer.query("UPDATE socket_io.namespaces SET head = head + 1 WHERE id = $1", [first.id]);
      // A restarting node with the same retention (or a shorter one): nothing to change, no lock.
      expect(await log.namespace("/lock", 60_000)).toEqual(first);
      expect(await log.namespace("/lock", 1000)).toEqual(first);
      await writer.query("COMMIT");
      // A longer retention is still recorded (that update takes the lock, once).
      await log.namespace("/lock", 120_000);
      const { rows } = await pool.query<{ retention_ms: string }>(
        "SELECT retention_ms::text AS retention_ms FROM socket_io.namespaces WHERE id = $1",
        [first.id],
      );
      expect(rows[0]!.retention_ms).toBe("120000");
    } finally {
      await writer.end();
      await pool.end();
    }
  });
});

describe("the append's writer row", () => {
  it("moves updated_at (indexed) at most once a minute, so that its update is HOT, and still marks an idle writer active", async () => {
    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    pool.on("error", () => {});
    try {
      const log = new LogQueries(pool, "socket_io");
      const { id } = await log.namespace("/writer-mark");
      await log.registerWriter("mark", id);
      const updatedAt = async (): Promise<string> =>
        (await pool.query<{ t: string }>("SELECT updated_at::text AS t FROM socket_io.log_writers WHERE writer_id = 'mark'")).rows[0]!.t;
      await log.append(id, "mark", 1, [Buffer.from([0x90])], "socket.io:test:log", "");
      const marked = await updatedAt();
      await log.append(id, "mark", 2, [Buffer.from([0x90])], "socket.io:test:log", "");
      // Recorded (the batch), not re-marked within the minute: the indexed column is unchanged.
      expect(await updatedAt()).toBe(marked);
      const { rows } = await pool.query<{ last_batch: string }>("SELECT last_batch::text FROM socket_io.log_writers WHERE writer_id = 'mark'");
      expect(rows[0]!.last_batch).toBe("2");
      // A mark over a minute old is moved by the next append: pruning (idle retention + 1 h) never sees an active writer as idle.
      await pool.query("UPDATE socket_io.log_writers SET updated_at = now() - interval '2 minutes' WHERE writer_id = 'mark'");
      const old = await updatedAt();
      await log.append(id, "mark", 3, [Buffer.from([0x90])], "socket.io:test:log", "");
      const { rows: fresh } = await pool.query<{ recent: boolean }>(
        "SELECT updated_at > $1::timestamptz AND updated_at >= now() - interval '10 seconds' AS recent FROM socket_io.log_writers WHERE writer_id = 'mark'",
        [old],
      );
      expect(fresh[0]!.recent).toBe(true);
    } finally {
      await pool.end();
    }
  });
});
