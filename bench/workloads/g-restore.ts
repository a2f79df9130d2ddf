/**
 * G-RESTORE: restore time against the size of the tables. For each level of
 * sizes.gRestoreLevels, a database of its own gets `entries` log entries (to
 * a room nobody is in) and `sessions` disconnected sessions, written by SQL
 * (generate_series) in the adapter's own row format (codec.ts); one filled
 * session is restored by a client to show those rows are valid. Then
 * gRestoreClients real clients connect to node 0, get one event, drop, miss
 * 10 events, and reconnect to node 1, started only then so that its memory
 * holds none of the log: every restore takes its session from the table and
 * reads its replay from the table. EXPLAIN (ANALYZE, BUFFERS) of the replay
 * read and of the session lookup go to bench/results/g-restore-explain-*.txt.
 */
import { createHash } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import pg from "pg";
import { migrate } from "../../src/index.js";
import { encodePacket, encodeSession, formatOffset } from "../../src/codec.js";
import { call } from "../lib/ipc.js";
import { startChild, stopChild } from "../lib/children.js";
import { startCluster, sleep } from "../lib/cluster.js";
import { createRunDatabase } from "../lib/database.js";
import type { MetricDef, Metrics, RunContext, Workload } from "../lib/context.js";
import { FULL, QUICK } from "../lib/context.js";
import { isOurs } from "../peers.js";

const MISSED = 10;
const CHUNK = 1_000_000;
const explains: string[] = [];

async function fill(pool: pg.Pool, entries: number, sessions: number): Promise<number> {
  const { rows } = await pool.query<{ id: number }>("INSERT INTO socket_io.namespaces (name, head) VALUES ('/', $1) RETURNING id", [entries]);
  const nsp = rows[0]!.id;
  const payload = encodePacket({ data: ["b", { e: 0, s: 0, q: 0, p: "x".repeat(60) }], rooms: ["filler"], except: [] });
  for (let from = 1; from <= entries; from += CHUNK) {
    await pool.query(
      `INSERT INTO socket_io.log_entries (namespace_id, "offset", payload) SELECT $1, g, $2 FROM generate_series($3::bigint, $4::bigint) AS g`,
      [nsp, payload, from, Math.min(entries, from + CHUNK - 1)],
    );
  }
  // Session g: pid "filler-pid-g", in its own room since offset 0, its last offset a few entries before the head.
  const session = encodeSession({ rooms: [["filler-sid", 0]], data: null });
  for (let from = 1; from <= sessions; from += CHUNK) {
    await pool.query(
      `INSERT INTO socket_io.sessions (pid_hash, namespace_id, sid, floor_offset, last_offset, cursor_offset, state, ttl_ms, payload, expires_at)
       SELECT sha256(convert_to('filler-pid-' || g, 'UTF8')), $1, 'filler-sid-' || g, $2, $2, $2, 'disconnected', 120000, $3, now() + interval '1 hour'
       FROM generate_series($4::int, $5::int) AS g`,
      [nsp, Math.max(0, entries - 5), session, from, Math.min(sessions, from + CHUNK - 1)],
    );
  }
  await pool.query("ANALYZE socket_io.log_entries; ANALYZE socket_io.sessions");
  return nsp;
}

async function explain(pool: pg.Pool, label: string, sql: string, params: unknown[]): Promise<{ ms: number; buffers: number; index: boolean }> {
  const { rows } = await pool.query<{ "QUERY PLAN": string }>(`EXPLAIN (ANALYZE, BUFFERS) ${sql}`, params);
  const text = rows.map((r) => r["QUERY PLAN"]).join("\n");
  explains.push(`## ${label}\n${sql}\n\n${text}\n`);
  const ms = Number(/Execution Time: ([\d.]+)/.exec(text)?.[1] ?? NaN);
  // Buffers of the top node: its totals include its children's.
  const top = /Buffers: shared ([^\n]+)/.exec(text)?.[1] ?? "";
  const buffers = [...top.matchAll(/(?:hit|read)=(\d+)/g)].reduce((s, m) => s + Number(m[1]), 0);
  return { ms, buffers, index: /Index (Only )?Scan/.test(text) && !/Seq Scan/.test(text) };
}

