/**
 * The node-wide heartbeat tick (src/heartbeat-ticker.ts): the heartbeats due
 * go out in one pass (so that the bus batches them), and idle namespaces of
 * a real cluster keep counting each other past heartbeatTimeout.
 */
import { describe, expect, it } from "vitest";
import { HeartbeatTicker, type HeartbeatMember } from "../src/heartbeat-ticker.js";
import { Cluster, waitFor } from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("heartbeatticker");

/** A member that records in which synchronous pass of the ticker it heartbeat. */
function member(ticker: HeartbeatTicker, passes: number[], currentPass: () => number): HeartbeatMember & { beats: number } {
  const m = {
    beats: 0,
    heartbeat() {
      m.beats++;
      passes.push(currentPass());
      ticker.published(m); // as the adapter's publish() does
    },
  };
  return m;
}

describe("HeartbeatTicker", () => {
  it("heartbeats every idle member in one pass, skips one that just published, and stops for a forgotten one", async () => {
    const ticker = new HeartbeatTicker(100);
    let pass = 0;
    // A pass is one synchronous run: a microtask scheduled by the first heartbeat of a pass ends it.
    const passes: number[] = [];
    let scheduled = false;
    const currentPass = () => {
      if (!scheduled) {
        scheduled = true;
        queueMicrotask(() => {
          scheduled = false;
          pass++;
        });
      }
      return pass;
    };
    const idle = Array.from({ length: 5 }, () => member(ticker, passes, currentPass));
    const busy = member(ticker, passes, currentPass);
    for (const m of [...idle, busy]) ticker.published(m);
    const busyTimer = setInterval(() => ticker.published(busy), 10);
    try {
      await waitFor(() => idle.every((m) => m.beats >= 3), { timeout: 5000, message: "three heartbeats of every idle member" });
      // Published together, they stay together: each pass holds all five.
      const sizes = new Map<number, number>();
      for (const p of passes) sizes.set(p, (sizes.get(p) ?? 0) + 1);
      expect([...sizes.values()].every((n) => n === 5)).toBe(true);
      expect(busy.beats).toBe(0);

      ticker.forget(idle[0]!);
      ticker.published(idle[0]!); // a message after its close does not bring its heartbeats back
      const before = idle[0]!.beats;
      await waitFor(() => idle[1]!.beats >= before + 2, { timeout: 5000, message: "two more heartbeats of another member" });
      expect(idle[0]!.beats).toBe(before);
    } finally {
      clearInterval(busyTimer);
      ticker.stop();
    }
  });
});

describe("heartbeats of dynamic namespaces on one tick", () => {
  it("idle namespaces on two nodes keep counting each other past heartbeatTimeout, and see a node leave", async () => {
    const HEARTBEAT = { heartbeatInterval: 200, heartbeatTimeout: 1000 };
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: HEARTBEAT });
    const namespaces = Array.from({ length: 8 }, (_, i) => `/dyn-hb${i}`);
    for (const nsp of namespaces) {
      await cluster.connect(0, { nsp });
      await cluster.connect(1, { nsp });
    }
    for (const nsp of namespaces) await cluster.waitForServerCount(nsp);
    // Idle for more than twice heartbeatTimeout: only heartbeats keep the other node counted.
    await new Promise((resolve) => setTimeout(resolve, 2500));
    for (const nsp of namespaces) {
      expect(await cluster.node(0).io.of(nsp).adapter.serverCount()).toBe(2);
      expect(await cluster.node(1).io.of(nsp).adapter.serverCount()).toBe(2);
    }
    await cluster.node(1).close();
    await waitFor(
      async () => (await Promise.all(namespaces.map((nsp) => cluster.node(0).io.of(nsp).adapter.serverCount()))).every((c) => c === 1),
      { timeout: 5000, message: "node 0 to count 1 server in every namespace after node 1 closed" },
    );
  });
});
