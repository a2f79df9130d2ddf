/**
 * LISTEN is not durable: notifications sent while the listener connection is
 * down are gone. The adapter must notice, reconnect, and read what it missed
 * from the table, so connected clients miss nothing.
 */
import pg from "pg";
import { describe, expect, it } from "vitest";
import { LISTENER_APPLICATION_NAME } from "../src/index.js";
import { Cluster, recoveryFields, waitFor } from "./helpers/cluster.js";
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
});
