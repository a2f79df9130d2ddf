/**
 * W3 recovery storm: clients in rooms on node 0, each holding an offset (one
 * event per room first). Node 0 shuts down gracefully; its clients reconnect
 * to node 1 (io.uri is switched on disconnect). As soon as the first client
 * notices, node 1 emits missedPerRoom events to each room, then keeps emitting
 * (one event every stormIntervalMs, rooms in turn) until every client is back.
 *
 * The in-memory adapter has no second node: there the transports of all
 * sockets are closed under them and clients come back to the same node.
 *
 * Seqs per room: 1 = the event before the shutdown, 2..1+missed = emitted while
 * away, beyond = during the storm. Lost/duplicated are split on that boundary.
 */
import { call, onEvent, nowMs } from "../lib/ipc.js";
import { startCluster, sleep } from "../lib/cluster.js";
import type { Metrics, RunContext, Workload } from "../lib/context.js";

interface RecoveryStats {
  disconnected: number;
  reconnected: number;
  recovered: number;
  lastReconnectAt: number | null;
  retried: number;
}

interface Summary {
  lost: number;
  duplicated: number;
  lostUpTo: number;
  lostAfter: number;
  duplicatedUpTo: number;
  duplicatedAfter: number;
  reordered: number;
  clientsWithLoss: number;
}

interface RestoreStats {
  count: number;
  restored: number;
  meanMs: number | null;
  maxMs: number | null;
  refusals: Record<string, number>;
}

interface TargetCounts {
  all: number;
  sessionWrites: number;
  cpuMs: number;
}

/** Statements node 1's adapter sent on its pool so far, and its CPU time (undefined for peers that do not count). */
async function targetCounts(child: Parameters<typeof call>[0]): Promise<TargetCounts | undefined> {
  const statements = await call<{ all: number; sessionWrites: number }>(child, "statements").catch(() => undefined);
  const usage = await call<{ cpuMs: number }>(child, "usage").catch(() => undefined);
  if (!statements || !usage || statements.all === 0) return undefined;
  return { all: statements.all, sessionWrites: statements.sessionWrites, cpuMs: usage.cpuMs };
}

