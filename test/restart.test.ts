/**
 * Graceful restart of a node running in its own process: on SIGTERM it runs
 * `io.close()` (sessions flushed), its clients recover on another node, and
 * those that wait for it recover on the restarted node; what was emitted
 * meanwhile is delivered once.
 */
import { describe, expect, it } from "vitest";
import {
  Cluster,
  comeBack,
  goOffline,
  moveTo,
  recoveryFields,
  spawnNode,
  waitFor,
  type ChildNode,
} from "./helpers/cluster.js";
import { History, logOffsets, type ClientHandle } from "./helpers/history.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("restart");

/** Emits from a child node and records it. */
async function childEmit(history: History, child: ChildNode, target: { rooms?: string[] }): Promise<void> {
  const emission = history.record(target, child.name);
  await child.emit({ rooms: target.rooms }, "ev", { id: emission.id });
}

describe("graceful restart", () => {
  it("clients of a SIGTERMed node recover on another node, then on the restarted one; nothing lost or doubled", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
    const inProcess = cluster.node(0);
    let child = await spawnNode({ databaseUrl: db.url, name: "child" });
    const port = child.port;
    const history = new History();

    const clients: ClientHandle[] = [];
    for (let i = 0; i < 8; i++) {
      const rooms = i % 2 === 0 ? ["r"] : ["r", "odd"];
      const socket = cluster.client(child, { rooms, reconnectionDelay: 100 });
      clients.push(history.watch(socket, `c${i}`, rooms));
    }
    await waitFor(
      () => clients.every((c) => c.socket.connected && recoveryFields(c.socket)._lastOffset !== undefined),
      { timeout: 10_000, message: "clients connected to the child node" },
    );
    const sockets = await child.command({ cmd: "sockets", nsp: "/" });
    expect((sockets.sockets as string[]).sort()).toEqual(clients.map((c) => c.socket.id).sort());

    // Traffic before the restart, from both nodes.
    for (let i = 0; i < 10; i++) {
      history.emit(inProcess.io, { rooms: ["r"] }, "inproc");
      await childEmit(history, child, { rooms: ["odd"] });
    }
    await history.settle();

    // Half the clients will reconnect to the in-process node, the others keep waiting for the child.
    const movers = clients.filter((_, i) => i < 4);
    const waiters = clients.filter((_, i) => i >= 4);
    for (const c of movers) moveTo(c.socket, inProcess.url);

    expect(await child.stop("SIGTERM")).toBe(0);
    expect(child.stderr.join("")).not.toMatch(/adapter error|close failed/);

    // While the child is down: traffic from the in-process node.
    for (let i = 0; i < 10; i++) {
      history.emit(inProcess.io, { rooms: ["r"] }, "inproc");
      history.emit(inProcess.io, { rooms: ["odd"] }, "inproc");
      history.emit(inProcess.io, {}, "inproc");
    }
    await waitFor(() => movers.every((c) => c.socket.connected), { timeout: 10_000, message: "movers reconnected" });
    expect(movers.every((c) => c.reconnections.at(-1)?.recovered === true)).toBe(true);
    expect(waiters.every((c) => !c.socket.connected)).toBe(true);

    // Restart on the same port: the waiters recover there.
    child = await spawnNode({ databaseUrl: db.url, name: "child2", port });
    await waitFor(() => waiters.every((c) => c.socket.connected), { timeout: 15_000, message: "waiters reconnected" });
    expect(waiters.every((c) => c.reconnections.at(-1)?.recovered === true)).toBe(true);

    // The movers now go back to the restarted node and recover there too.
    for (const c of movers) {
      goOffline(c.socket);
      expect(await comeBack(c.socket, child.url)).toBe(true);
    }
    const onChild = await child.command({ cmd: "sockets", nsp: "/" });
    expect((onChild.sockets as string[]).sort()).toEqual(clients.map((c) => c.socket.id).sort());

    for (let i = 0; i < 10; i++) {
      history.emit(inProcess.io, { rooms: ["odd"] }, "inproc");
      await childEmit(history, child, { rooms: ["r"] });
    }
    const lookup = () => logOffsets(inProcess.pool);
    await history.settle({ lookup, timeout: 10_000 });
    history.assertClean({ lookup: await lookup() });
    expect(history.stats().refusals).toBe(0);
    expect(clients.every((c) => c.tracks.length === 1)).toBe(true);

    expect(await child.stop("SIGTERM")).toBe(0);
  });

  it("a node's SIGTERM writes the sessions of its sockets before it exits", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
    const child = await spawnNode({ databaseUrl: db.url, name: "child" });
    const socket = await cluster.connect(child, { rooms: ["flush"], reconnectionDelay: 100 });
    const sid = socket.id!;
    // Stay disconnected when the server goes away, to look at the table first.
    socket.io.reconnection(false);
    expect(await child.stop("SIGTERM")).toBe(0);
    await waitFor(() => !socket.connected);
    const { rows } = await cluster
      .node(0)
      .pool.query<{ sid: string }>(`SELECT sid FROM socket_io.sessions WHERE sid = $1`, [sid]);
    expect(rows).toEqual([{ sid }]);
    expect(await comeBack(socket, cluster.node(0))).toBe(true);
    expect(socket.id).toBe(sid);
  });

  /** Records `count` packets to room "late" and has the child emit them in one go, then SIGTERMs it. */
  async function burstThenStop(history: History, child: ChildNode, count: number): Promise<void> {
    const first = history.record({ rooms: ["late"] }, "child");
    for (let i = 2; i <= count; i++) history.record({ rooms: ["late"] }, "child");
    const prefix = first.id.slice(0, first.id.lastIndexOf(":") + 1);
    await child.command({ cmd: "emit-burst", rooms: ["late"], count, prefix });
    expect(await child.stop("SIGTERM")).toBe(0);
  }

  it("packets a running node accepted just before SIGTERM are still logged and delivered", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
    const child = await spawnNode({ databaseUrl: db.url, name: "child" });
    // A client of the child got its prime event: the child's namespace has started.
    await cluster.connect(child);
    const history = new History();
    const socket = cluster.client(0, { rooms: ["late"] });
    const client = history.watch(socket, "c", ["late"]);
    await waitFor(() => socket.connected && recoveryFields(socket)._lastOffset !== undefined);
    await burstThenStop(history, child, 300);
    expect(child.stderr.join("")).toBe("");
    const lookup = () => logOffsets(cluster.node(0).pool);
    await history.settle({ lookup, timeout: 10_000 });
    history.assertClean({ lookup: await lookup() });
    expect(client.track.received.filter((r) => r.id !== undefined)).toHaveLength(300);
  });

  it("packets accepted by a node that is still starting are logged and delivered when it is SIGTERMed", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
    const history = new History();
    const socket = cluster.client(0, { rooms: ["late"] });
    const client = history.watch(socket, "c", ["late"]);
    await waitFor(() => socket.connected && recoveryFields(socket)._lastOffset !== undefined);
    // Emitting right after "ready": the child's adapter may still be connecting its listener.
    const child = await spawnNode({ databaseUrl: db.url, name: "child" });
    await burstThenStop(history, child, 50);
    const lookup = () => logOffsets(cluster.node(0).pool);
    try {
      await history.settle({ lookup, timeout: 5000 });
    } finally {
      // The child's own account of what it dropped, if anything.
      expect(child.stderr.join("").split("\n").filter((l) => l.includes("not logged")).length).toBe(0);
    }
    history.assertClean({ lookup: await lookup() });
    expect(client.track.received.filter((r) => r.id !== undefined)).toHaveLength(50);
  });
});
