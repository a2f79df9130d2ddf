/**
 * Oversized and deeply nested events emitted with recovery on. The work is
 * bounded, the process keeps running, the log keeps flowing for everyone
 * else, and what cannot be logged is refused with a clear error to
 * `errorHandler` (not delivered: delivered unlogged, a recovering client
 * would miss it without knowing).
 *
 * Limits: `maxEntryBytes` (stored size of one event, default 16 MiB), a
 * nesting depth of 97 levels inside an event argument (msgpack's encoder
 * stops at 100, and the stored packet adds its own arrays), and for what clients send, Socket.IO's
 * `maxHttpBufferSize` (test/hostile-handshake.test.ts).
 */
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
  type TestNode,
} from "./helpers/cluster.js";
import { expectHealthy } from "./helpers/recovery-attempts.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("oversized");

function nested(depth: number): unknown {
  let value: unknown = "bottom";
  for (let i = 0; i < depth; i++) value = { v: value };
  return value;
}

function depthOf(value: unknown): number {
  let depth = 0;
  while (typeof value === "object" && value !== null && "v" in value) {
    value = (value as { v: unknown }).v;
    depth++;
  }
  return depth;
}

/** A client in room "r" on node 1, taken offline with its session written. */
async function offlineClient(cluster: Cluster): Promise<ClientSocket> {
  const socket = await cluster.connect(1, { rooms: ["r"] });
  const sid = socket.id!;
  goOffline(socket);
  await serverNoticed(cluster.node(1), sid);
  await waitForSession(cluster.node(1).pool, sid);
  return socket;
}

function errorsOf(node: TestNode): string[] {
  return node.errors.map((e) => (e.cause instanceof Error ? `${e.message} <- ${e.cause.message}` : e.message));
}

describe("oversized and deeply nested events", () => {
  it("an event over maxEntryBytes is refused and reported; the events around it flow in order", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: { maxEntryBytes: 64 * 1024 } });
    const live = await cluster.connect(1, { rooms: ["r"] });
    const got = recordEvents(live);
    const head = await logHead(cluster.node(0).pool);
    // One tick: the three would go out in one batch.
    cluster.node(0).io.to("r").emit("ev", "before");
    cluster.node(0).io.to("r").emit("ev", "x".repeat(100 * 1024));
    cluster.node(0).io.to("r").emit("ev", "after");
    await waitFor(() => got.length === 2);
    expect(got.map((r) => r.args[0])).toEqual(["before", "after"]);
    expect(got.map((r) => r.offset)).toEqual([`o${head + 1}`, `o${head + 2}`]);
    expect(await logHead(cluster.node(0).pool)).toBe(head + 2);
    expect(errorsOf(cluster.node(0))).toEqual([
      expect.stringMatching(/^socket\.io-postgres-recovery: an event of "\/" was not logged nor delivered: \d+ bytes exceed maxEntryBytes \(65536\)$/),
    ]);
    await expectHealthy(cluster);
  });

  it("a 20 MB event: refused under the default maxEntryBytes (16 MiB); logged, delivered and replayed with it raised", async () => {
    const big = "y".repeat(20 * 1024 * 1024);
    {
      const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
      const live = await cluster.connect(1, { rooms: ["r"] });
      const got = recordEvents(live);
      cluster.node(0).io.to("r").emit("ev", big);
      cluster.node(0).io.to("r").emit("ev", "small");
      await waitFor(() => got.length === 1);
      expect(got[0]!.args[0]).toBe("small");
      expect(errorsOf(cluster.node(0))).toEqual([expect.stringMatching(/bytes exceed maxEntryBytes \(16777216\)$/)]);
      await cluster.close();
    }
    {
      // Outage mode off: on a loaded machine, writing 20 MB can take longer than its 2 s
      // threshold, which counts a slow write as an outage and delivers the rest unlogged.
      const cluster = await Cluster.start({
        databaseUrl: db.url,
        nodes: 2,
        adapter: { maxEntryBytes: 32 * 1024 * 1024, unloggedDeliveryAfterMs: false },
      });
      const offline = await offlineClient(cluster);
      const missed = recordEvents(offline);
      const live = await cluster.connect(1, { rooms: ["r"] });
      const got = recordEvents(live);
      const head = await logHead(cluster.node(0).pool);
      // Others keep emitting small events on the other node meanwhile; one order for all.
      cluster.node(0).io.to("r").emit("ev", big);
      for (let i = 0; i < 5; i++) cluster.node(1).io.to("r").emit("ev", `small-${i}`);
      await waitForHead(cluster.node(0).pool, head + 6, "/", "socket_io", 20_000);
      await waitFor(() => got.length === 6, { timeout: 20_000 });
      const offsets = got.map((r) => Number(r.offset!.slice(1)));
      expect(offsets).toEqual([...offsets].sort((a, b) => a - b));
      expect(got.filter((r) => r.args[0] === big)).toHaveLength(1);
      // Replayed from the table on a node that has never seen it.
      const fresh = await cluster.addNode();
      expect(await comeBack(offline, fresh)).toBe(true);
      await waitFor(() => missed.length === 6, { timeout: 20_000 });
      expect(missed.map((r) => r.offset)).toEqual(got.map((r) => r.offset));
      expect(missed.find((r) => r.args[0] === big)).toBeDefined();
      expect(cluster.nodes.flatMap(errorsOf)).toEqual([]);
    }
  });

  it("an event nested 10,000 deep is refused and reported; 90 levels are logged and replayed", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const offline = await offlineClient(cluster);
    const missed = recordEvents(offline);
    const live = await cluster.connect(1, { rooms: ["r"] });
    const got = recordEvents(live);
    const head = await logHead(cluster.node(0).pool);
    cluster.node(0).io.to("r").emit("ev", nested(90));
    cluster.node(0).io.to("r").emit("ev", nested(10_000));
    cluster.node(0).io.to("r").emit("ev", "after");
    await waitFor(() => got.length === 2);
    expect(depthOf(got[0]!.args[0])).toBe(90);
    expect(got[1]!.args[0]).toBe("after");
    expect(await logHead(cluster.node(0).pool)).toBe(head + 2);
    expect(errorsOf(cluster.node(0))).toEqual([
      // Socket.IO's own encoder overflows the stack on it (it would throw at emit without our adapter too).
      expect.stringMatching(/cannot log an event of "\/": its arguments do not serialize <- (Too deep objects in depth \d+|Socket.IO cannot encode them: a cycle, or nesting too deep)/),
    ]);
    expect(await comeBack(offline, cluster.node(0))).toBe(true);
    await waitFor(() => missed.length === 2);
    expect(depthOf(missed[0]!.args[0])).toBe(90);
    await expectHealthy(cluster);
  });
});

