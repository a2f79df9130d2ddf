/**
 * G-NSP growth with dynamic namespaces: `io.of(/^\/t-\d+$/)` on both nodes of
 * two, namespaces /t-0.. added in steps (sizes.gNspSteps), each with one
 * client on each node (two per namespace). After every step, once the
 * skeletons are written: each node's heap and RSS after a full GC, its LISTEN
 * channels, the statements its pool sends while idle (cluster heartbeats of
 * every namespace, the node's own heartbeat, checkpoints), and the rows of
 * each table. The slope between steps is the cost of one namespace.
 */
import pg from "pg";
import { call } from "../lib/ipc.js";
import { startCluster, sleep } from "../lib/cluster.js";
import type { MetricDef, Metrics, RunContext, Workload } from "../lib/context.js";
import { FULL, QUICK } from "../lib/context.js";
import { isOurs } from "../peers.js";

/** After a step's connections: skeletons go out in the first batches, a checkpoint passes. */
const SETTLE_MS = 6000;
/** Idle window over which statements per second are counted. */
const IDLE_MS = 10_000;
const TABLES = ["namespaces", "log_writers", "sessions", "log_entries"] as const;

interface Statements {
  all: number;
  writes: number;
  clusterNotifies: number;
}

async function run(ctx: RunContext): Promise<Metrics> {
  const steps = ctx.sizes.gNspSteps;
  const cluster = await startCluster(ctx, 2);
  const db = new pg.Pool({ connectionString: ctx.db.url, max: 1 });
  try {
    const { nodes, clients } = cluster;
    for (const n of nodes) await call(n.child, "dynamic-namespaces");
    const memory = () => Promise.all(nodes.map((n) => call<{ rssMb: number; heapUsedMb: number }>(n.child, "memory")));
    const channels = () => Promise.all(nodes.map((n) => call<number | null>(n.child, "listen-channels")));
    const statements = () => Promise.all(nodes.map((n) => call<Statements>(n.child, "statements")));
    const rows = async () => {
      const out: Record<string, number> = {};
      for (const t of TABLES) {
        const { rows: r } = await db.query<{ n: string }>(`SELECT count(*)::text AS n FROM socket_io.${t}`);
        out[t] = Number(r[0]!.n);
      }
      return out;
    };
    const base = { memory: await memory(), rows: await rows(), channels: await channels() };
    const metrics: Metrics = {};
    let connected = 0;
    for (const target of steps) {
      const todo = Array.from({ length: target - connected }, (_, k) => connected + k);
      for (let k = 0; k < todo.length; k += 50) {
        await Promise.all(
          todo.slice(k, k + 50).flatMap((i) =>
            nodes.map((n) => call(clients, "connect", { url: `${n.url}/t-${i}`, count: 1, rooms: [`r-${i}`] }, 60_000)),
          ),
        );
      }
      connected = target;
      await sleep(SETTLE_MS);
      const mem = await memory();
      const ch = await channels();
      const r = await rows();
      const kinds0 = await call<Record<string, number>>(nodes[0]!.child, "write-kinds");
      const s0 = await statements();
      const c0 = await ctx.db.commits();
      await sleep(IDLE_MS);
      const s1 = await statements();
      const c1 = await ctx.db.commits();
      const kinds1 = await call<Record<string, number>>(nodes[0]!.child, "write-kinds");
      const grew = Object.entries(kinds1).map(([k, v]) => [k, v - (kinds0[k] ?? 0)] as const).filter(([, d]) => d > 0);
      process.stderr.write(`[G-NSP] ${target} namespaces, node 0's row-writing statements while idle: ${JSON.stringify(Object.fromEntries(grew))}\n`);
      const perNode = (f: (i: number) => number) => nodes.reduce((sum, _, i) => sum + f(i), 0) / nodes.length;
      const m = (key: string, v: number | null) => (metrics[`${key}@${target}`] = v);
      m("rssKbPerNsp", perNode((i) => ((mem[i]!.rssMb - base.memory[i]!.rssMb) * 1024) / target));
      m("heapKbPerNsp", perNode((i) => ((mem[i]!.heapUsedMb - base.memory[i]!.heapUsedMb) * 1024) / target));
      m("listenPerNode", ch.every((c) => c !== null) ? perNode((i) => ch[i]!) : null);
      for (const t of TABLES) m(`rows_${t}_PerNsp`, (r[t]! - base.rows[t]!) / target);
      m("stmtsPerNodeSec", perNode((i) => (s1[i]!.all - s0[i]!.all) / (IDLE_MS / 1000)));
      m("writesPerNodeSec", perNode((i) => (s1[i]!.writes - s0[i]!.writes) / (IDLE_MS / 1000)));
      m("clusterNotifiesPerNodeSec", perNode((i) => (s1[i]!.clusterNotifies - s0[i]!.clusterNotifies) / (IDLE_MS / 1000)));
      m("commitsPerSec", (c1 - c0) / (IDLE_MS / 1000));
      process.stderr.write(`[G-NSP] ${target} namespaces: ${JSON.stringify(Object.fromEntries(Object.entries(metrics).filter(([k]) => k.endsWith(`@${target}`))))}\n`);
    }
    return metrics;
  } finally {
    await db.end().catch(() => undefined);
    await cluster.stop();
  }
}

const STEP_METRICS: Array<[string, string, number]> = [
  ["rssKbPerNsp", "RSS growth / namespace / node (KiB)", 1],
  ["heapKbPerNsp", "heap growth (after GC) / namespace / node (KiB)", 1],
  ["listenPerNode", "LISTEN channels / node", 0],
  ["rows_namespaces_PerNsp", "namespaces rows / namespace", 2],
  ["rows_log_writers_PerNsp", "log_writers rows / namespace", 2],
  ["rows_sessions_PerNsp", "sessions rows / namespace (2 sockets each)", 2],
  ["rows_log_entries_PerNsp", "log_entries rows / namespace", 2],
  ["stmtsPerNodeSec", "statements / node / s while idle", 1],
  ["writesPerNodeSec", "row-writing statements / node / s while idle", 2],
  ["clusterNotifiesPerNodeSec", "cluster NOTIFYs (heartbeats) / node / s while idle", 1],
  ["commitsPerSec", "all Postgres transactions / s while idle (pg_stat_database)", 1],
];

const steps = [...new Set([...QUICK.gNspSteps, ...FULL.gNspSteps])].sort((a, b) => a - b);

export const gNsp: Workload = {
  id: "G-NSP",
  title: "growth: dynamic namespaces (2 nodes, 1 client per namespace on each)",
  metrics: steps.flatMap((n): MetricDef[] => STEP_METRICS.map(([key, label, digits]) => ({ key: `${key}@${n}`, label: `${n} nsp: ${label}`, digits }))),
  applies: (peer) => (isOurs(peer) ? true : "n/a: reads our adapter's tables"),
  run,
};
