/**
 * A restore that fails after it took its session (a read that fails, a
 * restore that outlives restoreTimeoutMs) gives the client a new session and
 * puts the taken one back: a failure is not a use, and the pid's real client
 * can still recover with it.
 */
import pg from "pg";
import { describe, expect, it } from "vitest";
import { Cluster, comeBack, logHead, recordEvents, waitFor, waitForHead } from "./helpers/cluster.js";
import { attempt, expectHealthy, prepare } from "./helpers/recovery-attempts.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("restore_failures");

/** The replay read (restorer): the only statement that sums payload sizes. */
const REPLAY_READ = "%sum(octet_length(payload))%";

describe("a restore that fails after taking its session", () => {
  for (const how of ["its read fails", "it outlives restoreTimeoutMs"] as const) {
    it(`puts the session back when ${how}: the real client recovers afterwards`, async () => {
      // No ring of recent entries: restores read the table, which the test locks.
      const cluster = await Cluster.start({
        databaseUrl: db.url,
        nodes: 2,
        adapter: { recentEntries: 0, restoreTimeoutMs: how === "its read fails" ? 5000 : 1000 },
      });
      const old = await prepare(cluster);
      const head = await logHead(cluster.node(0).pool);
      cluster.node(0).io.to("secret-room").emit("ev", { n: "missed" });
      await waitForHead(cluster.node(0).pool, head + 1);

      const admin = new pg.Client({ connectionString: db.url });
      await admin.connect();
      try {
        await admin.query("BEGIN");
        await admin.query("LOCK TABLE socket_io.log_entries IN ACCESS EXCLUSIVE MODE");
        // Someone else presents the pid (a second tab, a replayed handshake): node1 takes the session,
        // then its replay read waits on the lock.
        const intruder = attempt(cluster, 1, old.pid, old.offset);
        let reader: number | undefined;
        await waitFor(
          async () => {
            // Read outside the locking transaction: statistics are a snapshot per transaction.
            const { rows } = await cluster.node(0).pool.query<{ pid: number }>(
              `SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1`,
              [REPLAY_READ],
            );
            reader = rows[0]?.pid;
            return reader !== undefined;
          },
          { message: "the replay read waiting on the lock" },
        );
        if (how === "its read fails") await admin.query("SELECT pg_terminate_backend($1)", [reader]);
        const result = await intruder;
        expect(result.recovered).toBe(false);
        expect(result.who.id).not.toBe(old.sid);
      } finally {
        await admin.query("ROLLBACK").catch(() => undefined);
        await admin.end();
      }
      expect(cluster.node(1).errors.map(String).join("\n")).toMatch(/a restore in "\/" failed/);

      const got = recordEvents(old.socket);
      expect(await comeBack(old.socket, cluster.node(1))).toBe(true);
      expect(old.socket.id).toBe(old.sid);
      await waitFor(() => got.length >= 1);
      expect(got.map((r) => r.args[0])).toEqual([{ n: "missed" }]);
      await expectHealthy(cluster);
    });
  }
});
