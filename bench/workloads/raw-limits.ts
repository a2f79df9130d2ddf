/**
 * The machine's raw limits for what our adapter does per batch: one
 * statement inserting `b` rows and sending one pg_notify, one transaction,
 * back to back on one connection (with one LISTENer present), for b = 1, 10, 100.
 */
import pg from "pg";
import { nowMs } from "../lib/ipc.js";

export interface RawLimit {
  batch: number;
  txPerSec: number;
  rowsPerSec: number;
  meanMs: number;
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
      for (let i = 0; i < 20; i++) await client.query(sql, [payloads]); // warm-up
      let tx = 0;
      const started = nowMs();
      const until = started + secondsEach * 1000;
      while (nowMs() < until) {
        await client.query(sql, [payloads]);
        tx++;
      }
      const seconds = (nowMs() - started) / 1000;
      results.push({ batch, txPerSec: tx / seconds, rowsPerSec: (tx * batch) / seconds, meanMs: (seconds * 1000) / tx });
    }
    await client.query("DROP TABLE bench_raw");
    return results;
  } finally {
    await Promise.all([client.end(), listener.end()]);
  }
}
