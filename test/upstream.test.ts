/**
 * What every Socket.IO cluster adapter does, across nodes: rooms,
 * fetchSockets, serverSideEmit with acks, broadcasts with acks, serverCount;
 * and a cluster without connection state recovery working as a plain adapter
 * that writes nothing to the log.
 */
import { describe, expect, it } from "vitest";
import { Cluster, reconnect, recordEvents, waitFor, whoami, type ClientSocket, type TestNode } from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("upstream");

/** Fast heartbeats so that nodes know each other (and notice departures) quickly. */
const HEARTBEAT = { heartbeatInterval: 200, heartbeatTimeout: 1000 };

async function startCluster(nodes: number, recovery = true): Promise<Cluster> {
  const cluster = await Cluster.start({ databaseUrl: db.url, nodes, recovery, adapter: HEARTBEAT });
  let counts: number[] = [];
  await waitFor(
    async () => {
      counts = await Promise.all(cluster.nodes.map((n) => serverCount(n)));
      return counts.every((c) => c === nodes);
    },
    { message: () => `serverCount ${nodes} on every node (${counts.join(",")})` },
  );
  return cluster;
}

async function serverCount(node: TestNode): Promise<number> {
  return await node.io.of("/").adapter.serverCount();
}

/** For both settings of recovery: the same cross-node behaviour. */
for (const recovery of [true, false]) {
  const mode = recovery ? "with recovery" : "without recovery";
  describe(`cluster operations ${mode}`, () => {
    it(`socketsJoin / socketsLeave across nodes (${mode})`, async () => {
      const cluster = await startCluster(2, recovery);
      const opts = { rooms: ["a"], waitForOffset: recovery };
      const c0 = await cluster.connect(0, opts);
      const c1 = await cluster.connect(1, opts);
      const other = await cluster.connect(1, { waitForOffset: recovery });
      cluster.node(0).io.in("a").socketsJoin(["b", "c"]);
      await waitFor(async () => (await whoami(c1)).rooms.includes("c"), { message: "remote socketsJoin" });
      expect((await whoami(c0)).rooms.sort()).toEqual([c0.id, "a", "b", "c"].sort());
      expect((await whoami(c1)).rooms.sort()).toEqual([c1.id, "a", "b", "c"].sort());
      expect((await whoami(other)).rooms).toEqual([other.id]);

      const got = [c0, c1, other].map((s) => recordEvents(s));
      cluster.node(1).io.to("b").emit("ev", { n: 1 });
      await waitFor(() => got[0]!.length === 1 && got[1]!.length === 1);

      cluster.node(1).io.in("a").socketsLeave("b");
      await waitFor(async () => !(await whoami(c0)).rooms.includes("b"), { message: "remote socketsLeave" });
      cluster.node(0).io.to("b").emit("ev", { n: 2 });
      cluster.node(0).io.to("c").emit("ev", { n: 3 });
      await waitFor(() => got[0]!.length === 2 && got[1]!.length === 2);
      expect(got.map((g) => g.map((r) => r.args[0]))).toEqual([[{ n: 1 }, { n: 3 }], [{ n: 1 }, { n: 3 }], []]);
    });

    it(`fetchSockets, with and without rooms, across nodes (${mode})`, async () => {
      const cluster = await startCluster(3, recovery);
      const sockets: ClientSocket[] = [];
      for (let i = 0; i < 6; i++) {
        const s = await cluster.connect(i % 3, { rooms: i % 2 === 0 ? ["even"] : ["odd"], waitForOffset: recovery });
        await s.timeout(3000).emitWithAck("set-data", { i });
        sockets.push(s);
      }
      const all = await cluster.node(0).io.fetchSockets();
      expect(all.map((s) => s.id).sort()).toEqual(sockets.map((s) => s.id).sort());
      const even = await cluster.node(1).io.in("even").fetchSockets();
      expect(even.map((s) => s.id).sort()).toEqual(sockets.filter((_, i) => i % 2 === 0).map((s) => s.id).sort());
      const remote = even.find((s) => s.id === sockets[2]!.id)!;
      expect([...remote.rooms].sort()).toEqual([sockets[2]!.id, "even"].sort());
      expect(remote.data).toEqual({ i: 2 });
      // A remote socket can be acted upon.
      remote.join("joined-remotely");
      await waitFor(async () => (await whoami(sockets[2]!)).rooms.includes("joined-remotely"));
      const exceptOdd = await cluster.node(2).io.except("odd").fetchSockets();
      expect(exceptOdd.length).toBe(3);
    });

    it(`serverSideEmit with acks reaches every other node (${mode})`, async () => {
      const cluster = await startCluster(3, recovery);
      const seen: string[] = [];
      for (const node of cluster.nodes) {
        node.io.on("hello", (arg: { from: string }, ack: (reply: { node: string; from: string }) => void) => {
          seen.push(`${node.name}<-${arg.from}`);
          ack({ node: node.name, from: arg.from });
        });
      }
      const replies = (await cluster.node(0).io.serverSideEmitWithAck("hello", { from: "node0" })) as Array<{
        node: string;
      }>;
      expect(replies.map((r) => r.node).sort()).toEqual(["node1", "node2"]);
      expect(seen.sort()).toEqual(["node1<-node0", "node2<-node0"]);
      // Without ack too.
      cluster.node(2).io.serverSideEmit("hello", { from: "node2" }, () => {});
      await waitFor(() => seen.length === 4);
    });

    it(`broadcasts with acks collect the answers of clients on every node (${mode})`, async () => {
      const cluster = await startCluster(2, recovery);
      const sockets: ClientSocket[] = [];
      for (let i = 0; i < 4; i++) {
        const s = await cluster.connect(i % 2, { rooms: i < 3 ? ["asked"] : [], waitForOffset: recovery });
        s.on("question", (arg: { q: number }, ack: (reply: { id: string; q: number }) => void) => ack({ id: s.id!, q: arg.q }));
        sockets.push(s);
      }
      const answers = (await cluster.node(0).io.to("asked").timeout(2000).emitWithAck("question", { q: 7 })) as Array<{
        id: string;
        q: number;
      }>;
      expect(answers.map((a) => a.id).sort()).toEqual(sockets.slice(0, 3).map((s) => s.id).sort());
      expect(answers.every((a) => a.q === 7)).toBe(true);
      const everyone = (await cluster.node(1).io.timeout(2000).emitWithAck("question", { q: 8 })) as unknown[];
      expect(everyone.length).toBe(4);
      // Acked broadcasts are not logged: they carry no offset, so the clients' offsets did not move.
    });

    it(`serverCount follows nodes joining and leaving (${mode})`, async () => {
      const cluster = await startCluster(3, recovery);
      expect(await serverCount(cluster.node(0))).toBe(3);
      await cluster.node(2).close();
      await waitFor(async () => (await serverCount(cluster.node(0))) === 2 && (await serverCount(cluster.node(1))) === 2, {
        message: "serverCount 2 after a node closed",
      });
      await cluster.addNode();
      await waitFor(async () => (await serverCount(cluster.node(0))) === 3, { message: "serverCount 3 after a node joined" });
    });

    it(`disconnectSockets across nodes (${mode})`, async () => {
      const cluster = await startCluster(2, recovery);
      const c0 = await cluster.connect(0, { rooms: ["kick"], waitForOffset: recovery });
      const c1 = await cluster.connect(1, { rooms: ["kick"], waitForOffset: recovery });
      const stay = await cluster.connect(1, { waitForOffset: recovery });
      const reasons: string[] = [];
      for (const s of [c0, c1]) s.on("disconnect", (reason) => reasons.push(reason));
      cluster.node(1).io.in("kick").disconnectSockets(true);
      await waitFor(() => reasons.length === 2, { message: "both kicked" });
      expect(reasons).toEqual(["io server disconnect", "io server disconnect"]);
      expect(stay.connected).toBe(true);
    });
  });
}

