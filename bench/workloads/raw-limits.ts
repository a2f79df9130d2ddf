/**
 * The machine's raw limits for what our adapter does per batch: one
 * statement inserting `b` rows and sending one pg_notify, one transaction,
 * back to back on one connection (with one LISTENer present), for b = 1, 10, 100.
 *
 * Beside it, what separates the costs (docs/scaling.md): the INSERT without
 * the NOTIFY (a durable commit, one WAL flush), the NOTIFY alone (no WAL: a
 * transaction that only notifies has no xid to commit), and both with 4
 * connections at once, where commits that NOTIFY queue on the instance-wide
 * notification lock while plain ones share WAL flushes (group commit).
 */
import pg from "pg";
import { migrate } from "../../src/index.js";
import { quoteIdentifier } from "../../src/sql/identifiers.js";
import { entryRoomKeys } from "../../src/room-keys.js";
import { LogQueries } from "../../src/sql/log-queries.js";
import { nowMs } from "../lib/ipc.js";

export interface RawLimit {
  /** "insert+notify": the bare statement; "our append": src/sql/log-queries.ts' append, the same work plus its bookkeeping. */
  statement: string;
  batch: number;
  txPerSec: number;
  rowsPerSec: number;
  meanMs: number;
}

/** `connections` loops of `step(client)` at once for `seconds` (after 20 warm-up runs each). */
async function parallel(
  statement: string,
  batch: number,
  seconds: number,
  clients: pg.Client[],
  step: (client: pg.Client) => Promise<unknown>,
): Promise<RawLimit> {
  await Promise.all(clients.map(async (c) => {
    for (let i = 0; i < 20; i++) await step(c);
  }));
  let tx = 0;
  const started = nowMs();
  const until = started + seconds * 1000;
  await Promise.all(
    clients.map(async (c) => {
      while (nowMs() < until) {
        await step(c);
        tx++;
      }
    }),
  );
  const elapsed = (nowMs() - started) / 1000;
  return { statement, batch, txPerSec: tx / elapsed, rowsPerSec: (tx * batch) / elapsed, meanMs: (elapsed * 1000 * clients.length) / tx };
}

/** Runs `step` back to back for `seconds` (after 20 warm-up runs). */
async function loop(statement: string, batch: number, seconds: number, step: () => Promise<unknown>): Promise<RawLimit> {
  for (let i = 0; i < 20; i++) await step();
  let tx = 0;
  const started = nowMs();
  const until = started + seconds * 1000;
  while (nowMs() < until) {
    await step();
    tx++;
  }
  const elapsed = (nowMs() - started) / 1000;
  return { statement, batch, txPerSec: tx / elapsed, rowsPerSec: (tx * batch) / elapsed, meanMs: (elapsed * 1000) / tx };
}

export async function measureRawLimits(url: string, secondsEach: number): Promise<RawLimit[]> {
  const client = new pg.Client({ connectionString: url });
  const listener = new pg.Client({ connectionString: url });
  await Promise.all([client.connect(), listener.connect()]);
  try {
    await client.query("CREATE TABLE IF NOT EXISTS bench_raw (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now(), payload bytea NOT NULL)");
    await listener.query("LISTEN bench_raw");
    const results: RawLimit[] = [];
    for (const batch of [1, 10, 100]) {
      const payloads = Array.from({ length: batch }, () => Buffer.alloc(100, 7));
      const sql = `WITH ins AS (INSERT INTO bench_raw (payload) SELECT unnest($1::bytea[]) RETURNING 1)
                   SELECT pg_notify('bench_raw', count(*)::text) FROM ins`;
      results.push(await loop("insert+notify", batch, secondsEach, () => client.query(sql, [payloads])));
    }
    const insertOnly = "INSERT INTO bench_raw (payload) SELECT unnest($1::bytea[])";
    const notifyOnly = "SELECT pg_notify('bench_raw', $1)";
    const ten = Array.from({ length: 10 }, () => Buffer.alloc(100, 7));
    results.push(await loop("insert only", 1, secondsEach, () => client.query(insertOnly, [[Buffer.alloc(100, 7)]])));
    results.push(await loop("notify only (payload 200 B)", 1, secondsEach, () => client.query(notifyOnly, ["x".repeat(200)])));
    const four = Array.from({ length: 4 }, () => new pg.Client({ connectionString: url }));
    await Promise.all(four.map((c) => c.connect()));
    try {
      results.push(await parallel("insert only, 4 connections", 10, secondsEach, four, (c) => c.query(insertOnly, [ten])));
      const tenSql = `WITH ins AS (INSERT INTO bench_raw (payload) SELECT unnest($1::bytea[]) RETURNING 1)
                      SELECT pg_notify('bench_raw', count(*)::text) FROM ins`;
      results.push(await parallel("insert+notify, 4 connections", 10, secondsEach, four, (c) => c.query(tenSql, [ten])));
      results.push(await parallel("notify only, 4 connections", 1, secondsEach, four, (c) => c.query(notifyOnly, ["x".repeat(200)])));
    } finally {
      await Promise.all(four.map((c) => c.end()));
    }
    await client.query("DROP TABLE bench_raw");

    // The same with our adapter's append statement, in a schema of its own.
    const schema = "bench_raw_append";
    const pool = new pg.Pool({ connectionString: url, max: 1 });
    try {
      await migrate(pool, { schema });
      const log = new LogQueries(pool, schema);
      const { id } = await log.namespace("/raw");
      await log.registerWriter("bench-raw", id);
      await listener.query("LISTEN bench_raw_append");
      let batchNo = 0;
      for (const batch of [1, 10, 100]) {
        const payloads = Array.from({ length: batch }, () => Buffer.alloc(100, 7));
        // Each entry to one room (a private event's shape): the append writes its room key too.
        const keys = payloads.map((_, i) => entryRoomKeys([`p-${i}`]));
        results.push(await loop("our append", batch, secondsEach, () => log.append(id, "bench-raw", ++batchNo, payloads, "bench_raw_append", "", keys)));
      }
      await pool.query(`DROP SCHEMA ${quoteIdentifier(schema)} CASCADE`);
    } finally {
      await pool.end();
    }
    return results;
  } finally {
    await Promise.all([client.end(), listener.end()]);
  }
}
