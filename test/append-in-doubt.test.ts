/**
 * Appends whose outcome the node cannot know, end to end through a node's
 * LogWriter: the commit's answer is lost, or the first attempt is still
 * running on the server when the retry starts (after the writer's row was
 * pruned). Each batch is logged once and delivered once.
 *
 * The node reaches Postgres through a proxy (helpers/postgres-proxy.ts) that
 * can drop the server's answers or reset connections; its pool holds two
 * connections, both open before the test acts on them (an emit also
 * publishes a cluster message, which takes the other one); heartbeats and
 * pruning are far away.
 */
import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { LISTENER_APPLICATION_NAME } from "../src/index.js";
import { PruneQueries } from "../src/sql/prune-queries.js";
import { closeAll, Cluster, logHead, recordEvents, waitFor, waitForHead, type Received, type TestNode } from "./helpers/cluster.js";
import { startPostgresProxy, type PostgresProxy, type ProxiedConnection } from "./helpers/postgres-proxy.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("append_in_doubt");

/** The append statement (LogQueries.append): the only one that locks the writer's row. */
const APPEND = "%FROM \"socket_io\".\"log_writers\" WHERE writer_id = $6 FOR UPDATE%";

const pooled = (c: ProxiedConnection) => c.applicationName !== LISTENER_APPLICATION_NAME;

function ns(received: Received[]): unknown[] {
  return received.filter((r) => r.event === "ev").map((r) => (r.args[0] as { n: unknown }).n);
}

/** How many log entries of "/" carry `marker` (payloads are msgpack; strings are searchable in the bytes). */
async function logged(pool: pg.Pool, marker: string): Promise<number> {
  const { rows } = await pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM socket_io.log_entries e JOIN socket_io.namespaces s ON s.id = e.namespace_id
      WHERE s.name = '/' AND position($1::bytea IN e.payload) > 0`,
    [Buffer.from(marker)],
  );
  return rows[0]!.n;
}

/** Backends running the append and waiting on a lock. */
async function appendsWaiting(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1`,
    [APPEND],
  );
  return rows[0]!.n;
}

describe("appends in doubt", () => {
  let proxy: PostgresProxy | undefined;

  afterEach(async () => {
    await closeAll(); // the nodes first, while they still reach Postgres
    await proxy?.close();
    proxy = undefined;
  });

  /** node0 directly, node1 through the proxy with one pooled connection; a client on node0 in room "r". */
  async function start(): Promise<{ cluster: Cluster; node: TestNode; got: Received[] }> {
    proxy = await startPostgresProxy(Number(new URL(db.url).port || 5432));
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
    const node = await cluster.addNode({
      databaseUrl: proxy.through(db.url),
      poolMax: 2,
      adapter: { heartbeatInterval: 600_000, heartbeatTimeout: 1_200_000, pruneIntervalMs: 600_000 },
    });
    const client = await cluster.connect(0, { rooms: ["r"] });
    const got = recordEvents(client);
    // The first append registers the writer and opens the pooled connection.
    node.io.to("r").emit("ev", { n: "warm-up" });
    await waitFor(() => got.length === 1);
    await Promise.all([node.pool.query("SELECT pg_sleep(0.05)"), node.pool.query("SELECT pg_sleep(0.05)")]);
    expect(node.pool.totalCount).toBe(2);
    return { cluster, node, got };
  }

  it("logs a batch once when the answer to its committed append is lost", async () => {
    const { cluster, node, got } = await start();
    const pool = cluster.node(0).pool;
    const head = await logHead(pool);
    expect(proxy!.holdReplies(pooled)).toBe(2);
    node.io.to("r").emit("ev", { n: "lost-answer" });
    // Committed, but node1 never hears back; then its connection resets and it retries.
    await waitForHead(pool, head + 1);
    expect(proxy!.cut((c) => pooled(c) && c.repliesHeld)).toBe(2);
    node.io.to("r").emit("ev", { n: "after" });
    await waitFor(() => ns(got).includes("after"), { timeout: 8000 });
    expect(await logged(pool, "lost-answer")).toBe(1);
    expect(ns(got)).toEqual(["warm-up", "lost-answer", "after"]);
    expect(await logHead(pool)).toBe(head + 2);
  });

  it("logs a batch once when its retry starts while the first attempt still runs, after the writer's row was pruned", async () => {
    const { cluster, node, got } = await start();
    const pool = cluster.node(0).pool;
    const { rows } = await pool.query<{ id: number }>(`SELECT id FROM socket_io.namespaces WHERE name = '/'`);
    const namespaceId = rows[0]!.id;
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    try {
      // The writer was idle longer than the pruner's bound: its row is gone (the pruner's own query, bound 0).
      const client = await pool.connect();
      try {
        expect(await new PruneQueries("socket_io", '"public"."socket_io_attachment"').pruneWriters(client, namespaceId, 0, 100)).toBeGreaterThan(0);
      } finally {
        client.release();
      }
      // Another writer holds the namespace's row: node1's first attempt waits on it, still running.
      await admin.query("BEGIN");
      await admin.query(`SELECT 1 FROM socket_io.namespaces WHERE id = $1 FOR UPDATE`, [namespaceId]);
      node.io.to("r").emit("ev", { n: "pruned-row" });
      await waitFor(async () => (await appendsWaiting(pool)) === 1, { message: "the first attempt waiting" });
      // node1 loses that connection and retries on a new one, while the first attempt goes on.
      expect(proxy!.cut(pooled)).toBe(2);
      await waitFor(async () => (await appendsWaiting(pool)) === 2, { message: "the retry waiting too" });
      await admin.query("COMMIT");
    } finally {
      await admin.query("ROLLBACK").catch(() => undefined);
      await admin.end();
    }
    node.io.to("r").emit("ev", { n: "after" });
    await waitFor(() => ns(got).includes("after"), { timeout: 10_000 });
    expect(await logged(pool, "pruned-row")).toBe(1);
    expect(ns(got)).toEqual(["warm-up", "pruned-row", "after"]);
  });
});
