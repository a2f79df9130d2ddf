/**
 * A rolling migration: nodes of `@socket.io/postgres-adapter`, nodes of ours
 * with and without recovery, and `@socket.io/postgres-emitter`, all on one
 * database with upstream's default options. Every broadcast reaches every
 * matching client exactly once, whichever kind of node (or the emitter) sent
 * it; clients of our recovery nodes still recover exactly.
 */
import http from "node:http";
import type net from "node:net";
import pg from "pg";
import { Server } from "socket.io";
import { createAdapter as createUpstreamAdapter } from "@socket.io/postgres-adapter";
import { Emitter } from "@socket.io/postgres-emitter";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  Cluster,
  comeBack,
  goOffline,
  installAllHandlers,
  logHead,
  offsetNumber,
  recordEvents,
  waitFor,
  type ClientSocket,
  type Received,
  type TestNode,
} from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";
import { createTestDatabase } from "./helpers/database.js";
import type { PostgresRecoveryAdapter } from "../src/adapter.js";
import { migrate } from "../src/index.js";

const db = useClusterSuite("mixed");

const HEARTBEAT = { heartbeatInterval: 200, heartbeatTimeout: 1000 };

/** Upstream's README: its attachments table, created where its bare default name resolves (public). */
const UPSTREAM_TABLE = `CREATE TABLE IF NOT EXISTS socket_io_attachments (
  id          bigserial UNIQUE,
  created_at  timestamptz DEFAULT NOW(),
  payload     bytea
)`;

interface UpstreamNode {
  name: string;
  io: Server;
  url: string;
  pool: pg.Pool;
  errors: Error[];
  close(): Promise<void>;
}

const upstreamNodes: UpstreamNode[] = [];
const emitterPools: pg.Pool[] = [];

