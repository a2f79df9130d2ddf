/**
 * Behind a real PgBouncer in transaction mode (Debian's package): the pools
 * go through it, the direct connections (LISTEN, the pruner's session lock)
 * go to Postgres itself (`directConnection`). Recovery must work as without
 * it: events across nodes, a restore on another node, a node restart; and
 * nothing session-scoped may be left behind on PgBouncer's server connections.
 *
 * Skipped, saying so, when the pgbouncer binary is absent (.ci/run installs it).
 */
import pg from "pg";
import { describe, expect, it } from "vitest";
import { LISTENER_APPLICATION_NAME } from "../src/index.js";
import type { PostgresRecoveryAdapterOptions } from "../src/options.js";
import {
  Cluster,
  closeAll,
  comeBack,
  goOffline,
  recoveryFields,
  serverNoticed,
  spawnNode,
  waitFor,
  type ClientSocket,
} from "./helpers/cluster.js";
import { History, logOffsets, type ClientHandle } from "./helpers/history.js";
import { pgbouncerBinary, startPgbouncer, type Pgbouncer } from "./helpers/pgbouncer.js";
import { useClusterSuite } from "./fixtures/suite.js";

const binary = pgbouncerBinary();
if (!binary) {
  console.warn("pgbouncer.test.ts skipped: no pgbouncer binary (apt-get install pgbouncer; .ci/run installs it)");
}

const db = useClusterSuite("pgbouncer");

/** The adapter's options behind PgBouncer 1.18 in transaction mode. */
function behindBouncer(extra: PostgresRecoveryAdapterOptions = {}): PostgresRecoveryAdapterOptions {
  return {
    directConnection: { connectionString: db.url },
    // PgBouncer before 1.21 keeps no prepared statements across transactions.
    preparedStatements: false,
    ...extra,
  };
}

/** Runs `body` with a PgBouncer in front of the file's database; stops it after everything using it closed. */
async function withBouncer(body: (bouncer: Pgbouncer, url: string) => Promise<void>): Promise<void> {
  const bouncer = await startPgbouncer(db.url);
  try {
    await body(bouncer, bouncer.urlOf(db.name));
  } finally {
    // The leak check after each test looks at the database's connections: PgBouncer's must be gone.
    await closeAll();
    await bouncer.stop();
  }
}

/** Backend pids of PgBouncer's server connections. */
async function bouncerBackends(bouncer: Pgbouncer): Promise<Set<number>> {
  const rows = await bouncer.admin<{ database: string; remote_pid: string }>("SHOW SERVERS");
  return new Set(rows.filter((r) => r.database === db.name).map((r) => Number(r.remote_pid)));
}

/** Advisory locks held in the file's database, by anyone. */
async function advisoryLocks(): Promise<Array<{ pid: number }>> {
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  try {
    const { rows } = await client.query<{ pid: number }>(
      `SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database
        WHERE l.locktype = 'advisory' AND l.granted AND d.datname = $1`,
      [db.name],
    );
    return rows;
  } finally {
    await client.end();
  }
}

