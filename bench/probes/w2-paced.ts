/**
 * W2's statement alone (issue 14): one statement every 2 ms on a fixed
 * schedule (like W2's emitter), one connection, one LISTENer in the same
 * process; per statement kind the time to the answer and to the NOTIFY, p50/p90/p99.
 * Kinds interleaved in rounds of 500 so that the machine's drift hits all alike.
 *
 *   npx tsx bench/probes/w2-paced.ts [rounds=3]
 *
 * Beside it: the same at 2 ms back to back is the raw limits' figure; paced,
 * every statement finds the backend (and the node process) idle and pays for waking them.
 */
import pg from "pg";
import { migrate } from "../../src/index.js";
import { quoteIdentifier } from "../../src/sql/identifiers.js";
import { LogQueries } from "../../src/sql/log-queries.js";
import { nowMs } from "../lib/ipc.js";

const url = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const rounds = Number(process.argv[2] ?? 3);
const perRound = 500;
const client = new pg.Client({ connectionString: url });
const listener = new pg.Client({ connectionString: url });
await Promise.all([client.connect(), listener.connect()]);
const schema = "bench_w2_paced";
const pool = new pg.Pool({ connectionString: url, max: 1 });
await migrate(pool, { schema });
const log = new LogQueries(pool, schema);
// The same append without waiting for its flush (a measurement only: the adapter never does this).
const asyncPool = new pg.Pool({ connectionString: url, max: 1, options: "-c synchronous_commit=off" });
const asyncLog = new LogQueries(asyncPool, schema);
const { id } = await log.namespace("/paced");
const writer = `paced-${process.pid}`;
await log.registerWriter(writer, id);
await asyncLog.registerWriter(`${writer}-async`, id);
let asyncBatch = 0;
await client.query("CREATE TABLE IF NOT EXISTS bench_w2_paced_raw (id bigserial PRIMARY KEY, payload bytea NOT NULL)");
await listener.query("LISTEN w2paced; LISTEN w2paced_append");
let notified: (() => void) | undefined;
listener.on("notification", () => notified?.());
const payload = Buffer.alloc(90, 7);
const inline = payload.toString("base64");
let batch = 0;
const kinds: Record<string, () => Promise<unknown>> = {
  "pg_notify (upstream)": () => client.query("SELECT pg_notify('w2paced', $1)", ["x".repeat(200)]),
  "INSERT (durable, no NOTIFY)": () => client.query("INSERT INTO bench_w2_paced_raw (payload) VALUES ($1)", [payload]),
  "INSERT + pg_notify": () => client.query("WITH i AS (INSERT INTO bench_w2_paced_raw (payload) VALUES ($1) RETURNING 1) SELECT pg_notify('w2paced', $2) FROM i", [payload, "x".repeat(200)]),
  "INSERT + pg_notify, nobody listening": () =>
    client.query("WITH i AS (INSERT INTO bench_w2_paced_raw (payload) VALUES ($1) RETURNING 1) SELECT pg_notify('w2nobody', $2) FROM i", [payload, "x".repeat(200)]),
  "our append": () => log.append(id, writer, ++batch, [payload], "w2paced_append", inline),
  "our append, synchronous_commit off": () => asyncLog.append(id, `${writer}-async`, ++asyncBatch, [payload], "w2paced_append", inline),
};
const answers = new Map<string, number[]>();
const notifies = new Map<string, number[]>();
for (let r = 0; r < rounds; r++) {
  for (const [kind, run] of Object.entries(kinds)) {
    const a = answers.get(kind) ?? [];
    const n = notifies.get(kind) ?? [];
    answers.set(kind, a);
    notifies.set(kind, n);
    const start = nowMs();
    for (let i = 0; i < perRound; i++) {
      const wait = start + i * 2 - nowMs();
      if (wait > 0.5) await new Promise((resolve) => setTimeout(resolve, Math.floor(wait)));
      const sent = nowMs();
      const gotNotify = (kind.includes("notify") && !kind.includes("nobody")) || kind.startsWith("our append") ? new Promise<void>((resolve) => (notified = resolve)) : undefined;
      await run();
      a.push(nowMs() - sent);
      if (gotNotify) {
        await gotNotify;
        n.push(nowMs() - sent);
      }
    }
  }
}
const pct = (v: number[], p: number): string => ([...v].sort((x, y) => x - y)[Math.floor((v.length * p) / 100)]! * 1000).toFixed(0);
console.log(`| statement, one every 2 ms | answer p50 | p90 | p99 | NOTIFY received p50 | p90 | p99 |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |`);
for (const kind of Object.keys(kinds)) {
  const a = answers.get(kind)!;
  const n = notifies.get(kind)!;
  console.log(`| ${kind} | ${pct(a, 50)} | ${pct(a, 90)} | ${pct(a, 99)} | ${n.length ? `${pct(n, 50)} | ${pct(n, 90)} | ${pct(n, 99)}` : "– | – | –"} |`);
}
// Whether the prepared append is planned per call (custom plans) or once (generic).
const plans = await pool.query("SELECT generic_plans::int, custom_plans::int FROM pg_prepared_statements WHERE name LIKE '%append%'");
console.log(`our append's executions: ${JSON.stringify(plans.rows)}`);
await client.query("DROP TABLE bench_w2_paced_raw");
await pool.query(`DROP SCHEMA ${quoteIdentifier(schema)} CASCADE`);
await Promise.all([client.end(), listener.end(), pool.end(), asyncPool.end()]);
