/**
 * Would a second append in flight shorten an event's wait (issue 14)? Pairs
 * of one-entry appends of the same writer, one pair every 4 ms: batch N on
 * connection A, then batch N+1 either after A's answer (today: one append at
 * a time) or on connection B right after A was sent (two in flight). Prints
 * how long after A's answer B's answer comes, p50/p90/p99. B's transaction
 * waits for A's row locks (the writer row, the namespace's head), which
 * Postgres releases only after A's commit is flushed.
 *
 *   npx tsx bench/probes/w2-overlap.ts [pairs per round=500] [rounds=3]
 */
import pg from "pg";
import { migrate } from "../../src/index.js";
import { quoteIdentifier } from "../../src/sql/identifiers.js";
import { LogQueries } from "../../src/sql/log-queries.js";
import { nowMs } from "../lib/ipc.js";

const url = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const pairs = Number(process.argv[2] ?? 500);
const rounds = Number(process.argv[3] ?? 3);
const schema = "bench_w2_overlap";
const poolA = new pg.Pool({ connectionString: url, max: 1 });
const poolB = new pg.Pool({ connectionString: url, max: 1 });
await poolA.query(`DROP SCHEMA IF EXISTS ${quoteIdentifier(schema)} CASCADE`);
await migrate(poolA, { schema });
const logA = new LogQueries(poolA, schema);
const logB = new LogQueries(poolB, schema);
const { id } = await logA.namespace("/overlap");
const writer = `overlap-${process.pid}`;
await logA.registerWriter(writer, id);
const payload = Buffer.alloc(90, 7);
const inline = payload.toString("base64");
let batch = 0;
const after = { sequential: [] as number[], overlapped: [] as number[] };
const single: number[] = [];
let outOfTurn = 0;
for (let r = 0; r < rounds; r++) {
  for (const mode of ["sequential", "overlapped"] as const) {
    const start = nowMs();
    for (let i = 0; i < pairs; i++) {
      const wait = start + i * 4 - nowMs();
      if (wait > 0.5) await new Promise((resolve) => setTimeout(resolve, Math.floor(wait)));
      const sent = nowMs();
      const n = ++batch;
      const m = ++batch;
      if (mode === "sequential") {
        await logA.append(id, writer, n, [payload], "nobody", inline);
        const aDone = nowMs();
        single.push(aDone - sent);
        await logA.append(id, writer, m, [payload], "nobody", inline);
        after.sequential.push(nowMs() - aDone);
      } else {
        let aDone = 0;
        // A's failure: B took the locks first (program order broken; the writer row refuses the older batch).
        const a = logA.append(id, writer, n, [payload], "nobody", inline).then(() => (aDone = nowMs()), () => undefined);
        const b = logB.append(id, writer, m, [payload], "nobody", inline).then(() => nowMs());
        const [aOk, bDone] = await Promise.all([a, b]);
        if (aOk === undefined) outOfTurn++;
        else after.overlapped.push(bDone - aDone);
      }
    }
  }
}
const pct = (v: number[], p: number): string => ([...v].sort((x, y) => x - y)[Math.floor((v.length * p) / 100)]! * 1000).toFixed(0);
console.log(`one append alone: p50 ${pct(single, 50)} p90 ${pct(single, 90)} p99 ${pct(single, 99)} µs`);
for (const [mode, v] of Object.entries(after)) console.log(`second batch's answer after the first's, ${mode}: p50 ${pct(v, 50)} p90 ${pct(v, 90)} p99 ${pct(v, 99)} µs`);
const { rows } = await poolA.query(`SELECT count(*)::int AS n, min("offset")::text AS lo, max("offset")::text AS hi FROM ${schema}.log_entries`);
console.log(`entries ${rows[0].n} of ${batch}; overlapped pairs where the second batch committed first: ${outOfTurn} of ${pairs * rounds}`);
await poolA.query(`DROP SCHEMA ${quoteIdentifier(schema)} CASCADE`);
await Promise.all([poolA.end(), poolB.end()]);