/** A node of `@socket.io/postgres-adapter` with its default options (but fast heartbeats). */
async function startUpstreamNode(name: string): Promise<UpstreamNode> {
  const pool = new pg.Pool({ connectionString: db.url, max: 5 });
  // Upstream's README asks for it: an idle client's error (the database going away) must not crash.
  pool.on("error", () => undefined);
  const errors: Error[] = [];
  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    adapter: createUpstreamAdapter(pool, { ...HEARTBEAT, errorHandler: (err: Error) => errors.push(err) }),
  });
  installAllHandlers(io, name);
  await new Promise<void>((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
  const port = (httpServer.address() as net.AddressInfo).port;
  let closing: Promise<void> | undefined;
  const node: UpstreamNode = {
    name,
    io,
    pool,
    errors,
    url: `http://127.0.0.1:${port}`,
    close() {
      closing ??= (async () => {
        await io.close();
        // Upstream's ADAPTER_CLOSE goes out through the pool after close() returns.
        await new Promise((resolve) => setTimeout(resolve, 50));
        await pool.end();
      })();
      return closing;
    },
  };
  upstreamNodes.push(node);
  return node;
}

function startEmitter(): Emitter {
  const pool = new pg.Pool({ connectionString: db.url, max: 2 });
  pool.on("error", () => undefined);
  emitterPools.push(pool);
  return new Emitter(pool);
}

beforeAll(async () => {
  const pool = new pg.Pool({ connectionString: db.url, max: 1 });
  try {
    await pool.query(UPSTREAM_TABLE);
  } finally {
    await pool.end();
  }
});

afterEach(async () => {
  // Registered after the suite's hooks, so it runs before its leak check.
  await Promise.all(upstreamNodes.splice(0).map((n) => n.close()));
  await Promise.all(emitterPools.splice(0).map((p) => p.end()));
});

function adapterOf(node: TestNode): PostgresRecoveryAdapter {
  return node.io.of("/").adapter as unknown as PostgresRecoveryAdapter;
}

/** Waits until every node (ours and upstream's) counts `total` servers. */
async function waitForCount(servers: Array<{ io: Server }>, total: number): Promise<void> {
  let counts: number[] = [];
  await waitFor(
    async () => {
      counts = await Promise.all(servers.map((s) => s.io.of("/").adapter.serverCount()));
      return counts.every((c) => c === total);
    },
    { timeout: 8000, message: () => `serverCount ${total} everywhere (got ${counts.join(",")})` },
  );
}

/** What a client got, as comparable strings: "event:from:i" (binary and big arguments summarised). */
function summary(received: Received[]): string[] {
  return received
    .map((r) => {
      const [arg, extra] = r.args as [{ from: string; i: number }, unknown];
      const tail = Buffer.isBuffer(extra) ? `:bin${extra.length}` : typeof extra === "object" && extra !== null ? ":big" : "";
      return `${r.event}:${arg.from}:${arg.i}${tail}`;
    })
    .sort();
}

describe("a cluster of upstream's nodes and ours", () => {
  it("delivers every broadcast to every matching client exactly once, from every kind of node and the emitter", async () => {
    // Upstream's default options on every node: same channels, same attachments table (public.socket_io_attachments).
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: HEARTBEAT });
    const plain = await cluster.addNode({ recovery: false });
    const upstream = await startUpstreamNode("upstream");
    const emitter = startEmitter();
    const servers = [...cluster.nodes, upstream];
    await waitForCount(servers, 4);

    const clients: Array<{ where: string; socket: ClientSocket; inRoom: boolean }> = [];
    for (const node of cluster.nodes) {
      const recovery = node !== plain;
      clients.push({ where: node.name, inRoom: true, socket: await cluster.connect(node, { rooms: ["r"], waitForOffset: recovery }) });
      clients.push({ where: node.name, inRoom: false, socket: await cluster.connect(node, { waitForOffset: recovery }) });
    }
    clients.push({ where: "upstream", inRoom: true, socket: await cluster.connect(upstream, { rooms: ["r"], waitForOffset: false }) });
    clients.push({ where: "upstream", inRoom: false, socket: await cluster.connect(upstream, { waitForOffset: false }) });
    const got = clients.map((c) => recordEvents(c.socket));

    const senders: Array<{ from: string; io: { emit: Server["emit"]; to: Server["to"] } }> = [
      { from: "ours0", io: cluster.node(0).io },
      { from: "ours1", io: cluster.node(1).io },
      { from: "plain", io: plain.io },
      { from: "upstream", io: upstream.io },
      { from: "emitter", io: emitter as unknown as { emit: Server["emit"]; to: Server["to"] } },
    ];
    const expectedAll: string[] = [];
    const expectedRoom: string[] = [];
    for (const { from, io } of senders) {
      for (let i = 0; i < 3; i++) {
        io.emit("all", { from, i });
        expectedAll.push(`all:${from}:${i}`);
      }
      io.to("r").emit("room", { from, i: 0 });
      expectedRoom.push(`room:${from}:0`);
      // Binary and over payloadThreshold: both travel through the attachments table on the bus.
      io.emit("bin", { from, i: 0 }, Buffer.from([1, 2, 3]));
      io.emit("big", { from, i: 0 }, { text: "x".repeat(9000) });
      expectedAll.push(`bin:${from}:0:bin3`, `big:${from}:0:big`);
    }
    // Upstream's own nodes drop the emitter's messages: @socket.io/postgres-emitter 0.1.x sends no
    // `nsp`, which @socket.io/postgres-adapter 0.5 dispatches on. Ours take it from the channel.
    const expectedFor = (inRoom: boolean, where?: string) =>
      [...expectedAll, ...(inRoom ? expectedRoom : [])].filter((e) => where !== "upstream" || !e.includes(":emitter:")).sort();
    await waitFor(() => clients.every((c, k) => got[k]!.length >= expectedFor(c.inRoom, c.where).length), {
      timeout: 10_000,
      message: () => {
        const missing = clients.map((c, k) => {
          const have = summary(got[k]!);
          return `${c.where}${c.inRoom ? "+r" : ""}: ${expectedFor(c.inRoom, c.where).filter((e) => !have.includes(e)).join(" ")}`;
        });
        return `every event everywhere; missing: ${missing.join("; ")}`;
      },
    });
    // A barrier for duplicates: everything above was on the bus before this (commit order), on every node.
    upstream.io.emit("barrier", { from: "upstream", i: 0 });
    await waitFor(() => got.every((g) => g.some((r) => r.event === "barrier")), { message: "the barrier everywhere" });
    for (const [k, c] of clients.entries()) {
      expect(summary(got[k]!.filter((r) => r.event !== "barrier")), `${c.where} (room: ${c.inRoom})`).toEqual(expectedFor(c.inRoom, c.where));
    }
    // Our recovery clients got our recovery nodes' events with offsets, the others without.
    for (const [k, c] of clients.entries()) {
      const recoveryClient = c.where === "node0" || c.where === "node1";
      for (const r of got[k]!) {
        const from = (r.args[0] as { from: string }).from;
        const logged = from === "ours0" || from === "ours1";
        expect(r.offset !== undefined, `${c.where}: ${r.event} from ${from}`).toBe(recoveryClient && logged);
      }
    }
    // Each logged broadcast was logged once (relays are not logged again).
    expect(await logHead(cluster.node(0).pool)).toBe(2 * 6);
    expect(upstream.errors).toEqual([]);
    for (const node of cluster.nodes) expect(node.errors).toEqual([]);
  });

  it("keeps recovery exact for clients of our nodes while upstream nodes take part", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: HEARTBEAT });
    const upstream = await startUpstreamNode("upstream");
    await waitForCount([...cluster.nodes, upstream], 3);
    const client = await cluster.connect(0, { rooms: ["r"] });
    const watcher = await cluster.connect(upstream, { rooms: ["r"], waitForOffset: false });
    const got = recordEvents(client);
    const seenUpstream = recordEvents(watcher);
    cluster.node(0).io.to("r").emit("ev", { from: "ours0", i: 0 });
    await waitFor(() => got.length === 1);

    goOffline(client);
    await waitFor(() => cluster.node(0).io.of("/").sockets.size === 0, { message: "node0 to notice the disconnection" });
    for (let i = 1; i <= 20; i++) cluster.node(i % 2).io.to("r").emit("ev", { from: `ours${i % 2}`, i });
    await waitFor(() => seenUpstream.length === 21, { message: () => `upstream's client to get 21 (got ${seenUpstream.length})` });

    expect(await comeBack(client, cluster.node(1))).toBe(true);
    await waitFor(() => got.length === 21, { message: () => `21 events after recovery (got ${got.length})` });
    cluster.node(1).io.to("r").emit("ev", { from: "ours1", i: 21 });
    await waitFor(() => got.length === 22);
    // Exactly once, in one order (the log's: offsets strictly increasing).
    expect(got.map((r) => (r.args[0] as { i: number }).i).sort((a, b) => a - b)).toEqual(Array.from({ length: 22 }, (_, i) => i));
    const offsets = got.map((r) => offsetNumber(r.offset));
    expect(offsets.every((o, i) => i === 0 || o > offsets[i - 1]!)).toBe(true);
    await waitFor(() => seenUpstream.length === 22);
    expect(seenUpstream.map((r) => (r.args[0] as { i: number }).i).sort((a, b) => a - b)).toEqual(Array.from({ length: 22 }, (_, i) => i));
  });

  it("relays logged broadcasts on the bus only while a node without our log is there", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: HEARTBEAT });
    await cluster.waitForServerCount();
    const mixed = adapterOf(cluster.node(0)).mixedCluster;
    // Past the announcement's grace, the peers' heartbeats say they read our log.
    await waitFor(() => !mixed.needsRelay(), { message: "node0 to know its only peer reads the log" });
    const before = mixed.relayed;
    const client = await cluster.connect(1, {});
    const got = recordEvents(client);
    for (let i = 0; i < 5; i++) cluster.node(0).io.emit("ev", { i });
    await waitFor(() => got.length === 5);
    expect(mixed.relayed - before, "relays with only recovery peers").toBe(0);

    const upstream = await startUpstreamNode("upstream");
    await waitForCount([...cluster.nodes, upstream], 3);
    const watcher = await cluster.connect(upstream, { waitForOffset: false });
    const seen = recordEvents(watcher);
    cluster.node(0).io.emit("ev", { i: 5 });
    await waitFor(() => seen.length === 1 && got.length === 6, { message: "upstream's client to get the relay" });
    expect(mixed.relayed - before).toBe(1);
    // socket.emit() to a socket of node0 (logged with recovery on): no other node has that socket.
    const local = await cluster.connect(0, {});
    const gotLocal = recordEvents(local);
    await local.timeout(3000).emitWithAck("self-emit", { event: "mine", args: [{ i: 0 }] });
    await waitFor(() => gotLocal.length === 1);
    expect(gotLocal[0]!.offset, "logged").toBeDefined();
    expect(mixed.relayed - before, "no relay for socket.emit()").toBe(1);

    await upstream.close();
    await waitFor(() => !mixed.needsRelay(), { message: "node0 to see upstream leave" });
    const afterLeave = mixed.relayed;
    cluster.node(0).io.emit("ev", { i: 6 });
    await waitFor(() => got.length === 7);
    expect(mixed.relayed).toBe(afterLeave);
    expect(got.map((r) => (r.args[0] as { i: number }).i)).toEqual([0, 1, 2, 3, 4, 5, 6]);
  });

  it("a node of ours with recovery off gets every broadcast of the recovery nodes, and they get its own", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: HEARTBEAT });
    const plain = await cluster.addNode({ recovery: false });
    await cluster.waitForServerCount();
    const onRecovery = await cluster.connect(0, {});
    const onPlain = await cluster.connect(plain, { waitForOffset: false });
    const gotRecovery = recordEvents(onRecovery);
    const gotPlain = recordEvents(onPlain);
    for (let i = 0; i < 10; i++) cluster.node(i % 2).io.emit("ev", { i });
    await waitFor(() => gotRecovery.length === 10 && gotPlain.length === 10, {
      message: () => `10 events on both (${gotRecovery.length}, ${gotPlain.length})`,
    });
    // One node's broadcasts arrive in the order it emitted them.
    const fromRecovery = gotPlain.map((r) => (r.args[0] as { i: number }).i).filter((i) => i % 2 === 0);
    expect(fromRecovery).toEqual([0, 2, 4, 6, 8]);
  });
});