describe("without connection state recovery", () => {
  it("works as a plain adapter and writes nothing to the log nor the sessions", async () => {
    const counts = async (cluster: Cluster) => {
      const { rows } = await cluster.node(0).pool.query<{ log: string; sessions: string }>(
        `SELECT (SELECT count(*) FROM socket_io.log_entries)::text AS log, (SELECT count(*) FROM socket_io.sessions)::text AS sessions`,
      );
      return rows[0]!;
    };
    const cluster = await startCluster(2, false);
    const before = await counts(cluster);
    const a = await cluster.connect(0, { rooms: ["r"], waitForOffset: false });
    const b = await cluster.connect(1, { rooms: ["r"], waitForOffset: false });
    const gotA = recordEvents(a, { includePrime: true });
    const gotB = recordEvents(b, { includePrime: true });
    for (let i = 0; i < 10; i++) cluster.node(i % 2).io.to("r").emit("ev", { i });
    cluster.node(0).io.emit("all", { big: "x".repeat(10_000) });
    await waitFor(() => gotA.length === 11 && gotB.length === 11, { message: "11 events on both" });
    for (const got of [gotA, gotB]) {
      // No prime event, no offsets appended (and no order across nodes: the plain adapter has none).
      expect(got.map((r) => r.event).sort()).toEqual(["all", ...Array(10).fill("ev")]);
      expect(got.every((r) => r.offset === undefined)).toBe(true);
      const evs = got.filter((r) => r.event === "ev").map((r) => r.args);
      expect(evs.sort((x, y) => (x[0] as { i: number }).i - (y[0] as { i: number }).i)).toEqual(
        Array.from({ length: 10 }, (_, i) => [{ i }]),
      );
    }
    // Disconnections leave no session behind.
    expect(await reconnect(a)).toBeFalsy();
    expect(await counts(cluster)).toEqual(before);
  });

  it("keeps one node's broadcasts in emission order on the other nodes", async () => {
    const cluster = await startCluster(2, false);
    const remote = await cluster.connect(1, { waitForOffset: false });
    const got = recordEvents(remote);
    for (let i = 0; i < 50; i++) cluster.node(0).io.emit("ev", { i });
    await waitFor(() => got.length === 50, { message: "50 events" });
    const order = got.map((r) => (r.args[0] as { i: number }).i);
    expect(order.join(","), "order of arrival").toBe(Array.from({ length: 50 }, (_, i) => i).join(","));
  });

  it("a node that just started counts the others within a second (default heartbeatInterval)", async () => {
    // Upstream semantics: a new node publishes an initial heartbeat and the others answer at once.
    // The answers only arrive if the new node already LISTENs when it publishes.
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
    const late = await cluster.addNode();
    await waitFor(async () => (await late.io.of("/").adapter.serverCount()) === 2, {
      timeout: 1000,
      message: "the new node to count 2 servers",
    });
    await waitFor(async () => (await cluster.node(0).io.of("/").adapter.serverCount()) === 2, { timeout: 1000 });
  });
});
