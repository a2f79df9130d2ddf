/**
 * Statements that never answer: a half-open pooled connection (a TCP proxy
 * the test freezes: nothing closes, nothing arrives) and a pool with no free
 * connection and no connection timeout.
 *
 * - `io.close()` returns within `closeTimeoutMs` (asserted as: it resolved
 *   while the connections were still frozen or held, never released by the
 *   test before), with a log write and session writes stuck;
 * - a log write sent into a frozen connection fails at `queryTimeoutMs` and
 *   is retried on another connection, so the event is delivered (logged, to
 *   another node) without the frozen connection ever being released.
 */
import type pg from "pg";
import { describe, expect, it } from "vitest";
import { LISTENER_APPLICATION_NAME } from "../src/index.js";
import { Cluster, recordEvents, waitFor, type TestNode } from "./helpers/cluster.js";
import { startPostgresProxy, type PostgresProxy } from "./helpers/postgres-proxy.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("close_deadline");

const CLOSE_TIMEOUT_MS = 1000;

/** The test's own bound on waiting for `io.close()`: far above closeTimeoutMs, and then the test releases everything. */
const GIVE_UP_MS = CLOSE_TIMEOUT_MS + 15_000;

async function withProxy(fn: (proxy: PostgresProxy, url: string) => Promise<void>): Promise<void> {
  const proxy = await startPostgresProxy(Number(new URL(db.url).port || 5432));
  try {
    await fn(proxy, proxy.through(db.url));
  } finally {
    await proxy.close();
  }
}

/** Opens `n` connections in the node's pool (so that they are there to be frozen). */
async function warmPool(node: TestNode, n: number): Promise<void> {
  await Promise.all(Array.from({ length: n }, () => node.pool.query("SELECT pg_sleep(0.05)")));
}

const pooled = (c: { applicationName: string }) => c.applicationName !== LISTENER_APPLICATION_NAME;

/**
 * Calls `io.close()` and waits for it (at most GIVE_UP_MS); then `release()`s
 * whatever blocks the database. Resolves with whether `io.close()` had
 * resolved before the release.
 */
async function closeBeforeRelease(node: TestNode, release: () => void): Promise<boolean> {
  let released = false;
  let resolvedBeforeRelease = false;
  let settled = false;
  const closing = node.io.close().then(() => {
    settled = true;
    resolvedBeforeRelease = !released;
  });
  try {
    await waitFor(() => settled, { timeout: GIVE_UP_MS, interval: 20, message: "io.close()" });
  } catch {
    // Reported below as "not before the release".
  }
  released = true;
  release();
  await closing;
  return resolvedBeforeRelease;
}

describe("close deadline and query timeout", () => {
  it("io.close() returns within closeTimeoutMs while writes hang on half-open pooled connections", async () => {
    await withProxy(async (proxy, url) => {
      const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
      const node = await cluster.addNode({
        databaseUrl: url,
        poolMax: 2,
        adapter: { closeTimeoutMs: CLOSE_TIMEOUT_MS, queryTimeoutMs: false }, // no query bound: close alone must keep its deadline
      });
      await cluster.waitForServerCount();
      await Promise.all([cluster.connect(node), cluster.connect(node)]); // their sessions are written at close
      await warmPool(node, 2);
      expect(proxy.freeze(pooled)).toBe(2);
      node.io.emit("ev", "stuck"); // its append goes into a frozen connection

      const inTime = await closeBeforeRelease(node, () => proxy.cut(pooled));
      expect(inTime, "io.close() resolved while the connections were still frozen").toBe(true);
      expect(node.errors.map((e) => e.message).join("\n")).toMatch(/closing gave up waiting|not logged nor delivered/);
      await node.close();
    });
  });

  it("io.close() returns within closeTimeoutMs when the pool has no free connection", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, poolMax: 2, adapter: { closeTimeoutMs: CLOSE_TIMEOUT_MS } });
    const node = cluster.node(0);
    await cluster.connect(node);
    const held: pg.PoolClient[] = [await node.pool.connect(), await node.pool.connect()];
    node.io.emit("ev", "waiting for a connection");

    const inTime = await closeBeforeRelease(node, () => held.forEach((c) => c.release()));
    expect(inTime, "io.close() resolved while the pool's connections were still held").toBe(true);
    await node.close();
  });

  it("a log write sent into a frozen connection times out and is retried on another one", async () => {
    await withProxy(async (proxy, url) => {
      const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
      const healthy = cluster.node(0);
      const node = await cluster.addNode({
        databaseUrl: url,
        poolMax: 2,
        // Outage mode off: the event must arrive logged, through the retry, not unlogged around it.
        adapter: { queryTimeoutMs: 500, unloggedDeliveryAfterMs: false },
      });
      await cluster.waitForServerCount();
      const onHealthy = await cluster.connect(healthy);
      const got = recordEvents(onHealthy);
      await warmPool(node, 2);
      const frozen = proxy.freeze(pooled);
      expect(frozen).toBe(2);

      node.io.emit("ev", "through the retry");
      await waitFor(() => got.some((r) => r.args[0] === "through the retry"), {
        timeout: 10_000,
        message: () => `the event on the other node (frozen: ${proxy.connections().filter((c) => c.frozen).length})`,
      });
      // The frozen connections were never released: the write got through by timing out on them.
      expect(node.errors.some((e) => /Query read timeout/.test(String(e.cause)))).toBe(true);
      const { rows } = await healthy.pool.query<{ n: string }>("SELECT count(*)::text AS n FROM socket_io.log_entries WHERE payload::text LIKE $1", [
        `%${Buffer.from("through the retry").toString("hex")}%`,
      ]);
      expect(rows[0]!.n).toBe("1"); // once, however many attempts
    });
  });
});

describe("the close deadline in steady state", () => {
  it("appends after the start race nothing that stays pending (no reaction piles up per append)", async () => {
    // Each append waits for the namespace's start or the close deadline. Racing the deadline
    // (pending until close()) on every append left one reaction on it per append: the SOAK
    // bench saw a node's heap grow ~1.5 MiB a minute. Once started, nothing pending is raced.
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: { closeTimeoutMs: CLOSE_TIMEOUT_MS } });
    const node = cluster.node(0);
    const client = await cluster.connect(node);
    let received = 0;
    client.on("ev", () => received++);
    node.io.emit("ev", 0);
    await waitFor(() => received === 1, { timeout: 8000, message: "the first event" });

    const raced: Array<{ settled: boolean }> = [];
    const race = Promise.race.bind(Promise);
    Promise.race = ((values: Iterable<unknown>) => {
      const list = [...values];
      for (const v of list) {
        if (!(v instanceof Promise)) continue;
        const entry = { settled: false };
        raced.push(entry);
        v.then(
          () => (entry.settled = true),
          () => (entry.settled = true),
        );
      }
      return race(list);
    }) as typeof Promise.race;
    try {
      for (let i = 1; i <= 20; i++) {
        node.io.emit("ev", i);
        await waitFor(() => received === i + 1, { timeout: 8000, message: `event ${i}` });
      }
    } finally {
      Promise.race = race;
    }
    await new Promise((resolve) => setImmediate(resolve));
    expect(raced.filter((r) => !r.settled).length, "promises raced by steady-state appends and still pending").toBe(0);
    await cluster.close();
  });
});