describe("two deployments (schemas) sharing the channels", () => {
  it("each one's broadcasts reach the other's clients exactly once", async () => {
    const setup = new pg.Pool({ connectionString: db.url, max: 1 });
    try {
      await migrate(setup, { schema: "tenant_b" });
    } finally {
      await setup.end();
    }
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: HEARTBEAT });
    const other = await cluster.addNode({ adapter: { ...HEARTBEAT, schema: "tenant_b" } });
    await cluster.waitForServerCount();
    const onA = await cluster.connect(0, {});
    const onB = await cluster.connect(other, {});
    const gotA = recordEvents(onA);
    const gotB = recordEvents(onB);
    for (let i = 0; i < 5; i++) {
      cluster.node(0).io.emit("ev", { from: "a", i });
      other.io.emit("ev", { from: "b", i });
    }
    await waitFor(() => gotA.length >= 10 && gotB.length >= 10, { message: () => `10 each (${gotA.length}, ${gotB.length})` });
    // Barrier: a later broadcast of each, received by both, after any duplicate would have come.
    cluster.node(0).io.emit("end", { from: "a", i: 5 });
    other.io.emit("end", { from: "b", i: 5 });
    await waitFor(() => [gotA, gotB].every((g) => g.filter((r) => r.event === "end").length === 2));
    for (const [got, own] of [[gotA, "a"], [gotB, "b"]] as const) {
      const evs = got.filter((r) => r.event === "ev").map((r) => r.args[0] as { from: string; i: number });
      expect(evs.map((e) => `${e.from}${e.i}`).sort()).toEqual(["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2", "b3", "b4"]);
      // Logged (with an offset) only in the client's own deployment.
      for (const r of got.filter((x) => x.event === "ev")) expect(r.offset !== undefined).toBe((r.args[0] as { from: string }).from === own);
    }
  });
});

