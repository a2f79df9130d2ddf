/**
 * Plans of a restore's table read (LogQueries.replayRead) against the table's
 * size, and what it transfers against the read of the whole range it
 * replaced (LogQueries.range): G-PRIV's shape, 2,000 sockets each getting
 * private events (one room each), one entry in 10 a broadcast to everyone
 * (room_keys NULL). The restored socket's range is the last 24,000 entries
 * (G-PRIV's at 2,000 sockets and a 2 s drop), its own about 12 of them.
 *
 *   npx tsx bench/probes/replay-read-plans.ts [out.txt]   (DATABASE_URL, default the local server; a database of its own, dropped after)
 *
 * Each size is explained twice: after ANALYZE only (the visibility map empty,
 * as right after a bulk load with autovacuum off: the count must visit the
 * heap) and after VACUUM (index-only).
 */
import { writeFileSync } from "node:fs";
import pg from "pg";
import { encodePacket } from "../../src/codec.js";
import { migrate } from "../../src/index.js";
import { memberRoomKeys } from "../../src/room-keys.js";
import type { Queryable } from "../../src/sql/bounded-queries.js";
import { LogQueries } from "../../src/sql/log-queries.js";
import { createRunDatabase } from "../lib/database.js";

const SOCKETS = 2000;
const RANGE = 24_000;
const SIZES = [10_000, 100_000, 1_000_000];
const out: string[] = [];
const say = (line: string) => {
  out.push(line);
  console.log(line);
};

/** The statement a LogQueries method sends, captured instead of run. */
async function statementOf(call: (log: LogQueries) => Promise<unknown>): Promise<{ text: string; values: unknown[] }> {
  let captured: { text: string; values: unknown[] } | undefined;
  const recorder: Queryable = {
    query(textOrConfig: unknown, values?: unknown[]) {
      const config = typeof textOrConfig === "string" ? { text: textOrConfig, values } : (textOrConfig as { text: string; values?: unknown[] });
      captured = { text: config.text, values: config.values ?? [] };
      return Promise.resolve({ rows: [], rowCount: 0, command: "SELECT", oid: 0, fields: [] }) as never;
    },
  } as Queryable;
  await call(new LogQueries(recorder, "socket_io")).catch(() => undefined);
  if (!captured) throw new Error("no statement captured");
  return captured;
}

async function timed(pool: pg.Pool, text: string, values: unknown[]): Promise<{ ms: number; rows: number; bytes: number }> {
  const runs: Array<{ ms: number; rows: number; bytes: number }> = [];
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    const { rows } = await pool.query<{ payload: Buffer | null }>(text, values);
    const ms = performance.now() - t;
    runs.push({ ms, rows: rows.filter((r) => r.payload).length, bytes: rows.reduce((s, r) => s + (r.payload?.length ?? 0), 0) });
  }
  return runs.sort((a, b) => a.ms - b.ms)[2]!;
}

const baseUrl = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const db = await createRunDatabase(baseUrl);
const pool = new pg.Pool({ connectionString: db.url, max: 1 });
try {
  await migrate(pool);
  const log = new LogQueries(pool, "socket_io");
  const { id } = await log.namespace("/");
  const payload = encodePacket({ data: ["private", { n: 123456, text: "x".repeat(40) }], rooms: ["p-1234"], except: [] });
  const me = "p-7";
  const keys = memberRoomKeys([me]);
  let filled = 0;
  for (const size of SIZES) {
    // Entry g: a broadcast when g % 10 = 0, else private to socket p-(g % 2000).
    await pool.query(
      `INSERT INTO socket_io.log_entries (namespace_id, "offset", payload, room_keys)
       SELECT $1, g, $2, CASE WHEN g % 10 = 0 THEN NULL ELSE ARRAY[('x' || left(md5('p-' || (g % ${SOCKETS})), 16))::bit(64)::bigint] END
       FROM generate_series($3::bigint, $4::bigint) AS g`,
      [id, payload, filled + 1, size],
    );
    filled = size;
    await pool.query(`UPDATE socket_io.namespaces SET head = $2 WHERE id = $1`, [id, size]);
    const after = Math.max(0, size - RANGE);
    const needed: Array<[number, number]> = [[after, size]];
    const replay = await statementOf((l) => l.replayRead(id, after, size, 50_000, 64 * 2 ** 20, keys, needed));
    const whole = await statementOf((l) => l.range(id, after, size, 50_000, 64 * 2 ** 20));
    for (const phase of ["after ANALYZE (visibility map empty)", "after VACUUM"]) {
      await pool.query(phase.startsWith("after VACUUM") ? "VACUUM ANALYZE socket_io.log_entries" : "ANALYZE socket_io.log_entries");
      const { rows: size_ } = await pool.query<{ mb: string }>(`SELECT (pg_total_relation_size('socket_io.log_entries') / 1048576)::text AS mb`);
      say(`\n# ${size.toLocaleString("en")} entries (${size_[0]!.mb} MiB), range (${after}, ${size}] = ${size - after} entries, ${phase}`);
      for (const [label, st] of [["replay read (candidates + counted density)", replay], ["whole range (before this change)", whole]] as const) {
        const t = await timed(pool, st.text, st.values);
        say(`## ${label}: median of 5 runs from the client ${t.ms.toFixed(1)} ms, ${t.rows} entries, ${(t.bytes / 1024).toFixed(1)} KiB of payloads`);
        const { rows } = await pool.query<{ "QUERY PLAN": string }>(`EXPLAIN (ANALYZE, BUFFERS) ${st.text}`, st.values);
        say(rows.map((r) => r["QUERY PLAN"]).join("\n"));
      }
    }
  }
} finally {
  await pool.end();
  await db.drop();
}
const file = process.argv[2];
if (file) writeFileSync(file, `${out.join("\n")}\n`);
