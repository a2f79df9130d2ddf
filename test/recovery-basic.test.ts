/**
 * Connection state recovery across a real Postgres-backed cluster: what a
 * recovered socket keeps, what it gets replayed, and what it must not get.
 */
import { randomBytes } from "node:crypto";
import { Manager } from "socket.io-client";
import { describe, expect, it } from "vitest";
import {
  Cluster,
  comeBack,
  dropConnection,
  goOffline,
  interruptNextConnection,
  join,
  logHead,
  moveTo,
  offsetNumber,
  once,
  PRIME_EVENT,
  recordEvents,
  recoveryFields,
  serverNoticed,
  waitFor,
  waitForHead,
  whoami,
  type ClientSocket,
  type Received,
} from "./helpers/cluster.js";
import { History, logOffsets } from "./helpers/history.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("recovery_basic");

function payloads(received: Received[], event = "ev"): unknown[] {
  return received.filter((r) => r.event === event).map((r) => r.args[0]);
}

function expectIncreasingOffsets(received: Received[]): void {
  const offsets = received.map((r) => offsetNumber(r.offset));
  for (let i = 1; i < offsets.length; i++) {
    expect(offsets[i], `offsets ${offsets.join(",")}`).toBeGreaterThan(offsets[i - 1]!);
  }
}

/** Takes a client offline and waits until its node noticed (so what follows is missed). */
async function offline(cluster: Cluster, socket: ClientSocket, nodeIndex: number, nsp = "/"): Promise<string> {
  const sid = socket.id!;
  goOffline(socket);
  await serverNoticed(cluster.node(nodeIndex), sid, nsp);
  return sid;
}

/**
 * A client on node0 in room "r" misses 5 packets, then comes back to node1 whose restore
 * completes server-side but whose connection drops at its first packet; the manager retries.
 */
async function missFiveThenInterruptRestore(
  cluster: Cluster,
): Promise<{ client: ClientSocket; got: Received[]; reconnected: Promise<boolean> }> {
  const client = await cluster.connect(0, { rooms: ["r"] });
  const got = recordEvents(client);
  const head = await logHead(cluster.node(0).pool);
  await offline(cluster, client, 0);
  for (let i = 1; i <= 5; i++) cluster.node(1).io.to("r").emit("ev", { n: i });
  await waitForHead(cluster.node(0).pool, head + 5);
  const interrupted = interruptNextConnection(client);
  const reconnected = comeBack(client, cluster.node(1), 10_000);
  await interrupted;
  return { client, got, reconnected };
}

describe("recovery: what is kept", () => {
  it("restores the same socket.id, rooms and socket.data; recovered on both sides", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const client = await cluster.connect(0, { rooms: ["r1", "r2"] });
    await client.timeout(3000).emitWithAck("set-data", { name: "alice", n: 42, list: [1, "two", null] });
    const before = await whoami(client);
    expect(before.recovered).toBe(false);
    expect(client.recovered).toBe(false);

    const sid = await offline(cluster, client, 0);
    expect(await comeBack(client, cluster.node(1))).toBe(true);

    expect(client.id).toBe(sid);
    const after = await whoami(client);
    expect(after.node).toBe("node1");
    expect(after.id).toBe(sid);
    expect(after.recovered).toBe(true);
    expect(after.rooms.sort()).toEqual([sid, "r1", "r2"].sort());
    expect(after.data).toEqual({ name: "alice", n: 42, list: [1, "two", null] });
    // The recovered socket is really in its rooms on its new node.
    expect(cluster.node(1).io.of("/").adapter.rooms.get("r1")?.has(sid)).toBe(true);
  });
});