async function level(ctx: RunContext, entries: number, sessions: number): Promise<Metrics> {
  const baseUrl = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
  const db = await createRunDatabase(baseUrl);
  const pool = new pg.Pool({ connectionString: db.url, max: 1 });
  try {
    await migrate(pool);
    const t = Date.now();
    const nsp = await fill(pool, entries, sessions);
    const fillSeconds = (Date.now() - t) / 1000;
    const { rows: size } = await pool.query<{ mb: string }>("SELECT (pg_database_size(current_database()) / 1048576)::text AS mb");
    const levelCtx: RunContext = { ...ctx, db };
    const cluster = await startCluster(levelCtx, 1);
    let target: Awaited<ReturnType<typeof startChild>> | undefined;
    try {
      const { nodes, clients } = cluster;
      const origin = nodes[0]!;
      const n = ctx.sizes.gRestoreClients;
      await call(clients, "connect", { url: origin.url, count: n, reconnection: false });
      const epoch = ctx.nextEpoch();
      await call(clients, "arm", { epoch, expect: { all: { 0: 1 } } });
      await call(origin.child, "emit-burst", { epoch, sources: [{ source: 0, count: 1 }] });
      await call(clients, "wait", { timeoutMs: 20_000 }, 30_000);
      await call(clients, "expect", { expect: { all: { 0: { from: 1, to: 1 + MISSED } } } });
      await sleep(500);
      const everyone = Array.from({ length: n }, (_, i) => i);
      await call(clients, "drop", { clients: everyone });
      const gone = Date.now() + 10_000;
      while ((await call<number>(origin.child, "sockets")) > 0 && Date.now() < gone) await sleep(20);
      await call(origin.child, "emit-burst", { epoch, sources: [{ source: 0, count: MISSED, startSeq: 2 }] });
      await sleep(1000); // sessions written, missed events committed

      target = await startChild("node-process.ts", {
        label: `${ctx.peer.id}/node1`,
        env: { PEER: ctx.peer.id, DATABASE_URL: db.url, REDIS_URL: ctx.redisUrl, STREAM_NAME: ctx.streamName, NODE_INDEX: "1" },
      });
      const { port } = await call<{ port: number }>(target, "info");
      const url = `http://127.0.0.1:${port}`;
      const back = await call<Array<{ ms: number; recovered: boolean; failed?: boolean }>>(clients, "reconnect-timed", { clients: everyone, url }, 60_000);
      const waited = await call<{ complete: boolean }>(clients, "wait", { timeoutMs: 20_000 }, 30_000);
      const summary = await call<{ lost: number; duplicated: number }>(clients, "summary", {});
      const restore = await call<{ p50Ms: number | null; p99Ms: number | null; maxMs: number | null }>(target, "restore-stats");
      const reads = await call<{ replayReads: number; replayRows: number }>(target, "statements");
      // After the measured restores: one SQL-filled session, restored by a client that presents its pid.
      const fillerRestored = await call<boolean>(clients, "restore-as", { url, pid: "filler-pid-1", offset: formatOffset(Math.max(0, entries - 5)) });

      const range = await explain(
        pool,
        `replay read, ${entries} entries / ${sessions} sessions`,
        `SELECT r."offset"::text AS offset_text, l.payload FROM (
           SELECT "offset", sum(octet_length(payload)) OVER (ORDER BY "offset") - octet_length(payload) AS bytes_before
           FROM socket_io.log_entries WHERE namespace_id = $1 AND "offset" > $2 AND ($3::bigint IS NULL OR "offset" <= $3)
           ORDER BY "offset" LIMIT $4) AS r
         JOIN socket_io.log_entries AS l ON l.namespace_id = $1 AND l."offset" = r."offset"
         WHERE r.bytes_before <= $5 ORDER BY r."offset"`,
        [nsp, entries + 1, entries + 1 + MISSED, 50_000, 64 * 2 ** 20],
      );
      const take = await explain(
        pool,
        `session lookup by pid_hash, ${sessions} sessions`,
        `SELECT sid, floor_offset, last_offset, cursor_offset, state, payload FROM socket_io.sessions WHERE pid_hash = $1`,
        [createHash("sha256").update(`filler-pid-${Math.ceil(sessions / 2)}`).digest()],
      );
      return {
        dbMb: Number(size[0]!.mb),
        fillSeconds,
        fillerRestored: fillerRestored ? 1 : 0,
        recoveredPct: (100 * back.filter((b) => b.recovered).length) / n,
        restoreP50Ms: restore.p50Ms,
        restoreP99Ms: restore.p99Ms,
        clientP50Ms: quantile(back.map((b) => b.ms), 0.5),
        clientP99Ms: quantile(back.map((b) => b.ms), 0.99),
        tableReads: reads.replayReads,
        rowsPerRead: reads.replayReads ? reads.replayRows / reads.replayReads : null,
        rangeExplainMs: range.ms,
        rangeBuffers: range.buffers,
        rangeIndexOnly: range.index ? 1 : 0,
        takeExplainMs: take.ms,
        takeBuffers: take.buffers,
        takeIndexOnly: take.index ? 1 : 0,
        complete: waited.complete ? 1 : 0,
        lost: summary.lost,
        duplicated: summary.duplicated,
      };
    } finally {
      if (target) {
        await call(target, "close", {}, 20_000).catch(() => undefined);
        await stopChild(target, 10_000);
      }
      await cluster.stop();
    }
  } finally {
    await pool.end().catch(() => undefined);
    await db.drop();
  }
}