describe.skipIf(!binary)("behind PgBouncer in transaction mode, LISTEN direct", () => {
  it("events cross nodes, a dropped client recovers on the other node, pruning leaves no lock behind", async () => {
    await withBouncer(async (bouncer, url) => {
      const cluster = await Cluster.start({ databaseUrl: url, nodes: 2, adapter: behindBouncer({ pruneIntervalMs: 100 }) });
      const history = new History();
      const clients: ClientHandle[] = [];
      for (let i = 0; i < 4; i++) {
        const socket = cluster.client(i % 2, { rooms: ["r"] });
        clients.push(history.watch(socket, `c${i}`, ["r"]));
      }
      await waitFor(() => clients.every((c) => c.socket.connected && recoveryFields(c.socket)._lastOffset !== undefined), {
        timeout: 10_000,
        message: "clients connected",
      });

      // The LISTEN connections are direct: none of them is one of PgBouncer's server connections.
      const listeners = await cluster
        .node(0)
        .pool.query<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2", [db.name, LISTENER_APPLICATION_NAME]);
      expect(listeners.rows).toHaveLength(2);
      const viaBouncer = await bouncerBackends(bouncer);
      expect(viaBouncer.size).toBeGreaterThan(0);
      expect(listeners.rows.filter((r) => viaBouncer.has(r.pid))).toEqual([]);

      for (let i = 0; i < 20; i++) history.emit(cluster.node(i % 2).io, { rooms: ["r"] }, `node${i % 2}`);
      const lookup = () => logOffsets(cluster.node(0).pool);
      await history.settle({ lookup, timeout: 10_000 });

      // A client of node 0 misses events, then comes back on node 1.
      const mover = clients[0]!.socket as ClientSocket;
      const sid = mover.id!;
      goOffline(mover);
      await serverNoticed(cluster.node(0), sid, "/");
      for (let i = 0; i < 10; i++) history.emit(cluster.node(i % 2).io, { rooms: ["r"] }, `node${i % 2}`);
      expect(await comeBack(mover, cluster.node(1), 10_000)).toBe(true);
      expect(mover.id).toBe(sid);
      for (let i = 0; i < 10; i++) history.emit(cluster.node(i % 2).io, { rooms: ["r"] }, `node${i % 2}`);
      await history.settle({ lookup, timeout: 10_000 });
      history.assertClean({ lookup: await lookup() });
      expect(history.stats().refusals).toBe(0);

      // The pool's statements went through PgBouncer (its statistics lag by up to stats_period).
      const stats = await bouncer.admin<{ database: string; total_xact_count: string }>("SHOW STATS");
      expect(Number(stats.find((s) => s.database === db.name)?.total_xact_count)).toBeGreaterThan(0);

      // Prune passes ran every 100 ms during all this; each holds the schema's lock across its
      // transactions. Once the nodes are gone, no session may still hold it (PgBouncer keeps its
      // server connections open: a lock taken on one of them would stay).
      await waitFor(
        async () => Number((await cluster.node(0).pool.query("SELECT count(*) AS n FROM socket_io.maintenance")).rows[0].n) > 0,
        { timeout: 5000, message: "a prune pass recorded" },
      );
      await cluster.close();
      expect(await advisoryLocks()).toEqual([]);
      expect(cluster.nodes.flatMap((n) => n.errors).map(String)).toEqual([]);
    });
  });

  it("with prepared statements left on, PgBouncer 1.18 breaks the append, and the error says which option to change", async () => {
    await withBouncer(async (bouncer, url) => {
      const [row] = await bouncer.admin<{ version: string }>("SHOW VERSION");
      const [major, minor] = (/PgBouncer (\d+)\.(\d+)/.exec(row?.version ?? "") ?? []).slice(1).map(Number);
      // From 1.21 PgBouncer can keep prepared statements (max_prepared_statements): nothing to show there.
      if (!(major === 1 && minor! < 21)) return;
      const cluster = await Cluster.start({ databaseUrl: url, nodes: 2, adapter: { directConnection: { connectionString: db.url } } });
      const hint = /set the option preparedStatements: false/;
      const reported = () => cluster.nodes.flatMap((n) => n.errors).some((e) => hint.test(String(e.cause instanceof Error ? e.cause.message : e.message)));
      // Each pg client prepares the append once; its next append lands on whichever server connection is free.
      for (let i = 0; i < 200 && !reported(); i++) {
        cluster.node(i % 2).io.emit("ev", i);
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      await waitFor(reported, { timeout: 10_000, message: "an error naming preparedStatements" });
    });
  });

  it("a restarted node's clients recover on it; what was emitted meanwhile is delivered once", async () => {
    await withBouncer(async (_bouncer, url) => {
      const adapter = behindBouncer();
      const cluster = await Cluster.start({ databaseUrl: url, nodes: 1, adapter });
      const inProcess = cluster.node(0);
      let child = await spawnNode({ databaseUrl: url, name: "child", adapter: adapter as Record<string, unknown> });
      const port = child.port;
      const history = new History();
      const clients: ClientHandle[] = [];
      for (let i = 0; i < 4; i++) {
        const socket = cluster.client(child, { rooms: ["r"], reconnectionDelay: 100 });
        clients.push(history.watch(socket, `c${i}`, ["r"]));
      }
      await waitFor(() => clients.every((c) => c.socket.connected && recoveryFields(c.socket)._lastOffset !== undefined), {
        timeout: 10_000,
        message: "clients connected to the child node",
      });
      for (let i = 0; i < 10; i++) history.emit(inProcess.io, { rooms: ["r"] }, "inproc");
      await history.settle();

      expect(await child.stop("SIGTERM")).toBe(0);
      expect(child.stderr.join("")).toBe("");
      for (let i = 0; i < 10; i++) history.emit(inProcess.io, { rooms: ["r"] }, "inproc");

      child = await spawnNode({ databaseUrl: url, name: "child2", port, adapter: adapter as Record<string, unknown> });
      await waitFor(() => clients.every((c) => c.socket.connected), { timeout: 15_000, message: "clients back on the restarted node" });
      expect(clients.map((c) => c.reconnections.at(-1)?.recovered)).toEqual([true, true, true, true]);
      for (let i = 0; i < 10; i++) history.emit(inProcess.io, { rooms: ["r"] }, "inproc");

      const lookup = () => logOffsets(inProcess.pool);
      await history.settle({ lookup, timeout: 10_000 });
      history.assertClean({ lookup: await lookup() });
      expect(history.stats().refusals).toBe(0);
      expect(await child.stop("SIGTERM")).toBe(0);
      expect(child.stderr.join("")).toBe("");
    });
  });
});
