/**
 * `npm run bench -- --self-check`: proves the receipt accounting can see
 * what it must report. One in-memory node, 10 clients, 300 events, three
 * times: clean (expect 0 lost / 0 duplicated / 1 order), with the 50th
 * receipt of client 0 dropped (expect exactly 1 lost, and 2 orders), and
 * with its 100th recorded twice (expect exactly 1 duplicated).
 */
import { call } from "./lib/ipc.js";
import { startCluster } from "./lib/cluster.js";
import type { RunContext } from "./lib/context.js";
import { FULL } from "./lib/context.js";
import { PEERS } from "./peers.js";
import type { RunDatabase } from "./lib/database.js";

interface Summary {
  lost: number;
  duplicated: number;
  reordered: number;
  distinctOrders: number;
  clientsWithLoss: number;
}

export async function selfCheck(baseUrl: string): Promise<boolean> {
  let epoch = 0;
  const ctx: RunContext = {
    peer: PEERS["in-memory"],
    sizes: FULL,
    db: { url: baseUrl } as RunDatabase,
    redisUrl: "",
    streamName: "",
    rep: 0,
    nextEpoch: () => ++epoch,
  };
  const cluster = await startCluster(ctx, 1);
  let ok = true;
  try {
    const { nodes, clients } = cluster;
    await call(clients, "connect", { url: nodes[0]!.url, count: 10 });
    const cases = [
      { name: "clean", inject: {}, expect: { lost: 0, duplicated: 0, distinctOrders: 1 } },
      // The client that lost one is not counted among the orders (only exact sets are).
      { name: "one dropped", inject: { dropAt: 50 }, expect: { lost: 1, duplicated: 0, clientsWithLoss: 1, distinctOrders: 1 } },
      { name: "one duplicated", inject: { dupAt: 100 }, expect: { lost: 0, duplicated: 1 } },
    ] as const;
    for (const c of cases) {
      const e = ++epoch;
      await call(clients, "inject", c.inject);
      await call(clients, "arm", { epoch: e, expect: { all: { 0: 300 } } });
      await call(nodes[0]!.child, "emit-burst", { epoch: e, sources: [{ source: 0, count: 300 }] });
      await call(clients, "wait", { timeoutMs: 3000 }, 10_000);
      const s = await call<Summary>(clients, "summary", {});
      const wrong = Object.entries(c.expect).filter(([k, v]) => s[k as keyof Summary] !== v);
      process.stdout.write(`self-check ${c.name}: ${wrong.length ? `FAIL ${JSON.stringify(s)}` : "ok"} ${JSON.stringify(s)}\n`);
      if (wrong.length) ok = false;
    }
    await call(clients, "inject", {});
  } finally {
    await cluster.stop();
  }
  return ok;
}
