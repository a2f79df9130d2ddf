/**
 * The stitch between a restore's replay and live delivery, under what
 * stretches it: middlewares (skipMiddlewares: false) that hold the restored
 * socket while the node delivers more than its ring of recent entries holds,
 * for longer than any timer would wait, or while its connection drops after
 * packets reached the client; and a restoring node whose cursor is behind the
 * client's offset.
 */
import type { Socket as ServerSocket } from "socket.io";
import { describe, expect, it } from "vitest";
import { LISTENER_APPLICATION_NAME } from "../src/index.js";
import {
  Cluster,
  comeBack,
  goOffline,
  logHead,
  recordEvents,
  serverNoticed,
  waitFor,
  waitForHead,
  type ClientSocket,
  type Received,
  type TestNode,
} from "./helpers/cluster.js";
import type { Sequencer } from "../src/sequencer.js";
import { startPostgresProxy } from "./helpers/postgres-proxy.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("recovery_stitch");

function ns(received: Received[]): unknown[] {
  return received.filter((r) => r.event === "ev").map((r) => (r.args[0] as { n: unknown }).n);
}

/** The sequencer of a node's "/" namespace: its delivery cursor, and whether a read is pending. */
function delivery(node: TestNode): Sequencer {
  return (node.io.of("/").adapter as unknown as { sequencer: Sequencer }).sequencer;
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** Middlewares that hold the next restored socket of a node until the test lets it through. */
class Gate {
  held: Array<{ socket: ServerSocket; next: () => void }> = [];
  closedAt = 0;
  private armed = false;

  install(node: TestNode): void {
    node.io.use((socket, next) => {
      if (!socket.recovered || !this.armed) return next();
      this.armed = false;
      this.held.push({ socket, next: () => next() });
    });
  }

  /** The next restored socket stops in the middlewares. */
  arm(): void {
    this.armed = true;
  }

  release(): void {
    for (const { next } of this.held.splice(0)) next();
  }
}

/** A client on node0 in room "r" that received 1..3 live, then missed 4..8 emitted by node1. */
async function missedFive(cluster: Cluster): Promise<{ client: ClientSocket; got: Received[] }> {
  const client = await cluster.connect(0, { rooms: ["r"] });
  const got = recordEvents(client);
  for (const n of range(1, 3)) cluster.node(1).io.to("r").emit("ev", { n });
  await waitFor(() => got.length === 3);
  const sid = client.id!;
  goOffline(client);
  await serverNoticed(cluster.node(0), sid);
  const head = await logHead(cluster.node(0).pool);
  for (const n of range(4, 8)) cluster.node(1).io.to("r").emit("ev", { n });
  await waitForHead(cluster.node(0).pool, head + 5);
  return { client, got };
}

describe("stitching a restore to live delivery", () => {
  it("delivers everything in order when more than recentEntries is delivered between the restore's read and its connection", async () => {
    const gate = new Gate();
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 2,
      skipMiddlewares: false,
      adapter: { recentEntries: 4 },
      setup: (node) => gate.install(node),
    });
    // Sees everything node1 delivers to room "r".
    const watcher = await cluster.connect(1, { rooms: ["r"] });
    const watched = recordEvents(watcher);
    const { client, got } = await missedFive(cluster);
    await waitFor(() => watched.length === 8);

    gate.arm();
    const reconnected = comeBack(client, cluster.node(1), 20_000);
    await waitFor(() => gate.held.length === 1, { message: "the restored socket in the middlewares" });
    // While it waits there, node1 delivers 40 more entries (ten times its ring), some not addressed to it.
    for (const n of range(9, 48)) {
      cluster.node(0).io.to(n % 5 === 0 ? "elsewhere" : "r").emit("ev", { n });
    }
    const addressed = range(9, 48).filter((n) => n % 5 !== 0);
    await waitFor(() => watched.length === 8 + addressed.length, { message: "node1 delivered the 40" });
    gate.release();

    expect(await reconnected).toBe(true);
    cluster.node(0).io.to("r").emit("ev", { n: 49 });
    await waitFor(() => ns(got).includes(49), { message: () => `the live packet after the stitch, got ${JSON.stringify(ns(got))}` });
    expect(ns(got)).toEqual([...range(1, 8), ...addressed, 49]);
    expect(client.connected).toBe(true);
    expect(cluster.nodes.flatMap((n) => n.errors).map(String)).toEqual([]);
  });

  it("sends nothing twice when the connection drops during the middlewares after packets reached the client", async () => {
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 2,
      skipMiddlewares: false,
      setup: (node) => {
        let first = true;
        node.io.use((socket, next) => {
          if (!socket.recovered || !first) return next();
          first = false;
          // Everything the server wrote to this connection so far arrives before this marker (a packet
          // for a namespace the client does not use, which it ignores); then it waits for the drop.
          socket.conn.send('2/marker,["marker"]');
          socket.conn.once("close", () => next());
        });
      },
    });
    const { client, got } = await missedFive(cluster);
    const dropped = new Promise<void>((resolve) => {
      client.io.once("open", () => {
        const engine = client.io.engine;
        engine.on("packet", (packet: { type: string; data?: unknown }) => {
          if (packet.type === "message" && String(packet.data).startsWith("2/marker,")) {
            engine.close();
            resolve();
          }
        });
      });
    });
    const reconnected = comeBack(client, cluster.node(1), 10_000);
    await dropped;
    expect(await reconnected).toBe(true);
    await waitFor(() => ns(got).length >= 8);
    cluster.node(0).io.to("r").emit("ev", { n: 9 });
    await waitFor(() => ns(got).includes(9));
    expect(ns(got)).toEqual(range(1, 9));
  });

  it("delivers what arrived during a middleware slower than 30 s", { timeout: 60_000 }, async () => {
    const gate = new Gate();
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 2,
      skipMiddlewares: false,
      setup: (node) => gate.install(node),
    });
    const watcher = await cluster.connect(1, { rooms: ["r"] });
    const watched = recordEvents(watcher);
    const { client, got } = await missedFive(cluster);
    gate.arm();
    const reconnected = comeBack(client, cluster.node(1), 50_000);
    await waitFor(() => gate.held.length === 1, { message: "the restored socket in the middlewares" });
    for (const n of range(9, 11)) cluster.node(0).io.to("r").emit("ev", { n });
    await waitFor(() => watched.length === 11);
    await new Promise((resolve) => setTimeout(resolve, 31_000));
    gate.release();
    expect(await reconnected).toBe(true);
    cluster.node(0).io.to("r").emit("ev", { n: 12 });
    await waitFor(() => ns(got).includes(12));
    expect(ns(got)).toEqual(range(1, 12));
  });

  it("replays exactly what was missed on a node whose cursor is behind the client's offset", async () => {
    const proxy = await startPostgresProxy(Number(new URL(db.url).port || 5432));
    let cluster: Cluster | undefined;
    try {
      // node1 reaches Postgres through the proxy; its liveness check is far away, so a frozen
      // listener stays frozen until the test cuts it.
      cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
      const lagging = await cluster.addNode({ databaseUrl: proxy.through(db.url), adapter: { listenerCheckIntervalMs: 600_000 } });
      await cluster.waitForServerCount();
      // node1 knows its cursor before its listener freezes (it reads its start after its LISTEN,
      // which a frozen listener would hold). Otherwise, under load, node1 read its start after 6
      // and 7 were emitted but before they committed, and then rightly heard of them only when its
      // listener came back. (A CONNECT to node1 waits for the cursor at most unloggedDeliveryAfterMs.)
      await waitFor(() => delivery(lagging).cursor !== undefined, { message: "node1's cursor" });
      const client = await cluster.connect(0, { rooms: ["lag"] });
      const got = recordEvents(client);
      expect(proxy.freeze((c) => c.applicationName === LISTENER_APPLICATION_NAME)).toBe(1);
      // From here on node1 learns of entries only by reading the table. The catch-up read of its
      // start may still be under way (its pool is slow under load): landing after 5 committed and
      // before 6 did, it put node1's cursor at the client's offset, unaware of 6 and 7 (as above),
      // and the restore had nothing to wait for: [1..5] until the listener came back. No read of
      // node1's is left when 1 commits.
      await waitFor(() => delivery(lagging).idle, { message: "node1's catch-up read of its start" });
      for (const n of range(1, 5)) cluster.node(0).io.to("lag").emit("ev", { n });
      await waitFor(() => got.length === 5);
      const sid = client.id!;
      goOffline(client);
      await serverNoticed(cluster.node(0), sid);
      const head = await logHead(cluster.node(0).pool);
      for (const n of range(6, 7)) cluster.node(0).io.to("lag").emit("ev", { n });
      await waitForHead(cluster.node(0).pool, head + 2);
      // node1 has heard of none of the 7 entries: its cursor is behind the client's offset o5.
      expect(delivery(lagging).cursor).toBeLessThan(head);
      expect(await comeBack(client, lagging)).toBe(true);
      await waitFor(() => got.length >= 7, { message: () => `7 packets, got ${JSON.stringify(ns(got))}` });
      // node1 hears of new entries again (its listener reconnects and catches up).
      expect(proxy.cut((c) => c.applicationName === LISTENER_APPLICATION_NAME)).toBe(1);
      cluster.node(0).io.to("lag").emit("ev", { n: 8 });
      await waitFor(() => ns(got).includes(8), { timeout: 8000 });
      lagging.io.to("lag").emit("ev", { n: 9 });
      await waitFor(() => ns(got).includes(9));
      expect(ns(got)).toEqual(range(1, 9));
    } finally {
      await cluster?.close();
      await proxy.close();
    }
  });
});
