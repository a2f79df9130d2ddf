/**
 * W4 big replay: client A (on node 0) drops; node 0 emits N events to all;
 * once a sentinel client on node 0 has them all, A reconnects (to node 1
 * when there is one) and the time until A has received all N is measured.
 */
import { call, nowMs } from "../lib/ipc.js";
import { startCluster, sleep } from "../lib/cluster.js";
import type { Metrics, RunContext, Workload } from "../lib/context.js";

interface RestoreStats {
  count: number;
  meanMs: number | null;
  maxMs: number | null;
  refusals: Record<string, number>;
}

async function run(ctx: RunContext): Promise<Metrics> {
  const n = ctx.sizes.w4Missed;
  const cluster = await startCluster(ctx, 2);
  try {
    const { nodes, clients } = cluster;
    const origin = nodes[0]!;
    const target = nodes[nodes.length - 1]!;
    await call(clients, "connect", { url: origin.url, count: 1, reconnection: false }); // A = 0
    await call(clients, "connect", { url: origin.url, count: 1 }); // sentinel = 1
    const warm = ctx.nextEpoch();
    await call(clients, "arm", { epoch: warm, expect: { all: { 0: 1 } } });
    await call(origin.child, "emit-burst", { epoch: warm, sources: [{ source: 0, count: 1 }] });
    await call(clients, "wait", { timeoutMs: 20_000 }, 30_000);

    await call(clients, "drop", { clients: [0] });
    const gone = Date.now() + 10_000;
    while ((await call<number>(origin.child, "sockets")) > 1 && Date.now() < gone) await sleep(20);
    await sleep(200); // the session is being stored

    const epoch = ctx.nextEpoch();
    await call(clients, "arm", { epoch, expect: { all: { 0: n } } });
    await call(origin.child, "emit-burst", { epoch, sources: [{ source: 0, count: n }] });
    await call(clients, "wait", { timeoutMs: 60_000, clients: [1] }, 70_000);

    const t0 = nowMs();
    const [recovered] = await call<boolean[]>(clients, "reconnect", { clients: [0], url: target.url }, 30_000);
    const waited = await call<{ complete: boolean; lastAt: number }>(clients, "wait", { timeoutMs: 30_000, clients: [0] }, 40_000);
    const summary = await call<{ lost: number; duplicated: number }>(clients, "summary", { clients: [0] });
    const restore = await call<RestoreStats>(target.child, "restore-stats");
    if (Object.keys(restore.refusals).length) process.stderr.write(`[${ctx.peer.id}] W4 refusals: ${JSON.stringify(restore.refusals)}\n`);
    return {
      recovered: recovered ? 1 : 0,
      ms: waited.complete ? waited.lastAt - t0 : null,
      restoreMs: restore.maxMs,
      lost: summary.lost,
      duplicated: summary.duplicated,
    };
  } finally {
    await cluster.stop();
  }
}

export const w4: Workload = {
  id: "W4",
  title: "big replay (one client misses 10,000 events)",
  metrics: [
    { key: "recovered", label: "recovered (1 = yes)" },
    { key: "ms", label: "time to all replayed (ms)", better: "lower", digits: 0 },
    { key: "restoreMs", label: "restoreSession (ms)", better: "lower", digits: 1 },
    { key: "lost", label: "lost" },
    { key: "duplicated", label: "duplicated" },
  ],
  applies: (peer) => (peer.recovery ? true : "n/a: no recovery"),
  run,
};
