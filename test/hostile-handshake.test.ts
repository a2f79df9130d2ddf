/**
 * Hostile handshakes: whatever a client puts in `pid` and `offset`, it gets a
 * fresh session (`recovered === false` on both sides), the real sessions it
 * did not own stay intact, the server keeps serving, nothing is rejected
 * unhandled (the suite checks) and `errorHandler` hears nothing: a refusal is
 * not an error.
 *
 * Clients are real socket.io-client connections. socket.io-client sends
 * `{ pid, offset, ...auth }` in its CONNECT packet, so `auth: { pid, offset }`
 * presents any JSON value (`present()`); Socket.IO only calls
 * `restoreSession` when both are strings, and the properties check that
 * every other type is harmless too.
 *
 * Runs are bounded (numRuns) and seeded: a failure prints the seed and the
 * counterexample; replay it with FC_SEED=<seed>.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import WebSocket from "ws";
import { parseOffset } from "../src/codec.js";
import {
  Cluster,
  comeBack,
  logHead,
  once,
  recordEvents,
  waitFor,
  whoami,
} from "./helpers/cluster.js";
import { expectHealthy, prepare, present, type Prepared } from "./helpers/recovery-attempts.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("hostile_handshake");

const SEED = process.env.FC_SEED !== undefined ? Number(process.env.FC_SEED) : 20261126;

/** SQL, JSON and protocol fragments, alone or glued to other text. */
const FRAGMENTS = [
  "' OR 1=1 --",
  "'; DROP TABLE socket_io.sessions; --",
  '"; DROP SCHEMA socket_io CASCADE; --',
  "o1; DELETE FROM socket_io.log_entries",
  "o1' OR '1'='1",
  "o1)) UNION SELECT pid_hash FROM socket_io.sessions --",
  '{"$gt":""}',
  '{"__proto__":{"polluted":true}}',
  "[]",
  "null",
  "\\x00",
  "\u0000",
  "o\u0000",
  "$1",
  "%s%s%n",
  "o٣",
  "o１",
  " o1",
  "o1 ",
  "O1",
  "o+1",
  "o0x10",
  "o1.0",
  "o01",
  "NaN",
  "Infinity",
  "💥",
  "\ud800",
];

/** Strings an attacker would try, and strings no one thought of. */
function hostileString(): fc.Arbitrary<string> {
  return fc.oneof(
    fc.constantFrom(...FRAGMENTS),
    fc.tuple(fc.constantFrom(...FRAGMENTS), fc.string({ unit: "binary", maxLength: 20 })).map(([a, b]) => a + b),
    fc.string({ unit: "binary", maxLength: 64 }),
    fc.string({ unit: "grapheme", maxLength: 64 }),
    // Offsets beyond 2^63, negative ones, and plain numbers as text.
    fc.bigInt({ min: 2n ** 63n - 2n, max: 2n ** 80n }).map((n) => `o${n}`),
    fc.bigInt({ min: -(2n ** 80n), max: -1n }).map((n) => `o${n}`),
    fc.bigInt({ min: -(2n ** 70n), max: 2n ** 70n }).map((n) => n.toString()),
    // Huge strings, within Socket.IO's maxHttpBufferSize (1e6 bytes) for the whole packet.
    fc.tuple(fc.integer({ min: 1_000, max: 150_000 }), fc.constantFrom("x", "é", "o1", "💥")).map(([n, s]) => s.repeat(n)),
  );
}

/** Any value the CONNECT packet can carry in a field (undefined: the field is absent). */
function hostileValue(): fc.Arbitrary<unknown> {
  return fc.oneof(
    { weight: 4, arbitrary: hostileString() },
    { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 3 }) },
    { weight: 1, arbitrary: fc.constantFrom(undefined, null, true, false, 0, -1, 2 ** 63, 1e308, -0.5, [], {}) },
    { weight: 1, arbitrary: fc.bigInt({ min: 2n ** 63n, max: 2n ** 80n }).map((n) => Number(n)) },
  );
}

/** The refusals a namespace's adapter announces, collected per node. */
function collectRefusals(cluster: Cluster, nsp: string): string[] {
  const reasons: string[] = [];
  for (const node of cluster.nodes) {
    node.io.of(nsp).adapter.on("restore-refused", ({ reason }: { reason: string }) => reasons.push(reason));
  }
  return reasons;
}

