/**
 * Logged events have Socket.IO's payload semantics: a client receives what
 * the in-memory adapter (a plain Socket.IO server) would send, JSON with
 * binary kept, the same on the emitting node, on another node, in a replay
 * from the memory ring and in a replay from the table.
 *
 * The reference is a plain Socket.IO server without our adapter; each case is
 * emitted there and on the cluster, and what socket.io-client decodes is
 * compared (toStrictEqual: types, Buffers and missing keys count).
 */
import http from "node:http";
import type net from "node:net";
import { Server } from "socket.io";
import { describe, expect, it } from "vitest";
import {
  Cluster,
  comeBack,
  goOffline,
  recordEvents,
  serverNoticed,
  waitFor,
  waitForSession,
  type ClientSocket,
  type Received,
} from "./helpers/cluster.js";
import { expectHealthy } from "./helpers/recovery-attempts.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("payload_semantics");

class Money {
  constructor(readonly cents: number) {}
  toJSON(): string {
    return (this.cents / 100).toFixed(2);
  }
}

/** An ORM-like document: fields, a bound method, a toJSON that hides internals. */
class Document {
  readonly id = 7;
  readonly title = "doc";
  private readonly internal = { dirty: true };
  constructor() {
    this.save = this.save.bind(this);
  }
  save(): boolean {
    return this.internal.dirty;
  }
}

class DocumentWithToJSON extends Document {
  toJSON(key: string): object {
    return { id: this.id, title: this.title, key };
  }
}

/** Each case's arguments, built fresh for every emit. */
const CASES: Record<string, () => unknown[]> = {
  "function-valued property": () => [{ a: 1, fn: () => 1, method() {} }],
  "class instance with a bound method": () => [new Document()],
  "function arguments": () => [() => 1, 2],
  "toJSON (Money)": () => [new Money(1234)],
  "toJSON receives its key": () => [new DocumentWithToJSON(), { doc: new DocumentWithToJSON() }, [new DocumentWithToJSON()]],
  "nested toJSON": () => [{ price: new Money(5), items: [new Money(1), { total: new Money(99) }] }],
  "toJSON returning a Date": () => [{ toJSON: () => new Date(0) }],
  "Date": () => [new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 6)), { at: new Date(0) }],
  "undefined in arrays and objects": () => [[1, undefined, 3], { a: undefined, b: 1 }, undefined, null],
  "NaN, Infinity, -0": () => [NaN, [Infinity, -Infinity, -0], { n: NaN }],
  "symbols": () => [{ s: Symbol("x"), [Symbol("k")]: 1, t: 1 }, [Symbol("y")]],
  "Map and Set": () => [new Map([["a", 1]]), new Set([1, 2]), { m: new Map() }],
  "Buffer, Uint8Array, ArrayBuffer": () => [
    Buffer.from([1, 2, 3]),
    new Uint8Array([4, 5]),
    new Uint8Array([6, 7, 8]).buffer,
    Buffer.from([0, 1, 2, 3, 4]).subarray(1, 3),
    new Uint16Array([258, 772]),
  ],
  "binary nested, with toJSON beside it": () => [{ bin: Buffer.from("héllo"), list: [new Uint8Array([9]), new Money(1)], price: new Money(2) }],
  "toJSON hiding binary": () => [{ toJSON: () => ({ shown: Buffer.from([1]) }), hidden: Buffer.from([2]) }],
  "placeholder-shaped object beside binary": () => [{ _placeholder: true, num: 0 }, Buffer.from([5])],
  "several binary attachments": () => [Array.from({ length: 10 }, (_, i) => Buffer.from([i]))],
  "empty binary": () => [Buffer.alloc(0), new ArrayBuffer(0)],
  "big binary (over the NOTIFY size)": () => [Buffer.alloc(20_000, 3), "text"],
  "short lone surrogate": () => ["\ud800", { k: "x\udfff" }],
  "getter and non-enumerable": () => {
    const o = { get g() { return 5; } };
    Object.defineProperty(o, "hidden", { value: 1, enumerable: false });
    return [o];
  },
  "plain values": () => ["s", 0, 1.5, true, false, null, { nested: { deep: ["x"] } }],
};

const NAMES = Object.keys(CASES);