function quantile(values: number[], q: number): number | null {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
}

const key = (l: { sessions: number; entries: number }) => `${l.sessions}s/${l.entries}e`;

async function run(ctx: RunContext): Promise<Metrics> {
  const metrics: Metrics = {};
  for (const l of ctx.sizes.gRestoreLevels) {
    const m = await level(ctx, l.entries, l.sessions);
    process.stderr.write(`[G-RESTORE] ${key(l)}: ${JSON.stringify(m)}\n`);
    for (const [k, v] of Object.entries(m)) metrics[`${k}@${key(l)}`] = v;
  }
  mkdirSync(new URL("../results/", import.meta.url), { recursive: true });
  const file = new URL(`../results/g-restore-explain-${new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19)}.txt`, import.meta.url);
  writeFileSync(file, explains.join("\n"));
  explains.length = 0;
  return metrics;
}

const LEVEL_METRICS: Array<[string, string, number]> = [
  ["dbMb", "database size (MiB)", 0],
  ["fillSeconds", "fill time (s)", 1],
  ["fillerRestored", "a SQL-filled session restores (1 = yes)", 0],
  ["recoveredPct", "clients recovered (%)", 1],
  ["restoreP50Ms", "restoreSession p50 (ms)", 1],
  ["restoreP99Ms", "restoreSession p99 (ms)", 1],
  ["clientP50Ms", "client connect() → recovered p50 (ms)", 1],
  ["clientP99Ms", "client connect() → recovered p99 (ms)", 1],
  ["tableReads", "replay reads from the table", 0],
  ["rowsPerRead", "rows / replay read", 1],
  ["rangeExplainMs", "replay read, EXPLAIN ANALYZE (ms)", 3],
  ["rangeBuffers", "replay read, shared buffers touched", 0],
  ["rangeIndexOnly", "replay read uses indexes only (1 = yes)", 0],
  ["takeExplainMs", "session lookup, EXPLAIN ANALYZE (ms)", 3],
  ["takeBuffers", "session lookup, shared buffers touched", 0],
  ["takeIndexOnly", "session lookup uses indexes only (1 = yes)", 0],
  ["complete", "every client got its events (1 = yes)", 0],
  ["lost", "lost", 0],
  ["duplicated", "duplicated", 0],
];

const levels = [...new Map([...QUICK.gRestoreLevels, ...FULL.gRestoreLevels].map((l) => [key(l), l])).values()].sort((a, b) => a.entries - b.entries);

export const gRestore: Workload = {
  id: "G-RESTORE",
  title: "growth: restore time against stored sessions and log entries",
  metrics: levels.flatMap((l): MetricDef[] => LEVEL_METRICS.map(([k, label, digits]) => ({ key: `${k}@${key(l)}`, label: `${key(l)}: ${label}`, digits }))),
  applies: (peer) => (isOurs(peer) ? true : "n/a: fills our adapter's tables"),
  run,
};
