/**
 * Pruning: expired sessions and log entries past retention go away, and
 * nothing that a still-valid session needs is removed.
 *
 * Retention = maxDisconnectionDuration + retentionMarginMs. The tests watch the
 * tables with the database's own clock, so the comparisons do not depend on
 * the test process' timers.
 */
import type pg from "pg";
import { describe, expect, it } from "vitest";
import {
  Cluster,
  comeBack,
  goOffline,
  logHead,
  recordEvents,
  serverNoticed,
  startProxy,
  waitFor,
  waitForHead,
  waitForSession,
} from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("pruning");

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Entries of namespace "/" with their age in ms by the database clock. */
async function entries(pool: pg.Pool): Promise<Array<{ offset: number; ageMs: number }>> {
  const { rows } = await pool.query<{ offset: string; age: string }>(
    `SELECT e."offset"::text AS "offset", (extract(epoch FROM clock_timestamp() - e.created_at) * 1000)::text AS age
       FROM socket_io.log_entries e JOIN socket_io.namespaces n ON n.id = e.namespace_id
      WHERE n.name = '/' ORDER BY e."offset"`,
  );
  return rows.map((r) => ({ offset: Number(r.offset), ageMs: Number(r.age) }));
}

async function pruneRuns(pool: pg.Pool): Promise<Date | undefined> {
  const { rows } = await pool.query<{ last_finished_at: Date | null }>(
    `SELECT last_finished_at FROM socket_io.maintenance WHERE task = 'prune'`,
  );
  return rows[0]?.last_finished_at ?? undefined;
}

/**
 * A client's network dies (a frozen proxy), a packet is sent to it into the dead connection,
 * the server notices after pingInterval + pingTimeout (~1.5 s), pruning runs 2.3 s after the
 * packet, then the client recovers on a node started now (nothing in memory: the replay comes
 * from the table). Returns whether it recovered and what it received.
 */
async function deadConnectionScenario(retentionMarginMs: number): Promise<{ recovered: boolean; received: unknown[] }> {
  const cluster = await Cluster.start({
    databaseUrl: db.url,
    nodes: 2,
    maxDisconnectionDuration: 2000,
    server: { pingInterval: 1000, pingTimeout: 500 },
    adapter: { retentionMarginMs, pruneIntervalMs: 100 },
  });
  const pool = cluster.node(0).pool;
  // Pruning keeps the longest retention any node declared, only ever raised: earlier tests of
  // this file declared longer ones. Here the nodes' own retention is the longest.
  await pool.query(`UPDATE socket_io.namespaces SET retention_ms = $1 WHERE name = '/'`, [2000 + retentionMarginMs]);
  const proxy = await startProxy(cluster.node(0).port);
  const client = await cluster.connect(proxy, { rooms: ["dead"] });
  const got = recordEvents(client);
  const sid = client.id!;
  // The network dies; the client will notice by itself too, and must not reconnect yet.
  client.io.reconnection(false);
  proxy.freeze();
  const head = await logHead(pool);
  cluster.node(1).io.to("dead").emit("ev", { n: "into-the-void" });
  await waitForHead(pool, head + 1);
  const { rows } = await pool.query<{ created: Date }>(
    `SELECT e.created_at AS created FROM socket_io.log_entries e JOIN socket_io.namespaces n ON n.id = e.namespace_id
      WHERE n.name = '/' AND e."offset" = $1`,
    [head + 1],
  );
  const createdAt = rows[0]!.created.getTime();
  await serverNoticed(cluster.node(0), sid, "/", 5000);
  await waitFor(() => !client.connected, { timeout: 5000, message: "the client to notice the dead network" });
  await waitFor(
    async () => {
      const last = await pruneRuns(pool);
      return last !== undefined && last.getTime() > createdAt + 2300;
    },
    { timeout: 5000, interval: 50, message: "a prune pass 2.3 s after the packet" },
  );
  expect(got).toEqual([]);
  const fresh = await cluster.addNode();
  const recovered = await comeBack(client, fresh);
  fresh.io.to("dead").emit("ev", { n: "live" });
  await waitFor(() => got.some((r) => (r.args[0] as { n: string }).n === "live"));
  return { recovered, received: got.map((r) => r.args[0]) };
}

