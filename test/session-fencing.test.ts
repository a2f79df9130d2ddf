/**
 * Crash safety at the SQL level: a connected socket's skeleton is taken only
 * once its node is dead; the take declares that node dead so its next
 * heartbeat learns it; and every write is fenced by generation and version, so
 * neither a zombie node nor a late retry resurrects or overwrites a session
 * restored elsewhere.
 */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { lockKeySql } from "../src/liveness-lock.js";
import { hashPid } from "../src/session-store.js";
import { LivenessQueries } from "../src/sql/liveness-queries.js";
import { PruneQueries } from "../src/sql/prune-queries.js";
import { SessionQueries, type SessionRecord } from "../src/sql/session-queries.js";
import { createTestDatabase, type TestDatabase } from "./helpers/database.js";

describe("session fencing", () => {
  let db: TestDatabase;
  let pool: pg.Pool;
  let namespaceId: number;

  beforeAll(async () => {
    db = await createTestDatabase("session_fencing", { migrated: true });
    pool = new pg.Pool({ connectionString: db.url, max: 3 });
    const { rows } = await pool.query<{ id: number }>(`INSERT INTO socket_io.namespaces (name) VALUES ('/') RETURNING id`);
    namespaceId = rows[0]!.id;
  });

  afterAll(async () => {
    await pool.end();
    await db?.drop();
  });

  const skeleton = (pid: string, nodeId: string, generation: number, version: number, sid = "s"): SessionRecord => ({
    pidHash: hashPid(pid),
    namespaceId,
    sid,
    floorOffset: 3,
    lastOffset: 3,
    cursorOffset: 3,
    payload: Buffer.from(sid),
    ttlMs: 60_000,
    state: "connected",
    nodeId,
    generation,
    version,
  });

  const row = async (pid: string) =>
    (
      await pool.query<{ state: string; node_id: string; generation: string; sid: string }>(
        `SELECT state, node_id, generation::text, sid FROM socket_io.sessions WHERE pid_hash = $1`,
        [hashPid(pid)],
      )
    ).rows[0];

  it("takes a skeleton only once its node is dead, declares it dead, and fences the zombie's writes", async () => {
    const a = new SessionQueries(pool, "socket_io", undefined, "node-a");
    const b = new SessionQueries(pool, "socket_io", undefined, "node-b");
    const liveness = new LivenessQueries(pool, "socket_io");
    await liveness.register("node-a", 1000);
    expect(await a.write([skeleton("p1", "node-a", 0, 1)])).toEqual([{ written: true, owned: true }]);

    // Node A is alive: the restore is told to wait, and nothing changes.
    const key = { pidHash: hashPid("p1"), namespaceId };
    expect(await b.takeOrWait([key])).toEqual([{ taken: undefined, held: true }]);
    expect(await row("p1")).toMatchObject({ state: "connected", node_id: "node-a", generation: "0" });

    // Its heartbeat is now older than its dead_after_ms: B takes it, in generation 1.
    await pool.query(`UPDATE socket_io.nodes SET heartbeat_at = now() - interval '2 seconds' WHERE node_id = 'node-a'`);
    const [outcome] = await b.takeOrWait([key]);
    expect(outcome?.taken).toMatchObject({ sid: "s", crashed: true, live: true, generation: 1 });
    expect(await row("p1")).toMatchObject({ state: "taken", node_id: "node-b", generation: "1" });
    // Single use.
    expect(await b.takeOrWait([key])).toEqual([{ taken: undefined, held: false }]);

    // A was only paused: its heartbeat fails (declared dead), its late writes are refused as not owned.
    expect(await liveness.heartbeat("node-a")).toBe(false);
    expect(await a.write([skeleton("p1", "node-a", 0, 2, "zombie")])).toEqual([{ written: false, owned: false }]);
    expect(await a.write([{ ...skeleton("p1", "node-a", 0, 3, "zombie"), state: "disconnected" }])).toEqual([
      { written: false, owned: false },
    ]);
    expect(await row("p1")).toMatchObject({ state: "taken", node_id: "node-b", sid: "s" });
    expect((await a.lost([{ pidHash: hashPid("p1"), generation: 0 }])).length).toBe(1);

    // B's writes in generation 1 go through; a late retry of an older version does not overwrite a newer one.
    expect(await b.write([skeleton("p1", "node-b", 1, 5, "b5")])).toEqual([{ written: true, owned: true }]);
    expect(await b.write([skeleton("p1", "node-b", 1, 4, "b4")])).toEqual([{ written: false, owned: true }]);
    expect(await row("p1")).toMatchObject({ state: "connected", node_id: "node-b", generation: "1", sid: "b5" });

    // Registering again revives A. B has no liveness row (never registered, or shut down cleanly):
    // its skeleton is takeable at once.
    await liveness.register("node-a", 1000);
    expect(await liveness.heartbeat("node-a")).toBe(true);
    const [again] = await a.takeOrWait([key]);
    expect(again?.taken).toMatchObject({ sid: "b5", generation: 2 });
  });

  it("a session written at the disconnect is taken at once, and a skeleton of a node without a row too", async () => {
    const a = new SessionQueries(pool, "socket_io", undefined, "node-c");
    await a.write([{ ...skeleton("p2", "node-c", 0, 1), state: "disconnected", lastOffset: 7, cursorOffset: 9 }]);
    const [taken] = await a.take([{ pidHash: hashPid("p2"), namespaceId }]);
    expect(taken).toMatchObject({ crashed: false, lastOffset: 7, cursorOffset: 9, generation: 1 });
    // node-d never registered (or deleted its row): its skeleton is an orphan.
    await a.write([skeleton("p3", "node-d", 0, 1)]);
    const [orphan] = await a.take([{ pidHash: hashPid("p3"), namespaceId }]);
    expect(orphan).toMatchObject({ crashed: true, generation: 1 });
  });

  it("prunes the skeletons of a dead node once their sessions would have expired, then the node's row", async () => {
    const a = new SessionQueries(pool, "socket_io", undefined, "node-e");
    const liveness = new LivenessQueries(pool, "socket_io");
    await liveness.register("node-e", 1000);
    await a.write([{ ...skeleton("p4", "node-e", 0, 1), ttlMs: 500 }, { ...skeleton("p5", "node-e", 0, 2), ttlMs: 60_000 }]);
    const prune = new PruneQueries("socket_io", "socket_io.socket_io_attachments");
    const client = await pool.connect();
    try {
      // Alive: nothing goes.
      expect((await prune.pruneSessions(client, 100)).deleted).toBe(0);
      await pool.query(`UPDATE socket_io.nodes SET heartbeat_at = now() - interval '2 seconds' WHERE node_id = 'node-e'`);
      // Dead 2 s ago: p4 (500 ms of life) is gone, p5 (60 s) stays and keeps the node's row.
      expect((await prune.pruneSessions(client, 100)).deleted).toBe(1);
      expect(await row("p4")).toBeUndefined();
      expect(await prune.pruneNodes(client)).toBe(0);
      await pool.query(`DELETE FROM socket_io.sessions WHERE pid_hash = $1`, [hashPid("p5")]);
      expect(await prune.pruneNodes(client)).toBe(1);
    } finally {
      client.release();
    }
  });

  it("a clean shutdown deletes the node's row, or makes it dead at once when a skeleton is left", async () => {
    const liveness = new LivenessQueries(pool, "socket_io");
    await liveness.register("node-f", 60_000);
    await liveness.remove("node-f");
    expect((await pool.query(`SELECT 1 FROM socket_io.nodes WHERE node_id = 'node-f'`)).rowCount).toBe(0);
    await liveness.register("node-g", 60_000);
    const g = new SessionQueries(pool, "socket_io", undefined, "node-g");
    await g.write([skeleton("p6", "node-g", 0, 1)]);
    await liveness.remove("node-g");
    const [taken] = await g.take([{ pidHash: hashPid("p6"), namespaceId }]);
    expect(taken).toMatchObject({ crashed: true, live: true });
  });
  it("takes a skeleton at once when its node's liveness lock is released, never by a lock the node never held, never its own", async () => {
    const liveness = new LivenessQueries(pool, "socket_io");
    const b = new SessionQueries(pool, "socket_io", undefined, "node-b");
    const holder = await pool.connect();
    try {
      // node-h holds its lock (here: a session of the test) and publishes the key; heartbeat fresh for a minute.
      const { rows } = await holder.query<{ key: string; held: boolean }>(
        `SELECT ${lockKeySql("$1::text")}::text AS key, pg_try_advisory_lock(${lockKeySql("$1::text")}) AS held`,
        ["node-h"],
      );
      expect(rows[0]!.held).toBe(true);
      await liveness.register("node-h", 60_000, rows[0]!.key);
      await b.write([skeleton("p7", "node-h", 0, 1)]);
      expect(await b.takeOrWait([{ pidHash: hashPid("p7"), namespaceId }])).toEqual([{ taken: undefined, held: true }]);
      // The node's own take never finds it dead by its lock (missing only while its listener reconnects).
      await holder.query("SELECT pg_advisory_unlock_all()");
      const h = new SessionQueries(pool, "socket_io", undefined, "node-h");
      expect(await h.takeOrWait([{ pidHash: hashPid("p7"), namespaceId }])).toEqual([{ taken: undefined, held: true }]);
      // Released (the process is gone): taken at once, the node declared dead.
      const [outcome] = await b.takeOrWait([{ pidHash: hashPid("p7"), namespaceId }]);
      expect(outcome!.taken).toMatchObject({ crashed: true, live: true, generation: 1, deadBy: "lock" });
      expect(await liveness.heartbeat("node-h", undefined, rows[0]!.key)).toBe(false);

      // A node that never published a key (an older version, or one that could not take its lock): heartbeat only.
      await liveness.register("node-i", 60_000);
      await b.write([skeleton("p8", "node-i", 0, 1)]);
      expect(await b.takeOrWait([{ pidHash: hashPid("p8"), namespaceId }])).toEqual([{ taken: undefined, held: true }]);
      // A second skeleton of a node found dead reads "declared".
      await b.write([skeleton("p9", "node-h", 0, 1)]);
      await liveness.register("node-h", 60_000);
      await holder.query(`SELECT pg_advisory_lock(${lockKeySql("$1::text")})`, ["node-h"]);
      await pool.query(`UPDATE socket_io.nodes SET declared_dead = true WHERE node_id = 'node-h'`);
      const [declared] = await b.takeOrWait([{ pidHash: hashPid("p9"), namespaceId }]);
      expect(declared!.taken).toMatchObject({ deadBy: "declared" });
    } finally {
      await holder.query("SELECT pg_advisory_unlock_all()").catch(() => undefined);
      holder.release();
    }
  });
});
