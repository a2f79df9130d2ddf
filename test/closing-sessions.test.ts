/**
 * A socket's transport closes while an operation issued before the close
 * still waits for program order (closing-sessions.ts): the session it
 * restores is the one the operation made, as with Socket.IO's in-memory
 * adapter, where every operation has applied by the time the session is stored.
 *
 * Each case issues an event to a room (so that the operation after it must
 * wait for its commit), the operation, and closes the transport in the same
 * tick, on the server: the operation cannot have applied at the close. The
 * client then comes back on the same node or the other one, and events sent
 * after the operation show which rooms the restored socket is in.
 */
import type { Socket as ServerSocket } from "socket.io";
import { describe, expect, it } from "vitest";
import { LISTENER_APPLICATION_NAME } from "../src/index.js";
import type { ProgramOrder } from "../src/program-order.js";
import type { Sequencer } from "../src/sequencer.js";
import { Cluster, moveTo, once, recordEvents, waitFor, type ClientSocket, type Received, type TestNode } from "./helpers/cluster.js";
import { startPostgresProxy, type PostgresProxy } from "./helpers/postgres-proxy.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("closing_sessions");

const names = (received: Received[]) => received.map((r) => r.event);

/** Over the NOTIFY payload: the other nodes read the entry from the table, through their pool. */
const PAD = "x".repeat(9000);

function serverSocket(node: TestNode, client: ClientSocket): ServerSocket {
  const socket = node.io.sockets.sockets.get(client.id!);
  if (!socket) throw new Error(`${client.id} is not on ${node.name}`);
  return socket;
}

/** Closes the transport now, from the server (Socket.IO stores the session), and resolves once the client is back on `node`. */
async function closeAndComeBack(socket: ServerSocket, client: ClientSocket, node: TestNode): Promise<boolean> {
  moveTo(client, node);
  const back = once(client, "connect", 10_000);
  socket.conn.close();
  await back;
  return client.recovered;
}

for (const where of ["same", "other"] as const) {
  describe(`coming back on the ${where} node`, () => {
    async function setup(rooms: string[]) {
      const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
      const issuer = cluster.node(0);
      const target = where === "same" ? issuer : cluster.node(1);
      const client = await cluster.connect(issuer, { rooms, reconnectionDelay: 0 });
      const received = recordEvents(client);
      return { cluster, issuer, target, client, received, socket: serverSocket(issuer, client) };
    }

    it("socket.leave(room) waiting for an event to the room: the restored socket gets the event, and nothing sent to the room after the leave", async () => {
      const { cluster, issuer, target, client, received, socket } = await setup(["b"]);
      try {
        issuer.io.to("b").emit("before-leave", { n: 1 });
        const leave = socket.leave("b");
        // It waits for the event's commit: the close below comes first.
        expect(leave).toBeInstanceOf(Promise);
        expect(await closeAndComeBack(socket, client, target)).toBe(true);
        await leave;
        target.io.to("b").emit("after-leave", { n: 2 });
        issuer.io.to("b").emit("after-leave", { n: 3 });
        target.io.emit("marker", {});
        await waitFor(() => names(received).includes("marker"), { message: () => `the marker (got ${names(received).join(", ")})` });
        expect(names(received)).toEqual(["before-leave", "marker"]);
        expect(serverSocket(target, client).rooms.has("b")).toBe(false);
      } finally {
        await cluster.close();
      }
    });

    it("io.in(room).socketsLeave(room) and io.in(sid).socketsJoin(room) waiting for an event: the restored socket is in the joined room only", async () => {
      const { cluster, issuer, target, client, received, socket } = await setup(["b"]);
      try {
        issuer.io.to("b").emit("before-leave", { n: 1 });
        issuer.io.in("b").socketsLeave("b");
        issuer.io.in(client.id!).socketsJoin("c");
        expect(await closeAndComeBack(socket, client, target)).toBe(true);
        await waitFor(() => names(received).includes("before-leave"), { message: "the event before the leave" });
        target.io.to("b").emit("to-b", {});
        target.io.to("c").emit("to-c", {});
        target.io.emit("marker", {});
        await waitFor(() => names(received).includes("marker"), { message: () => `the marker (got ${names(received).join(", ")})` });
        expect(names(received)).toEqual(["before-leave", "to-c", "marker"]);
        const rooms = serverSocket(target, client).rooms;
        expect(rooms.has("b")).toBe(false);
        expect(rooms.has("c")).toBe(true);
      } finally {
        await cluster.close();
      }
    });

    it("socket.disconnect() waiting for an event: no session is stored, as when it disconnects first", async () => {
      const { cluster, issuer, target, client, socket } = await setup(["b"]);
      try {
        const sid = client.id!;
        socket.emit("bye", { n: 1 });
        socket.disconnect();
        // Still connected: the disconnect waits for the event.
        expect(socket.connected).toBe(true);
        expect(await closeAndComeBack(socket, client, target)).toBe(false);
        expect(client.id).not.toBe(sid);
      } finally {
        await cluster.close();
      }
    });

    it("io.in(room).disconnectSockets() waiting for an event: no session is stored", async () => {
      const { cluster, issuer, target, client, socket } = await setup(["b"]);
      try {
        issuer.io.to("b").emit("last-call", { n: 1 });
        void issuer.io.in("b").disconnectSockets();
        expect(socket.connected).toBe(true);
        expect(await closeAndComeBack(socket, client, target)).toBe(false);
      } finally {
        await cluster.close();
      }
    });
  });
}

