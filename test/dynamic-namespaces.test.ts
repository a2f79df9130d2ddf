/**
 * Dynamic namespaces come and go (Socket.IO's `cleanupEmptyChildNamespaces`
 * closes a child namespace's adapter when its last socket leaves): a closed
 * one gives up its LISTEN channel and its state, and recovery still works
 * when the namespace comes back.
 */
import pg from "pg";
import { describe, expect, it } from "vitest";
import { Listener } from "../src/listener.js";
import type { NodeContext } from "../src/node-context.js";
import {
  Cluster,
  comeBack,
  goOffline,
  logHead,
  recordEvents,
  waitFor,
  waitForHead,
  waitForSession,
  type TestNode,
} from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("dynamic_namespaces");

/** The node's shared context (private to the adapter; read here to see what the node still holds). */
function contextOf(node: TestNode): NodeContext {
  return (node.io.of("/").adapter as unknown as { ctx: NodeContext }).ctx;
}

describe("dynamic namespaces", () => {
  it("UNLISTENs a removed channel: its NOTIFYs stop arriving, the others still do", async () => {
    const received: string[] = [];
    const listener = new Listener({
      connection: { connectionString: db.url },
      checkIntervalMs: 60_000,
      onNotification: (channel, payload) => received.push(`${channel}:${payload}`),
      onReconnected: () => undefined,
      onError: () => undefined,
    });
    listener.start();
    const notifier = new pg.Client({ connectionString: db.url });
    await notifier.connect();
    try {
      await listener.listen("kept");
      await listener.listen("removed");
      await listener.unlisten("removed");
      expect(listener.channelNames).toEqual(["kept"]);
      // One session's NOTIFYs arrive in order: once "kept:2" is here, "removed:1" would be too.
      await notifier.query("SELECT pg_notify('removed', '1')");
      await notifier.query("SELECT pg_notify('kept', '2')");
      await waitFor(() => received.includes("kept:2"), { message: "the kept channel's NOTIFY" });
      expect(received).toEqual(["kept:2"]);
      await listener.unlisten("never-listened"); // a no-op
    } finally {
      await notifier.end();
      await listener.close();
    }
  });

  it("a cleaned-up dynamic namespace gives up its channel and state, and its clients still recover when it comes back", async () => {
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 2,
      server: { cleanupEmptyChildNamespaces: true },
    });
    const [a, b] = [cluster.node(0), cluster.node(1)];
    const nsp = "/dyn-cleanup";
    const channel = `socket.io#${nsp}`;
    const client = await cluster.connect(a, { nsp });
    const got = recordEvents(client);
    expect(contextOf(a).listener.channelNames).toContain(channel);

    const sid = client.id!;
    goOffline(client);
    // Its last socket gone, node A closes the namespace: its channel goes, its session stays stored.
    await waitFor(() => !a.io._nsps.has(nsp), { message: `node A to clean up ${nsp}` });
    await waitFor(() => !contextOf(a).listener.channelNames.includes(channel), { message: `node A to drop ${channel}` });
    await waitForSession(a.pool, sid);
    expect(contextOf(a).listener.channelNames).toContain("socket.io#/");

    // Emitted elsewhere while the namespace is gone from node A.
    const head = await logHead(b.pool, nsp);
    for (let i = 0; i < 5; i++) b.io.of(nsp).emit("ev", i);
    await waitForHead(b.pool, head + 5, nsp);

    expect(await comeBack(client, a)).toBe(true);
    expect(client.id).toBe(sid);
    expect(contextOf(a).listener.channelNames).toContain(channel);
    await waitFor(() => got.length >= 5, { message: () => `5 packets, got ${got.length}` });
    b.io.of(nsp).emit("ev", 5);
    await waitFor(() => got.length >= 6, { message: () => `6 packets, got ${got.length}` });
    expect(got.map((r) => r.args[0])).toEqual([0, 1, 2, 3, 4, 5]);
  });
});
