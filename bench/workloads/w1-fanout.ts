/**
 * W1 fan-out throughput: 2 nodes × clientsPerNode clients; node 0 emits N
 * ~100-byte events as fast as it can (one synchronous loop). Deliveries/s is
 * clients × N over the time from the first emit to the last receipt.
 *
 * W1-split: each node emits half (sources 0 and 1, interleaved on the single
 * in-memory node). Adds offset regressions and distinct delivery orders.
 *
 * Cost, measured around the emission (Postgres peers): transactions and
 * NOTIFYs per 1,000 events; peak RSS per node.
 */
import { call } from "../lib/ipc.js";
import { startCluster, sleep } from "../lib/cluster.js";
import { countNotifies } from "../lib/database.js";
import type { Metrics, MetricDef, RunContext, Workload } from "../lib/context.js";
import { isOurs, type Peer } from "../peers.js";

interface Summary {
  clients: number;
  received: number;
  expected: number;
  lost: number;
  duplicated: number;
  reordered: number;
  regressions?: number;
  distinctOrders: number;
}

const metrics: MetricDef[] = [
  { key: "deliveriesPerSec", label: "deliveries/s", better: "higher", digits: 0 },
  { key: "seconds", label: "time to all delivered (s)", better: "lower", digits: 2 },
  { key: "lost", label: "lost" },
  { key: "duplicated", label: "duplicated" },
  { key: "reordered", label: "per-source reorderings" },
  { key: "regressions", label: "offset regressions seen by clients" },
  { key: "distinctOrders", label: "distinct delivery orders" },
  { key: "writeTxPer1000", label: "write transactions / 1,000 events", better: "lower", digits: 1 },
  { key: "notifiesPer1000", label: "NOTIFYs / 1,000 events (all channels)", better: "lower", digits: 1 },
  { key: "logNotifiesPerWriteTx", label: "log NOTIFYs / write transaction (ours)", digits: 2 },
  { key: "eventsPerWriteTx", label: "events / write transaction", better: "higher", digits: 1 },
  { key: "txPer1000", label: "all Postgres transactions / 1,000 events (incl. LISTEN wake-ups)", better: "lower", digits: 1 },
  { key: "peakRssMb", label: "peak RSS per node (MiB, max)", better: "lower", digits: 0 },
  { key: "nodeCpuMsPer1000", label: "node CPU ms / 1,000 events (all nodes)", better: "lower", digits: 0 },
];

/** NOTIFY channels of each Postgres peer on namespace "/" (ours: the log channel and the cluster bus). */
function channelsOf(peer: Peer): string[] {
  if (isOurs(peer)) return ["socket.io:socket_io:log", "socket.io#/"];
  if (peer.id === "upstream-pg") return ["socket.io#/"];
  return [];
}