it("a socket closing with nothing queued before it stores its session at once (the usual path)", async () => {
  const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
  try {
    const client = await cluster.connect(0, { rooms: ["b"], reconnectionDelay: 0 });
    const received = recordEvents(client);
    const socket = serverSocket(cluster.node(0), client);
    socket.leave("b");
    expect(socket.rooms.has("b")).toBe(false);
    expect(await closeAndComeBack(socket, client, cluster.node(1))).toBe(true);
    cluster.node(1).io.to("b").emit("to-b", {});
    cluster.node(1).io.emit("marker", {});
    await waitFor(() => names(received).includes("marker"), { message: "the marker" });
    expect(names(received)).toEqual(["marker"]);
  } finally {
    await cluster.close();
  }
});

/**
 * Another node's operation: node1 emits a large event to "b" and then
 * `io.in("b").socketsLeave("b")` (or socketsJoin, disconnectSockets). node1
 * applies it after delivering the event and publishes it with that offset;
 * node0, whose client is in "b", must read the event from the table through
 * its pool, which the test stalls (its listener stays live): the operation
 * reaches node0 and waits there in `order.remote()`. The client's transport
 * closes then, so its session is a closing one, and the remote operation must
 * change it when it applies (src/adapter.ts, onClusterMessage).
 */
for (const where of ["same", "other"] as const) {
  describe(`another node's operation waiting here at the close, coming back on the ${where} node`, () => {
    const isPool = (c: { applicationName: string }) => c.applicationName !== LISTENER_APPLICATION_NAME;

    function orderOf(node: TestNode): ProgramOrder {
      return (node.io.of("/").adapter as unknown as { order: ProgramOrder }).order;
    }

    async function setup(run: (rig: {
      proxy: PostgresProxy;
      home: TestNode;
      issuer: TestNode;
      target: TestNode;
      client: ClientSocket;
      received: Received[];
      socket: ServerSocket;
    }) => Promise<void>): Promise<void> {
      const proxy = await startPostgresProxy(Number(new URL(db.url).port || 5432));
      let cluster: Cluster | undefined;
      try {
        // node0, the client's, reaches Postgres through the proxy (pool and listener); node1 directly.
        // node0's operation may wait the whole time the test stalls its pool: 10 s instead of 2 s before
        // it would be forced (the stall is the test's, it lasts until the transport closed).
        cluster = await Cluster.start({ databaseUrl: proxy.through(db.url), nodes: 1, adapter: { unloggedDeliveryAfterMs: 10_000 } });
        const home = cluster.node(0);
        const issuer = await cluster.addNode({ databaseUrl: db.url, adapter: {} });
        const target = where === "same" ? home : issuer;
        const client = await cluster.connect(home, { rooms: ["b"], reconnectionDelay: 0 });
        const received = recordEvents(client);
        await run({ proxy, home, issuer, target, client, received, socket: serverSocket(home, client) });
      } finally {
        proxy.unstall();
        proxy.release();
        await cluster?.close();
        await proxy.close();
      }
    }

    /**
     * Stalls node0's pool (its open connections, and new ones wait), runs `issue` on node1, and
     * waits until node1's operation waits in node0's program order: node0 heard it on its
     * listener, while its cursor is behind the large event (not read: the pool does not answer).
     */
    async function queuedOnHome(proxy: PostgresProxy, home: TestNode, issue: () => void): Promise<void> {
      proxy.hold();
      proxy.stall(isPool);
      expect(orderOf(home).operationsQueued).toBe(false);
      issue();
      await waitFor(() => orderOf(home).operationsQueued, { message: "node1's operation waiting in node0's program order" });
    }

    /** Closes the transport on node0 (its session is a closing one now), lets node0's pool answer, and waits for the client back on `node`. */
    async function closeThenComeBack(proxy: PostgresProxy, socket: ServerSocket, client: ClientSocket, node: TestNode): Promise<boolean> {
      moveTo(client, node);
      const back = once(client, "connect", 10_000);
      socket.conn.close();
      proxy.release();
      proxy.unstall();
      await back;
      return client.recovered;
    }

    /** Every node sends `event` to `room`, then a marker to everyone; resolves once both markers arrived. */
    async function probe(nodes: TestNode[], received: Received[], room: string, event: string): Promise<void> {
      for (const node of nodes) {
        node.io.to(room).emit(event, { from: node.name });
        node.io.emit("marker", { from: node.name });
      }
      await waitFor(() => names(received).filter((n) => n === "marker").length === nodes.length, {
        message: () => `the markers (got ${names(received).join(", ")})`,
      });
    }

    it("io.in(room).socketsLeave(room): the restored socket gets the event before the leave once, and nothing sent to the room after it", async () => {
      await setup(async ({ proxy, home, issuer, target, client, received, socket }) => {
        await queuedOnHome(proxy, home, () => {
          issuer.io.to("b").emit("before-leave", { pad: PAD });
          issuer.io.in("b").socketsLeave("b");
          issuer.io.to("b").emit("after-leave", { n: 1 }); // after the leave in node1's program order
        });
        expect(await closeThenComeBack(proxy, socket, client, target)).toBe(true);
        await probe([home, issuer], received, "b", "to-b");
        expect(names(received)).toEqual(["before-leave", "marker", "marker"]);
        expect(serverSocket(target, client).rooms.has("b")).toBe(false);
      });
    });

    it("io.in(room).socketsJoin(other): the restored socket is in both rooms, from the join on", async () => {
      await setup(async ({ proxy, home, issuer, target, client, received, socket }) => {
        await queuedOnHome(proxy, home, () => {
          issuer.io.to("c").emit("before-join", { n: 1 }); // before the join: not for the socket
          issuer.io.to("b").emit("big", { pad: PAD });
          issuer.io.in("b").socketsJoin("c");
        });
        expect(await closeThenComeBack(proxy, socket, client, target)).toBe(true);
        await probe([home, issuer], received, "c", "to-c");
        expect(names(received)[0]).toBe("big");
        expect([...names(received)].sort()).toEqual(["big", "marker", "marker", "to-c", "to-c"]);
        const rooms = serverSocket(target, client).rooms;
        expect(rooms.has("b")).toBe(true);
        expect(rooms.has("c")).toBe(true);
      });
    });

    it("io.in(room).disconnectSockets(): no session is stored", async () => {
      await setup(async ({ proxy, home, issuer, target, client, socket }) => {
        const sid = client.id!;
        await queuedOnHome(proxy, home, () => {
          issuer.io.to("b").emit("last-call", { pad: PAD });
          void issuer.io.in("b").disconnectSockets();
        });
        expect(socket.connected).toBe(true);
        expect(await closeThenComeBack(proxy, socket, client, target)).toBe(false);
        expect(client.id).not.toBe(sid);
      });
    });
  });
}

