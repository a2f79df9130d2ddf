/**
 * Fast crash detection by the liveness lock (src/liveness-lock.ts), with real
 * processes. Every node here declares `nodeDeadAfterMs` 60 s while restores
 * give up after 20 s: a restore of a dead node's socket can only succeed by
 * the lock, never by heartbeat staleness.
 *
 * - A SIGKILLed node's backend ends with its process, its lock is released,
 *   and its clients are restored on another node at once.
 * - A running node whose lock connection is cut (pg_terminate_backend of
 *   that backend, while its reconnection is held up) looks dead to a restore
 *   of one of its pids: the socket is restored elsewhere, and the node, once
 *   it reaches Postgres again, drops its own copy (fencing) and loses no
 *   event for the sockets it keeps.
 */
import type pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import type { RestoredEvent } from "../src/index.js";
import { Cluster, closeAll, connected, moveTo, once, recordEvents, recoveryFields, spawnNode, waitFor, type ChildNode } from "./helpers/cluster.js";
import { History, logOffsets, type ClientHandle } from "./helpers/history.js";
import { startPostgresProxy, type PostgresProxy } from "./helpers/postgres-proxy.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("crash-lock");

/** Heartbeat staleness is out of reach of every restore here (20 s < 60 s). */
const LOCK_ONLY = { nodeHeartbeatIntervalMs: 300, nodeDeadAfterMs: 60_000, restoreTimeoutMs: 20_000, checkpointIntervalMs: 300 };

let proxy: PostgresProxy | undefined;
afterEach(async () => {
  await closeAll(); // the nodes first, while they still reach Postgres
  await proxy?.close();
  proxy = undefined;
});

async function skeletonsWritten(pool: pg.Pool, sids: string[]): Promise<void> {
  await waitFor(
    async () =>
      (await pool.query(`SELECT 1 FROM socket_io.sessions WHERE state = 'connected' AND sid = ANY($1)`, [sids])).rowCount === sids.length,
    { timeout: 5000, message: `skeletons of ${sids.length} sockets` },
  );
}

async function nodeOf(pool: pg.Pool, sid: string): Promise<string> {
  const { rows } = await pool.query<{ node_id: string }>(`SELECT node_id FROM socket_io.sessions WHERE sid = $1`, [sid]);
  return rows[0]!.node_id;
}

/** The backend holding the liveness lock its `nodes` row names, if any. */
async function lockHolder(pool: pg.Pool, nodeId: string): Promise<number | undefined> {
  const { rows } = await pool.query<{ pid: number }>(
    `SELECT l.pid FROM socket_io.nodes n JOIN pg_locks l
       ON l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = ((n.lock_key >> 32) & 4294967295)::oid AND l.objid = (n.lock_key & 4294967295)::oid
     WHERE n.node_id = $1`,
    [nodeId],
  );
  return rows[0]?.pid;
}

function restoredEvents(cluster: Cluster, node = 0): RestoredEvent[] {
  const events: RestoredEvent[] = [];
  (cluster.node(node).io.of("/").adapter as unknown as { on(e: string, fn: (p: RestoredEvent) => void): void }).on("session-restored", (e) =>
    events.push(e),
  );
  return events;
}