describe("recovery: missed packets", () => {
  it("replays packets emitted by another node, filtered by rooms, except and namespace", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, namespaces: ["/other"] });
    const a = await cluster.connect(0, { rooms: ["a"] });
    const ax = await cluster.connect(0, { rooms: ["a", "x"] });
    const b = await cluster.connect(0, { rooms: ["b"] });
    const other = await cluster.connect(0, { nsp: "/other", rooms: ["a"] });
    const got = new Map<ClientSocket, Received[]>([a, ax, b, other].map((s) => [s, recordEvents(s)]));

    const headRoot = await logHead(cluster.node(1).pool, "/");
    const headOther = await logHead(cluster.node(1).pool, "/other");
    for (const s of [a, ax, b]) await offline(cluster, s, 0);
    await offline(cluster, other, 0, "/other");

    const io = cluster.node(1).io;
    io.to("a").emit("ev", { n: 1 });
    io.to("b").emit("ev", { n: 2 });
    io.emit("ev", { n: 3 });
    io.to("a").except("x").emit("ev", { n: 4 });
    io.of("/other").to("a").emit("ev", { n: 5 });
    io.except("a").emit("ev", { n: 6 });
    io.to(["a", "b"]).emit("ev", { n: 7 });
    await waitForHead(cluster.node(1).pool, headRoot + 6, "/");
    await waitForHead(cluster.node(1).pool, headOther + 1, "/other");

    expect(await comeBack(a, cluster.node(0))).toBe(true);
    expect(await comeBack(ax, cluster.node(1))).toBe(true);
    expect(await comeBack(b, cluster.node(0))).toBe(true);
    expect(await comeBack(other, cluster.node(1))).toBe(true);

    const expected = new Map<ClientSocket, number[]>([
      [a, [1, 3, 4, 7]],
      [ax, [1, 3, 7]],
      [b, [2, 3, 6, 7]],
      [other, [5]],
    ]);
    for (const [socket, ns] of expected) {
      await waitFor(() => got.get(socket)!.length >= ns.length, { message: `${ns.length} events on ${socket.id}` });
    }
    // A last live event per namespace proves nothing more was coming.
    io.emit("ev", { n: 8 });
    io.of("/other").emit("ev", { n: 9 });
    for (const [socket, ns] of expected) {
      const last = socket === other ? 9 : 8;
      await waitFor(() => payloads(got.get(socket)!).some((p) => (p as { n: number }).n === last));
      expect(payloads(got.get(socket)!)).toEqual([...ns, last].map((n) => ({ n })));
      expectIncreasingOffsets(got.get(socket)!);
    }
  });

  it("replays socket.emit and io.to(sid) addressed to the disconnected socket from another node", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const client = await cluster.connect(0);
    const got = recordEvents(client);
    // A server-side socket.emit while connected is logged: it carries an offset.
    await client.timeout(3000).emitWithAck("self-emit", { event: "ev", args: [{ n: "self-1" }] });
    await waitFor(() => got.length === 1);
    expect(got[0]!.offset).toMatch(/^o\d+$/);

    const head = await logHead(cluster.node(1).pool);
    const sid = await offline(cluster, client, 0);
    cluster.node(1).io.to(sid).emit("ev", { n: "to-sid-1" });
    cluster.node(1).io.to(sid).emit("ev", { n: "to-sid-2" });
    // Another socket's private messages stay private.
    cluster.node(1).io.to("someone-else").emit("ev", { n: "not-mine" });
    await waitForHead(cluster.node(1).pool, head + 3);

    expect(await comeBack(client, cluster.node(0))).toBe(true);
    await waitFor(() => got.length >= 3);
    await client.timeout(3000).emitWithAck("self-emit", { event: "ev", args: [{ n: "self-2" }] });
    await waitFor(() => got.length >= 4);
    expect(payloads(got)).toEqual([{ n: "self-1" }, { n: "to-sid-1" }, { n: "to-sid-2" }, { n: "self-2" }]);
    expectIncreasingOffsets(got);
  });

  it("recovers a client that never received an event (zero-event session) and replays what it missed", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const client = cluster.client(0);
    const all = recordEvents(client, { includePrime: true });
    await waitFor(() => client.connected && recoveryFields(client)._lastOffset !== undefined, {
      message: "the prime event",
    });
    await join(client, ["z1", "z2"]);
    // Nothing but the prime event, which carries an offset.
    expect(all.map((r) => r.event)).toEqual([PRIME_EVENT]);
    expect(all[0]!.offset).toMatch(/^o\d+$/);

    const head = await logHead(cluster.node(1).pool);
    await offline(cluster, client, 0);
    cluster.node(1).io.to("z1").emit("ev", { n: 1 });
    cluster.node(1).io.to("z2").emit("ev", { n: 2 });
    cluster.node(1).io.to("z3").emit("ev", { n: "not-mine" });
    await waitForHead(cluster.node(1).pool, head + 3);

    expect(await comeBack(client, cluster.node(1))).toBe(true);
    await waitFor(() => payloads(all).length >= 2);
    cluster.node(0).io.to("z1").emit("ev", { n: 3 });
    await waitFor(() => payloads(all).length >= 3);
    expect(payloads(all)).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }]);
    expectIncreasingOffsets(all.filter((r) => r.event === "ev"));
  });
});