/**
 * A closing session's operations apply after the close, at the cursor of the
 * node that held it: a node coming back behind that cursor must not restore
 * before it delivered up to there. Its live rooms are the session's final
 * ones; an entry in between to a room left would be delivered live by them
 * (lost), one to a room joined later would reach the socket (extra).
 *
 * node1's listener is stalled, so it hears nothing of node0's entries and
 * operations; its pool still answers (the take, the replay's read).
 */
it("a restore on a node behind the session's room changes waits for them: the event before the leave is replayed, the one before the join is not", async () => {
  const proxy = await startPostgresProxy(Number(new URL(db.url).port || 5432));
  let cluster: Cluster | undefined;
  try {
    cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
    const issuer = cluster.node(0);
    // No listener health check while the test stalls it (it would reconnect and catch up).
    const behind = await cluster.addNode({ databaseUrl: proxy.through(db.url), adapter: { listenerCheckIntervalMs: 600_000 } });
    // node1's namespace reads its start after its LISTEN, which a stalled listener would hold: it
    // starts first (else, under load, it never started and the restore timed out), and its
    // catch-up read of that start is over, so that it hears of node0's entries only by a restore.
    const sequencer = (node: TestNode) => (node.io.of("/").adapter as unknown as { sequencer: Sequencer }).sequencer;
    await waitFor(() => sequencer(behind).cursor !== undefined, { message: "node1's cursor" });
    const client = await cluster.connect(issuer, { rooms: ["b"], reconnectionDelay: 0 });
    const received = recordEvents(client);
    const socket = serverSocket(issuer, client);
    expect(proxy.stall((c) => c.applicationName === LISTENER_APPLICATION_NAME)).toBe(1);
    await waitFor(() => sequencer(behind).idle, { message: "node1's catch-up read of its start" });
    issuer.io.to("b").emit("before-leave", { n: 1 });
    issuer.io.to("c").emit("before-join", { n: 2 });
    issuer.io.in("b").socketsLeave("b");
    issuer.io.in(client.id!).socketsJoin("c");
    expect(await closeAndComeBack(socket, client, behind)).toBe(true);
    proxy.unstall();
    for (const node of [issuer, behind]) {
      node.io.to("b").emit("to-b", {});
      node.io.to("c").emit("to-c", {});
      node.io.emit("marker", {});
    }
    await waitFor(() => names(received).filter((n) => n === "marker").length === 2, {
      message: () => `the markers (got ${names(received).join(", ")})`,
    });
    expect(names(received)[0]).toBe("before-leave");
    expect([...names(received)].sort()).toEqual(["before-leave", "marker", "marker", "to-c", "to-c"]);
  } finally {
    proxy.unstall();
    await cluster?.close();
    await proxy.close();
  }
});
