/**
 * The machine's raw limits for what our adapter does per batch: one
 * statement inserting `b` rows and sending one pg_notify, one transaction,
 * back to back on one connection (with one LISTENer present), for b = 1, 10, 100.
 */
import pg from "pg";
import { migrate } from "../../src/index.js";
import { quoteIdentifier } from "../../src/sql/identifiers.js";
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
        results.push(await loop("our append", batch, secondsEach, () => log.append(id, "bench-raw", ++batchNo, payloads, "bench_raw_append", "")));
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
