/**
 * Program order: an event a node emits before a room or disconnect operation
 * is delivered before the operation applies, on every node, as with the
 * in-memory adapter (`io.to(room).emit("closing"); io.socketsLeave(room)`,
 * `io.emit("bye"); io.disconnectSockets(true)`, `socket.emit("banned");
 * socket.disconnect()`, `socket.leave()`, `socket.join()`), and operations
 * apply in the order they were issued.
 *
 * Every case runs on one node and on two (each node with its own pool; the
 * operation issued on node0, the client on node1 where it goes through the
 * cluster). A case that would lose the event is detected by a marker sent to
 * everyone afterwards: one order means the event arrives before the marker.
 */
import { describe, expect, it } from "vitest";
import type { Socket as ServerSocket } from "socket.io";
import {
  Cluster,
  once,
  recordEvents,
  waitFor,
  type ClientSocket,
  type Received,
  type TestNode,
} from "./helpers/cluster.js";
import { LISTENER_APPLICATION_NAME } from "../src/index.js";
import { startPostgresProxy } from "./helpers/postgres-proxy.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("program_order");

const names = (received: Received[]) => received.map((e) => e.event);

/**
 * Over a NOTIFY payload: the other node reads it from the table, a round trip
 * later than a cluster message sent at the same time would arrive.
 */
const PAD = "x".repeat(9000);

function serverSocket(node: TestNode, client: ClientSocket, nsp = "/"): ServerSocket {
  const socket = node.io.of(nsp).sockets.get(client.id!);
  if (!socket) throw new Error(`${client.id} is not on ${node.name}`);
  return socket;
}

async function waitForEvent(received: Received[], event: string): Promise<void> {
  await waitFor(() => names(received).includes(event), { message: () => `"${event}" (got ${names(received).join(", ")})` });
}

for (const nodes of [1, 2]) {
  describe(`on ${nodes} node${nodes > 1 ? "s" : ""}`, () => {
    /** The node that issues everything, and the node its target client is on. */
    async function setup(): Promise<{ cluster: Cluster; issuer: TestNode; clientNode: TestNode }> {
      const cluster = await Cluster.start({ databaseUrl: db.url, nodes });
      return { cluster, issuer: cluster.node(0), clientNode: cluster.node(nodes - 1) };
    }

    it("io.to(room).emit() then io.socketsLeave(room): the room still gets the event", async () => {
      const { cluster, issuer, clientNode } = await setup();
      const client = await cluster.connect(clientNode, { rooms: ["lobby"] });
      const received = recordEvents(client);
      issuer.io.to("lobby").emit("closing", { n: 1, pad: PAD });
      issuer.io.socketsLeave("lobby");
      issuer.io.emit("marker", {});
      await waitForEvent(received, "marker");
      expect(names(received)).toEqual(["closing", "marker"]);
      const { rooms } = (await client.timeout(3000).emitWithAck("whoami")) as { rooms: string[] };
      expect(rooms).not.toContain("lobby");
    });

    it("io.emit() then io.disconnectSockets(true): the event arrives before the disconnection", async () => {
      const { cluster, issuer, clientNode } = await setup();
      const client = await cluster.connect(clientNode);
      const received = recordEvents(client);
      const disconnected = once<[string]>(client, "disconnect");
      issuer.io.emit("bye", { n: 1, pad: PAD });
      issuer.io.disconnectSockets(true);
      await disconnected;
      expect(names(received)).toEqual(["bye"]);
    });

    it("io.to(sid).emit() then io.in(sid).disconnectSockets(): the event arrives before the disconnection", async () => {
      const { cluster, issuer, clientNode } = await setup();
      const client = await cluster.connect(clientNode);
      const received = recordEvents(client);
      const disconnected = once<[string]>(client, "disconnect");
      issuer.io.to(client.id!).emit("banned", { n: 1, pad: PAD });
      issuer.io.in(client.id!).disconnectSockets();
      expect((await disconnected)[0]).toBe("io server disconnect");
      expect(names(received)).toEqual(["banned"]);
    });

    it("socket.emit() then socket.disconnect() on a local socket: the event arrives first", async () => {
      const { cluster, issuer } = await setup();
      const client = await cluster.connect(issuer);
      const received = recordEvents(client);
      const disconnected = once<[string]>(client, "disconnect");
      const socket = serverSocket(issuer, client);
      socket.emit("banned", { n: 1, pad: PAD });
      socket.disconnect();
      expect((await disconnected)[0]).toBe("io server disconnect");
      expect(names(received)).toEqual(["banned"]);
    });

    it("io.to(room).emit() then socket.leave(room) on a local socket: the socket still gets the event", async () => {
      const { cluster, issuer } = await setup();
      const client = await cluster.connect(issuer, { rooms: ["lobby"] });
      const received = recordEvents(client);
      const socket = serverSocket(issuer, client);
      issuer.io.to("lobby").emit("closing", { n: 1, pad: PAD });
      await socket.leave("lobby");
      issuer.io.emit("marker", {});
      await waitForEvent(received, "marker");
      expect(names(received)).toEqual(["closing", "marker"]);
      expect(socket.rooms.has("lobby")).toBe(false);
    });

    it("socket.join(room) on a local socket applies at once (documented: an event sent to the room just before reaches it too)", async () => {
      const { cluster, issuer } = await setup();
      const client = await cluster.connect(issuer);
      const received = recordEvents(client);
      const socket = serverSocket(issuer, client);
      issuer.io.to("lobby").emit("before", { n: 1, pad: PAD });
      socket.join("lobby");
      expect(socket.rooms.has("lobby")).toBe(true);
      issuer.io.to("lobby").emit("after", { n: 2 });
      await waitForEvent(received, "after");
      // A join never waits (it would make the socket miss other nodes' events to the room
      // meanwhile); the in-memory adapter would not send "before". The replay agrees with this.
      expect(names(received)).toEqual(["before", "after"]);
    });

    it("socketsJoin, an event to the room, socketsLeave: applied in that order", async () => {
      const { cluster, issuer, clientNode } = await setup();
      const client = await cluster.connect(clientNode);
      const received = recordEvents(client);
      for (let i = 0; i < 3; i++) {
        issuer.io.socketsJoin("stage");
        issuer.io.to("stage").emit("on-stage", { i, pad: PAD });
        issuer.io.socketsLeave("stage");
        issuer.io.to("stage").emit("off-stage", { i });
      }
      issuer.io.emit("marker", {});
      await waitForEvent(received, "marker");
      expect(names(received)).toEqual(["on-stage", "on-stage", "on-stage", "marker"]);
    });
  });
}