describe("the attachments table (tableName)", () => {
  it("reports at start a table the option names that does not exist, naming the option", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, recovery: false, adapter: { ...HEARTBEAT, tableName: "no_such_table" } });
    const node = cluster.node(0);
    await waitFor(() => node.errors.length > 0, { message: "an error about the missing table" });
    expect(node.errors[0]!.message).toMatch(/option "tableName" \("no_such_table"\) does not exist on the pool's search_path/);
  });

  it("never delivers another message's row when two nodes use different tables (same ids)", async () => {
    const setup = new pg.Pool({ connectionString: db.url, max: 1 });
    try {
      await setup.query(`CREATE TABLE public.other_attachments (LIKE public.socket_io_attachments INCLUDING ALL)`);
      // Row 1 of the receiver's table: some other node's message, which a bare id would designate.
      const { encode } = await import("@msgpack/msgpack");
      const stranger = { uid: "stranger", nsp: "/", type: 3, data: { packet: { type: 2, data: ["wrong"], nsp: "/" }, opts: { rooms: [], except: [], flags: {} } } };
      await setup.query(`INSERT INTO public.other_attachments (id, payload) VALUES (1000001, $1)`, [Buffer.from(encode(stranger))]);
      await setup.query(`SELECT setval(pg_get_serial_sequence('public.socket_io_attachments', 'id'), 1000000)`);
    } finally {
      await setup.end();
    }
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, recovery: false, adapter: HEARTBEAT });
    const receiver = await cluster.addNode({ adapter: { ...HEARTBEAT, tableName: "public.other_attachments" } });
    await cluster.waitForServerCount();
    const client = await cluster.connect(receiver, { waitForOffset: false });
    const got = recordEvents(client);
    cluster.node(0).io.emit("bin", Buffer.from([1]));
    await waitFor(() => receiver.errors.some((e) => /holds another node's message/.test(describeError(e))), {
      message: () => `the receiver to report the mismatch (errors: ${receiver.errors.map(describeError).join(" | ")})`,
    });
    // A later unbinary message (NOTIFY, in order after the attachment header) shows nothing was delivered.
    cluster.node(0).io.emit("plain", 1);
    await waitFor(() => got.length > 0);
    expect(got.map((r) => r.event)).toEqual(["plain"]);
  });
});

