/**
 * Restores reading the table are bounded per node (maxConcurrentRestoreReads):
 * a reconnection storm does not take every pooled connection and every
 * replay's worth of memory at once. The others wait their turn and restore.
 */
import pg from "pg";
import { describe, expect, it } from "vitest";
import {
  Cluster,
  comeBack,
  goOffline,
  logHead,
  recordEvents,
  serverNoticed,
  waitFor,
  waitForHead,
  waitForSession,
  type ClientSocket,
  type Received,
} from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("restore_bounds");

/** Backends of this database blocked on a lock while running a restore's replay read (not delivery's reads). */
async function blockedReplayReads(admin: pg.Client): Promise<number> {
  const { rows } = await admin.query<{ n: string }>(
    `SELECT count(*) AS n FROM pg_stat_activity
      WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%: replay read */%'`,
  );
  return Number(rows[0]?.n ?? 0);
}

describe("restore bounds", () => {
  it("reads the table for at most maxConcurrentRestoreReads restores at once; the others wait and restore", async () => {
    const permits = 2;
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 1,
      poolMax: 8,
      adapter: { recentEntries: 1000, maxConcurrentRestoreReads: permits, restoreTimeoutMs: 30_000 },
    });
    const node = cluster.node(0);
    const clients: Array<{ socket: ClientSocket; got: Received[] }> = [];
    for (let i = 0; i < 6; i++) {
      const socket = await cluster.connect(node);
      clients.push({ socket, got: recordEvents(socket) });
    }
    for (const { socket } of clients) {
      const sid = socket.id!;
      goOffline(socket);
      await serverNoticed(node, sid);
      await waitForSession(node.pool, sid);
    }
    // More than the ring holds, so every restore reads the table.
    const head = await logHead(node.pool);
    const missed = 1500;
    for (let i = 0; i < missed; i++) node.io.emit("ev", i);
    await waitForHead(node.pool, head + missed, "/", "socket_io", 20_000);

    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    try {
      // Hold every read of the log: restores that started their read wait on this lock, visibly.
      await admin.query("BEGIN");
      await admin.query("LOCK TABLE socket_io.log_entries IN ACCESS EXCLUSIVE MODE");
      const back = clients.map(({ socket }) => comeBack(socket, node, 25_000));
      const observer = new pg.Client({ connectionString: db.url });
      await observer.connect();
      try {
        // Every session taken (a take leaves the row as the restored socket's skeleton, or a fence):
        // each restore is past its take, at its read or waiting for a permit.
        await waitFor(
          async () =>
            Number((await observer.query<{ n: string }>("SELECT count(*) AS n FROM socket_io.sessions WHERE state IN ('disconnected', 'orphaned')")).rows[0]?.n) === 0,
          { timeout: 10_000, message: "every session to be taken" },
        );
        await waitFor(async () => (await blockedReplayReads(observer)) >= permits, {
          timeout: 10_000,
          message: `${permits} replay reads to wait on the lock`,
        });
        // A few more looks: restores between their take and their read would show up now.
        let most = 0;
        for (let look = 0; look < 10; look++) {
          most = Math.max(most, await blockedReplayReads(observer));
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        expect(most).toBe(permits);
      } finally {
        await observer.end();
        await admin.query("COMMIT");
      }
      expect(await Promise.all(back)).toEqual(clients.map(() => true));
    } finally {
      await admin.end();
    }
    const expected = Array.from({ length: missed }, (_, i) => i);
    for (const { got } of clients) {
      await waitFor(() => got.length >= missed, { timeout: 10_000, message: () => `${missed} packets, got ${got.length}` });
      expect(got.map((r) => r.args[0])).toEqual(expected);
    }
  });
});
