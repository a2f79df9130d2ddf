/**
 * Crash safety with real processes: a node SIGKILLed (nothing written at the
 * end) leaves the skeletons of its sockets, and its clients recover on another
 * node once it is declared dead; a node SIGSTOPped past its dead bound, whose
 * clients were restored elsewhere, resumes without resurrecting or
 * overwriting their sessions.
 */
import type pg from "pg";
import { describe, expect, it } from "vitest";
import { decodeSession } from "../src/codec.js";
import { collectStatus } from "../src/index.js";
import { Cluster, comeBack, goOffline, logHead, moveTo, recordEvents, recoveryFields, spawnNode, waitFor, waitForHead, waitForSession, type ChildNode, type WhoAmI } from "./helpers/cluster.js";
import { History, logOffsets, type ClientHandle } from "./helpers/history.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("crash");

/** Short bounds so a crash is noticed in about a second. */
const CRASH_OPTIONS = { nodeHeartbeatIntervalMs: 200, nodeDeadAfterMs: 1000, checkpointIntervalMs: 300, restoreTimeoutMs: 5000 };

/**
 * SIGKILLs `victim` while the test holds a row lock its skeleton write waits on, then ends that
 * write's backend: Postgres would otherwise finish it once the lock is released, and it must never land.
 */
async function killWithWriteBlocked(victim: ChildNode, pool: pg.Pool): Promise<void> {
  await victim.stop("SIGKILL");
  await pool.query(
    `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
      WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()`,
  );
}

