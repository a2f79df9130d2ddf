/**
 * Structured records of the state changes an operator should see (outage
 * started/ended, listener lost/replaced, pruning refused/resumed, this node
 * declared dead/revived): one `OperatorNotice` each to `errorHandler` and one
 * JSON line on the `socket.io-postgres-recovery:events` debug channel, never
 * one per retry. Against a real Postgres, through a proxy that refuses
 * connections for a while.
 */
import { format } from "node:util";
import createDebug from "debug";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { OperatorNotice, type OperatorEvent } from "../src/index.js";
import { Cluster, waitFor, type TestNode } from "./helpers/cluster.js";
import { startPostgresProxy } from "./helpers/postgres-proxy.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("operator_events");

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const lines: string[] = [];
const originalLog = createDebug.log;
beforeAll(() => {
  createDebug.enable("socket.io-postgres-recovery:events");
  createDebug.log = (...args: unknown[]) => lines.push(format(...args));
});
afterAll(() => {
  createDebug.log = originalLog;
  createDebug.disable();
});

function events(node: TestNode): OperatorEvent[] {
  return node.errors.filter((e): e is OperatorNotice => e instanceof OperatorNotice).map((e) => e.event);
}

const kinds = (node: TestNode) => events(node).map((e) => e.event);

describe("operator events", () => {
  it("the database refused for a while: outage and listener each said once when they start and end, not per retry", async () => {
    const proxy = await startPostgresProxy(Number(new URL(db.url).port || 5432));
    try {
      const cluster = await Cluster.start({
        databaseUrl: proxy.through(db.url),
        nodes: 1,
        adapter: { unloggedDeliveryAfterMs: 300, listenerCheckIntervalMs: 200, pruneIntervalMs: 600_000 },
      });
      const node = cluster.node(0);
      const client = await cluster.connect(node);
      proxy.refuse();
      for (let i = 0; i < 5; i++) {
        node.io.emit("ev", i);
        await sleep(300);
      }
      await waitFor(() => kinds(node).includes("outage-started"), { message: "outage-started" });
      proxy.accept();
      node.io.emit("ev", "after");
      await waitFor(() => kinds(node).includes("outage-ended") && kinds(node).includes("listener-replaced"), {
        timeout: 10_000,
        message: () => `outage-ended and listener-replaced (got ${kinds(node).join(", ")})`,
      });
      expect(client.connected).toBe(true);
      const seen = events(node);
      expect(seen.map((e) => e.event).sort()).toEqual(["listener-lost", "listener-replaced", "outage-ended", "outage-started"]);
      expect(seen.find((e) => e.event === "outage-started")).toMatchObject({ namespace: "/", failingForMs: expect.any(Number) });
      const ended = seen.find((e) => e.event === "outage-ended");
      expect(ended).toMatchObject({ namespace: "/" });
      expect((ended as { unloggedPackets: number }).unloggedPackets).toBeGreaterThan(0);
      const replaced = seen.find((e) => e.event === "listener-replaced") as { downForMs: number; attempts: number };
      expect(replaced.downForMs).toBeGreaterThan(0);
      expect(replaced.attempts).toBeGreaterThan(2);
      // Several failed connection attempts, said once.
      expect(node.errors.filter((e) => /LISTEN connection failed/.test(e.message))).toHaveLength(1);
      for (const e of seen) expect(Date.parse(e.at)).not.toBeNaN();
      // The same records, one JSON line each, on the events debug channel.
      const logged = lines.map((l) => /(\{"event":.*\})/.exec(l)?.[1]).filter((j): j is string => j !== undefined).map((j) => JSON.parse(j) as OperatorEvent);
      for (const e of seen) expect(logged).toContainEqual(e);
      await cluster.close();
    } finally {
      await proxy.close();
    }
  });

  it("pruning refused (a table gone) said once over several passes, and resumed; this node declared dead, then revived", async () => {
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 1,
      adapter: { pruneIntervalMs: 100, nodeHeartbeatIntervalMs: 100, nodeDeadAfterMs: 1000 },
    });
    const node = cluster.node(0);
    const pool = node.pool;
    await cluster.connect(node);
    await pool.query("ALTER TABLE socket_io.maintenance RENAME TO maintenance_away");
    await waitFor(() => kinds(node).includes("pruning-refused"), { message: "pruning-refused" });
    await sleep(600); // five more passes, failing
    await pool.query("ALTER TABLE socket_io.maintenance_away RENAME TO maintenance");
    await waitFor(() => kinds(node).includes("pruning-resumed"), { message: "pruning-resumed" });
    expect(kinds(node).filter((k) => k.startsWith("pruning-"))).toEqual(["pruning-refused", "pruning-resumed"]);
    const refused = events(node).find((e) => e.event === "pruning-refused") as { reason: string };
    expect(refused.reason).toMatch(/maintenance/);
    expect((events(node).find((e) => e.event === "pruning-resumed") as { failedPasses: number }).failedPasses).toBeGreaterThan(1);

    // Another node's take declares a node dead by setting the mark its heartbeat checks.
    await pool.query("UPDATE socket_io.nodes SET declared_dead = true");
    await waitFor(() => kinds(node).includes("node-revived"), { message: "node-revived" });
    const [dead, revived] = events(node).filter((e) => e.event === "node-declared-dead" || e.event === "node-revived");
    expect(dead).toMatchObject({ event: "node-declared-dead", nodeId: expect.any(String) });
    expect(revived).toMatchObject({ event: "node-revived", nodeId: (dead as { nodeId: string }).nodeId });
  });
});