describe("an operation after events whose offsets this node does not know yet", () => {
  it("socket.leave() stays between two events of one batch when the log's NOTIFY comes before the append's answer", async () => {
    const proxy = await startPostgresProxy(Number(new URL(db.url).port || 5432));
    let cluster: Cluster | undefined;
    try {
      cluster = await Cluster.start({ databaseUrl: proxy.through(db.url), nodes: 1, poolMax: 1 });
      const node = cluster.node(0);
      const client = await cluster.connect(node, { rooms: ["lobby"] });
      const received = recordEvents(client);
      const socket = serverSocket(node, client);
      // Answers on the pool's connection come 150 ms late; the listener hears the NOTIFY at once.
      expect(proxy.delayAnswers((c) => c.applicationName !== LISTENER_APPLICATION_NAME, 150)).toBe(1);
      node.io.to("lobby").emit("before", { n: 1 });
      void socket.leave("lobby");
      node.io.to("lobby").emit("after", { n: 2 }); // same batch as "before"
      node.io.emit("marker", {});
      await waitForEvent(received, "marker");
      expect(names(received)).toEqual(["before", "marker"]);
    } finally {
      await cluster?.close();
      await proxy.close();
    }
  });
});

describe("an operation waiting for a log that does not answer", () => {
  it("applies after unloggedDeliveryAfterMs, and says so", async () => {
    const proxy = await startPostgresProxy(Number(new URL(db.url).port || 5432));
    let cluster: Cluster | undefined;
    try {
      cluster = await Cluster.start({
        databaseUrl: proxy.through(db.url),
        nodes: 1,
        adapter: { unloggedDeliveryAfterMs: 300 },
      });
      const node = cluster.node(0);
      const client = await cluster.connect(node);
      const disconnected = once<[string]>(client, "disconnect");
      const socket = serverSocket(node, client);
      // The append of "banned" gets no answer: its commit is in doubt, so it is not delivered.
      proxy.stall(() => true);
      proxy.hold();
      socket.emit("banned", { n: 1 });
      socket.disconnect();
      expect(socket.connected).toBe(true); // waits for "banned"
      expect((await disconnected)[0]).toBe("io server disconnect");
      expect(node.errors.map((e) => e.message).join("\n")).toMatch(/waited 300 ms for the events emitted before it/);
    } finally {
      proxy.unstall();
      proxy.release();
      await cluster?.close();
      await proxy.close();
    }
  });
});