/** Waits until each of `sids` has a durable skeleton (state connected). */
async function skeletonsWritten(pool: pg.Pool, sids: string[]): Promise<void> {
  await waitFor(
    async () => {
      const { rows } = await pool.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM socket_io.sessions WHERE state = 'connected' AND sid = ANY($1)`,
        [sids],
      );
      return rows[0]!.n === sids.length;
    },
    { timeout: 5000, message: `skeletons of ${sids.length} sockets` },
  );
}

describe("crash", () => {
  it("clients of a SIGKILLed node recover on another node; nothing lost, doubled or reordered", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: CRASH_OPTIONS });
    const survivor = cluster.node(0);
    const victim = await spawnNode({ databaseUrl: db.url, name: "victim", adapter: CRASH_OPTIONS });
    const history = new History();
    const clients: ClientHandle[] = [];
    for (let i = 0; i < 10; i++) {
      const rooms = i % 2 === 0 ? ["r"] : ["r", "odd"];
      clients.push(history.watch(cluster.client(victim, { rooms, reconnectionDelay: 100 }), `c${i}`, rooms));
    }
    await waitFor(() => clients.every((c) => c.socket.connected && recoveryFields(c.socket)._lastOffset !== undefined), {
      timeout: 10_000,
      message: "clients connected to the victim",
    });
    await skeletonsWritten(survivor.pool, clients.map((c) => c.socket.id!));

    for (let i = 0; i < 10; i++) {
      history.emit(survivor.io, { rooms: ["r"] }, "survivor");
      const emission = history.record({ rooms: ["odd"] }, "victim");
      await victim.emit({ rooms: ["odd"] }, "ev", { id: emission.id });
    }
    const lookup = () => logOffsets(survivor.pool);
    await history.settle({ lookup, timeout: 10_000 });

    for (const c of clients) moveTo(c.socket, survivor.url);
    const killedAt = Date.now();
    expect(await victim.stop("SIGKILL")).toBe(null);
    // Traffic while the clients come back (they wait for the victim to be declared dead).
    for (let i = 0; i < 20; i++) {
      history.emit(survivor.io, i % 2 ? { rooms: ["odd"] } : {}, "survivor");
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await waitFor(() => clients.every((c) => c.socket.connected && c.reconnections.length === 1), {
      timeout: 15_000,
      message: "clients reconnected",
    });
    const recoveredAfterMs = Date.now() - killedAt;
    expect(clients.map((c) => c.reconnections[0]!.recovered)).toEqual(clients.map(() => true));
    for (let i = 0; i < 10; i++) history.emit(survivor.io, { rooms: ["r"] }, "survivor");
    await history.settle({ lookup, timeout: 10_000 });
    history.assertClean({ lookup: await lookup() });
    expect(history.stats().refusals).toBe(0);
    console.log(`[crash] 10/10 recovered ${recoveredAfterMs} ms after SIGKILL (nodeDeadAfterMs ${CRASH_OPTIONS.nodeDeadAfterMs})`);
  });

  it("restores the rooms joined after connecting and socket.data as of its last checkpoint", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: CRASH_OPTIONS });
    const victim = await spawnNode({ databaseUrl: db.url, name: "victim", adapter: CRASH_OPTIONS });
    const socket = await cluster.connect(victim, { rooms: ["a"], reconnectionDelay: 100 });
    await socket.timeout(3000).emitWithAck("join", "b");
    await socket.timeout(3000).emitWithAck("set-data", { user: "u1", bytes: Buffer.from([1, 2, 3]) });
    const sid = socket.id!;
    // Rooms are written when they change; data at the next checkpoint (300 ms).
    await waitFor(
      async () => {
        const { rows } = await cluster.node(0).pool.query<{ payload: Buffer }>(
          `SELECT payload FROM socket_io.sessions WHERE sid = $1 AND state = 'connected'`,
          [sid],
        );
        const stored = rows[0] ? decodeSession(rows[0].payload) : undefined;
        return stored !== undefined && stored.rooms.length === 3 && (stored.data as { user?: string }).user === "u1";
      },
      { timeout: 5000, message: "the checkpoint of socket.data" },
    );
    moveTo(socket, cluster.node(0).url);
    await victim.stop("SIGKILL");
    await waitFor(() => socket.connected && socket.recovered, { timeout: 10_000, message: "recovered after the crash" });
    const who = (await socket.timeout(3000).emitWithAck("whoami")) as WhoAmI;
    expect(who).toMatchObject({ node: "node0", id: sid, recovered: true });
    expect(who.rooms.sort()).toEqual(["a", "b", sid].sort());
    expect(who.data).toMatchObject({ user: "u1" });
  });

  it("a SIGSTOPped node declared dead resumes without resurrecting or overwriting a session restored elsewhere", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: CRASH_OPTIONS });
    const survivor = cluster.node(0);
    const zombie = await spawnNode({ databaseUrl: db.url, name: "zombie", adapter: CRASH_OPTIONS });
    const history = new History();
    const client = history.watch(cluster.client(zombie, { rooms: ["z"], reconnectionDelay: 100 }), "c", ["z"]);
    await waitFor(() => client.socket.connected && recoveryFields(client.socket)._lastOffset !== undefined);
    const sid = client.socket.id!;
    await skeletonsWritten(survivor.pool, [sid]);

    zombie.process.kill("SIGSTOP");
    try {
      // The client notices the silent node by its ping timeout; here it leaves at once instead.
      goOffline(client.socket);
      history.emit(survivor.io, { rooms: ["z"] }, "survivor");
      expect(await comeBack(client.socket, survivor, 10_000)).toBe(true);
      expect(client.socket.id).toBe(sid);
    } finally {
      zombie.process.kill("SIGCONT");
    }
    // The zombie resumes: it notices the closed connection and tries to write the session at the
    // disconnect, and its heartbeat finds it was declared dead. Neither may touch the restored session.
    const owner = async () =>
      (
        await survivor.pool.query<{ state: string; generation: string; node_id: string }>(
          `SELECT state, generation::text, node_id FROM socket_io.sessions WHERE sid = $1`,
          [sid],
        )
      ).rows;
    await waitFor(async () => ((await zombie.command({ cmd: "sockets", nsp: "/" })).sockets as string[]).length === 0, {
      timeout: 10_000,
      message: "the zombie to drop the socket",
    });
    await waitFor(
      async () => (await survivor.pool.query(`SELECT 1 FROM socket_io.nodes WHERE declared_dead = false AND heartbeat_at > now() - interval '500 milliseconds'`)).rowCount === 2,
      { timeout: 5000, message: "the zombie to register again" },
    );
    const rows = await owner();
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ state: "connected", generation: "1" });
    expect(rows[0]!.node_id).not.toBe(undefined);

    // The session on the survivor is intact: another drop recovers there again, with what was missed.
    goOffline(client.socket);
    history.emit(survivor.io, { rooms: ["z"] }, "survivor");
    expect(await comeBack(client.socket, survivor)).toBe(true);
    history.emit(survivor.io, { rooms: ["z"] }, "survivor");
    const lookup = () => logOffsets(survivor.pool);
    await history.settle({ lookup, timeout: 10_000 });
    history.assertClean({ lookup: await lookup() });
    expect(await zombie.stop("SIGTERM")).toBe(0);
  });

  it("an entry reaches a socket through a room change only once the change is durable; a change lost in a crash is rolled back", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: CRASH_OPTIONS });
    const survivor = cluster.node(0);
    const victim = await spawnNode({ databaseUrl: db.url, name: "victim", adapter: CRASH_OPTIONS });
    const socket = await cluster.connect(victim, { rooms: ["base"], reconnectionDelay: 100 });
    const got = recordEvents(socket);
    // A peer on the same node, already in the rooms: it shows when the victim delivers.
    const peer = await cluster.connect(victim, { rooms: ["late", "later"] });
    const peerGot = recordEvents(peer);
    const sid = socket.id!;
    await skeletonsWritten(survivor.pool, [sid, peer.id!]);

    // The test holds the socket's row: the victim's next skeleton write for it waits.
    const blocker = await survivor.pool.connect();
    const block = async () => {
      await blocker.query("BEGIN");
      await blocker.query(`SELECT 1 FROM socket_io.sessions WHERE sid = $1 FOR UPDATE`, [sid]);
    };
    try {
      // 1. Join "late" (not durable yet): an entry to it is held back, then sent once durable.
      await block();
      await socket.timeout(3000).emitWithAck("join", "late");
      survivor.io.to("late").emit("ev", "e1");
      await waitFor(() => peerGot.some((r) => r.args[0] === "e1"), { message: "the peer to get e1" });
      survivor.io.to("base").emit("ev", "e1b");
      await waitFor(() => peerGot.length >= 1);
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(got.map((r) => r.args[0])).toEqual([]);
      await blocker.query("ROLLBACK");
      await waitFor(() => got.length === 2, { message: () => `e1 and e1b after the write (got ${JSON.stringify(got.map((r) => r.args[0]))})` });
      expect(got.map((r) => r.args[0])).toEqual(["e1", "e1b"]);

      // 2. Join "later" (not durable), entries to it and to everyone are held; the node dies before the write.
      await block();
      await socket.timeout(3000).emitWithAck("join", "later");
      survivor.io.to("later").emit("ev", "e2");
      survivor.io.emit("ev", "e3");
      await waitFor(() => peerGot.some((r) => r.args[0] === "e3"), { message: "the peer to get e3" });
      expect(got.map((r) => r.args[0])).toEqual(["e1", "e1b"]);
      moveTo(socket, survivor.url);
      await killWithWriteBlocked(victim, survivor.pool);
    } finally {
      await blocker.query("ROLLBACK").catch(() => undefined);
      blocker.release();
    }
    await waitFor(() => socket.connected && socket.recovered, { timeout: 10_000, message: "recovered after the crash" });
    // Rolled back as if the crash came before the join of "later": not in it, e2 never received;
    // e3 (to everyone) is replayed.
    const who = (await socket.timeout(3000).emitWithAck("whoami")) as WhoAmI;
    expect(who.rooms.sort()).toEqual(["base", "late", sid].sort());
    await waitFor(() => got.length >= 3);
    survivor.io.to("later").emit("ev", "e4");
    survivor.io.to("late").emit("ev", "e5");
    await waitFor(() => got.length >= 4);
    expect(got.map((r) => r.args[0])).toEqual(["e1", "e1b", "e3", "e5"]);
  });

  it.each([
    { variant: "a leave applied at once", before: undefined },
    { variant: "a leave that waits for an earlier event (program order)", before: "before" },
  ])("an entry logged after a room change waits for the change to be durable; a crash that rolls it back finds nothing after it in the log ($variant)", async ({ before }) => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: CRASH_OPTIONS });
    const survivor = cluster.node(0);
    const victim = await spawnNode({ databaseUrl: db.url, name: "victim", adapter: CRASH_OPTIONS });
    const socket = await cluster.connect(victim, { rooms: ["r"], reconnectionDelay: 100 });
    const got = recordEvents(socket);
    const sid = socket.id!;
    await skeletonsWritten(survivor.pool, [sid]);
    const markerLogged = async () => {
      const { rows } = await survivor.pool.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM socket_io.log_entries WHERE position(convert_to('left-r', 'UTF8') IN payload) > 0`,
      );
      return rows[0]!.n;
    };

    // The test holds the socket's row: the victim's skeleton write of the leave waits.
    const blocker = await survivor.pool.connect();
    try {
      await blocker.query("BEGIN");
      await blocker.query(`SELECT 1 FROM socket_io.sessions WHERE sid = $1 FOR UPDATE`, [sid]);
      // The application leaves "r" and says so to the socket, through the log.
      await socket.timeout(3000).emitWithAck("leave-and-mark", { room: "r", marker: "left-r", before });
      if (before !== undefined) await waitFor(() => got.some((r) => r.args[0] === before), { message: "the event before the leave" });
      // An entry from elsewhere goes through while the marker waits (the log itself is fine).
      survivor.io.emit("ev", "to-all");
      await waitFor(async () => {
        const { rows } = await survivor.pool.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM socket_io.log_entries WHERE position(convert_to('to-all', 'UTF8') IN payload) > 0`,
        );
        return rows[0]!.n === 1;
      });
      await new Promise((resolve) => setTimeout(resolve, 300));
      // Not logged: the leave is not durable yet (without the ordering, it is logged at once).
      expect(await markerLogged()).toBe(0);
      moveTo(socket, survivor.url);
      await killWithWriteBlocked(victim, survivor.pool);
    } finally {
      await blocker.query("ROLLBACK").catch(() => undefined);
      blocker.release();
    }
    await waitFor(() => socket.connected && socket.recovered, { timeout: 10_000, message: "recovered after the crash" });
    // Rolled back as if the crash came before the leave: still in "r", and the marker never existed.
    const who = (await socket.timeout(3000).emitWithAck("whoami")) as WhoAmI;
    expect(who.rooms.sort()).toEqual(["r", sid].sort());
    survivor.io.to("r").emit("ev", "after");
    await waitFor(() => got.some((r) => r.args[0] === "after"), { message: () => `"after" (got ${JSON.stringify(got.map((r) => r.args[0]))})` });
    expect(got.map((r) => r.args[0])).toEqual([...(before === undefined ? [] : [before]), "to-all", "after"]);
    expect(await markerLogged()).toBe(0);
  });

  it("a take leaves the restored socket's skeleton: no first write, restorable at once; a restore refused after its take leaves a fence", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: CRASH_OPTIONS });
    const [first, second] = [cluster.node(0), cluster.node(1)];
    const row = async (sid: string) =>
      (
        await first.pool.query<{ state: string; generation: string; version: string; payload: Buffer }>(
          `SELECT state, generation::text, version::text, payload FROM socket_io.sessions WHERE sid = $1`,
          [sid],
        )
      ).rows[0];

    // The second node registers its liveness row with its first socket (a take before that is a fence).
    const resident = await cluster.connect(second);
    await skeletonsWritten(first.pool, [resident.id!]);
    // Restored on the second node: the row is its skeleton at once (the session's rooms, next generation, version 0).
    const socket = await cluster.connect(first, { rooms: ["r"] });
    const got = recordEvents(socket);
    const sid = socket.id!;
    await skeletonsWritten(first.pool, [sid]);
    goOffline(socket);
    await waitForSession(first.pool, sid);
    const before = (await row(sid))!;
    expect(await comeBack(socket, second)).toBe(true);
    const taken = (await row(sid))!;
    expect(taken).toMatchObject({ state: "connected", generation: String(Number(before.generation) + 1), version: "0" });
    expect(decodeSession(taken.payload).rooms.map(([room]) => room).sort()).toEqual(["r", sid].sort());
    // Three checkpoint intervals, with traffic through its room: no write (nothing changed).
    for (let i = 0; i < 3; i++) {
      second.io.to("r").emit("ev", i);
      await new Promise((resolve) => setTimeout(resolve, CRASH_OPTIONS.checkpointIntervalMs));
    }
    await waitFor(() => got.length === 3, { message: "the events through its restored room" });
    expect((await row(sid))!.version).toBe("0");
    // A change is written over it, in the same generation.
    await socket.timeout(3000).emitWithAck("join", "s");
    await waitFor(async () => (await row(sid))!.version !== "0", { message: "the skeleton rewritten after a join" });
    expect((await row(sid))!.generation).toBe(taken.generation);

    // Refused after its take (an offset past the session's last one): the row becomes a fence.
    const other = await cluster.connect(first, { rooms: ["r"] });
    const otherSid = other.id!;
    await skeletonsWritten(first.pool, [otherSid]);
    goOffline(other);
    await waitForSession(first.pool, otherSid);
    const head = await logHead(first.pool);
    for (let i = 0; i < 3; i++) first.io.to("elsewhere").emit("ev", i);
    await waitForHead(first.pool, head + 3);
    recoveryFields(other)._lastOffset = `o${head + 3}`;
    expect(await comeBack(other, second)).toBe(false);
    await waitFor(async () => (await row(otherSid))?.state === "taken", { message: "the refused restore's row to be a fence" });
  });

  it("at rest a connected socket costs no write; a change of socket.data costs one at the next checkpoint", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: { ...CRASH_OPTIONS, checkpointIntervalMs: 100 } });
    const pool = cluster.node(0).pool;
    const sockets = await Promise.all(Array.from({ length: 5 }, () => cluster.connect(0, { rooms: ["r"] })));
    await skeletonsWritten(pool, sockets.map((s) => s.id!));
    const versions = async () =>
      (
        await pool.query<{ sid: string; version: string }>(
          `SELECT sid, version::text FROM socket_io.sessions WHERE state = 'connected' ORDER BY sid`,
        )
      ).rows;
    const settled = await versions();
    // Ten checkpoint intervals, with traffic: no write.
    for (let i = 0; i < 10; i++) {
      cluster.node(0).io.to("r").emit("ev", i);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(await versions()).toEqual(settled);
    await sockets[0]!.timeout(3000).emitWithAck("set-data", { n: 1 });
    await waitFor(async () => (await versions()).filter((v, i) => v.version !== settled[i]!.version).length === 1, {
      message: "one skeleton rewritten",
    });
    const changed = (await versions()).filter((v, i) => v.version !== settled[i]!.version);
    expect(changed.map((v) => v.sid)).toEqual([sockets[0]!.id]);
  });

  it("holds entries through a room joined while the socket's first skeleton is still being written", async () => {
    // That first write was taken before the join: committed, it would make durable a membership
    // without the room, after the client got an entry through it. The entries come from another
    // node: this node's own, emitted after the join, are not even logged before it is durable.
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: CRASH_OPTIONS });
    const node = cluster.node(0);
    const other = cluster.node(1);
    // A peer in the room, its skeleton durable: it shows when the node delivers.
    const peer = await cluster.connect(0, { rooms: ["late"] });
    const peerGot = recordEvents(peer);
    await skeletonsWritten(node.pool, [peer.id!]);
    const blocker = await node.pool.connect();
    try {
      await blocker.query("BEGIN");
      await blocker.query("LOCK TABLE socket_io.sessions IN SHARE MODE"); // skeleton inserts wait
      const socket = await cluster.connect(0);
      const got = recordEvents(socket);
      await socket.timeout(3000).emitWithAck("join", "late");
      other.io.to("late").emit("ev", "through-late");
      other.io.emit("ev", "to-all");
      other.io.to("late").emit("ev", "marker");
      await waitFor(() => peerGot.some((r) => r.args[0] === "marker"), { message: "the node to deliver" });
      expect(got).toEqual([]);
      await blocker.query("ROLLBACK");
      await waitFor(() => got.length === 3, { message: () => `held entries after the writes (got ${got.length})` });
      expect(got.map((r) => r.args[0])).toEqual(["through-late", "to-all", "marker"]);
    } finally {
      await blocker.query("ROLLBACK").catch(() => undefined);
      blocker.release();
    }
  });

  it("crashSafety: false writes no skeleton and no liveness row; a disconnect is still recovered", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: { ...CRASH_OPTIONS, crashSafety: false } });
    const pool = cluster.node(0).pool;
    const nodesBefore = (await pool.query(`SELECT node_id FROM socket_io.nodes`)).rowCount;
    const socket = await cluster.connect(0, { rooms: ["r"] });
    const sid = socket.id!;
    await socket.timeout(3000).emitWithAck("join", "s");
    // Three checkpoint intervals and a few heartbeats: nothing written.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect((await pool.query(`SELECT 1 FROM socket_io.sessions WHERE sid = $1`, [sid])).rowCount).toBe(0);
    expect((await pool.query(`SELECT node_id FROM socket_io.nodes`)).rowCount).toBe(nodesBefore);
    goOffline(socket);
    await waitForSession(pool, sid);
    expect(await comeBack(socket, cluster.node(1))).toBe(true);
    expect(((await socket.timeout(3000).emitWithAck("whoami")) as WhoAmI).rooms.sort()).toEqual(["r", "s", sid].sort());
  });

  it("status counts sessions waiting to be restored, not the skeletons of connected sockets", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: CRASH_OPTIONS });
    const pool = cluster.node(0).pool;
    const connected = await cluster.connect(0);
    const away = await cluster.connect(0);
    await skeletonsWritten(pool, [connected.id!, away.id!]);
    // Earlier tests of this file left sessions behind: count the difference.
    const before = (await collectStatus(pool)).sessions;
    const awaySid = away.id!;
    goOffline(away);
    await waitForSession(pool, awaySid);
    const status = await collectStatus(pool);
    expect(status.sessions.count - before.count).toBe(1);
    expect(status.sessions.live - before.live).toBe(1);
    expect(Number.isFinite(Date.parse(status.sessions.latestExpiresAt!))).toBe(true);
  });
});