describe("recovery: senders and emitters", () => {
  it("replays packets of a node that has closed since", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 3 });
    const client = await cluster.connect(0, { rooms: ["x"] });
    const got = recordEvents(client);
    const head = await logHead(cluster.node(0).pool);
    await offline(cluster, client, 0);
    for (let i = 1; i <= 3; i++) cluster.node(2).io.to("x").emit("ev", { n: i });
    await waitForHead(cluster.node(0).pool, head + 3);
    await cluster.node(2).close();
    expect(await comeBack(client, cluster.node(1))).toBe(true);
    await waitFor(() => got.length >= 3);
    cluster.node(0).io.to("x").emit("ev", { n: 4 });
    await waitFor(() => got.length >= 4);
    expect(payloads(got)).toEqual([1, 2, 3, 4].map((n) => ({ n })));
    expectIncreasingOffsets(got);
  });

  it("replays socket.broadcast and socket.to(room) to the others, never to the sender", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const sender = await cluster.connect(1, { rooms: ["room"] });
    const receiver = await cluster.connect(0, { rooms: ["room"] });
    const gotSender = recordEvents(sender);
    const gotReceiver = recordEvents(receiver);
    const head = await logHead(cluster.node(0).pool);
    await offline(cluster, receiver, 0);
    await sender.timeout(3000).emitWithAck("broadcast-emit", { event: "ev", args: [{ n: "broadcast" }] });
    await sender.timeout(3000).emitWithAck("broadcast-emit", { rooms: ["room"], event: "ev", args: [{ n: "to-room" }] });
    await waitForHead(cluster.node(0).pool, head + 2);
    // The sender drops too and recovers: its own broadcasts are not replayed to it.
    await offline(cluster, sender, 1);
    expect(await comeBack(sender, cluster.node(0))).toBe(true);
    expect(await comeBack(receiver, cluster.node(1))).toBe(true);
    await waitFor(() => gotReceiver.length >= 2);
    cluster.node(0).io.to("room").emit("ev", { n: "end" });
    await waitFor(() => gotReceiver.length >= 3 && gotSender.length >= 1);
    expect(payloads(gotReceiver)).toEqual([{ n: "broadcast" }, { n: "to-room" }, { n: "end" }]);
    expect(payloads(gotSender)).toEqual([{ n: "end" }]);
  });

  it("delivers volatile, local and acknowledged broadcasts live only: no offset, never replayed", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    // Acked broadcasts wait for the nodes a node knows of (heartbeats).
    await cluster.waitForServerCount();
    const client = await cluster.connect(0);
    client.on("asked", (_arg: unknown, ack: (reply: object) => void) => ack({ ok: true }));
    const got = recordEvents(client);
    const pool = cluster.node(0).pool;
    const head = await logHead(pool);
    cluster.node(1).io.volatile.emit("volatile", { n: 1 });
    cluster.node(0).io.local.emit("local", { n: 2 });
    const answers = await cluster.node(1).io.timeout(2000).emitWithAck("asked", { n: 3 });
    expect(answers).toEqual([{ ok: true }]);
    cluster.node(1).io.emit("ev", { n: 4 });
    // Volatile packets may be dropped (transport busy): only the others must arrive.
    const arrived = () => new Set(got.map((r) => r.event));
    await waitFor(() => ["local", "asked", "ev"].every((e) => arrived().has(e)), {
      message: () => `local, asked and ev; got ${got.map((r) => r.event)}`,
    });
    expect(got.filter((r) => r.event !== "ev").every((r) => r.offset === undefined)).toBe(true);
    expect(got.find((r) => r.event === "ev")!.offset).toMatch(/^o\d+$/);
    expect(await logHead(pool)).toBe(head + 1);

    await offline(cluster, client, 0);
    cluster.node(1).io.volatile.emit("volatile", { n: 5 });
    cluster.node(1).io.emit("ev", { n: 6 });
    await waitForHead(pool, head + 2);
    const before = got.length;
    expect(await comeBack(client, cluster.node(1))).toBe(true);
    await waitFor(() => got.length > before);
    cluster.node(1).io.emit("ev", { n: 7 });
    await waitFor(() => payloads(got).length >= 3);
    expect(got.slice(before).map((r) => [r.event, r.args[0]])).toEqual([
      ["ev", { n: 6 }],
      ["ev", { n: 7 }],
    ]);
  });
});