/** What a client of a plain Socket.IO server (in-memory adapter) receives for every case. */
async function reference(cluster: Cluster): Promise<Map<string, unknown[]>> {
  const httpServer = http.createServer();
  const io = new Server(httpServer);
  await new Promise<void>((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
  try {
    const port = (httpServer.address() as net.AddressInfo).port;
    const client = await cluster.connect({ url: `http://127.0.0.1:${port}` }, { waitForOffset: false });
    const got = recordEvents(client);
    for (const name of NAMES) io.emit(name, ...CASES[name]!());
    io.emit("end");
    await waitFor(() => got.some((r) => r.event === "end"), { message: "the reference client to get every case" });
    cluster.closeClient(client);
    return new Map(got.filter((r) => r.event !== "end").map((r) => [r.event, r.args]));
  } finally {
    await io.close();
  }
}

/** The cases as `client` received them, without the offset our adapter appends. */
function byCase(got: Received[]): Map<string, unknown[]> {
  return new Map(got.filter((r) => NAMES.includes(r.event)).map((r) => [r.event, r.args.slice(0, -1)]));
}

async function offlineOn(cluster: Cluster, node: number): Promise<ClientSocket> {
  const socket = await cluster.connect(node, { rooms: ["r"] });
  const sid = socket.id!;
  goOffline(socket);
  await serverNoticed(cluster.node(node), sid);
  await waitForSession(cluster.node(node).pool, sid);
  return socket;
}

describe("payload semantics of logged events", () => {
  it("every case reaches clients as the in-memory adapter sends it: emitting node, other node, replay from the ring and from the table", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const expected = await reference(cluster);
    expect([...expected.keys()]).toEqual(NAMES);

    const onEmitter = await cluster.connect(0, { rooms: ["r"] });
    const onOther = await cluster.connect(1, { rooms: ["r"] });
    const fromRing = await offlineOn(cluster, 1);
    const fromTable = await offlineOn(cluster, 0);
    const got = { emitter: recordEvents(onEmitter), other: recordEvents(onOther), ring: recordEvents(fromRing), table: recordEvents(fromTable) };

    for (const name of NAMES) cluster.node(0).io.to("r").emit(name, ...CASES[name]!());
    cluster.node(0).io.to("r").emit("end");
    const ended = (r: Received[]) => r.some((e) => e.event === "end");
    await waitFor(() => ended(got.emitter) && ended(got.other), { message: "live clients to get every case" });

    // Node 1 has delivered every case since it started: its ring holds them.
    expect(await comeBack(fromRing, cluster.node(1))).toBe(true);
    // A node started now holds nothing in its ring: the replay is read from the table.
    const fresh = await cluster.addNode();
    expect(await comeBack(fromTable, fresh)).toBe(true);
    await waitFor(() => ended(got.ring) && ended(got.table), { message: "replays to reach the end" });

    for (const [where, received] of Object.entries(got)) {
      const actual = byCase(received);
      for (const name of NAMES) {
        expect.soft(actual.get(name), `"${name}" on ${where}`).toStrictEqual(expected.get(name));
      }
    }
    expect(cluster.nodes.flatMap((n) => n.errors.map(String))).toEqual([]);
    await expectHealthy(cluster);
  });

  it("a long string with a lone surrogate reaches every client with the same bytes (msgpack stores it as U+FFFD)", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const onEmitter = await cluster.connect(0, { rooms: ["r"] });
    const onOther = await cluster.connect(1, { rooms: ["r"] });
    const offline = await offlineOn(cluster, 0);
    const got = [recordEvents(onEmitter), recordEvents(onOther), recordEvents(offline)];
    cluster.node(0).io.to("r").emit("ev", `${"x".repeat(100)}\ud800`);
    await waitFor(() => got[0]!.length === 1 && got[1]!.length === 1);
    expect(await comeBack(offline, cluster.node(1))).toBe(true);
    await waitFor(() => got[2]!.length === 1);
    const texts = got.map((g) => g[0]!.args[0]);
    expect(texts).toEqual([texts[0], texts[0], texts[0]]);
    expect(texts[0]).toBe(`${"x".repeat(100)}\ufffd`);
  });

  it("a Buffer the application reuses right after emit() is delivered as it was at emit, on every node", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const got = [recordEvents(await cluster.connect(0, { rooms: ["r"] })), recordEvents(await cluster.connect(1, { rooms: ["r"] }))];
    const reused = Buffer.from([1, 2, 3]);
    const view = new Uint8Array([4, 5, 6]);
    cluster.node(0).io.to("r").emit("ev", reused, { view });
    reused.fill(0);
    view.fill(0);
    await waitFor(() => got.every((g) => g.length === 1));
    for (const g of got) expect(g[0]!.args.slice(0, -1)).toStrictEqual([Buffer.from([1, 2, 3]), { view: Buffer.from([4, 5, 6]) }]);
  });

  it("an argument Socket.IO cannot encode (a cycle) is refused and reported, as Socket.IO throws; the log flows on", async () => {
    const cycle: Record<string, unknown> = { a: 1 };
    cycle.self = cycle;
    const plain = new Server(); // attached to nothing: no server or timer to close
    // Its encoder looks for binary recursively first: the cycle overflows the stack.
    expect(() => plain.emit("ev", cycle)).toThrow(RangeError);

    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const live = await cluster.connect(1, { rooms: ["r"] });
    const got = recordEvents(live);
    cluster.node(0).io.to("r").emit("ev", cycle);
    cluster.node(0).io.to("r").emit("ev", 10n);
    cluster.node(0).io.to("r").emit("ev", "after");
    await waitFor(() => got.length === 1);
    expect(got[0]!.args[0]).toBe("after");
    const reported = cluster.node(0).errors.map((e) => `${e.message} <- ${e.cause instanceof Error ? e.cause.message : ""}`);
    expect(reported).toEqual([
      expect.stringMatching(/cannot log an event of "\/": its arguments do not serialize <- Socket.IO cannot encode them: a cycle/),
      expect.stringMatching(/cannot log an event of "\/": its arguments do not serialize <- .*BigInt/i),
    ]);
    await expectHealthy(cluster);
  });
});
