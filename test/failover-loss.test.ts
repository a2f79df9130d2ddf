/**
 * A failover that loses commits: an older copy of the database's data
 * directory is put back under a running cluster, as a replica promoted
 * while it lagged behind (asynchronous replication) would be.
 *
 * The test owns its Postgres (embedded, whatever DATABASE_URL says). It
 * copies the data directory while the server is stopped, lets the cluster
 * commit and deliver more (those commits are about to be lost), stops the
 * server, puts the copy back and starts it on the same port. The nodes
 * reconnect on their own. Then:
 * - no offset is handed to two different events: every client saw at most
 *   one event per offset, and the events after the loss have offsets above
 *   every lost one;
 * - clients holding a lost offset are refused (`recovered === false`) on
 *   every node, including a node started after the loss that never saw the
 *   lost entries;
 * - a client from before the lost range, whose replay would cross it, is
 *   refused (it would miss the lost events);
 * - a client entirely after it recovers with exactly what it missed;
 * - events keep flowing to connected clients on every node.
 */
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  closeAll,
  Cluster,
  comeBack,
  goOffline,
  offsetNumber,
  recordEvents,
  serverNoticed,
  waitFor,
  waitForSession,
  type ClientSocket,
  type Received,
  type TestNode,
} from "./helpers/cluster.js";
import { startOwnedPostgres, type OwnedPostgres } from "./helpers/owned-postgres.js";
import { LISTENER_APPLICATION_NAME } from "../src/index.js";

const ADAPTER = {
  // Quick to notice a dead LISTEN connection; restores wait for the check after a reconnection.
  listenerCheckIntervalMs: 300,
  restoreTimeoutMs: 4000,
  // The database is away on purpose: events wait for it rather than go out unlogged.
  unloggedDeliveryAfterMs: false as const,
};

async function query<T extends pg.QueryResultRow>(url: string, text: string, values: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  // The test stops and restarts the server: a connection lost here surfaces through the failed query.
  client.on("error", () => undefined);
  await client.connect();
  try {
    return (await client.query<T>(text, values)).rows;
  } finally {
    await client.end();
  }
}

/** Events named "ev" a client received: id → offset. */
function evs(received: Received[]): Array<{ id: string; offset: number }> {
  return received
    .filter((r) => r.event === "ev")
    .map((r) => ({ id: (r.args[0] as { id: string }).id, offset: offsetNumber(r.offset) }));
}