/** W3, or with `crash` W6: node 0 is SIGKILLed instead of closed (it writes nothing). */
export async function runStorm(ctx: RunContext, crash: boolean): Promise<Metrics> {
  const { w3Clients, w3Rooms, w3MissedPerRoom: missed, w3StormIntervalMs } = ctx.sizes;
  const cluster = await startCluster(ctx, 2);
  try {
    const { nodes, clients } = cluster;
    const rooms = Array.from({ length: w3Rooms }, (_, r) => `room-${r}`);
    const origin = nodes[0]!;
    const target = nodes[nodes.length - 1]!;
    await call(clients, "connect", { url: origin.url, count: w3Clients, rooms });

    const epoch = ctx.nextEpoch();
    const expectUpTo = (last: number[]) =>
      Object.fromEntries(rooms.map((room, r) => [room, { [r]: { from: 1, to: last[r]! } }]));
    await call(clients, "arm", { epoch, expect: expectUpTo(rooms.map(() => 1)) });
    await call(origin.child, "emit-burst", { epoch, sources: rooms.map((room, r) => ({ source: r, count: 1, room })) });
    const primed = await call<{ complete: boolean }>(clients, "wait", { timeoutMs: 30_000 }, 40_000);
    if (!primed.complete) throw new Error("W3: clients did not all get their first event");

    // Counted on node 1 from here to the end of the storm (ours only): statements and CPU time per
    // restore depend far less on the machine's load than the times do.
    const countsBefore = await targetCounts(target.child);
    await call(clients, "redirect", { url: target.url });
    // While away: missed events as soon as the first client noticed, then the storm.
    let emitting: Promise<unknown> = Promise.resolve();
    onEvent(clients, "first-disconnect", () => {
      emitting = (async () => {
        await call(target.child, "emit-burst", {
          epoch,
          sources: rooms.map((room, r) => ({ source: r, count: missed, startSeq: 2, room })),
        });
        await call(target.child, "storm-start", { epoch, rooms, startSeq: rooms.map(() => 2 + missed), intervalMs: w3StormIntervalMs });
      })();
    });
    const t0 = nowMs();
    // Socket.IO closes the transports (clients notice) only once the adapter closed: W3 includes that close.
    let closing: Promise<{ closeMs: number } | null> = Promise.resolve(null);
    if (crash && nodes.length > 1) origin.child.kill("SIGKILL");
    else if (nodes.length > 1) closing = call<{ closeMs: number }>(origin.child, "close", {}, 30_000).catch(() => null);
    else await call(origin.child, "drop-transports");

    let stats: RecoveryStats;
    const deadline = Date.now() + 60_000;
    do {
      await sleep(100);
      stats = await call<RecoveryStats>(clients, "recovery-stats");
    } while (stats.reconnected < w3Clients && Date.now() < deadline);
    await emitting;
    await sleep(500); // the storm goes on a little after the last reconnection
    const last = await call<number[]>(target.child, "storm-stop");
    await call(clients, "expect", { expect: expectUpTo(last) });
    await call(clients, "wait", { timeoutMs: 15_000 }, 20_000);
    const summary = await call<Summary>(clients, "summary", { splitAtSeq: 1 + missed });
    const restore = await call<RestoreStats>(target.child, "restore-stats");
    const countsAfter = await targetCounts(target.child);
    const perRestore = (key: keyof TargetCounts) =>
      restore.restored > 0 && countsBefore && countsAfter ? (countsAfter[key] - countsBefore[key]) / restore.restored : null;
    if (Object.keys(restore.refusals).length) process.stderr.write(`[${ctx.peer.id}] W3 refusals: ${JSON.stringify(restore.refusals)}\n`);
    const allBack = stats.reconnected === w3Clients && stats.lastReconnectAt !== null;
    const closed = await closing;
    return {
      recoveredPct: (100 * stats.recovered) / w3Clients,
      seconds: allBack ? (stats.lastReconnectAt! - t0) / 1000 : null,
      restoreMeanMs: restore.meanMs,
      restoreMaxMs: restore.maxMs,
      closeMs: closed?.closeMs ?? null,
      retried: stats.retried,
      lostMissed: summary.lostUpTo,
      lostStorm: summary.lostAfter,
      dupMissed: summary.duplicatedUpTo,
      dupStorm: summary.duplicatedAfter,
      reordered: summary.reordered,
      statementsPerRestore: perRestore("all"),
      sessionWritesPerRestore: perRestore("sessionWrites"),
      cpuMsPerRestore: perRestore("cpuMs"),
    };
  } finally {
    await cluster.stop();
  }
}

export const w3: Workload = {
  id: "W3",
  title: "recovery storm (node 0 shuts down, clients move to node 1)",
  metrics: [
    { key: "recoveredPct", label: "recovered (%)", better: "higher", digits: 1 },
    { key: "seconds", label: "time to all reconnected (s)", better: "lower", digits: 2 },
    { key: "restoreMeanMs", label: "restoreSession mean (ms)", better: "lower", digits: 1 },
    { key: "restoreMaxMs", label: "restoreSession max (ms)", better: "lower", digits: 1 },
    { key: "closeMs", label: "node 0 io.close() (ms; clients notice at its end)", better: "lower", digits: 0 },
    { key: "retried", label: "clients whose first reconnection attempt failed" },
    { key: "lostMissed", label: "lost (missed while away)" },
    { key: "lostStorm", label: "lost (storm-time)" },
    { key: "dupMissed", label: "duplicated (missed while away)" },
    { key: "dupStorm", label: "duplicated (storm-time)" },
    { key: "reordered", label: "per-room reorderings" },
    { key: "statementsPerRestore", label: "node 1: statements on the pool / restored socket (ours)", better: "lower", digits: 2 },
    { key: "sessionWritesPerRestore", label: "node 1: session/skeleton write statements / restored socket (ours)", better: "lower", digits: 2 },
    { key: "cpuMsPerRestore", label: "node 1: CPU ms / restored socket", better: "lower", digits: 2 },
  ],
  applies: (peer) => (peer.recovery ? true : "n/a: no recovery"),
  run: (ctx) => runStorm(ctx, false),
};
