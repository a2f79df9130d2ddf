/**
 * `session-expired`: when the pruning pass deletes an expired session, every
 * running node's adapter of that namespace emits it once, with the sid; a
 * restored session is never announced; a listener that missed the NOTIFY
 * (frozen, then replaced) reads what it missed, once.
 */
import pg from "pg";
import { describe, expect, it } from "vitest";
import { LISTENER_APPLICATION_NAME } from "../src/index.js";
import { prune } from "../src/prune.js";
import { hashPid } from "../src/session-store.js";
import { PruneQueries } from "../src/sql/prune-queries.js";
import { SessionQueries } from "../src/sql/session-queries.js";
import { Cluster, comeBack, goOffline, spawnNode, waitFor, waitForSession, type ClientSocket, type TestNode } from "./helpers/cluster.js";
import { startPostgresProxy } from "./helpers/postgres-proxy.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("session_expired");

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Every `session-expired` a node's adapter of `nsp` emits, in order. */
function recordExpired(node: TestNode, nsp = "/"): string[] {
  const seen: string[] = [];
  node.io.of(nsp).adapter.on("session-expired", (sid: string) => seen.push(sid));
  return seen;
}

/** How many times each sid was announced. */
function counts(seen: readonly string[]): Map<string, number> {
  const n = new Map<string, number>();
  for (const sid of seen) n.set(sid, (n.get(sid) ?? 0) + 1);
  return n;
}

async function sessionRows(pool: pg.Pool, sids: string[]): Promise<number> {
  const { rows } = await pool.query<{ n: number }>(`SELECT count(*)::int AS n FROM socket_io.sessions WHERE sid = ANY($1)`, [sids]);
  return rows[0]!.n;
}

/** Takes the client offline (no reconnection) and waits for its session at the disconnect. */
async function disconnect(socket: ClientSocket, pool: pg.Pool): Promise<string> {
  const sid = socket.id!;
  goOffline(socket);
  await waitForSession(pool, sid);
  return sid;
}

const CRASH_OPTIONS = { nodeHeartbeatIntervalMs: 100, nodeDeadAfterMs: 300 };