describe("recovery: exactness", () => {
  it("does not replay packets sent before the client connected, nor to a room before it joined it", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const pool = cluster.node(1).pool;
    // A witness on node0 in room "late": once it has an event, node0 has delivered it.
    const witness = await cluster.connect(0, { rooms: ["late"] });
    const seen = recordEvents(witness);
    const io1 = cluster.node(1).io;

    io1.to("late").emit("ev", { n: "before-connect-room" });
    io1.emit("ev", { n: "before-connect-all" });
    await waitFor(() => seen.length === 2, { message: "witness to see the early packets" });

    const x = await cluster.connect(0);
    const y = await cluster.connect(0);
    const gotX = recordEvents(x);
    const gotY = recordEvents(y);

    io1.to("late").emit("ev", { n: "before-join" });
    await waitFor(() => seen.length === 3, { message: "witness to see before-join" });
    await join(x, "late");
    await join(y, "late");

    const head = await logHead(pool);
    await offline(cluster, x, 0);
    await offline(cluster, y, 0);
    io1.to("late").emit("ev", { n: "while-offline" });
    await waitForHead(pool, head + 1);

    expect(await comeBack(x, cluster.node(0))).toBe(true);
    expect(await comeBack(y, cluster.node(1))).toBe(true);
    io1.to("late").emit("ev", { n: "after" });
    await waitFor(() => gotX.length >= 2 && gotY.length >= 2);
    await waitFor(() => seen.length === 5);
    expect(payloads(gotX)).toEqual([{ n: "while-offline" }, { n: "after" }]);
    expect(payloads(gotY)).toEqual([{ n: "while-offline" }, { n: "after" }]);
  });

  it("does not replay packets to a room the client left", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const client = await cluster.connect(0, { rooms: ["keep", "drop"] });
    const got = recordEvents(client);
    await client.timeout(3000).emitWithAck("leave", "drop");
    const head = await logHead(cluster.node(1).pool);
    await offline(cluster, client, 0);
    cluster.node(1).io.to("drop").emit("ev", { n: "left-room" });
    cluster.node(1).io.to("keep").emit("ev", { n: "kept-room" });
    await waitForHead(cluster.node(1).pool, head + 2);
    expect(await comeBack(client, cluster.node(1))).toBe(true);
    cluster.node(0).io.to("keep").emit("ev", { n: "end" });
    await waitFor(() => got.length >= 2);
    expect(payloads(got)).toEqual([{ n: "kept-room" }, { n: "end" }]);
    expect((await whoami(client)).rooms.sort()).toEqual([client.id, "keep"].sort());
  });
});

