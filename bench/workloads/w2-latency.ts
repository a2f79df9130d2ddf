/**
 * W2 latency: node 0 emits one event every 2 ms; 20 clients on node 1 (the
 * in-memory adapter: on its single node) note emission-to-receipt time.
 * Clocks: performance.timeOrigin + now() in both processes (same machine).
 */
import { call } from "../lib/ipc.js";
import { startCluster } from "../lib/cluster.js";
import type { Metrics, RunContext, Workload } from "../lib/context.js";

interface Summary {
  lost: number;
  duplicated: number;
  latency?: { n: number; p50: number; p90: number; p99: number; max: number };
}

async function run(ctx: RunContext): Promise<Metrics> {
  const { w2Events: count, w2IntervalMs: intervalMs, w2Clients } = ctx.sizes;
  const cluster = await startCluster(ctx, 2);
  try {
    const { nodes, clients } = cluster;
    const target = nodes[nodes.length - 1]!;
    await call(clients, "connect", { url: target.url, count: w2Clients });
    const warm = ctx.nextEpoch();
    await call(clients, "arm", { epoch: warm, expect: { all: { 0: 100 } } });
    await call(nodes[0]!.child, "emit-paced", { epoch: warm, source: 0, count: 100, intervalMs }, 30_000);
    await call(clients, "wait", { timeoutMs: 20_000 }, 30_000);

    const epoch = ctx.nextEpoch();
    await call(clients, "arm", { epoch, expect: { all: { 0: count } } });
    // --cpu-prof: both nodes' CPU during the timed run, per event (bench/profile-summary.ts).
    const profile = ctx.cpuProfDir !== undefined;
    if (profile) await Promise.all(nodes.map((n) => call(n.child, "profile-start")));
    await call(nodes[0]!.child, "emit-paced", { epoch, source: 0, count, intervalMs }, count * intervalMs * 5 + 30_000);
    await call(clients, "wait", { timeoutMs: 30_000 }, 40_000);
    if (profile) {
      await Promise.all(nodes.map((n) => call(n.child, "profile-stop", { file: `${ctx.cpuProfDir}/${ctx.peer.id}-W2-node${n.index}.cpuprofile` })));
    }
    const s = await call<Summary>(clients, "summary", {});
    return {
      p50: s.latency?.p50 ?? null,
      p90: s.latency?.p90 ?? null,
      p99: s.latency?.p99 ?? null,
      max: s.latency?.max ?? null,
      lost: s.lost,
      duplicated: s.duplicated,
    };
  } finally {
    await cluster.stop();
  }
}

export const w2: Workload = {
  id: "W2",
  title: "latency, one event every 2 ms, node 0 → 20 clients on node 1",
  metrics: [
    { key: "p50", label: "p50 (ms)", better: "lower", digits: 2 },
    { key: "p90", label: "p90 (ms)", better: "lower", digits: 2 },
    { key: "p99", label: "p99 (ms)", better: "lower", digits: 2 },
    { key: "max", label: "max (ms)", better: "lower", digits: 1 },
    { key: "lost", label: "lost" },
    { key: "duplicated", label: "duplicated" },
  ],
  applies: () => true,
  run,
};