describe("failover that loses commits (an older copy of the data directory put back)", { timeout: 120_000 }, () => {
  let postgres: OwnedPostgres;
  let url: string;
  const backup = () => `${postgres.dataDir}-backup`;

  beforeAll(async () => {
    postgres = await startOwnedPostgres();
    url = await postgres.createMigratedDatabase("failover_loss");
  });

  afterAll(async () => {
    await closeAll();
    if (postgres) rmSync(backup(), { recursive: true, force: true });
    await postgres?.destroy();
  });

  it("never reuses a lost offset, refuses every restore that touches the lost range on every node, and keeps going", async () => {
    const cluster = await Cluster.start({ databaseUrl: url, nodes: 2, adapter: ADAPTER });
    const [node0, node1] = cluster.nodes as [TestNode, TestNode];
    const refusals = new Map<string, string[]>();
    const watchRefusals = (node: TestNode) => {
      refusals.set(node.name, []);
      node.io.of("/").adapter.on("restore-refused", ({ reason }: { reason: string }) => refusals.get(node.name)!.push(reason));
    };
    watchRefusals(node0);
    watchRefusals(node1);

    const clients = new Map<string, { socket: ClientSocket; received: Received[] }>();
    const add = async (name: string, node: TestNode) => {
      const socket = cluster.client(node);
      const received = recordEvents(socket);
      clients.set(name, { socket, received });
      await waitFor(() => socket.connected, { message: `${name} to connect` });
      await waitFor(() => (socket as unknown as { _lastOffset?: string })._lastOffset !== undefined, { message: `${name}'s offset` });
      return socket;
    };
    const got = (name: string, id: string) => evs(clients.get(name)!.received).some((e) => e.id === id);
    let seq = 0;
    /** Emits `count` events from `nodes` in turn; resolves when every client in `to` has them. */
    const emit = async (phase: string, count: number, nodes: TestNode[], to: string[], timeout = 10_000) => {
      const ids: string[] = [];
      for (let i = 0; i < count; i++) {
        const id = `${phase}${++seq}`;
        ids.push(id);
        nodes[i % nodes.length]!.io.emit("ev", { id });
      }
      await waitFor(() => to.every((name) => ids.every((id) => got(name, id))), {
        timeout,
        message: () => `clients ${to.join(", ")} to receive phase ${phase} (${ids.join(",")}); missing: ${to.map((n) => `${n}: ${ids.filter((id) => !got(n, id)).join(",")}`).join("; ")}`,
      });
      return ids;
    };

    // Phase A: everyone is here. "below" leaves before the copy is taken: its session is in the copy.
    const below = await add("below", node0);
    await add("watcher", node1);
    const lateA = await add("lateA", node0);
    const lateB = await add("lateB", node1);
    const lateC = await add("lateC", node1);
    await emit("a", 10, [node0, node1], ["below", "watcher", "lateA", "lateB", "lateC"]);
    const belowId = below.id!;
    goOffline(below);
    await waitFor(async () => (await query(url, `SELECT 1 FROM socket_io.sessions WHERE sid = $1 AND state = 'disconnected'`, [belowId])).length === 1, {
      message: "below's session",
    });
    const belowOffset = offsetNumber(clients.get("below")!.received.at(-1)!.offset);

    // The copy, taken while the server is stopped. The cluster goes on after the restart. The copy's head is
    // read before the stop: nothing is emitted meanwhile, and after a restart the nodes' reconciliation may
    // already have moved the head past a jump by the time a query of the test runs.
    const [{ head: copiedHead }] = (await query<{ head: string }>(url, `SELECT head::text AS head FROM socket_io.namespaces WHERE name = '/'`)) as [{ head: string }];
    await postgres.stop();
    rmSync(backup(), { recursive: true, force: true });
    execFileSync("cp", ["-a", postgres.dataDir, backup()]);
    await postgres.start();

    // Phase B: committed and delivered, and about to be lost.
    await emit("b", 10, [node0, node1], ["watcher", "lateA", "lateB", "lateC"], 20_000);
    const lostOffsets = evs(clients.get("lateA")!.received)
      .filter((e) => e.id.startsWith("b"))
      .map((e) => e.offset);
    const highestLost = Math.max(...lostOffsets);
    expect(Math.min(...lostOffsets)).toBeGreaterThan(Number(copiedHead));

    // The failover: the older copy comes back on the same port, under the running nodes.
    await postgres.stop();
    rmSync(postgres.dataDir, { recursive: true, force: true });
    execFileSync("cp", ["-a", backup(), postgres.dataDir]);
    await postgres.start();
    // Phase B's entries are gone with the copy. (The head itself may already have jumped: a node whose listener
    // reconnected reconciles at once, and under load that can come before this query.)
    const [{ top: topAfterLoss }] = (await query<{ top: string }>(
      url,
      `SELECT max(e."offset")::text AS top FROM socket_io.log_entries e JOIN socket_io.namespaces n ON n.id = e.namespace_id WHERE n.name = '/'`,
    )) as [{ top: string }];
    expect(Number(topAfterLoss)).toBe(Number(copiedHead));

    // Both nodes are back on their LISTEN connections.
    await waitFor(
      async () =>
        (await query(url, `SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1`, [LISTENER_APPLICATION_NAME]))
          .length === 2,
      { timeout: 15_000, message: "both listeners to reconnect" },
    );
    // A node started after the loss: it never saw the lost entries.
    const node2 = await cluster.addNode();
    watchRefusals(node2);

    // Clients holding lost offsets leave now: their sessions are written to the database that lost them.
    for (const socket of [lateA, lateB, lateC]) {
      const sid = socket.id!;
      goOffline(socket);
      const client = new pg.Client({ connectionString: url });
      client.on("error", () => undefined);
      await client.connect();
      try {
        await waitForSession(client, sid, "socket_io", 8000);
      } finally {
        await client.end();
      }
    }

    // Phase C: events keep flowing, on every node, above every lost offset.
    await add("fresh", node2);
    const after = await add("after", node0);
    await emit("c", 9, [node0, node1, node2], ["watcher", "fresh", "after"], 20_000);

    // A client entirely after the lost range recovers, with exactly what it missed.
    const afterId = after.id!;
    goOffline(after);
    await serverNoticed(node0, afterId);
    const missed = await emit("d", 6, [node1, node2], ["watcher", "fresh"]);
    const afterBefore = clients.get("after")!.received.length;
    expect(await comeBack(after, node1)).toBe(true);
    await waitFor(() => missed.every((id) => got("after", id)), { message: "after's replay" });
    // In the one order every client sees (the watcher's), once each.
    const inWatcherOrder = evs(clients.get("watcher")!.received).filter((e) => missed.includes(e.id));
    expect(evs(clients.get("after")!.received.slice(afterBefore))).toEqual(inWatcherOrder);

    // Clients that received lost entries: refused on every node (node2 never saw them).
    expect(await comeBack(lateA, node1)).toBe(false);
    expect(await comeBack(lateB, node2)).toBe(false);
    expect(await comeBack(lateC, node0)).toBe(false);
    // A client below the lost range whose replay would cross it: refused.
    expect(await comeBack(below, node2)).toBe(false);
    const reasons = [...refusals.values()].flat();
    console.log(`[failover-loss] refusals: ${[...refusals].map(([n, r]) => `${n}: ${r.join(" | ")}`).join("; ")}`);
    // Each for the lost range (not, say, a missing session).
    expect(refusals.get("node1")).toEqual([expect.stringMatching(/^offset \d+ lies in \(\d+, \d+\], a range of the log the database lost/)]);
    expect(refusals.get("node0")).toEqual([expect.stringMatching(/^offset \d+ lies in \(\d+, \d+\], a range of the log the database lost/)]);
    expect(refusals.get("node2")).toEqual([
      expect.stringMatching(/^offset \d+ lies in \(\d+, \d+\], a range of the log the database lost/),
      expect.stringMatching(/^the replay after offset \d+ would cross \(\d+, \d+\], entries the database lost/),
    ]);
    expect(belowOffset).toBeLessThanOrEqual(Number(copiedHead));

    // The lost range is on record, marked lost (a node delivered entries inside it).
    const gaps = await query<{ after_offset: string; through_offset: string; lost: boolean }>(
      url,
      `SELECT after_offset::text, through_offset::text, lost FROM socket_io.log_gaps g JOIN socket_io.namespaces n ON n.id = g.namespace_id
        WHERE n.name = '/' AND g.after_offset < $1 AND $1 <= g.through_offset`,
      [highestLost],
    );
    expect(gaps).toEqual([{ after_offset: copiedHead, through_offset: expect.any(String), lost: true }]);

    // Still flowing, to the refused ones too (they have fresh sessions).
    await emit("e", 6, [node0, node1, node2], ["watcher", "fresh", "after", "lateA", "lateB", "lateC", "below"]);

    // No offset was handed to two different events, across every client.
    const byOffset = new Map<number, string>();
    for (const [name, { received }] of clients) {
      for (const e of evs(received)) {
        const seen = byOffset.get(e.offset);
        expect(seen === undefined || seen === e.id, `${name} got ${e.id} at offset ${e.offset}, where another client got ${seen}`).toBe(true);
        byOffset.set(e.offset, e.id);
      }
    }
    // And every event after the loss lies above every lost offset.
    for (const [offset, id] of byOffset) if (/^[cde]/.test(id)) expect(offset).toBeGreaterThan(highestLost);
    await cluster.close();
  });

  it("a plain restart of Postgres (nothing lost): clients away across it recover with every event, in order, once", async () => {
    const restartUrl = await postgres.createMigratedDatabase("plain_restart");
    const cluster = await Cluster.start({ databaseUrl: restartUrl, nodes: 3, adapter: { ...ADAPTER, unloggedDeliveryAfterMs: 2000, restoreTimeoutMs: 5000 } });
    const reasons: string[] = [];
    for (const n of cluster.nodes) n.io.of("/").adapter.on("restore-refused", ({ reason }: { reason: string }) => reasons.push(`${n.name}: ${reason}`));
    const sockets = await Promise.all(Array.from({ length: 6 }, (_, i) => cluster.connect(i % 3)));
    const received = sockets.map((socket) => recordEvents(socket));
    const watcher = await cluster.connect(1);
    const watched = recordEvents(watcher);
    for (let i = 0; i < 20; i++) cluster.nodes[i % 3]!.io.emit("ev", { id: `a${i}` });
    await waitFor(() => received.every((r) => r.length === 20), { message: "the first events" });
    // A burst from one node, with Postgres restarted in the middle of it.
    const burst = (async () => {
      for (let i = 0; i < 400; i++) {
        cluster.nodes[0]!.io.emit("ev", { id: `b${i}` });
        if (i % 20 === 0) await new Promise((resolve) => setTimeout(resolve, 2));
      }
    })();
    await postgres.restart();
    await burst;
    // Right away, each client drops and comes back on another node: across the gap the restart left.
    const recovered = await Promise.all(
      sockets.map(async (socket, i) => {
        goOffline(socket);
        await new Promise((resolve) => setTimeout(resolve, 100));
        return comeBack(socket, cluster.nodes[(i + 1) % 3]!, 10_000);
      }),
    );
    expect(recovered, reasons.join("\n")).toEqual(sockets.map(() => true));
    await waitFor(() => evs(watched).length === 420, { timeout: 15_000, message: () => `the watcher's 420 events (${evs(watched).length})` });
    const order = evs(watched).map((e) => e.id);
    for (const r of received) await waitFor(() => evs(r).length >= 420, { message: () => `a client's 420 events (${evs(r).length})` });
    for (const r of received) expect(evs(r).map((e) => e.id)).toEqual(order);
    await cluster.close();
  });
});