describe("recovery: reconnection timing", () => {
  for (const target of ["the same node", "another node"] as const) {
    it(`recovers an immediate reconnect (reconnectionDelay: 0) to ${target} during a stream of packets`, async () => {
      const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
      const history = new History();
      const client = cluster.client(0, { rooms: ["stream"], reconnectionDelay: 0 });
      const handle = history.watch(client, "c", ["stream"]);
      await waitFor(() => client.connected && recoveryFields(client)._lastOffset !== undefined);
      const io1 = cluster.node(1).io;
      const drops = [30, 60, 90];
      for (let i = 1; i <= 120; i++) {
        history.emit(io1, { rooms: ["stream"] }, "node1");
        const drop = drops.indexOf(i);
        if (drop >= 0) {
          // Drop only a live connection: closing one that is still being opened merges two drops into one
          // reconnection, which depends on the machine's speed, not on the adapter.
          await waitFor(() => client.connected, { message: "the client to be connected before the next drop" });
          if (target === "another node") moveTo(client, cluster.node(drop % 2 === 0 ? 1 : 0));
          dropConnection(client);
        }
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
      const lookup = () => logOffsets(cluster.node(0).pool);
      await history.settle({ lookup });
      history.assertClean({ lookup: await lookup() });
      expect(handle.reconnections.length).toBe(3);
      expect(handle.reconnections.every((r) => r.recovered)).toBe(true);
      expect(handle.tracks.length).toBe(1);
    });
  }

  it("recovers through slow middlewares (skipMiddlewares: false) during a stream of packets", async () => {
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 2,
      skipMiddlewares: false,
      setup: (node) => {
        node.io.use((_socket, next) => {
          setTimeout(next, 40);
        });
      },
    });
    const history = new History();
    const client = cluster.client(0, { rooms: ["stream"], reconnectionDelay: 0 });
    const handle = history.watch(client, "c", ["stream"]);
    await waitFor(() => client.connected && recoveryFields(client)._lastOffset !== undefined);
    const drops = [20, 50, 80];
    for (let i = 1; i <= 110; i++) {
      history.emit(cluster.node(i % 2).io, { rooms: ["stream"] }, cluster.node(i % 2).name);
      const drop = drops.indexOf(i);
      if (drop >= 0) {
        await waitFor(() => client.connected, { message: "the client to be connected before the next drop" });
        moveTo(client, cluster.node(drop % 2 === 0 ? 1 : 0));
        dropConnection(client);
      }
      await new Promise((resolve) => setTimeout(resolve, 3));
    }
    const lookup = () => logOffsets(cluster.node(0).pool);
    await history.settle({ lookup });
    history.assertClean({ lookup: await lookup() });
    expect(handle.reconnections.map((r) => r.recovered)).toEqual([true, true, true]);
  });

  it("recovers when the connection drops again right after each recovery, while packets keep coming", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const history = new History();
    const client = cluster.client(0, { rooms: ["flap"], reconnectionDelay: 0 });
    const handle = history.watch(client, "c", ["flap"]);
    await waitFor(() => client.connected && recoveryFields(client)._lastOffset !== undefined);
    // Drop right after each of the next 6 connections, alternating nodes. Not synchronously inside
    // the "connect" handler: socket.io-client emits the packets decoded with the CONNECT packet in
    // later microtasks, so a close from inside the handler makes it buffer them and emit them after
    // the next reconnection, ahead of a replay that already contains them (a client artifact).
    let flaps = 0;
    client.on("connect", () => {
      if (flaps >= 6) return;
      flaps++;
      setTimeout(() => {
        moveTo(client, cluster.node(flaps % 2 === 0 ? 0 : 1));
        client.io.engine.close();
      }, 0);
    });
    moveTo(client, cluster.node(1));
    dropConnection(client);
    for (let i = 1; i <= 150 && (flaps < 6 || i < 60); i++) {
      history.emit(cluster.node(i % 2).io, { rooms: ["flap"] }, cluster.node(i % 2).name);
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    await waitFor(() => flaps === 6 && client.connected, { timeout: 8000, message: "6 flaps" });
    history.emit(cluster.node(0).io, { rooms: ["flap"] }, cluster.node(0).name);
    const lookup = () => logOffsets(cluster.node(0).pool);
    await history.settle({ lookup });
    history.assertClean({ lookup: await lookup() });
    expect(handle.reconnections.map((r) => r.recovered)).toEqual(Array(7).fill(true));
  });

  for (const second of ["the same node", "another node"] as const) {
    it(`recovers everything after a restore whose replay never reached the client (again on ${second})`, async () => {
      const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
      // First attempt on node1: restored server-side, but the connection drops before the
      // client processes the replay or the CONNECT packet. The manager then retries.
      const { client, got, reconnected } = await missFiveThenInterruptRestore(cluster);
      if (second === "another node") moveTo(client, cluster.node(0));
      expect(await reconnected).toBe(true);
      await waitFor(() => got.length >= 5, { message: () => `5 replayed packets, got ${got.length}` });
      cluster.node(0).io.to("r").emit("ev", { n: 6 });
      await waitFor(() => got.length >= 6);
      expect(payloads(got)).toEqual([1, 2, 3, 4, 5, 6].map((n) => ({ n })));
    });
  }

  it("a restore whose connection drops during the middlewares does not cost the client its session", async () => {
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 2,
      skipMiddlewares: false,
      setup: (node) => node.io.use((_socket, next) => void setTimeout(next, 200)),
    });
    // Restored on node1, replay sent, then the connection drops while the middleware runs:
    // Socket.IO discards that socket without persisting a session.
    const { got, reconnected } = await missFiveThenInterruptRestore(cluster);
    expect(await reconnected).toBe(true);
    await waitFor(() => got.length >= 5, { message: () => `5 replayed packets, got ${got.length}` });
    expect(payloads(got)).toEqual([1, 2, 3, 4, 5].map((n) => ({ n })));
  });

  it("delivers nothing twice over repeated disconnect/recover cycles", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const client = await cluster.connect(0, { rooms: ["cyc"] });
    const got = recordEvents(client);
    const offsetsAfterCycle: number[] = [];
    let n = 0;
    for (let cycle = 0; cycle < 6; cycle++) {
      const home = cycle % 2;
      const other = 1 - home;
      // Live packets first, then packets while offline, from alternating nodes.
      cluster.node(other).io.to("cyc").emit("ev", { n: ++n });
      await waitFor(() => got.length === n, { message: `live packet ${n}` });
      const head = await logHead(cluster.node(0).pool);
      await offline(cluster, client, home);
      // One emitting node per cycle: packets of one node keep their order (across nodes, commit order decides).
      for (let k = 0; k < 3; k++) cluster.node(cycle % 2).io.to("cyc").emit("ev", { n: ++n });
      await waitForHead(cluster.node(0).pool, head + 3);
      expect(await comeBack(client, cluster.node(other))).toBe(true);
      await waitFor(() => got.length >= n, { message: `replay up to ${n} in cycle ${cycle}` });
      offsetsAfterCycle.push(offsetNumber(recoveryFields(client)._lastOffset));
    }
    cluster.node(0).io.to("cyc").emit("ev", { n: ++n });
    await waitFor(() => got.length >= n);
    expect(payloads(got)).toEqual(Array.from({ length: n }, (_, i) => ({ n: i + 1 })));
    expectIncreasingOffsets(got);
    // The client's offset advanced with every replay.
    for (let i = 1; i < offsetsAfterCycle.length; i++) expect(offsetsAfterCycle[i]).toBeGreaterThan(offsetsAfterCycle[i - 1]!);
  });
});

