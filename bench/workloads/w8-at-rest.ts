/**
 * W8 at rest: what connected sockets cost the database when nothing
 * happens. w3Clients sockets in rooms on node 0 of two nodes, left idle for
 * w8IdleMs after their skeletons were written; every statement our adapter
 * sends on its pools is counted in the node processes (node-process.ts),
 * those that write rows apart. Run beside `ours-no-crash-safety`, the
 * difference is what crash safety costs at rest: each node's heartbeat
 * (one UPDATE per nodeHeartbeatIntervalMs) and the checkpoint, which writes
 * nothing while socket.data does not change.
 */
import { call } from "../lib/ipc.js";
import { startCluster, sleep } from "../lib/cluster.js";
import type { Metrics, RunContext, Workload } from "../lib/context.js";
import { isOurs } from "../peers.js";

interface Statements {
  all: number;
  writes: number;
  sessionWrites: number;
}

/** After the connections: their skeletons go out in the first batches; a checkpoint passes too. */
const SETTLE_MS = 6000;

async function run(ctx: RunContext): Promise<Metrics> {
  const { w3Clients: sockets, w3Rooms, w8IdleMs } = ctx.sizes;
  const cluster = await startCluster(ctx, 2);
  try {
    const { nodes, clients } = cluster;
    const rooms = Array.from({ length: w3Rooms }, (_, r) => `room-${r}`);
    await call(clients, "connect", { url: nodes[0]!.url, count: sockets, rooms });
    await sleep(SETTLE_MS);
    const counts = () => Promise.all(nodes.map((n) => call<Statements>(n.child, "statements")));
    const cpu = () => call<{ cpuMs: number }>(nodes[0]!.child, "usage");
    const [before, commitsBefore, cpuBefore] = [await counts(), await ctx.db.commits(), await cpu()];
    await sleep(w8IdleMs);
    const [after, commitsAfter, cpuAfter] = [await counts(), await ctx.db.commits(), await cpu()];
    const minutes = w8IdleMs / 60_000;
    const delta = (key: keyof Statements) => after.reduce((sum, a, i) => sum + a[key] - before[i]![key], 0);
    return {
      sockets,
      writesPerSocketMin: delta("writes") / sockets / minutes,
      sessionWritesPerSocketMin: delta("sessionWrites") / sockets / minutes,
      writesPerNodeMin: delta("writes") / nodes.length / minutes,
      statementsPerNodeMin: delta("all") / nodes.length / minutes,
      commitsPerSocketMin: (commitsAfter - commitsBefore) / sockets / minutes,
      cpuMsPerMin: (cpuAfter.cpuMs - cpuBefore.cpuMs) / minutes,
    };
  } finally {
    await cluster.stop();
  }
}

export const w8: Workload = {
  id: "W8",
  title: "at rest (idle sockets on node 0 of 2 nodes): database statements",
  metrics: [
    { key: "sockets", label: "connected sockets" },
    { key: "writesPerSocketMin", label: "row-writing statements / socket / minute (both nodes)", better: "lower", digits: 3 },
    { key: "sessionWritesPerSocketMin", label: "of which session/skeleton writes / socket / minute", digits: 3 },
    { key: "writesPerNodeMin", label: "row-writing statements / node / minute", better: "lower", digits: 1 },
    { key: "statementsPerNodeMin", label: "all statements on the pool / node / minute", better: "lower", digits: 1 },
    { key: "commitsPerSocketMin", label: "all Postgres transactions / socket / minute (pg_stat_database, incl. LISTEN checks)", better: "lower", digits: 3 },
    { key: "cpuMsPerMin", label: "node 0 CPU ms / minute", better: "lower", digits: 0 },
  ],
  applies: (peer) => (isOurs(peer) ? true : "n/a: counts our adapter's statements"),
  run,
};
