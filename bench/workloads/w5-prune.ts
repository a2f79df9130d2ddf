/**
 * W5 pruning (our adapter only): `rows` log entries past retention in one
 * namespace, pruned by our Pruner (bounded DELETE batches) while a concurrent
 * writer appends 10-entry batches with our append statement in a loop. The
 * writer's longest append during the prune is the stall pruning causes.
 *
 * Runs in the bench process itself, against its own schema of the run's
 * database (the prune and the writer each on their own pool).
 */
import pg from "pg";
import { migrate } from "../../src/index.js";
import { openSessionConnection } from "../../src/direct-connection.js";
import { PRUNER_APPLICATION_NAME, Pruner } from "../../src/pruner.js";
import { LogQueries } from "../../src/sql/log-queries.js";
import { PruneQueries } from "../../src/sql/prune-queries.js";
import { qualifiedName, quoteIdentifier } from "../../src/sql/identifiers.js";
import { nowMs } from "../lib/ipc.js";
import { sleep } from "../lib/cluster.js";
import type { Metrics, RunContext, Workload } from "../lib/context.js";
import { isOurs } from "../peers.js";
import { percentile } from "../receipts.js";

async function run(ctx: RunContext): Promise<Metrics> {
  const schema = `bench_prune_${ctx.rep}`;
  const setup = new pg.Pool({ connectionString: ctx.db.url, max: 1 });
  const prunePool = new pg.Pool({ connectionString: ctx.db.url, max: 1 });
  const writerPool = new pg.Pool({ connectionString: ctx.db.url, max: 1 });
  try {
    await migrate(setup, { schema });
    const log = new LogQueries(writerPool, schema);
    const { id } = await log.namespace("/prune");
    const rows = ctx.sizes.w5Rows;
    const genStarted = nowMs();
    await setup.query(
      `INSERT INTO ${qualifiedName(schema, "log_entries")} (namespace_id, "offset", created_at, payload)
       SELECT $1, g, now() - interval '1 day', decode(repeat('ab', 100), 'hex') FROM generate_series(1, $2::bigint) AS g`,
      [id, rows],
    );
    await setup.query(`UPDATE ${qualifiedName(schema, "namespaces")} SET head = $2 WHERE id = $1`, [id, rows]);
    await setup.query(`ANALYZE ${qualifiedName(schema, "log_entries")}`);
    process.stderr.write(`[ours] W5: ${rows} expired rows generated in ${((nowMs() - genStarted) / 1000).toFixed(1)} s\n`);
    const size = async () => {
      const { rows: r } = await setup.query<{ bytes: string }>("SELECT pg_total_relation_size($1)::text AS bytes", [
        `${schema}.log_entries`,
      ]);
      return Number(r[0]?.bytes) / 1024 / 1024;
    };
    const sizeBefore = await size();

    // The concurrent writer: one append of 10 entries after another, each timed.
    const writer = "bench-w5-writer";
    await log.registerWriter(writer, id);
    const payloads = Array.from({ length: 10 }, () => Buffer.alloc(100, 1));
    let batch = 0;
    const state = { phase: "before" as "before" | "during" | "stop" };
    const latencies = { before: [] as number[], during: [] as number[] };
    const writing = (async () => {
      while (state.phase !== "stop") {
        const started = nowMs();
        await log.append(id, writer, ++batch, payloads, `bench_prune_${ctx.rep}`, "");
        const ms = nowMs() - started;
        (state.phase === "before" ? latencies.before : latencies.during).push(ms);
      }
    })();
    await sleep(1000);

    const errors: Error[] = [];
    const pruner = new Pruner(
      () => openSessionConnection(prunePool, undefined, PRUNER_APPLICATION_NAME),
      new PruneQueries(schema, qualifiedName(schema, "socket_io_attachments")),
      { retentionMs: () => 60_000, attachmentsMaxAgeMs: 30_000, batchSize: 5000 },
      (err) => errors.push(err),
    );
    state.phase = "during";
    const started = nowMs();
    const report = await pruner.pruneNow();
    const pruneSeconds = (nowMs() - started) / 1000;
    state.phase = "stop";
    await writing;
    if (errors.length) throw errors[0];
    const during = [...latencies.during].sort((a, b) => a - b);
    const before = [...latencies.before].sort((a, b) => a - b);
    const { rows: left } = await setup.query<{ n: string }>(
      `SELECT count(*)::text AS n FROM ${qualifiedName(schema, "log_entries")} WHERE namespace_id = $1`,
      [id],
    );
    const sizeAfter = await size();
    await setup.query(`DROP SCHEMA ${quoteIdentifier(schema)} CASCADE`);
    return {
      pruneSeconds,
      pruned: report.logEntries,
      writerMaxMs: during.at(-1) ?? null,
      writerP99Ms: percentile(during, 99) ?? null,
      writerMaxBeforeMs: before.at(-1) ?? null,
      appendsDuring: during.length,
      sizeBeforeMb: sizeBefore,
      sizeAfterMb: sizeAfter,
      rowsLeft: Number(left[0]?.n),
    };
  } finally {
    await Promise.all([setup.end(), prunePool.end(), writerPool.end()]);
  }
}

export const w5: Workload = {
  id: "W5",
  oncePerRun: true,
  title: "pruning 1,000,000 expired entries under a concurrent writer",
  metrics: [
    { key: "pruneSeconds", label: "time to prune (s)", better: "lower", digits: 2 },
    { key: "pruned", label: "entries pruned" },
    { key: "writerMaxMs", label: "longest writer stall during prune (ms)", better: "lower", digits: 1 },
    { key: "writerP99Ms", label: "writer append p99 during prune (ms)", better: "lower", digits: 1 },
    { key: "writerMaxBeforeMs", label: "longest append before prune (ms)", digits: 1 },
    { key: "appendsDuring", label: "appends during prune" },
    { key: "sizeBeforeMb", label: "log table size before (MiB)", digits: 0 },
    { key: "sizeAfterMb", label: "log table size after (MiB, no VACUUM FULL)", digits: 0 },
    { key: "rowsLeft", label: "rows left (the writer's)" },
  ],
  applies: (peer) => (isOurs(peer) ? true : "n/a: ours only"),
  run,
};