/** The original client of `old` comes back and gets its session, data and a missed event. */
async function expectStillRestorable(cluster: Cluster, old: Prepared, nsp: string): Promise<void> {
  const pool = cluster.node(0).pool;
  const head = await logHead(pool, nsp);
  const got = recordEvents(old.socket);
  cluster.node(0).io.of(nsp).to("secret-room").emit("ev", { n: "after" });
  await waitForHeadAbove(cluster, nsp, head);
  expect(await comeBack(old.socket, cluster.node(1))).toBe(true);
  expect(old.socket.id).toBe(old.sid);
  const who = await whoami(old.socket);
  expect(who.data).toEqual({ secret: "s3cr3t" });
  await waitFor(() => got.length >= 1);
  expect(got[0]!.args[0]).toEqual({ n: "after" });
}

async function waitForHeadAbove(cluster: Cluster, nsp: string, head: number): Promise<void> {
  await waitFor(async () => (await logHead(cluster.node(0).pool, nsp)) > head);
}

/**
 * Sends a CONNECT packet for "/" with the raw JSON `payload` over a websocket
 * and resolves with the server's answer (`{ sid, pid }`, or an error).
 */
async function rawConnect(url: string, payload: string): Promise<{ sid?: string; pid?: string; message?: string }> {
  const ws = new WebSocket(`${url.replace("http", "ws")}/socket.io/?EIO=4&transport=websocket`);
  try {
    return await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no answer to the raw CONNECT")), 8000);
      ws.on("error", reject);
      ws.on("close", () => reject(new Error("closed before answering")));
      ws.on("message", (data) => {
        const text = String(data);
        if (text.startsWith("0")) ws.send(`40${payload}`); // engine.io open: send our CONNECT
        if (text.startsWith("40") || text.startsWith("44")) {
          clearTimeout(timer);
          resolve(JSON.parse(text.slice(2)) as { sid?: string; pid?: string; message?: string });
        }
        if (text === "2") ws.send("3"); // answer pings
      });
    });
  } finally {
    ws.terminate();
  }
}

