import pg from "pg";
import { migrate } from "../../src/index.js";
import { entryRoomKeys } from "../../src/room-keys.js";
import { LogQueries } from "../../src/sql/log-queries.js";
const url = "postgres://postgres@127.0.0.1:5432/postgres";
const schema = "rf_append_ab";
const pool = new pg.Pool({ connectionString: url, max: 1 });
await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
await migrate(pool, { schema });
const log = new LogQueries(pool, schema);
const { id } = await log.namespace("/ab");
await log.registerWriter("ab", id);
let b = 0;
const res: Record<string, number[]> = {};
for (let round = 0; round < 6; round++) {
  for (const batch of [1, 10, 100]) {
    const payloads = Array.from({ length: batch }, () => Buffer.alloc(100, 7));
    const keys = payloads.map((_, i) => entryRoomKeys([`p-${i}`]));
    for (const mode of ["null", "keys"]) {
      const t = performance.now(); let n = 0;
      while (performance.now() - t < 1000) { await log.append(id, "ab", ++b, payloads, "ab_chan", "", mode === "keys" ? keys : null); n++; }
      (res[`${mode}/${batch}`] ??= []).push(n / ((performance.now() - t) / 1000));
    }
  }
}
for (const [k, v] of Object.entries(res)) { const s = [...v].sort((a, b) => a - b); console.log(k, "median tx/s", s[s.length >> 1]!.toFixed(0), "all", v.map((x) => x.toFixed(0)).join(",")); }
await pool.query(`DROP SCHEMA ${schema} CASCADE`);
await pool.end();
