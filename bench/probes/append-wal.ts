/**
 * WAL written by one append statement, per table, as Postgres counts it for
 * this backend alone (EXPLAIN (ANALYZE, WAL)): a measure of the append's own
 * work that does not depend on what else the machine does. The commit record
 * and its flush come on top (not counted here).
 *
 *   npx tsx bench/probes/append-wal.ts   (DATABASE_URL, default the local server; uses a schema of its own)
 */
import pg from "pg";
import { migrate } from "../../src/index.js";
import { LogQueries } from "../../src/sql/log-queries.js";

interface PlanNode {
  "Node Type": string;
  "Relation Name"?: string;
  "WAL Records"?: number;
  "WAL Bytes"?: number;
  "WAL FPI"?: number;
  Plans?: PlanNode[];
}

const url = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const schema = "append_wal_probe";
const pool = new pg.Pool({ connectionString: url, max: 1 });
await pool.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
await migrate(pool, { schema });
try {
  const log = new LogQueries(pool, schema);
  const { id } = await log.namespace("/probe");
  await log.registerWriter("probe", id);
  // The statement as the writer sends it (private: the probe reads it rather than copying it).
  await pool.query(`PREPARE probe_append AS ${(log as unknown as { appendSql: string }).appendSql}`);
  const payload = Buffer.alloc(71, 7).toString("hex"); // W2's event: 71 bytes of msgpack
  const perTable = new Map<string, { records: number[]; bytes: number[] }>();
  const execMs: number[] = [];
  for (let batch = 1; batch <= 500; batch++) {
    const { rows } = await pool.query<{ "QUERY PLAN": Array<{ Plan: PlanNode; "Execution Time": number }> }>(
      `EXPLAIN (ANALYZE, WAL, FORMAT JSON) EXECUTE probe_append(${id}, 1, ARRAY['\\x${payload}'::bytea], 'append_wal_probe', '${"x".repeat(100)}', 'probe', ${batch}, ARRAY[1234567890123456789]::bigint[], ARRAY[1], ARRAY[1])`,
    );
    const plan = rows[0]!["QUERY PLAN"][0]!;
    execMs.push(plan["Execution Time"]);
    const visit = (node: PlanNode): void => {
      if (node["Node Type"] === "ModifyTable") {
        const entry = perTable.get(node["Relation Name"]!) ?? { records: [], bytes: [] };
        entry.records.push(node["WAL Records"] ?? 0);
        entry.bytes.push(node["WAL Bytes"] ?? 0);
        perTable.set(node["Relation Name"]!, entry);
      }
      for (const child of node.Plans ?? []) visit(child);
    };
    visit(plan.Plan);
  }
  const median = (values: number[]): number => [...values].sort((a, b) => a - b)[values.length >> 1]!;
  let records = 0;
  let bytes = 0;
  for (const [table, { records: r, bytes: b }] of perTable) {
    console.log(`${table.padEnd(14)} ${median(r)} WAL records, ${median(b)} bytes (median of 500 appends)`);
    records += median(r);
    bytes += median(b);
  }
  console.log(`total          ${records} WAL records, ${bytes} bytes; execution ${median(execMs).toFixed(3)} ms (median, load-dependent)`);
} finally {
  await pool.query(`DROP SCHEMA ${schema} CASCADE`);
  await pool.end();
}
