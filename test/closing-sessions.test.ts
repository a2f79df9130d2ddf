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
import { Cluster, moveTo, once, recordEvents, waitFor, type ClientSocket, type Received, type TestNode } from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("closing_sessions");

const names = (received: Received[]) => received.map((r) => r.event);

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
