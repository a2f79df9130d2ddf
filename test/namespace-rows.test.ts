/**
 * Rows of namespaces nobody uses any more are pruned (dynamic namespaces
 * would otherwise leave one row each, forever), and never the row of a
 * namespace a node still serves: a recreated row starts at head 0, which
 * must not happen while clients hold offsets of the old one.
 */
import pg from "pg";
import { describe, expect, it } from "vitest";
import { migrate } from "../src/migrate.js";
import { prune } from "../src/prune.js";
import { LogQueries } from "../src/sql/log-queries.js";
import { Cluster, waitFor } from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("namespace_rows");

async function withPool<T>(fn: (pool: pg.Pool) => Promise<T>): Promise<T> {
  const pool = new pg.Pool({ connectionString: db.url, max: 2 });
  try {
    return await fn(pool);
  } finally {
    await pool.end();
  }
}

async function namespaceNames(pool: pg.Pool, schema: string): Promise<string[]> {
  const { rows } = await pool.query<{ name: string }>(`SELECT name FROM ${schema}.namespaces ORDER BY name`);
  return rows.map((r) => r.name);
}

describe("namespace rows", () => {
  it("prunes the row of a namespace with no entries, sessions nor writers, unmarked for longer than retention + 1 h; only that one", async () => {
    await withPool(async (pool) => {
      const schema = "socket_io";
      const ns = async (name: string, activeAgo: string) =>
        (
          await pool.query<{ id: number }>(
            `INSERT INTO ${schema}.namespaces (name, head, retention_ms, active_at)
             VALUES ($1, 7, 60000, now() - $2::interval) RETURNING id`,
            [name, activeAgo],
          )
        ).rows[0]!.id;
      await ns("/gone", "2 hours");
      await ns("/recent", "30 minutes"); // less than retention (1 min) + 1 h ago
      const withEntry = await ns("/with-entry", "2 hours");
      const withSession = await ns("/with-session", "2 hours");
      const withWriter = await ns("/with-writer", "2 hours");
      await pool.query(`INSERT INTO ${schema}.log_entries (namespace_id, "offset", payload) VALUES ($1, 7, '\\x00')`, [withEntry]);
      await pool.query(
        `INSERT INTO ${schema}.sessions (pid_hash, namespace_id, sid, floor_offset, last_offset, payload, expires_at)
         VALUES ('\\x01', $1, 'sid', 7, 7, '\\x00', now() + interval '1 minute')`,
        [withSession],
      );
      await pool.query(`INSERT INTO ${schema}.log_writers (writer_id, namespace_id) VALUES ('w', $1)`, [withWriter]);
      const all = ["/gone", "/recent", "/with-entry", "/with-session", "/with-writer"];

      const dry = await prune(pool, { schema, dryRun: true });
      expect(dry.namespaceRows).toBe(1);
      expect(await namespaceNames(pool, schema)).toEqual(all);

      const real = await prune(pool, { schema });
      expect(real.namespaceRows).toBe(1);
      expect(await namespaceNames(pool, schema)).toEqual(all.filter((n) => n !== "/gone"));
      expect((await prune(pool, { schema })).namespaceRows).toBe(0);
    });
  });

  it("marks a namespace active when a node starts it, in the statement that reads its id", async () => {
    await withPool(async (pool) => {
      const log = new LogQueries(pool, "socket_io");
      const mark = async () =>
        (await pool.query<{ id: number; stale: boolean }>(
          `SELECT id, active_at < now() - interval '1 hour' AS stale FROM socket_io.namespaces WHERE name = '/started'`,
        )).rows[0];
      const created = await log.namespace("/started", 60_000);
      await pool.query(`UPDATE socket_io.namespaces SET active_at = now() - interval '3 hours' WHERE name = '/started'`);
      expect(await mark()).toEqual({ id: created.id, stale: true });
      expect(await log.namespace("/started", 60_000)).toEqual(created);
      expect(await mark()).toEqual({ id: created.id, stale: false });
      expect((await prune(pool, { schema: "socket_io", dryRun: true })).namespaceRows).toBe(0);
    });
  });

  it("never prunes the row of a namespace a node serves, even idle and without writers: the node keeps marking it", async () => {
    const schema = "live_rows";
    await withPool((pool) => migrate(pool, { schema }));
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 1,
      maxDisconnectionDuration: 1000,
      adapter: { schema, pruneIntervalMs: 200, retentionMarginMs: 0 },
      server: { cleanupEmptyChildNamespaces: true },
    });
    const pool = cluster.node(0).pool;
    const nsp = "/dyn-live";
    const client = await cluster.connect(0, { nsp });
    const row = async () =>
      (await pool.query<{ id: number; head: string; stale: boolean }>(
        `SELECT id, head::text AS head, active_at < now() - interval '1 hour' AS stale FROM ${schema}.namespaces WHERE name = $1`,
        [nsp],
      )).rows[0];
    cluster.node(0).io.of(nsp).emit("ev", 1);
    await waitFor(async () => (await row())?.head === "1", { message: "the entry to be logged" });
    const before = (await row())!;
    // As after a long idle stretch: the entry pruned, the writer pruned, the mark long past. The
    // test holds the prune lock meanwhile, so no pass sees the row before the node marks it again.
    const locker = new pg.Client({ connectionString: db.url });
    await locker.connect();
    try {
      const lockKey = `socket.io-postgres-recovery:prune:${schema}`;
      await waitFor(
        async () => (await locker.query<{ ok: boolean }>("SELECT pg_try_advisory_lock(hashtext($1)) AS ok", [lockKey])).rows[0]!.ok,
        { message: "the prune lock" },
      );
      await pool.query(`DELETE FROM ${schema}.log_entries`);
      await pool.query(`DELETE FROM ${schema}.log_writers`);
      await pool.query(`UPDATE ${schema}.namespaces SET active_at = now() - interval '3 hours'`);
      await waitFor(async () => (await row())?.stale === false, { message: "the node to mark its namespaces active again" });
    } finally {
      await locker.end();
    }
    // Passes run every 200 ms: let a few finish, then the row must be the same (same id, same head).
    const passes = async () =>
      (await pool.query<{ t: Date }>(`SELECT last_finished_at AS t FROM ${schema}.maintenance WHERE task = 'prune'`)).rows[0]?.t.getTime() ?? 0;
    const seen = await passes();
    await waitFor(async () => (await passes()) > seen, { message: "a pruning pass" });
    const after = await row();
    expect(after).toEqual({ ...before, stale: false });
    expect(client.connected).toBe(true);
  });
});