describe("recovery: payloads", () => {
  for (const from of ["memory", "the table"] as const) {
    it(`replays binary (Buffer, Uint8Array, nested) and > 8000-byte payloads byte-exact, like live delivery (from ${from})`, async () => {
      const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
      const live = await cluster.connect(0, { rooms: ["bin"] });
      const replayed = await cluster.connect(0, { rooms: ["bin"] });
      const gotLive = recordEvents(live);
      const gotReplayed = recordEvents(replayed);
      const bigBinary = randomBytes(20_000);
      const bigText = "é€x".repeat(4000); // > 8000 bytes in UTF-8
      const packets: unknown[][] = [
        [{ buf: Buffer.from([0, 1, 2, 253, 254, 255]) }],
        [new Uint8Array([9, 8, 7, 0])],
        [{ nested: { deep: [Buffer.alloc(3, 7), { u8: new Uint8Array([1, 2]) }] }, text: "ok" }],
        [bigBinary],
        [{ text: bigText }],
        [Buffer.alloc(0), { empty: true }],
      ];
      const head = await logHead(cluster.node(1).pool);
      await offline(cluster, replayed, 0);
      for (const args of packets) cluster.node(1).io.to("bin").emit("bin", ...args);
      await waitForHead(cluster.node(1).pool, head + packets.length);
      await waitFor(() => gotLive.length === packets.length, { message: "live copies" });
      // A node started after the packets has none of them in memory: it reads the log table.
      const target = from === "memory" ? cluster.node(0) : await cluster.addNode();
      expect(await comeBack(replayed, target)).toBe(true);
      await waitFor(() => gotReplayed.length >= packets.length, { message: "replayed copies" });

      const strip = (r: Received) => r.args.slice(0, -1);
      // What the client gets is what was sent (Buffers and Uint8Arrays arrive as Buffers in Node).
      const asBuffers = (v: unknown): unknown => {
        if (v instanceof Uint8Array) return Buffer.from(v);
        if (Array.isArray(v)) return v.map(asBuffers);
        if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, asBuffers(x)]));
        return v;
      };
      for (let i = 0; i < packets.length; i++) {
        const sent = asBuffers(packets[i]);
        expect(asBuffers(strip(gotLive[i]!))).toEqual(sent);
        expect(asBuffers(strip(gotReplayed[i]!))).toEqual(sent);
        expect(gotReplayed[i]!.offset).toBe(gotLive[i]!.offset);
      }
      expect(Buffer.compare(Buffer.from(gotReplayed[3]!.args[0] as Uint8Array), bigBinary)).toBe(0);
      expect((gotReplayed[4]!.args[0] as { text: string }).text).toBe(bigText);
    });
  }

  it("delivers a > 8000-byte packet live to clients on another node", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const client = await cluster.connect(0);
    const got = recordEvents(client);
    const big = randomBytes(12_000).toString("base64");
    cluster.node(1).io.emit("big", { big });
    cluster.node(1).io.emit("small", { n: 1 });
    await waitFor(() => got.length === 2);
    expect(got.map((r) => r.event)).toEqual(["big", "small"]);
    expect((got[0]!.args[0] as { big: string }).big).toBe(big);
  });

  it("restores socket.data containing binary byte-exact", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const client = await cluster.connect(0);
    const data = {
      bin: Buffer.from([0, 255, 128, 1]),
      u8: new Uint8Array([5, 6, 7]),
      nested: { list: [Buffer.from("héllo"), 1.5, "s", true, null] },
    };
    await client.timeout(3000).emitWithAck("set-data", data);
    await offline(cluster, client, 0);
    expect(await comeBack(client, cluster.node(1))).toBe(true);
    const server = cluster.node(1).io.of("/").sockets.get(client.id!);
    expect(server).toBeDefined();
    const restored = server!.data as {
      bin: Uint8Array;
      u8: Uint8Array;
      nested: { list: [Uint8Array, number, string, boolean, null] };
    };
    expect(Buffer.from(restored.bin).equals(data.bin)).toBe(true);
    expect(Buffer.from(restored.u8).equals(Buffer.from(data.u8))).toBe(true);
    expect(Buffer.from(restored.nested.list[0]).equals(data.nested.list[0] as Buffer)).toBe(true);
    expect(restored.nested.list.slice(1)).toEqual([1.5, "s", true, null]);
  });

  it("restores Buffers in socket.data as Buffers (same type as before the disconnection)", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const client = await cluster.connect(0);
    const sid = client.id!;
    const original = cluster.node(0).io.of("/").sockets.get(sid)!;
    original.data = { key: Buffer.from("secret-key") };
    await offline(cluster, client, 0);
    expect(await comeBack(client, cluster.node(1))).toBe(true);
    const restored = cluster.node(1).io.of("/").sockets.get(sid)!.data as { key: unknown };
    expect(Buffer.isBuffer(restored.key)).toBe(true);
    expect((restored.key as Buffer).toString("utf8")).toBe("secret-key");
  });
});