describe("crash detection by the liveness lock", () => {
  it("clients of a SIGKILLed node are restored by its released lock, long before its heartbeat is stale", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: LOCK_ONLY });
    const survivor = cluster.node(0);
    const restored = restoredEvents(cluster);
    const victim = await spawnNode({ databaseUrl: db.url, name: "victim", adapter: LOCK_ONLY });
    const history = new History();
    const clients: ClientHandle[] = [];
    for (let i = 0; i < 6; i++) {
      const rooms = i % 2 === 0 ? ["r"] : ["r", "odd"];
      clients.push(history.watch(cluster.client(victim, { rooms, reconnectionDelay: 100 }), `c${i}`, rooms));
    }
    await waitFor(() => clients.every((c) => c.socket.connected && recoveryFields(c.socket)._lastOffset !== undefined), {
      timeout: 10_000,
      message: "clients connected to the victim",
    });
    await skeletonsWritten(survivor.pool, clients.map((c) => c.socket.id!));
    const victimId = await nodeOf(survivor.pool, clients[0]!.socket.id!);
    await waitFor(async () => (await lockHolder(survivor.pool, victimId)) !== undefined, { message: "the victim's lock" });
    for (let i = 0; i < 5; i++) {
      history.emit(survivor.io, { rooms: ["odd"] }, "survivor");
      const emission = history.record({ rooms: ["r"] }, "victim");
      await victim.emit({ rooms: ["r"] }, "ev", { id: emission.id });
    }
    const lookup = () => logOffsets(survivor.pool);
    await history.settle({ lookup, timeout: 10_000 });

    for (const c of clients) moveTo(c.socket, survivor.url);
    expect(await victim.stop("SIGKILL")).toBe(null);
    for (let i = 0; i < 10; i++) {
      history.emit(survivor.io, i % 2 ? { rooms: ["odd"] } : {}, "survivor");
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await waitFor(() => clients.every((c) => c.socket.connected && c.reconnections.length === 1), {
      timeout: 15_000,
      message: "clients reconnected",
    });
    expect(clients.map((c) => c.reconnections[0]!.recovered)).toEqual(clients.map(() => true));
    // The first take found the lock released; later ones (other batches) may find the node declared dead by it.
    expect(restored.map((e) => e.sid).sort()).toEqual(clients.map((c) => c.socket.id!).sort());
    expect(restored[0]!.deadBy).toBe("lock");
    for (const e of restored) expect(["lock", "declared"]).toContain(e.deadBy);
    // The victim's heartbeat was never stale: it is not what made it dead.
    const { rows } = await survivor.pool.query<{ stale: boolean; declared_dead: boolean }>(
      `SELECT heartbeat_at < now() - dead_after_ms * interval '1 millisecond' AS stale, declared_dead FROM socket_io.nodes WHERE node_id = $1`,
      [victimId],
    );
    expect(rows).toEqual([{ stale: false, declared_dead: true }]);

    for (let i = 0; i < 5; i++) history.emit(survivor.io, { rooms: ["r"] }, "survivor");
    await history.settle({ lookup, timeout: 10_000 });
    history.assertClean({ lookup: await lookup() });
    expect(history.stats().refusals).toBe(0);
  });

  it("a running node whose lock connection is cut loses no event, and drops a socket restored elsewhere meanwhile", async () => {
    proxy = await startPostgresProxy(Number(new URL(db.url).port || 5432));
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: LOCK_ONLY });
    const survivor = cluster.node(0);
    const restored = restoredEvents(cluster);
    const node: ChildNode = await spawnNode({ databaseUrl: proxy.through(db.url), name: "cut", adapter: LOCK_ONLY });
    const stay = await cluster.connect(node, { rooms: ["r"] });
    const stayGot = recordEvents(stay);
    const copied = await cluster.connect(node, { rooms: ["r"] });
    const copiedGot = recordEvents(copied);
    const copiedSid = copied.id!; // the client forgets it once disconnected
    await skeletonsWritten(survivor.pool, [stay.id!, copiedSid]);
    const nodeId = await nodeOf(survivor.pool, stay.id!);
    await waitFor(async () => (await lockHolder(survivor.pool, nodeId)) !== undefined, { message: "the node's lock" });
    survivor.io.to("r").emit("ev", "before");
    await waitFor(() => stayGot.length === 1 && copiedGot.length === 1, { message: "both to get 'before'" });

    // Cut: its backend ends (the lock with it) and its reconnection waits at the proxy.
    proxy.hold();
    const holder = (await lockHolder(survivor.pool, nodeId))!;
    await survivor.pool.query("SELECT pg_terminate_backend($1)", [holder]);
    await waitFor(async () => (await lockHolder(survivor.pool, nodeId)) === undefined, { message: "the lock released" });
    survivor.io.to("r").emit("ev", "during-1");

    // The same pid presented on the survivor (a copied tab, or a client whose old connection the
    // node has not noticed is gone): the node looks dead by its lock, the socket is restored here.
    const tab = cluster.client(survivor, { autoConnect: false });
    const { _pid, _lastOffset } = recoveryFields(copied);
    Object.assign(recoveryFields(tab), { _pid, _lastOffset });
    const tabGot = recordEvents(tab);
    tab.connect();
    await connected(tab, 8000);
    expect(tab.recovered).toBe(true);
    expect(tab.id).toBe(copiedSid);
    expect(restored).toMatchObject([{ sid: copiedSid, deadBy: "lock" }]);
    survivor.io.to("r").emit("ev", "during-2");

    // Reachable again: the node takes its lock back, learns it was declared dead, and drops its copy.
    const dropped = once<[string]>(copied, "disconnect", 10_000);
    proxy.release();
    expect((await dropped)[0]).toBe("io server disconnect");
    await waitFor(async () => !((await node.command({ cmd: "sockets", nsp: "/" })).sockets as string[]).includes(copiedSid), {
      message: "the node to drop the copied socket",
    });
    await waitFor(async () => (await lockHolder(survivor.pool, nodeId)) !== undefined, { timeout: 10_000, message: "the lock held again" });
    survivor.io.to("r").emit("ev", "after");
    await waitFor(() => stayGot.length === 4 && tabGot.length === 3, {
      timeout: 10_000,
      message: () => `deliveries (stay ${JSON.stringify(stayGot.map((r) => r.args[0]))}, tab ${JSON.stringify(tabGot.map((r) => r.args[0]))})`,
    });
    // Nothing lost for the socket the node kept (LISTEN missed what came while cut: read back);
    // the restored socket got what it missed once, then live.
    expect(stayGot.map((r) => r.args[0])).toEqual(["before", "during-1", "during-2", "after"]);
    expect(tabGot.map((r) => r.args[0])).toEqual(["during-1", "during-2", "after"]);
    // The row is the survivor's (generation 1); the node's session write at the disconnect was refused.
    const { rows } = await survivor.pool.query<{ generation: string; state: string }>(
      `SELECT s.generation::text, s.state FROM socket_io.sessions s WHERE s.sid = $1`,
      [copiedSid],
    );
    expect(rows).toEqual([{ generation: "1", state: "connected" }]);
    expect(await nodeOf(survivor.pool, copiedSid)).not.toBe(nodeId);
    expect(await node.stop("SIGTERM")).toBe(0);
  });
});