describe("hostile handshakes", () => {
  it("any pid and offset of any JSON type gets a fresh session and leaves real sessions intact (property)", async () => {
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 2,
      namespaces: ["/a"],
      // A string pid that matches nothing waits this long for a session being written: keep runs quick.
      adapter: { sessionWaitMs: 50 },
    });
    // History before the sessions, so that "too old" offsets exist.
    for (let i = 0; i < 3; i++) cluster.node(0).io.emit("ev", { n: i });
    await waitForHeadAbove(cluster, "/", 2);
    const mine = await prepare(cluster, "/");
    const other = await prepare(cluster, "/a");
    const head = await logHead(cluster.node(0).pool, "/");
    const refusals = collectRefusals(cluster, "/");
    let restoreCalls = 0;

    const offsets = fc.oneof(
      { weight: 3, arbitrary: hostileValue() },
      // Well-formed offsets: the session's own, from the future, from long ago.
      { weight: 1, arbitrary: fc.constant(mine.offset) },
      { weight: 1, arbitrary: fc.integer({ min: 1, max: 1_000_000 }).map((k) => `o${head + k}`) },
      { weight: 1, arbitrary: fc.integer({ min: 0, max: head }).map((n) => `o${n}`) },
    );
    const pids = fc.oneof(
      { weight: 4, arbitrary: hostileValue() },
      // Another namespace's real pid, and near misses of this namespace's.
      { weight: 1, arbitrary: fc.constant(other.pid) },
      { weight: 1, arbitrary: fc.constantFrom(mine.pid.toUpperCase(), mine.pid.slice(1), `${mine.pid} `, `${mine.pid}\u0000`) },
    );

    await fc.assert(
      fc.asyncProperty(pids, offsets, fc.nat(1), async (pid, offset, node) => {
        fc.pre(pid !== mine.pid); // the one pid that may restore (a near miss is not it)
        const auth: Record<string, unknown> = {};
        if (pid !== undefined) auth.pid = pid;
        if (offset !== undefined) auth.offset = offset;
        const before = refusals.length;
        const result = await present(cluster, node, auth);
        try {
          expect(result.recovered).toBe(false);
          expect(result.who.recovered).toBe(false);
          expect([mine.sid, other.sid]).not.toContain(result.who.id);
          expect(result.who.rooms).toEqual([result.who.id]);
          expect(result.who.data).toEqual({});
          // Socket.IO asks the adapter only when both are strings; the adapter then announces why it refused.
          const asked = typeof pid === "string" && typeof offset === "string";
          if (asked) restoreCalls++;
          expect(refusals.length - before).toBe(asked ? 1 : 0);
          if (asked && pid.length >= 8) expect(refusals.at(-1)).not.toContain(pid);
        } finally {
          cluster.closeClient(result.socket);
        }
      }),
      { numRuns: 80, seed: SEED, endOnFailure: true },
    );

    // The property exercised the adapter's refusal path, not only Socket.IO's type check.
    expect(restoreCalls).toBeGreaterThan(10);
    // Nothing was taken from the real sessions: both come back, in their own namespaces.
    await expectStillRestorable(cluster, mine, "/");
    await expectStillRestorable(cluster, other, "/a");
    await expectHealthy(cluster);
    expect(cluster.nodes.flatMap((n) => n.errors).map(String)).toEqual([]);
  });

  it("a real pid with any offset but its own valid ones is refused (property)", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: { sessionWaitMs: 50 } });
    for (let i = 0; i < 3; i++) cluster.node(0).io.emit("ev", { n: i });
    await waitForHeadAbove(cluster, "/", 2);
    let sessions = 0;

    const offsets = fc.oneof(
      { weight: 2, arbitrary: hostileValue() },
      // Offsets from the future and from before the session started, as the client would format them.
      { weight: 2, arbitrary: fc.integer({ min: 1, max: 2 ** 40 }).map((k) => ({ ahead: k })) },
      { weight: 1, arbitrary: fc.integer({ min: 1, max: 3 }).map((k) => ({ behind: k })) },
    );

    await fc.assert(
      fc.asyncProperty(offsets, fc.nat(1), async (spec, node) => {
        const old = await prepare(cluster, "/");
        sessions++;
        const own = parseOffset(old.offset)!;
        let offset: unknown = spec;
        if (typeof spec === "object" && spec !== null && "ahead" in spec) offset = `o${own + (spec as { ahead: number }).ahead}`;
        if (typeof spec === "object" && spec !== null && "behind" in spec) offset = `o${own - (spec as { behind: number }).behind}`;
        // The session's range is [floor, last] = [own, own] here: that one value is valid.
        fc.pre(offset !== old.offset);
        const auth: Record<string, unknown> = { pid: old.pid };
        if (offset !== undefined) auth.offset = offset;
        const result = await present(cluster, node, auth);
        try {
          expect(result.recovered).toBe(false);
          expect(result.who.id).not.toBe(old.sid);
          expect(result.who.data).toEqual({});
          expect(result.who.rooms).toEqual([result.who.id]);
        } finally {
          cluster.closeClient(result.socket);
          cluster.closeClient(old.socket);
        }
      }),
      { numRuns: 25, seed: SEED, endOnFailure: true },
    );

    expect(sessions).toBeGreaterThan(10);
    await expectHealthy(cluster);
    expect(cluster.nodes.flatMap((n) => n.errors).map(String)).toEqual([]);
  });

  it("deeply nested values in the handshake are harmless", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: { sessionWaitMs: 50 } });
    const old = await prepare(cluster, "/");
    // Written as text: socket.io-client itself overflows its stack encoding such a value.
    const depth = 100_000;
    const deepPid = `${"[".repeat(depth)}${JSON.stringify(old.pid)}${"]".repeat(depth)}`;
    const deepOffset = `${'{"o":'.repeat(depth)}${JSON.stringify(old.offset)}${"}".repeat(depth)}`;
    for (const payload of [
      `{"pid":${deepPid},"offset":${JSON.stringify(old.offset)}}`,
      `{"pid":${JSON.stringify(old.pid)},"offset":${deepOffset}}`,
    ]) {
      const reply = await rawConnect(cluster.node(1).url, payload);
      expect(reply.sid).toEqual(expect.any(String)); // a fresh session
      expect(reply.sid).not.toBe(old.sid);
      expect(reply.pid).not.toBe(old.pid); // the server hands out the presented pid only when it restores
    }
    // Neither attempt reached the adapter (not strings), so the session is still there.
    await expectStillRestorable(cluster, old, "/");
    await expectHealthy(cluster);
  });

  it("a handshake larger than maxHttpBufferSize closes that connection only", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, server: { maxHttpBufferSize: 100_000 } });
    const old = await prepare(cluster, "/");
    const socket = cluster.client(1, { auth: { pid: old.pid, offset: "o".repeat(200_000) }, autoConnect: false });
    socket.io.reconnection(false);
    const closed = Promise.race([once(socket, "disconnect", 8000), once(socket, "connect_error", 8000)]);
    socket.connect();
    await closed;
    expect(socket.connected).toBe(false);
    cluster.closeClient(socket);
    // The packet was refused before Socket.IO parsed it: the session was not even looked up.
    await expectStillRestorable(cluster, old, "/");
    await expectHealthy(cluster);
  });
});
