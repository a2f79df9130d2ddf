/**
 * A client that connects to a namespace whose cursor is not known yet (a node
 * that just started, a dynamic namespace at its first connection) must get
 * every logged event addressed to it after its CONNECT, whichever node emits
 * it. The node's database is made slow on purpose (test/helpers/postgres-proxy.ts
 * holds its connections), and the other node emits to the client as soon as
 * the client is connected: the emit commits before the slow node learns the
 * head, which is what lost it.
 */
import { describe, expect, it } from "vitest";
import type { Server } from "socket.io";
import {
  Cluster,
  connected,
  once,
  recordEvents,
  waitFor,
  waitForHead,
  type ClientSocket,
  type TestNode,
} from "./helpers/cluster.js";
import { startPostgresProxy, type PostgresProxy } from "./helpers/postgres-proxy.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("startup_order");

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Resolves once `io`'s engine received a Socket.IO CONNECT packet for `nsp`. */
function connectPacketReceived(io: Server, nsp: string): Promise<void> {
  return new Promise<void>((resolve) => {
    io.engine.on("connection", (conn: { on(event: "packet", fn: (p: { type: string; data?: unknown }) => void): void }) => {
      conn.on("packet", (packet) => {
        if (packet.type !== "message" || typeof packet.data !== "string") return;
        // "0" is CONNECT; the namespace follows for any but "/" ("0/dyn-x,{...}").
        const isConnect = packet.data.startsWith(nsp === "/" ? "0" : `0${nsp},`) && (nsp !== "/" || !packet.data.startsWith("0/"));
        if (isConnect) resolve();
      });
    });
  });
}

/**
 * Connects a client to `slow` in `nsp` while `slow`'s database does not answer,
 * makes `fast` emit "hello" to it as soon as it is connected, and lets the
 * database answer only after that emit committed when the CONNECT went out
 * before the namespace knew its cursor. Resolves with what the client received.
 */
async function emitRightAfterConnect(
  cluster: Cluster,
  slow: TestNode,
  fast: TestNode,
  nsp: string,
  letDatabaseAnswer: () => void,
): Promise<{ socket: ClientSocket; helloReceived: () => boolean }> {
  const packet = connectPacketReceived(slow.io, nsp);
  const socket = cluster.client(slow, { nsp });
  const received = recordEvents(socket);
  socket.once("connect", () => {
    fast.io.of(nsp).to(socket.id!).emit("hello", { from: fast.name });
  });
  await packet;
  // Socket.IO answers a CONNECT within a few turns when nothing holds it.
  for (let i = 0; i < 5; i++) await nextTurn();
  if (slow.io.of(nsp).sockets.size > 0) {
    // The CONNECT went out while the namespace was starting: let the emit commit first.
    await waitForHead(fast.pool, 1, nsp);
  }
  letDatabaseAnswer();
  await connected(socket);
  return { socket, helloReceived: () => received.some((e) => e.event === "hello") };
}

async function proxyTo(url: string): Promise<PostgresProxy> {
  return startPostgresProxy(Number(new URL(url).port || 5432));
}

describe("events addressed to a client right after its CONNECT", () => {
  it("reach it when the node's database answers late at startup", async () => {
    const proxy = await proxyTo(db.url);
    let cluster: Cluster | undefined;
    try {
      cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
      const fast = cluster.node(0);
      proxy.hold();
      const slow = await cluster.addNode({ databaseUrl: proxy.through(db.url) });
      const { helloReceived } = await emitRightAfterConnect(cluster, slow, fast, "/", () => proxy.release());
      await waitFor(helloReceived, { timeout: 3000, message: `"hello" from ${fast.name} on the client of ${slow.name}` });
      expect(helloReceived()).toBe(true);
    } finally {
      proxy.unstall();
      proxy.release();
      await cluster?.close(); // before the proxy: the slow node writes its sessions through it
      await proxy.close();
    }
  });

  it("reach it at the first connection of a dynamic namespace on a running node", async () => {
    const proxy = await proxyTo(db.url);
    let cluster: Cluster | undefined;
    try {
      cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
      const fast = cluster.node(0);
      const slow = await cluster.addNode({ databaseUrl: proxy.through(db.url) });
      await cluster.connect(slow); // "/" started: the node is up and its connections are open
      const nsp = "/dyn-late";
      // The child namespace's start (LISTEN, reading its head) gets no answer until released.
      proxy.hold();
      expect(proxy.stall(() => true)).toBeGreaterThan(0);
      const { helloReceived } = await emitRightAfterConnect(cluster, slow, fast, nsp, () => {
        proxy.unstall();
        proxy.release();
      });
      await waitFor(helloReceived, { timeout: 3000, message: `"hello" from ${fast.name} in ${nsp}` });
      expect(helloReceived()).toBe(true);
    } finally {
      proxy.unstall();
      proxy.release();
      await cluster?.close(); // before the proxy: the slow node writes its sessions through it
      await proxy.close();
    }
  });

  it("close the connection of a client let in before the namespace started, which then starts afresh", async () => {
    const proxy = await proxyTo(db.url);
    let cluster: Cluster | undefined;
    try {
      cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
      const fast = cluster.node(0);
      proxy.hold();
      // Waits at most 100 ms for the namespace, like outage mode: then the client is let in.
      const slow = await cluster.addNode({
        databaseUrl: proxy.through(db.url),
        adapter: { unloggedDeliveryAfterMs: 100 },
      });
      const socket = cluster.client(slow, { waitForOffset: false });
      await connected(socket);
      const firstId = socket.id;
      // Another node emits to it while this node still cannot read the head: it would be lost.
      fast.io.to(firstId!).emit("while-starting", {});
      await waitForHead(fast.pool, 1);
      const dropped = once<[string]>(socket, "disconnect");
      proxy.release();
      expect((await dropped)[0]).toBe("transport close");
      await waitFor(() => socket.connected && socket.id !== firstId, { message: "the client to reconnect" });
      expect(socket.recovered).toBe(false);
      expect(slow.errors.map((e) => e.message).join("\n")).toMatch(/connected before the namespace started/);
    } finally {
      proxy.release();
      await cluster?.close();
      await proxy.close();
    }
  });
});