describe("a plain drop-in, on a database never migrated", () => {
  it("names the unmigrated schema at start, carries binary broadcasts and still cleans upstream's attachments table", async () => {
    const fresh = await createTestDatabase("mixed_plain");
    const setup = new pg.Pool({ connectionString: fresh.url, max: 1 });
    let cluster: Cluster | undefined;
    try {
      await setup.query(UPSTREAM_TABLE);
      await setup.query(`INSERT INTO socket_io_attachments (created_at, payload) VALUES (now() - interval '1 hour', '\\x00')`);
      cluster = await Cluster.start({
        databaseUrl: fresh.url,
        nodes: 2,
        recovery: false,
        adapter: { ...HEARTBEAT, pruneIntervalMs: 100, cleanupInterval: 1000 },
      });
      await cluster.waitForServerCount();
      const node = cluster.node(0);
      await waitFor(() => node.errors.some((e) => /option "schema" \("socket_io"\): .*missing: the schema is not migrated/.test(e.message)), {
        message: () => `the unmigrated schema reported (errors: ${node.errors.map(describeError).join(" | ")})`,
      });
      const client = await cluster.connect(1, { waitForOffset: false });
      const got = recordEvents(client);
      node.io.emit("bin", Buffer.from([1, 2]));
      await waitFor(() => got.length === 1);
      expect(Buffer.isBuffer(got[0]!.args[0])).toBe(true);
      // Pruning fails on the missing log tables, but cleans the attachments first.
      await waitFor(async () => (await setup.query(`SELECT 1 FROM socket_io_attachments WHERE created_at < now() - interval '1 minute'`)).rowCount === 0, {
        message: "the old attachment row to be cleaned",
      });
    } finally {
      await cluster?.close();
      await setup.end();
      await fresh.drop();
    }
  });
});

function describeError(err: Error): string {
  return err.cause instanceof Error ? `${err.message}: ${describeError(err.cause)}` : err.message;
}
