/**
 * Validity does not depend on which node is configured how: a node with a
 * shorter retention never prunes what a session kept by another node still
 * needs, and a restore that needs an entry that is gone anyway is refused,
 * never replayed short under `recovered === true`.
 */
import type pg from "pg";
import { describe, expect, it } from "vitest";
import { Cluster, comeBack, goOffline, logHead, recordEvents, serverNoticed, waitFor, waitForHead } from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("retention_across_nodes");

/** Number of entries of namespace "/" still in the log in (from, to]. */
async function storedBetween(pool: pg.Pool, from: number, to: number): Promise<number> {
  const { rows } = await pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM socket_io.log_entries e JOIN socket_io.namespaces n ON n.id = e.namespace_id
      WHERE n.name = '/' AND e."offset" > $1 AND e."offset" <= $2`,
    [from, to],
  );
  return rows[0]!.n;
}

describe("retention across nodes", () => {
  it("a node with a shorter retention prunes with the longest one declared: the other node's session recovers everything", async () => {
    // Node 0 keeps entries 1.2 s; node 1 (and the fresh node 2) 60 s. The client of node 1 is
    // away for longer than node 0's retention while 300 events are addressed to it.
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 1,
      maxDisconnectionDuration: 1000,
      adapter: { retentionMarginMs: 200, pruneIntervalMs: 100 },
    });
    const long = { maxDisconnectionDuration: 60_000, adapter: { retentionMarginMs: 200, pruneIntervalMs: 3_600_000 } };
    const keeper = await cluster.addNode(long);
    const pool = cluster.node(0).pool;
    const client = await cluster.connect(keeper, { rooms: ["r"] });
    const got = recordEvents(client);
    const sid = client.id!;
    goOffline(client);
    await serverNoticed(keeper, sid);
    const head = await logHead(pool);
    for (let n = 0; n < 300; n++) cluster.node(0).io.to("r").emit("ev", n);
    await waitForHead(pool, head + 300);
    const { rows } = await pool.query<{ at: Date }>(`SELECT clock_timestamp() AS at`);
    const writtenAt = rows[0]!.at.getTime();
    // Node 0's passes go on well past its own retention of the last entry.
    await waitFor(
      async () => {
        const { rows: runs } = await pool.query<{ at: Date | null }>(
          `SELECT last_finished_at AS at FROM socket_io.maintenance WHERE task = 'prune'`,
        );
        const at = runs[0]?.at;
        return at !== null && at !== undefined && at.getTime() > writtenAt + 2000;
      },
      { timeout: 8000, interval: 100, message: "node 0's pruning passes 2 s after the entries" },
    );
    expect(await storedBetween(pool, head, head + 300)).toBe(300);
    // On a node started now (nothing in memory), the replay is read from the table.
    const fresh = await cluster.addNode(long);
    expect(await comeBack(client, fresh)).toBe(true);
    await waitFor(() => got.length >= 300, { message: () => `300 replayed events (got ${got.length})` });
    expect(got.map((r) => r.args[0])).toEqual(Array.from({ length: 300 }, (_, n) => n));
  });

  it("refuses a restore when an entry after the disconnect is gone, instead of replaying less", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, maxDisconnectionDuration: 60_000 });
    const pool = cluster.node(0).pool;
    const client = await cluster.connect(0, { rooms: ["r"] });
    const got = recordEvents(client);
    cluster.node(1).io.to("r").emit("ev", "live");
    await waitFor(() => got.length === 1);
    const sid = client.id!;
    goOffline(client);
    await serverNoticed(cluster.node(0), sid);
    const head = await logHead(pool);
    for (let n = 0; n < 20; n++) cluster.node(1).io.to("r").emit("ev", n);
    await waitForHead(pool, head + 20);
    // One entry the client missed disappears (an older version's pruning, an operator's DELETE).
    await pool.query(
      `DELETE FROM socket_io.log_entries e USING socket_io.namespaces n
        WHERE n.id = e.namespace_id AND n.name = '/' AND e."offset" = $1`,
      [head + 10],
    );
    const fresh = await cluster.addNode();
    expect(await comeBack(client, fresh)).toBe(false);
    expect(got.map((r) => r.args[0])).toEqual(["live"]);
  });
});