async function run(ctx: RunContext, split: boolean): Promise<Metrics> {
  const { w1Events: events, w1ClientsPerNode } = ctx.sizes;
  const cluster = await startCluster(ctx, 2);
  const profile = ctx.cpuProfDir !== undefined && isOurs(ctx.peer);
  try {
    const { nodes, clients } = cluster;
    const clientsPerNode = (w1ClientsPerNode * 2) / nodes.length;
    for (const node of nodes) await call(clients, "connect", { url: node.url, count: clientsPerNode });
    const totalClients = clientsPerNode * nodes.length;

    // Warm-up: JIT, pools, the adapters' first writes.
    const warm = ctx.nextEpoch();
    await call(clients, "arm", { epoch: warm, expect: { all: { 0: 200 } } });
    await call(nodes[0]!.child, "emit-burst", { epoch: warm, sources: [{ source: 0, count: 200 }] });
    await call(clients, "wait", { timeoutMs: 30_000 }, 40_000);
    await sleep(1100); // let idle backends flush their statistics before the snapshot

    const usageBefore = await cluster.usage();
    const commitsBefore = ctx.peer.postgres ? await ctx.db.commits() : 0;
    const appendsBefore = isOurs(ctx.peer) ? await ctx.db.ourAppends() : 0;
    const half = Math.floor(events / 2);
    const expect = split ? { 0: half, 1: events - half } : { 0: events };
    const burst = async (epoch: number, count: number, halfCount: number) => {
      if (!split) return [await call<{ startedAt: number }>(nodes[0]!.child, "emit-burst", { epoch, sources: [{ source: 0, count }] })];
      if (nodes.length === 1) {
        return [await call<{ startedAt: number }>(nodes[0]!.child, "emit-burst", { epoch, sources: [{ source: 0, count: halfCount }, { source: 1, count: count - halfCount }] })];
      }
      return Promise.all([
        call<{ startedAt: number }>(nodes[0]!.child, "emit-burst", { epoch, sources: [{ source: 0, count: halfCount }] }),
        call<{ startedAt: number }>(nodes[1]!.child, "emit-burst", { epoch, sources: [{ source: 1, count: count - halfCount }] }),
      ]);
    };

    // The timed burst. No extra LISTEN connection meanwhile: each listener costs Postgres a
    // wake-up (a transaction) per NOTIFY, which would slow one-NOTIFY-per-event peers most.
    const epoch = ctx.nextEpoch();
    await call(clients, "arm", { epoch, expect: { all: expect } });
    if (profile) await Promise.all(nodes.map((n) => call(n.child, "profile-start")));
    const starts = await burst(epoch, events, half);
    const waited = await call<{ complete: boolean; lastAt: number }>(clients, "wait", { timeoutMs: 120_000 }, 130_000);
    if (profile) {
      await Promise.all(
        nodes.map((n) => call(n.child, "profile-stop", { file: `${ctx.cpuProfDir}/${ctx.peer.id}-${split ? "W1-split" : "W1"}-node${n.index}.cpuprofile` })),
      );
    }
    if (!waited.complete) await sleep(2000); // stragglers: count what arrives late as received
    const summary = await call<Summary>(clients, "summary", {});
    const seconds = (waited.lastAt - Math.min(...starts.map((s) => s.startedAt))) / 1000;
    const usage = await cluster.usage();

    const appendsTimed = isOurs(ctx.peer) ? (await ctx.db.ourAppends()) - appendsBefore : 0;

    // An untimed burst of a fifth of the size, with a LISTEN connection counting the NOTIFYs.
    const counted = Math.max(200, Math.floor(events / 5));
    let notifyCount = 0;
    let logNotifyCount = 0;
    let appendsCounted = 0;
    if (ctx.peer.postgres) {
      const appendsBeforeCounted = isOurs(ctx.peer) ? await ctx.db.ourAppends() : 0;
      const notifies = await countNotifies(ctx.db.url, channelsOf(ctx.peer));
      const e2 = ctx.nextEpoch();
      await call(clients, "arm", { epoch: e2, expect: { all: split ? { 0: Math.floor(counted / 2), 1: counted - Math.floor(counted / 2) } : { 0: counted } } });
      await burst(e2, counted, Math.floor(counted / 2));
      await call(clients, "wait", { timeoutMs: 60_000 }, 70_000);
      await sleep(200);
      notifyCount = notifies.count();
      logNotifyCount = notifies.count("socket.io:socket_io:log");
      if (isOurs(ctx.peer)) appendsCounted = (await ctx.db.ourAppends()) - appendsBeforeCounted;
      await notifies.stop();
    }
    await cluster.stop();
    // Backends flush their statistics when they exit: read them after the nodes closed.
    await sleep(600);
    const measured = events + (ctx.peer.postgres ? counted : 0);
    const transactions = ctx.peer.postgres ? (await ctx.db.commits()) - commitsBefore : null;
    // Ours: appends of the timed burst (log_writers' batch numbers). Upstream: each publish is one
    // autocommit `SELECT pg_notify(...)`, so its write transactions are its NOTIFYs.
    const notifiesPer1000 = ctx.peer.postgres ? (notifyCount / counted) * 1000 : null;
    const writeTxPer1000 =
      isOurs(ctx.peer) ? (appendsTimed / events) * 1000 : ctx.peer.id === "upstream-pg" ? notifiesPer1000 : null;
    const logNotifiesPerWriteTx = isOurs(ctx.peer) && appendsCounted ? logNotifyCount / appendsCounted : null;
    const cpuMs = usage.reduce((n, u, i) => n + (u?.cpuMs ?? 0) - (usageBefore[i]?.cpuMs ?? 0), 0);
    return {
      deliveriesPerSec: waited.complete ? (totalClients * events) / seconds : null,
      seconds: waited.complete ? seconds : null,
      lost: summary.lost,
      duplicated: summary.duplicated,
      reordered: summary.reordered,
      regressions: summary.regressions ?? null,
      distinctOrders: summary.distinctOrders,
      writeTxPer1000,
      notifiesPer1000,
      logNotifiesPerWriteTx,
      eventsPerWriteTx: writeTxPer1000 ? 1000 / writeTxPer1000 : null,
      txPer1000: transactions === null ? null : (transactions / measured) * 1000,
      peakRssMb: Math.max(...usage.map((u) => u?.maxRssMb ?? 0)),
      nodeCpuMsPer1000: (cpuMs / events) * 1000,
    };
  } finally {
    await cluster.stop();
  }
}

export const w1: Workload = {
  id: "W1",
  title: "fan-out throughput (node 0 emits, 2 nodes)",
  metrics,
  applies: () => true,
  run: (ctx) => run(ctx, false),
};

export const w1split: Workload = {
  id: "W1-split",
  title: "fan-out throughput, each node emits half",
  metrics,
  applies: () => true,
  run: (ctx) => run(ctx, true),
};
