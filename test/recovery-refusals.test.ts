/**
 * Fail closed: every reconnection whose session cannot be honoured gets a
 * fresh session (`recovered === false` on both sides, a new id, no rooms or
 * data of the old one), the server keeps working, nothing is rejected unhandled
 * (the suite's afterEach checks `unhandledRejection`).
 */
import { describe, expect, it } from "vitest";
import {
  Cluster,
  comeBack,
  goOffline,
  logHead,
  recordEvents,
  recoveryFields,
  serverNoticed,
  waitFor,
  whoami,
} from "./helpers/cluster.js";
import { attempt, expectFresh, expectHealthy, prepare } from "./helpers/recovery-attempts.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("recovery_refusals");

/** Reasons of the refusals every node of the cluster announces ("restore-refused"), in order. */
function collectRefusals(cluster: Cluster, nsp = "/"): string[] {
  const reasons: string[] = [];
  for (const node of cluster.nodes) {
    node.io.of(nsp).adapter.on("restore-refused", ({ reason }: { reason: string }) => reasons.push(reason));
  }
  return reasons;
}

describe("recovery refusals", () => {
  it("refuses an unknown pid", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const old = await prepare(cluster);
    const result = await attempt(cluster, 1, "AAAAAAAAAAAAAAAAAAAAAA", old.offset);
    expectFresh(result, old);
    await expectHealthy(cluster);
  });

  it("announces each outcome on the adapter: session-restored with the replay size, restore-refused with a reason", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const refusals: string[] = [];
    const restored: Array<{ sid: string; replayed: number; source: string; read: number }> = [];
    cluster.node(1).io.of("/").adapter.on("restore-refused", ({ reason }: { reason: string }) => refusals.push(reason));
    cluster.node(1).io.of("/").adapter.on("session-restored", (event: { sid: string; replayed: number; source: string; read: number }) => restored.push(event));
    const old = await prepare(cluster);
    const head = await logHead(cluster.node(0).pool);
    cluster.node(0).io.to("secret-room").emit("ev", { n: 1 });
    await waitFor(async () => (await logHead(cluster.node(0).pool)) > head);
    expectFresh(await attempt(cluster, 1, "AAAAAAAAAAAAAAAAAAAAAA", old.offset), old);
    expect(refusals).toHaveLength(1);
    expect(refusals[0]).toMatch(/unknown pid/);
    expect(refusals[0]).not.toContain(old.pid);
    expect(await comeBack(old.socket, cluster.node(1))).toBe(true);
    // From node 1's ring, or from the table when the entry's NOTIFY had not reached node 1 yet: either way one entry read.
    expect(restored).toEqual([{ sid: old.sid, replayed: 1, source: expect.stringMatching(/^(memory|table)$/), read: 1 }]);
    await expectHealthy(cluster);
  });

  it("restores a pid once: a second use of the same pid is refused", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const old = await prepare(cluster);
    // Someone else presents the pid first (on another node): it is restored to them.
    const first = await attempt(cluster, 1, old.pid, old.offset);
    expect(first.recovered).toBe(true);
    expect(first.who.id).toBe(old.sid);
    expect(first.who.data).toEqual({ secret: "s3cr3t" });
    // The original client comes back with the same pid: refused.
    expect(await comeBack(old.socket, cluster.node(0))).toBe(false);
    expect(old.socket.id).not.toBe(old.sid);
    const who = await whoami(old.socket);
    expect(who.recovered).toBe(false);
    // A fresh session: only what the application does at connection (joining auth.rooms), no old data.
    expect(who.rooms.sort()).toEqual([who.id, "secret-room"].sort());
    expect(who.data).toEqual({});
    // And a third attempt as well, on either node.
    expectFresh(await attempt(cluster, 0, old.pid, old.offset), old);
    await expectHealthy(cluster);
  });

  it("refuses a pid from another namespace", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, namespaces: ["/a"] });
    const old = await prepare(cluster, "/a");
    const result = await attempt(cluster, 1, old.pid, old.offset, "/");
    expectFresh(result, old);
    await expectHealthy(cluster);
  });

  it("refuses an expired session", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, maxDisconnectionDuration: 1000 });
    const old = await prepare(cluster);
    const pool = cluster.node(0).pool;
    // Wait until the session is past its expiry (bounded), whether or not pruning removed it.
    await waitFor(
      async () =>
        (
          await pool.query(`SELECT 1 FROM socket_io.sessions WHERE sid = $1 AND expires_at > now()`, [old.sid])
        ).rowCount === 0,
      { timeout: 5000, interval: 100, message: "the session to expire" },
    );
    expect(await comeBack(old.socket, cluster.node(1))).toBe(false);
    const who = await whoami(old.socket);
    expect(who.recovered).toBe(false);
    expect(who.id).not.toBe(old.sid);
    expect(who.rooms.sort()).toEqual([who.id, "secret-room"].sort());
    expect(who.data).toEqual({});
    await expectHealthy(cluster);
  });

  const malformed: Array<[string, unknown]> = [
    ["an empty string", ""],
    ['"-1"', "-1"],
    ['"1e3"', "1e3"],
    ['"9999999999999999999999"', "9999999999999999999999"],
    ['"1 OR 1=1"', "1 OR 1=1"],
    ['"o-1"', "o-1"],
    ['"o1e3"', "o1e3"],
    ['"o9999999999999999999999"', "o9999999999999999999999"],
    ["a number instead of a string", 5],
    ["null", null],
  ];
  for (const [label, offset] of malformed) {
    it(`refuses the offset ${label} and leaves the session to its real client`, async () => {
      const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
      const refusals = collectRefusals(cluster);
      const old = await prepare(cluster);
      const result = await attempt(cluster, 1, old.pid, offset);
      expectFresh(result, old);
      // Socket.IO only asks the adapter when the offset is a string; the adapter refuses it before taking anything.
      expect(refusals).toEqual(typeof offset === "string" ? ["malformed pid or offset"] : []);
      expect(await comeBack(old.socket, cluster.node(0))).toBe(true);
      expect(old.socket.id).toBe(old.sid);
      await expectHealthy(cluster);
    });
  }

  it("refuses an offset beyond what was written to the socket (here: beyond the head of the log)", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const refusals = collectRefusals(cluster);
    const old = await prepare(cluster);
    const head = await logHead(cluster.node(0).pool);
    const result = await attempt(cluster, 1, old.pid, `o${head + 1000}`);
    expectFresh(result, old);
    // Refused by the session's range at once, not after waiting for the log to get there.
    expect(refusals).toHaveLength(1);
    expect(refusals[0]).toMatch(/^offset \d+ outside the session's range/);
    expect(cluster.nodes.flatMap((n) => n.errors).map(String)).toEqual([]);
    await expectHealthy(cluster);
  });

  it("refuses an offset before the session started", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    // Make sure there is history before the session.
    const early = await cluster.connect(0);
    for (let i = 0; i < 5; i++) cluster.node(0).io.emit("ev", { n: i });
    const seen = recordEvents(early);
    await waitFor(() => seen.length === 5);
    const old = await prepare(cluster);
    const start = Number(old.offset.slice(1));
    expect(start).toBeGreaterThanOrEqual(5);
    const result = await attempt(cluster, 1, old.pid, "o0");
    // Replaying from 0 would send packets from before the session: refuse.
    expectFresh(result, old);
    await expectHealthy(cluster);
  });

  it("refuses a replay longer than maxReplayEntries instead of truncating it", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: { maxReplayEntries: 5 } });
    const short = await prepare(cluster);
    const long = await prepare(cluster);
    const head = await logHead(cluster.node(0).pool);
    for (let i = 0; i < 3; i++) cluster.node(1).io.to("secret-room").emit("ev", { n: i });
    await waitFor(async () => (await logHead(cluster.node(0).pool)) === head + 3);
    // 3 to replay: fine.
    const gotShort = recordEvents(short.socket);
    expect(await comeBack(short.socket, cluster.node(1))).toBe(true);
    await waitFor(() => gotShort.length === 3);
    for (let i = 3; i < 10; i++) cluster.node(1).io.to("secret-room").emit("ev", { n: i });
    await waitFor(async () => (await logHead(cluster.node(0).pool)) === head + 10);
    // 10 to replay: refused, not cut to 5.
    const gotLong = recordEvents(long.socket);
    expect(await comeBack(long.socket, cluster.node(1))).toBe(false);
    expect(long.socket.id).not.toBe(long.sid);
    expect(gotLong).toEqual([]);
    await expectHealthy(cluster);
  });

  for (const where of ["the same node", "another node"] as const) {
    it(`refuses a replay larger than maxReplayBytes (recovering on ${where})`, async () => {
      const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: { maxReplayBytes: 4096 } });
      const old = await prepare(cluster);
      const head = await logHead(cluster.node(0).pool);
      for (let i = 0; i < 4; i++) cluster.node(1).io.to("secret-room").emit("ev", { n: i, pad: "x".repeat(2000) });
      await waitFor(async () => (await logHead(cluster.node(0).pool)) === head + 4);
      const got = recordEvents(old.socket);
      expect(await comeBack(old.socket, cluster.node(where === "the same node" ? 0 : 1))).toBe(false);
      expect(got).toEqual([]);
      await expectHealthy(cluster);
    });
  }

  // maxReplayBytes bounds what may be addressed to the socket (a table read's candidates): other rooms' big
  // entries in the range do not refuse a restore whose own entries fit. (A ring holds at most maxReplayBytes,
  // so such a range is read from the table on every node.)
  for (const where of ["the same node", "another node", "a node without a ring"] as const) {
    it(`does not refuse for other rooms' entries past maxReplayBytes (recovering on ${where})`, async () => {
      const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: { maxReplayBytes: 4096 } });
      const tableNode = await cluster.addNode({ adapter: { maxReplayBytes: 4096, recentEntries: 0 } });
      const old = await prepare(cluster);
      const head = await logHead(cluster.node(0).pool);
      for (let i = 0; i < 4; i++) cluster.node(1).io.to("other-room").emit("ev", { n: i, pad: "x".repeat(2000) });
      cluster.node(1).io.to("secret-room").emit("ev", { n: 4 });
      await waitFor(async () => (await logHead(cluster.node(0).pool)) === head + 5);
      const target = where === "the same node" ? cluster.node(0) : where === "another node" ? cluster.node(1) : tableNode;
      // Each node has delivered the range (a node's ring and cursor are past it) before the client comes back.
      await waitFor(() => (target.io.of("/").adapter as unknown as { sequencer?: { cursor?: number } }).sequencer?.cursor === head + 5);
      const got = recordEvents(old.socket);
      expect(await comeBack(old.socket, target)).toBe(true);
      await waitFor(() => got.length >= 1);
      expect(got.map((r) => r.args[0])).toEqual([{ n: 4 }]);
      await expectHealthy(cluster);
    });
  }

  it("after a refused recovery, the new session's offset replaces the stale one", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, maxDisconnectionDuration: 1000 });
    const old = await prepare(cluster);
    const pool = cluster.node(0).pool;
    await waitFor(
      async () =>
        (await pool.query(`SELECT 1 FROM socket_io.sessions WHERE sid = $1 AND expires_at > now()`, [old.sid])).rowCount === 0,
      { timeout: 5000, interval: 100, message: "the session to expire" },
    );
    // Traffic the new session must never see: delivered on node1 (a witness saw it) before it connects there.
    const witness = await cluster.connect(1, { rooms: ["secret-room"] });
    const seen = recordEvents(witness);
    for (let i = 0; i < 5; i++) cluster.node(1).io.to("secret-room").emit("ev", { n: `old-${i}` });
    await waitFor(() => seen.length === 5);
    const got = recordEvents(old.socket);
    expect(await comeBack(old.socket, cluster.node(1))).toBe(false);
    const fresh = recoveryFields(old.socket)._lastOffset;
    expect(fresh).toMatch(/^o\d+$/);
    expect(Number(fresh!.slice(1))).toBeGreaterThanOrEqual(Number(old.offset.slice(1)));
    expect(fresh).not.toBe(old.offset);
    // Drop before any event: the new session recovers from its own offset.
    const sid = old.socket.id!;
    goOffline(old.socket);
    await serverNoticed(cluster.node(1), sid);
    const before = await logHead(pool);
    cluster.node(0).io.to("secret-room").emit("ev", { n: "new" });
    await waitFor(async () => (await logHead(pool)) === before + 1);
    expect(await comeBack(old.socket, cluster.node(0))).toBe(true);
    expect(old.socket.id).toBe(sid);
    await waitFor(() => got.length >= 1);
    cluster.node(0).io.to("secret-room").emit("ev", { n: "live" });
    await waitFor(() => got.length >= 2 && seen.length >= 7);
    expect(got.map((r) => r.args[0])).toEqual([{ n: "new" }, { n: "live" }]);
  });
});
