/** Starts a peer's node processes and one client process for a workload run, and stops them all. */
import type { ChildProcess } from "node:child_process";
import { call } from "./ipc.js";
import { startChild, stopChild } from "./children.js";
import type { RunContext } from "./context.js";

export interface BenchNode {
  child: ChildProcess;
  url: string;
  index: number;
}

export interface NodeUsage {
  maxRssMb: number;
  rssMb: number;
  /** V8 heap in use (without a forced GC): tells a growing heap from an RSS the allocator has not given back. */
  heapUsedMb: number;
  cpuMs: number;
  errors: string[];
}

export interface BenchCluster {
  nodes: BenchNode[];
  clients: ChildProcess;
  /** Peak and current RSS (MiB) and CPU ms of each node still running. */
  usage(): Promise<Array<NodeUsage | null>>;
  stop(): Promise<void>;
}

/** How long after its nodes are up a workload starts (see startCluster). */
const STEADY_AFTER_START_MS = 2500;

/** `nodeEnv`: extra environment of the node processes (see node-process.ts). */
export async function startCluster(ctx: RunContext, nodeCount: number, nodeEnv: Record<string, string> = {}): Promise<BenchCluster> {
  const count = Math.min(nodeCount, ctx.peer.maxNodes);
  // Nodes and the client process start together (process start-up dominates short workloads).
  const clientsStarting = startChild("client-process.ts", {
    label: `${ctx.peer.id}/clients`,
    env: { OFFSET_KIND: ctx.peer.offsetKind ?? "" },
  });
  const nodesStarting = Promise.all(
    Array.from({ length: count }, async (_, index) => {
      const child = await startChild("node-process.ts", {
        label: `${ctx.peer.id}/node${index}`,
        env: {
          PEER: ctx.peer.id,
          DATABASE_URL: ctx.db.url,
          REDIS_URL: ctx.redisUrl,
          STREAM_NAME: ctx.streamName,
          NODE_INDEX: String(index),
          ...nodeEnv,
        },
      });
      const { port } = await call<{ port: number }>(child, "info");
      return { child, url: `http://127.0.0.1:${port}`, index };
    }),
  );
  const [nodesResult, clientsResult] = await Promise.allSettled([nodesStarting, clientsStarting]);
  if (nodesResult.status === "rejected" || clientsResult.status === "rejected") {
    // Whatever did start must not outlive this failed start.
    if (clientsResult.status === "fulfilled") await stopChild(clientsResult.value, 2000);
    if (nodesResult.status === "fulfilled") await Promise.all(nodesResult.value.map((n) => stopChild(n.child, 2000)));
    throw nodesResult.status === "rejected" ? nodesResult.reason : (clientsResult as PromiseRejectedResult).reason;
  }
  const nodes = nodesResult.value;
  const clients = clientsResult.value;
  // The workloads measure steady state. For its first 2 s a node of ours also relays each logged
  // broadcast on upstream's channel, until its peers' answers say they read the log
  // (src/mixed-cluster.ts): measured from the start, W2 saw that start-up cost, not the steady
  // latency. Every peer waits the same, so ratios stay like for like.
  await new Promise((resolve) => setTimeout(resolve, STEADY_AFTER_START_MS));
  let stopping: Promise<void> | undefined;
  return {
    nodes,
    clients,
    async usage() {
      return Promise.all(
        nodes.map((n) =>
          n.child.exitCode === null ? call<NodeUsage>(n.child, "usage").catch(() => null) : null,
        ),
      );
    },
    stop() {
      return (stopping ??= stopAll());
    },
  };
  async function stopAll(): Promise<void> {
      await call(clients, "close").catch(() => undefined);
      await stopChild(clients, 5000);
      // Graceful: the nodes write what they queued; SIGTERM does io.close() too if "close" fails.
      await Promise.all(
        nodes.map(async (n) => {
          if (n.child.exitCode === null) await call(n.child, "close", {}, 20_000).catch(() => undefined);
          await stopChild(n.child, 10_000);
        }),
      );
  }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
