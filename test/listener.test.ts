/**
 * LISTEN is not durable: notifications sent while the listener connection is
 * down are gone. The adapter must notice, reconnect, and read what it missed
 * from the table, so connected clients miss nothing.
 */
import pg from "pg";
import { describe, expect, it } from "vitest";
import { LISTENER_APPLICATION_NAME } from "../src/index.js";
import { Cluster, dropConnection, moveTo, recoveryFields, waitFor } from "./helpers/cluster.js";
import { History, logOffsets, type ClientHandle } from "./helpers/history.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("listener");

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Terminates every listener connection of the database; returns how many. */
async function killListeners(admin: pg.Client, database: string): Promise<number> {
  const { rows } = await admin.query<{ killed: boolean }>(
    `SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity
      WHERE datname = $1 AND application_name = $2`,
    [database, LISTENER_APPLICATION_NAME],
  );
  return rows.filter((r) => r.killed).length;
}

async function listenerCount(admin: pg.Client, database: string): Promise<number> {
  const { rows } = await admin.query<{ n: string }>(
    `SELECT count(*)::text AS n FROM pg_stat_activity WHERE datname = $1 AND application_name = $2`,
    [database, LISTENER_APPLICATION_NAME],
  );
  return Number(rows[0]!.n);
}

async function startClients(cluster: Cluster, history: History, count: number): Promise<ClientHandle[]> {
  const clients: ClientHandle[] = [];
  for (let i = 0; i < count; i++) {
    const rooms = [`r${i % 3}`];
    const socket = cluster.client(i % 2, { rooms });
    clients.push(history.watch(socket, `c${i}`, rooms));
  }
  await waitFor(() => clients.every((c) => c.socket.connected && recoveryFields(c.socket)._lastOffset !== undefined), {
    message: "clients connected",
  });
  return clients;
}

describe("listener connection loss", () => {
  it("identifies one listener connection per node by application_name", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    try {
      await cluster.connect(0);
      await cluster.connect(1);
      expect(await listenerCount(admin, db.name)).toBe(2);
    } finally {
      await admin.end();
    }
  });

  it("connected clients miss nothing when the listener connections are terminated in the middle of a burst", async () => {
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 2,
      adapter: { listenerCheckIntervalMs: 500 },
    });
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    try {
      const history = new History();
      const clients = await startClients(cluster, history, 12);
      let killed = 0;
      for (let i = 0; i < 400; i++) {
        const node = cluster.node(i % 2);
        history.emit(node.io, i % 5 === 0 ? {} : { rooms: [`r${i % 3}`] }, node.name);
        if (i === 100 || i === 250) {
          killed += await killListeners(admin, db.name);
        }
        if (i % 10 === 0) await sleep(5);
      }
      expect(killed).toBeGreaterThanOrEqual(2);
      // Both nodes noticed the loss (so the catch-up path ran, not a lucky NOTIFY).
      for (const node of cluster.nodes) {
        await waitFor(() => node.errors.some((e) => /LISTEN connection lost/.test(e.message)), {
          message: `${node.name} to report its lost listener`,
        });
      }
      const lookup = () => logOffsets(cluster.node(0).pool);
      await history.settle({ lookup, timeout: 15_000 });
      history.assertClean({ lookup: await lookup() });
      // They stayed connected: nothing came from a recovery.
      expect(clients.every((c) => c.reconnections.length === 0)).toBe(true);
      // The listeners are back.
      await waitFor(async () => (await listenerCount(admin, db.name)) === 2, { message: "listeners back" });
    } finally {
      await admin.end();
    }
  });

  it("a node whose listener was terminated while idle still delivers the next packets of other nodes", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: { listenerCheckIntervalMs: 500 } });
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    try {
      const history = new History();
      await startClients(cluster, history, 4);
      expect(await killListeners(admin, db.name)).toBe(2);
      // Emitted at once, possibly before the listeners are back.
      for (let i = 0; i < 20; i++) history.emit(cluster.node(i % 2).io, {}, cluster.node(i % 2).name);
      const lookup = () => logOffsets(cluster.node(0).pool);
      await history.settle({ lookup, timeout: 15_000 });
      history.assertClean({ lookup: await lookup() });
    } finally {
      await admin.end();
    }
  });

  it("a client recovers on a node that lags behind its offset (that node's listener was just terminated)", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: { listenerCheckIntervalMs: 500 } });
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    try {
      const pids = async () =>
        (
          await admin.query<{ pid: number }>(
            `SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2`,
            [db.name, LISTENER_APPLICATION_NAME],
          )
        ).rows.map((r) => r.pid);
      await waitFor(async () => (await pids()).length === 1, { message: "node0's listener" });
      const [node0Listener] = await pids();
      await cluster.addNode();
      await waitFor(async () => (await pids()).length === 2, { message: "node1's listener" });
      const node1Listener = (await pids()).find((p) => p !== node0Listener)!;

      const history = new History();
      const socket = cluster.client(0, { rooms: ["g"], reconnectionDelay: 0 });
      const client = history.watch(socket, "c", ["g"]);
      await waitFor(() => socket.connected && recoveryFields(socket)._lastOffset !== undefined);
      for (let round = 0; round < 3; round++) {
        // Terminate node1's current listener.
        const victim = (await pids()).find((p) => p !== node0Listener);
        expect(victim).toBeDefined();
        await admin.query(`SELECT pg_terminate_backend($1)`, [victim]);
        // node0 delivers its own packets at once; node1 learns of them only after its listener is back.
        const emitted = Array.from({ length: 20 }, () => history.emit(cluster.node(0).io, { rooms: ["g"] }, "node0"));
        const last = emitted.at(-1)!;
        await waitFor(() => client.track.received.some((r) => r.id === last.id), { message: "node0 delivered" });
        moveTo(socket, cluster.node(1));
        dropConnection(socket);
        await waitFor(() => client.reconnections.length === 2 * round + 1 && socket.connected, {
          timeout: 8000,
          message: "reconnected on node1",
        });
        expect(client.reconnections.at(-1)!.recovered).toBe(true);
        // And back to node0 for the next round.
        moveTo(socket, cluster.node(0));
        dropConnection(socket);
        await waitFor(() => client.reconnections.length === 2 * round + 2 && socket.connected, { timeout: 8000 });
        expect(client.reconnections.at(-1)!.recovered).toBe(true);
        await waitFor(async () => (await pids()).length === 2, { message: "node1's listener back" });
      }
      history.emit(cluster.node(1).io, { rooms: ["g"] }, "node1");
      const lookup = () => logOffsets(cluster.node(0).pool);
      await history.settle({ lookup });
      history.assertClean({ lookup: await lookup() });
    } finally {
      await admin.end();
    }
  });
});