describe("session-expired", () => {
  it("3 nodes, one stopped and one crashed: each running node announces each expired sid once, per namespace; a restored session never", async () => {
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 3,
      namespaces: ["/other"],
      maxDisconnectionDuration: 1500,
      adapter: { pruneIntervalMs: 200, ...CRASH_OPTIONS },
    });
    const [n0, n1, n2] = [cluster.node(0), cluster.node(1), cluster.node(2)];
    const pool = n0.pool;
    const seen = { n0: recordExpired(n0), n1: recordExpired(n1), n2: recordExpired(n2) };
    const seenOther = { n0: recordExpired(n0, "/other"), n1: recordExpired(n1, "/other") };

    // A node in its own process that is SIGKILLed: its client's skeleton expires ttl after its last heartbeat.
    const victim = await spawnNode({ databaseUrl: db.url, name: "victim", adapter: CRASH_OPTIONS, maxDisconnectionDuration: 1500 });
    const crashedClient = await cluster.connect(victim);
    const crashedSid = crashedClient.id!;
    await waitFor(async () => (await pool.query(`SELECT 1 FROM socket_io.sessions WHERE sid = $1 AND state = 'connected'`, [crashedSid])).rowCount === 1, {
      message: "the victim's skeleton",
    });

    const onN0 = [await cluster.connect(n0), await cluster.connect(n0)];
    const onN1 = [await cluster.connect(n1)];
    const onN2 = [await cluster.connect(n2), await cluster.connect(n2)];
    const otherOnN1 = await cluster.connect(n1, { nsp: "/other" });
    const restored = await cluster.connect(n0);

    const expected: string[] = [];
    for (const c of onN0) expected.push(await disconnect(c, pool));
    for (const c of onN1) expected.push(await disconnect(c, pool));
    const otherSid = await disconnect(otherOnN1, pool);
    // Restored on another node: its session is taken, and must never be announced.
    const restoredSid = await disconnect(restored, pool);
    expect(await comeBack(restored, n1)).toBe(true);
    expect(restored.id).toBe(restoredSid);
    // Stopped cleanly: it writes its sockets' sessions as it closes, then is gone.
    for (const c of onN2) c.io.reconnection(false);
    const stoppedSids = onN2.map((c) => c.id!);
    await n2.close();
    expected.push(...stoppedSids);
    crashedClient.io.reconnection(false);
    expect(await victim.stop("SIGKILL")).toBe(null);
    expected.push(crashedSid);

    await waitFor(
      () => [seen.n0, seen.n1].every((s) => expected.every((sid) => s.includes(sid))) && [seenOther.n0, seenOther.n1].every((s) => s.includes(otherSid)),
      { timeout: 15_000, interval: 50, message: () => `every expired sid on n0 and n1 (n0: ${seen.n0.length}, n1: ${seen.n1.length} of ${expected.length})` },
    );
    // Their rows are gone; the restored socket's is still there (it is connected on n1).
    expect(await sessionRows(pool, [...expected, otherSid])).toBe(0);
    // Further passes announce nothing again.
    const announced = Number((await pool.query<{ n: string }>("SELECT max(id)::text AS n FROM socket_io.expired_sessions")).rows[0]!.n);
    await sleep(1000);
    expect(Number((await pool.query<{ n: string }>("SELECT max(id)::text AS n FROM socket_io.expired_sessions")).rows[0]!.n)).toBe(announced);

    for (const s of [seen.n0, seen.n1]) {
      expect([...counts(s)].sort()).toEqual(expected.map((sid) => [sid, 1]).sort());
      expect(s).not.toContain(restoredSid);
    }
    for (const s of [seenOther.n0, seenOther.n1]) expect(s).toEqual([otherSid]);
    // The stopped node heard nothing after it closed.
    expect(seen.n2.filter((sid) => stoppedSids.includes(sid) || sid === crashedSid)).toEqual([]);
    // Nothing secret in the table: the public sid and the namespace only.
    const { rows } = await pool.query("SELECT * FROM socket_io.expired_sessions ORDER BY id");
    expect(Object.keys(rows[0]!).sort()).toEqual(["expired_at", "id", "namespace", "sid"]);
    expect(rows.map((r: { id: string }) => Number(r.id))).toEqual(rows.map((_, i) => i + 1));
  });

  it("a node whose listener missed the NOTIFY (frozen, replaced) reads the announcements after its reconnect, once", async () => {
    const proxy = await startPostgresProxy(Number(new URL(db.url).port || 5432));
    try {
      // No scheduled pass, no poll within the test: the passes are the operator's, and only the
      // NOTIFY or the read after a listener reconnect can tell the nodes.
      const adapter = { pruneIntervalMs: 600_000, listenerCheckIntervalMs: 2500 };
      const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, maxDisconnectionDuration: 500, adapter });
      const n0 = cluster.node(0);
      // Sessions the previous test's nodes wrote as they closed would expire here too.
      await n0.pool.query("DELETE FROM socket_io.sessions");
      const n1 = await cluster.addNode({ databaseUrl: proxy.through(db.url) });
      const seen0 = recordExpired(n0);
      const seen1 = recordExpired(n1);
      const first = [await disconnect(await cluster.connect(n0), n0.pool), await disconnect(await cluster.connect(n1), n0.pool)];
      await sleep(600);
      await waitFor(() => proxy.connections().some((c) => c.applicationName === LISTENER_APPLICATION_NAME), { message: "n1's listener" });
      expect(proxy.freeze((c) => c.applicationName === LISTENER_APPLICATION_NAME)).toBe(1);
      await prune(n0.pool);
      await waitFor(() => first.every((sid) => seen0.includes(sid)), { message: "n0 to hear the NOTIFY" });
      // n1's listener is frozen: the NOTIFY never reached it.
      expect(seen1).toEqual([]);
      await waitFor(() => first.every((sid) => seen1.includes(sid)), { timeout: 10_000, message: "n1 to read after its listener was replaced" });
      expect(n1.errors.some((e) => /LISTEN connection lost/.test(e.message))).toBe(true);

      // Then a pass while the listener works, and one more listener replacement: nothing twice.
      const second = [await disconnect(await cluster.connect(n1), n0.pool)];
      await sleep(600);
      await prune(n0.pool);
      await waitFor(() => second.every((sid) => seen0.includes(sid) && seen1.includes(sid)), { message: "the second pass on both" });
      proxy.cut((c) => c.applicationName === LISTENER_APPLICATION_NAME);
      await waitFor(() => proxy.connections().some((c) => c.applicationName === LISTENER_APPLICATION_NAME && !c.frozen), { message: "a new listener" });
      await prune(n0.pool);
      await sleep(300);
      expect(seen0.sort()).toEqual([...first, ...second].sort());
      expect(seen1.sort()).toEqual([...first, ...second].sort());
      await cluster.close();
    } finally {
      await proxy.close();
    }
  });

  it("a session a restore took is deleted at its expiry without an announcement; an expired one is announced with its sid only", async () => {
    const pool = new pg.Pool({ connectionString: db.url, max: 2 });
    try {
      const { rows } = await pool.query<{ id: number }>(
        `INSERT INTO socket_io.namespaces (name) VALUES ('/sql') ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id`,
      );
      const namespaceId = rows[0]!.id;
      const sessions = new SessionQueries(pool, "socket_io", undefined, "node-x");
      const record = (pid: string, sid: string) => ({
        pidHash: hashPid(pid),
        namespaceId,
        sid,
        floorOffset: 0,
        lastOffset: 0,
        cursorOffset: 0,
        payload: Buffer.from("x"),
        ttlMs: 60_000,
        state: "disconnected" as const,
      });
      await sessions.write([record("pid-restored", "sid-restored"), record("pid-expired", "sid-expired")]);
      const [taken] = await sessions.take([{ pidHash: hashPid("pid-restored"), namespaceId }]);
      expect(taken).toMatchObject({ live: true });
      // Both reach their expiry, the restored one before its new node wrote its skeleton over the fence.
      await pool.query(`UPDATE socket_io.sessions SET expires_at = now() - interval '1 second' WHERE namespace_id = $1`, [namespaceId]);
      const before = Number((await pool.query<{ n: string }>("SELECT COALESCE(max(id), 0)::text AS n FROM socket_io.expired_sessions")).rows[0]!.n);
      const client = await pool.connect();
      try {
        expect(await new PruneQueries("socket_io", "socket_io.socket_io_attachments").pruneSessions(client, 100)).toEqual({ deleted: 2, announced: 1 });
      } finally {
        client.release();
      }
      const announced = await pool.query("SELECT id::int AS id, namespace, sid FROM socket_io.expired_sessions WHERE id > $1", [before]);
      expect(announced.rows).toEqual([{ id: before + 1, namespace: "/sql", sid: "sid-expired" }]);
    } finally {
      await pool.end();
    }
  });
});