describe("recovery: namespaces", () => {
  it("recovers in several namespaces, including a dynamic one, each getting only its own packets", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, namespaces: ["/a"] });
    const names = ["/", "/a", "/dyn-abc", "/dyn-xyz"];
    const clients = new Map<string, ClientSocket>();
    const got = new Map<string, Received[]>();
    for (const nsp of names) {
      const socket = await cluster.connect(0, { nsp, rooms: ["room"] });
      clients.set(nsp, socket);
      got.set(nsp, recordEvents(socket));
    }
    // The emitting node knows the dynamic namespaces too (io.of creates the children).
    const heads = new Map<string, number>();
    for (const nsp of names) heads.set(nsp, await logHead(cluster.node(1).pool, nsp));
    for (const nsp of names) await offline(cluster, clients.get(nsp)!, 0, nsp);
    for (const nsp of names) {
      cluster.node(1).io.of(nsp).to("room").emit("ev", { nsp, n: 1 });
      cluster.node(1).io.of(nsp).emit("ev", { nsp, n: 2 });
    }
    for (const nsp of names) await waitForHead(cluster.node(1).pool, heads.get(nsp)! + 2, nsp);
    let i = 0;
    for (const nsp of names) {
      expect(await comeBack(clients.get(nsp)!, cluster.node(i++ % 2))).toBe(true);
    }
    for (const nsp of names) {
      await waitFor(() => got.get(nsp)!.length >= 2, { message: `replay in ${nsp}` });
      cluster.node(0).io.of(nsp).emit("ev", { nsp, n: 3 });
    }
    for (const nsp of names) {
      await waitFor(() => got.get(nsp)!.length >= 3, { message: `live in ${nsp}` });
      expect(payloads(got.get(nsp)!)).toEqual([1, 2, 3].map((n) => ({ nsp, n })));
      expectIncreasingOffsets(got.get(nsp)!);
    }
  });

  it("recovers several namespaces multiplexed on one connection", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, namespaces: ["/a"] });
    const manager = new Manager(cluster.node(0).url, {
      transports: ["websocket"],
      reconnectionDelay: 50,
      reconnectionDelayMax: 50,
      randomizationFactor: 0,
    });
    const root = manager.socket("/", { auth: { rooms: ["r"] } });
    const other = manager.socket("/a", { auth: { rooms: ["r"] } });
    try {
      const gotRoot = recordEvents(root);
      const gotOther = recordEvents(other);
      await waitFor(() => [root, other].every((s) => s.connected && recoveryFields(s)._lastOffset !== undefined));
      const sids = [root.id!, other.id!];
      const heads = [await logHead(cluster.node(0).pool, "/"), await logHead(cluster.node(0).pool, "/a")];
      manager.reconnection(false);
      manager.engine.close();
      await serverNoticed(cluster.node(0), sids[0]!, "/");
      await serverNoticed(cluster.node(0), sids[1]!, "/a");
      cluster.node(1).io.to("r").emit("ev", { nsp: "/" });
      cluster.node(1).io.of("/a").to("r").emit("ev", { nsp: "/a" });
      await waitForHead(cluster.node(0).pool, heads[0]! + 1, "/");
      await waitForHead(cluster.node(0).pool, heads[1]! + 1, "/a");
      (manager as unknown as { uri: string }).uri = cluster.node(1).url;
      manager.reconnection(true);
      const back = Promise.all([once(root, "connect"), once(other, "connect")]);
      root.connect();
      other.connect();
      await back;
      expect([root.recovered, other.recovered]).toEqual([true, true]);
      expect([root.id, other.id]).toEqual(sids);
      await waitFor(() => gotRoot.length >= 1 && gotOther.length >= 1);
      expect(payloads(gotRoot)).toEqual([{ nsp: "/" }]);
      expect(payloads(gotOther)).toEqual([{ nsp: "/a" }]);
    } finally {
      root.disconnect();
      other.disconnect();
      manager.engine?.close();
    }
  });

  it("recovers in a dynamic namespace on a node where that namespace does not exist yet", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const nsp = "/dyn-solo";
    const client = await cluster.connect(0, { nsp, rooms: ["room"] });
    const got = recordEvents(client);
    const head = await logHead(cluster.node(0).pool, nsp);
    await offline(cluster, client, 0, nsp);
    cluster.node(0).io.of(nsp).to("room").emit("ev", { n: 1 });
    cluster.node(0).io.of(nsp).emit("ev", { n: 2 });
    await waitForHead(cluster.node(0).pool, head + 2, nsp);
    expect(cluster.node(1).io._nsps.has(nsp)).toBe(false);
    expect(await comeBack(client, cluster.node(1))).toBe(true);
    await waitFor(() => got.length >= 2);
    cluster.node(0).io.of(nsp).emit("ev", { n: 3 });
    await waitFor(() => got.length >= 3);
    expect(payloads(got)).toEqual([1, 2, 3].map((n) => ({ n })));
  });
});