describe("pruning", () => {
  it("removes log entries past retention, and none younger", async () => {
    const maxDisconnectionDuration = 800;
    const retentionMarginMs = 200;
    const retention = maxDisconnectionDuration + retentionMarginMs;
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 2,
      maxDisconnectionDuration,
      adapter: { retentionMarginMs, pruneIntervalMs: 200 },
    });
    const pool = cluster.node(0).pool;
    const firstHead = await logHead(pool);
    // Watch the table while entries keep coming: remember each entry's age when last seen.
    const lastSeen = new Map<number, number>();
    const tooEarly: string[] = [];
    let emitted = 0;
    const deadline = Date.now() + 3500;
    while (Date.now() < deadline) {
      cluster.node(emitted % 2).io.emit("ev", { n: emitted++ });
      const polledAt = Date.now();
      const rows = await entries(pool);
      const present = new Set(rows.map((r) => r.offset));
      for (const [offset, ageMs] of lastSeen) {
        if (present.has(offset)) continue;
        // Gone: it was at most `ageMs + (now - when we saw it)` old; must have reached the retention.
        const ageNow = ageMs + (Date.now() - polledAt) + 100;
        if (ageNow < retention - 100) tooEarly.push(`o${offset} pruned at age <= ${Math.round(ageNow)} ms`);
        lastSeen.delete(offset);
      }
      for (const r of rows) if (r.offset > firstHead) lastSeen.set(r.offset, r.ageMs);
      await sleep(50);
    }
    expect(tooEarly).toEqual([]);
    // The oldest entries went away, and pruning keeps up: nothing is much older than the retention.
    const rows = await entries(pool);
    expect(rows[0]!.offset).toBeGreaterThan(firstHead + 1);
    await waitFor(async () => (await entries(pool)).every((r) => r.ageMs < retention + 200 * 2 + 500), {
      message: "every entry within retention + 2 prune intervals",
    });
    expect(emitted).toBeGreaterThan(20);
  });

  it("removes expired sessions, and none before expiry", async () => {
    // Long enough that the three disconnections are stored before the first expires, also on a loaded machine.
    const maxDisconnectionDuration = 4000;
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 2,
      maxDisconnectionDuration,
      adapter: { pruneIntervalMs: 200 },
    });
    const pool = cluster.node(0).pool;
    const sids: string[] = [];
    for (let i = 0; i < 3; i++) {
      const client = await cluster.connect(i % 2);
      const sid = client.id!;
      goOffline(client);
      await serverNoticed(cluster.node(i % 2), sid);
      await waitForSession(pool, sid);
      sids.push(sid);
      await sleep(150); // staggered disconnections
    }
    const { rows: stored } = await pool.query<{ sid: string; ttl: string }>(
      `SELECT sid, (extract(epoch FROM expires_at - disconnected_at) * 1000)::text AS ttl FROM socket_io.sessions WHERE sid = ANY($1)`,
      [sids],
    );
    expect(stored.length).toBe(3);
    for (const row of stored) {
      expect(Number(row.ttl)).toBeGreaterThan(maxDisconnectionDuration - 100);
      expect(Number(row.ttl)).toBeLessThan(maxDisconnectionDuration + 1000);
    }
    // Until they are gone, no row disappears while it is still valid.
    const early: string[] = [];
    const lastLeft = new Map<string, { leftMs: number; at: number }>();
    await waitFor(
      async () => {
        const polledAt = Date.now();
        const { rows } = await pool.query<{ sid: string; left: string }>(
          `SELECT sid, (extract(epoch FROM expires_at - clock_timestamp()) * 1000)::text AS left
             FROM socket_io.sessions WHERE sid = ANY($1)`,
          [sids],
        );
        const present = new Set(rows.map((r) => r.sid));
        for (const [sid, seen] of lastLeft) {
          if (present.has(sid)) continue;
          const leftNow = seen.leftMs - (Date.now() - seen.at);
          if (leftNow > 100) early.push(`${sid} pruned ${Math.round(leftNow)} ms before expiry`);
          lastLeft.delete(sid);
        }
        for (const r of rows) lastLeft.set(r.sid, { leftMs: Number(r.left), at: polledAt });
        return rows.length === 0;
      },
      { timeout: 12_000, interval: 50, message: "expired sessions to be pruned" },
    );
    expect(early).toEqual([]);
  });

  it("keeps what a still-valid session needs while pruning runs: it recovers and gets its missed packets", async () => {
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 2,
      maxDisconnectionDuration: 3000,
      adapter: { retentionMarginMs: 200, pruneIntervalMs: 200 },
    });
    const pool = cluster.node(0).pool;
    const client = await cluster.connect(0, { rooms: ["a"] });
    const got = recordEvents(client);
    cluster.node(1).io.to("a").emit("ev", { n: "live" });
    await waitFor(() => got.length === 1);
    const sid = client.id!;
    goOffline(client);
    await serverNoticed(cluster.node(0), sid);
    const head = await logHead(pool);
    cluster.node(1).io.to("a").emit("ev", { n: "missed" });
    await waitForHead(pool, head + 1);
    const { rows } = await pool.query<{ at: Date }>(`SELECT clock_timestamp() AS at`);
    const missedAt = rows[0]!.at.getTime();
    // Noise elsewhere, while pruning passes run for 1.5 s after the missed packet.
    await waitFor(
      async () => {
        cluster.node(1).io.to("noise").emit("ev", { n: "noise" });
        const last = await pruneRuns(pool);
        return last !== undefined && last.getTime() > missedAt + 1500;
      },
      { timeout: 6000, interval: 100, message: "pruning passes 1.5 s after the missed packet" },
    );
    // On a node started now (nothing in memory), the replay is read from the pruned table.
    const fresh = await cluster.addNode();
    expect(await comeBack(client, fresh)).toBe(true);
    await waitFor(() => got.length >= 2);
    cluster.node(0).io.to("a").emit("ev", { n: "after" });
    await waitFor(() => got.length >= 3);
    expect(got.map((r) => r.args[0])).toEqual([{ n: "live" }, { n: "missed" }, { n: "after" }]);
  });

  it("keeps packets sent into a dead connection until its session expires (retention margin)", async () => {
    // The margin (2 s) covers the time the server takes to notice (~1.5 s): the packet is kept
    // for the whole session, 3.5 s after it, although maxDisconnectionDuration is only 2 s.
    const { recovered, received } = await deadConnectionScenario(2000);
    expect(recovered).toBe(true);
    expect(received).toEqual([{ n: "into-the-void" }, { n: "live" }]);
  });

  it("fails closed when entries it would replay were pruned (a margin too short for the ping timeout)", async () => {
    // Misconfigured on purpose: retention = maxDisconnectionDuration. The packet is pruned while
    // the session is still valid; the restore must notice the hole and refuse, not replay less.
    const { recovered, received } = await deadConnectionScenario(0);
    expect({ recovered, received }).toEqual({ recovered: false, received: [{ n: "live" }] });
  });
});