describe("values msgpack cannot decode", () => {
  // JSON.parse('{"__proto__": …}') makes an own "__proto__" key; Socket.IO's parser does that with
  // what clients send, and msgpack's decoder refuses such a key. Logged as is, the entry could not
  // be read back: every other node stalled on it, for good, and a session holding it never restored.
  const hostile = () => JSON.parse('{"__proto__": {"polluted": true}, "text": "hi"}') as unknown;

  it("a client's event with an own __proto__ key, relayed by the app, is refused and reported; the log flows on", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const live = await cluster.connect(1, { rooms: ["r"] });
    const got = recordEvents(live);
    const attacker = await cluster.connect(0);
    await attacker.timeout(3000).emitWithAck("broadcast-emit", { rooms: ["r"], event: "chat", args: [hostile()] });
    cluster.node(0).io.to("r").emit("ev", { v: "__proto__" }); // the text as a value is fine
    cluster.node(0).io.to("r").emit("ev", "after");
    await waitFor(() => got.length >= 2);
    expect(got.map((r) => r.args[0])).toEqual([{ v: "__proto__" }, "after"]);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(errorsOf(cluster.node(0))).toEqual([
      expect.stringMatching(/its arguments do not serialize <- .*__proto__/),
    ]);
    expect(errorsOf(cluster.node(1))).toEqual([]);
    await expectHealthy(cluster);
  });

  it("socket.data with an own __proto__ key: the socket's room changes still become durable, so its events are not held back", async () => {
    // Its skeleton could not be written at all: a room change stayed pending for good and every
    // entry for the socket was held back, live delivery to it stopped.
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const socket = await cluster.connect(0, { rooms: ["r"] });
    const got = recordEvents(socket);
    await socket.timeout(3000).emitWithAck("set-data", hostile());
    await socket.timeout(3000).emitWithAck("join", "later");
    cluster.node(1).io.to("later").emit("ev", "through the new room");
    cluster.node(1).io.to("r").emit("ev", "through the old room");
    await waitFor(() => got.length === 2, { message: () => `2 events, got ${JSON.stringify(got.map((r) => r.args[0]))}` });
    expect(got.map((r) => r.args[0])).toEqual(["through the new room", "through the old room"]);
    expect(errorsOf(cluster.node(0))).toEqual([expect.stringMatching(/cannot be stored; its skeleton keeps the last one that could/)]);
    await expectHealthy(cluster);
  });

  it("socket.data with an own __proto__ key: the checkpoint keeps the last storable data, the session is not stored (both reported); the client gets a fresh one", async () => {
    // A short checkpoint interval makes the checkpoint's report come first, every run.
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: { checkpointIntervalMs: 100 } });
    const socket = await cluster.connect(0, { rooms: ["r"] });
    await socket.timeout(3000).emitWithAck("set-data", hostile());
    const sid = socket.id!;
    const kept = /socket\.data of .* cannot be stored; its skeleton keeps the last one that could <- .*__proto__/;
    const notStored = /socket\.data of .* does not serialize; its session is not stored <- .*__proto__/;
    await waitFor(() => errorsOf(cluster.node(0)).some((m) => kept.test(m)), { message: () => `the checkpoint's report; got ${JSON.stringify(errorsOf(cluster.node(0)))}` });
    goOffline(socket);
    await serverNoticed(cluster.node(0), sid);
    await waitFor(() => errorsOf(cluster.node(0)).some((m) => notStored.test(m)), { message: () => `the disconnect's report; got ${JSON.stringify(errorsOf(cluster.node(0)))}` });
    expect(await comeBack(socket, cluster.node(1))).toBe(false);
    expect(errorsOf(cluster.node(0))).toEqual([expect.stringMatching(kept), expect.stringMatching(notStored)]);
    expect(errorsOf(cluster.node(1))).toEqual([]);
    await expectHealthy(cluster);
  });
});
