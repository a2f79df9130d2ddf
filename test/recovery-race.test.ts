/**
 * Concurrency: several nodes emitting at once while many clients drop and
 * reconnect to random nodes at random moments; and an idle client whose
 * offset is older than the log's retention.
 */
import { describe, expect, it } from "vitest";
import {
  Cluster,
  comeBack,
  dropConnection,
  goOffline,
  logHead,
  moveTo,
  recordEvents,
  recoveryFields,
  serverNoticed,
  waitFor,
  waitForHead,
} from "./helpers/cluster.js";
import { History, logOffsets, type ClientHandle } from "./helpers/history.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("recovery_race");

/** Small seeded PRNG (mulberry32): the same seed gives the same schedule. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("recovery under concurrency", () => {
  it("loses, duplicates and reorders nothing while 3 nodes emit to 2 namespaces and 36 clients drop and move at random", async () => {
    const seed = Number(process.env.RACE_SEED ?? 20240611);
    const random = prng(seed);
    const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!;
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 3, maxDisconnectionDuration: 30_000 });
    const history = new History();
    const rooms = ["r0", "r1", "r2", "r3", "r4"];

    // Two namespaces (one dynamic): their logs are independent, their writers share the nodes.
    const namespaces = ["/", "/dyn-race"];
    const clients: ClientHandle[] = [];
    for (let i = 0; i < 36; i++) {
      const mine = rooms.filter(() => random() < 0.35);
      const node = Math.floor(random() * 3);
      const delay = pick([0, 0, 20, 60, 150]);
      const nsp = i % 4 === 3 ? namespaces[1]! : namespaces[0]!;
      const socket = cluster.client(node, { nsp, rooms: mine, reconnectionDelay: delay });
      clients.push(history.watch(socket, `c${i}`, mine));
    }
    await waitFor(() => clients.every((c) => c.socket.connected && recoveryFields(c.socket)._lastOffset !== undefined), {
      timeout: 10_000,
      message: "all clients connected and primed",
    });

    // Traffic: each node emits bursts to rooms, to all, with except, and to single sockets:
    // a fixed number of packets per node (about 2 s of traffic when the machine is not loaded).
    const perNode = 600;
    let running = 3;
    const emitter = async (nodeIndex: number) => {
      const node = cluster.node(nodeIndex);
      for (let emitted = 0; emitted < perNode; ) {
        const burst = 1 + Math.floor(random() * 3);
        for (let k = 0; k < burst; k++) {
          const nsp = random() < 0.75 ? namespaces[0]! : namespaces[1]!;
          // Some packets are binary, some too large for a NOTIFY payload (read from the table).
          const p = random();
          const extra = p < 0.05 ? { pad: "x".repeat(9000) } : p < 0.1 ? { bin: Buffer.from([k, 0, 255]) } : {};
          emitted++;
          const r = random();
          if (r < 0.55) history.emit(node.io, { nsp, rooms: [pick(rooms)] }, node.name, extra);
          else if (r < 0.7) history.emit(node.io, { nsp }, node.name, extra);
          else if (r < 0.85) history.emit(node.io, { nsp, rooms: [pick(rooms)], except: [pick(rooms)] }, node.name, extra);
          else {
            const target = pick(clients);
            history.emit(node.io, { nsp: target.track.nsp, rooms: [target.track.sid] }, node.name, extra);
          }
        }
        await sleep(3 + Math.floor(random() * 6));
      }
      running--;
    };
    // Chaos: drop a random connected client now and then, sending it to a random node;
    // some stay offline for a while before coming back.
    let drops = 0;
    const chaos = async () => {
      const offline: Promise<unknown>[] = [];
      while (running > 0) {
        await sleep(10 + Math.floor(random() * 30));
        const c = pick(clients);
        if (!c.socket.connected) continue;
        const target = cluster.node(Math.floor(random() * 3));
        drops++;
        if (random() < 0.3) {
          const away = 50 + Math.floor(random() * 400);
          goOffline(c.socket);
          offline.push(sleep(away).then(() => comeBack(c.socket, target, 10_000)));
        } else {
          moveTo(c.socket, target);
          dropConnection(c.socket);
        }
      }
      await Promise.all(offline);
    };
    await Promise.all([emitter(0), emitter(1), emitter(2), chaos()]);

    await waitFor(() => clients.every((c) => c.socket.connected), { timeout: 15_000, message: "every client back" });
    const lookup = () => logOffsets(cluster.node(0).pool);
    await history.settle({ timeout: 20_000, lookup });
    const stats = history.stats();
    if (process.env.RACE_VERBOSE) console.log(`seed ${seed}: ${drops} drops`, stats);
    expect(drops, "the schedule dropped clients").toBeGreaterThan(20);
    expect(stats.emissions).toBeGreaterThanOrEqual(3 * perNode);
    history.assertClean({ lookup: await lookup() });
    // Every reconnection of a valid session must have been recovered.
    const refused = clients.flatMap((c) => c.reconnections.filter((r) => !r.recovered).map(() => c.label));
    expect(refused, `seed ${seed}: ${JSON.stringify(stats)}`).toEqual([]);
    expect(stats.recoveries).toBeGreaterThan(20);
  });

  it("keeps room membership exact while clients join, leave, drop and move during traffic", async () => {
    const random = prng(Number(process.env.RACE_SEED ?? 7));
    const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!;
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 3 });
    const history = new History();
    const rooms = ["j0", "j1", "j2", "j3"];
    const clients: Array<{ handle: ClientHandle; rooms: Set<string> }> = [];
    for (let i = 0; i < 12; i++) {
      const initial = [pick(rooms)];
      const socket = cluster.client(i % 3, { rooms: initial, reconnectionDelay: pick([0, 30]) });
      clients.push({ handle: history.watch(socket, `m${i}`, initial), rooms: new Set(initial) });
    }
    await waitFor(() => clients.every((c) => c.handle.socket.connected && recoveryFields(c.handle.socket)._lastOffset !== undefined), {
      timeout: 10_000,
    });
    let running = clients.length;
    const traffic = async () => {
      while (running > 0) {
        const node = cluster.node(Math.floor(random() * 3));
        history.emit(node.io, { rooms: [pick(rooms)] }, node.name);
        if (random() < 0.2) history.emit(node.io, { rooms: [pick(rooms)], except: [pick(rooms)] }, node.name);
        await sleep(2 + Math.floor(random() * 4));
      }
    };
    const member = async (c: { handle: ClientHandle; rooms: Set<string> }) => {
      for (let step = 0; step < 6; step++) {
        await waitFor(() => c.handle.socket.connected, { timeout: 8000, message: `${c.handle.label} connected` });
        const room = pick(rooms);
        if (c.rooms.has(room)) {
          await history.leave(c.handle, room);
          c.rooms.delete(room);
        } else {
          await history.join(c.handle, room);
          c.rooms.add(room);
        }
        await sleep(Math.floor(random() * 40));
        if (random() < 0.6) {
          moveTo(c.handle.socket, cluster.node(Math.floor(random() * 3)));
          dropConnection(c.handle.socket);
        }
      }
      running--;
    };
    await Promise.all([traffic(), ...clients.map(member)]);
    await waitFor(() => clients.every((c) => c.handle.socket.connected), { timeout: 10_000 });
    const lookup = () => logOffsets(cluster.node(0).pool);
    await history.settle({ timeout: 15_000, lookup });
    history.assertClean({ lookup: await lookup() });
    expect(history.stats().refusals).toBe(0);
    expect(history.stats().recoveries).toBeGreaterThan(10);
  });

  it("recovers an idle client whose offset is older than the retention", async () => {
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 2,
      maxDisconnectionDuration: 1000,
      adapter: { retentionMarginMs: 200, pruneIntervalMs: 200 },
    });
    const pool = cluster.node(0).pool;
    // Pruning keeps the longest retention any node declared (only ever raised): earlier tests of
    // this file declared longer ones. Here the nodes' own retention is the longest.
    await pool.query(`UPDATE socket_io.namespaces SET retention_ms = 1200 WHERE name = '/'`);
    const busy = await cluster.connect(1, { rooms: ["busy"] });
    const gotBusy = recordEvents(busy);
    for (let i = 0; i < 20; i++) cluster.node(1).io.to("busy").emit("ev", { n: i });
    await waitFor(() => gotBusy.length === 20);

    const idle = await cluster.connect(0, { rooms: ["quiet"] });
    const gotIdle = recordEvents(idle);
    const start = Number(recoveryFields(idle)._lastOffset!.slice(1));
    expect(start).toBeGreaterThanOrEqual(20);

    // Traffic elsewhere until every entry up to the idle client's offset is pruned.
    let n = 20;
    let lowest = 0;
    await waitFor(
      async () => {
        for (let k = 0; k < 5; k++) cluster.node(1).io.to("busy").emit("ev", { n: n++ });
        const { rows } = await pool.query<{ low: string | null }>(
          `SELECT min(e."offset")::text AS low FROM socket_io.log_entries e
             JOIN socket_io.namespaces n ON n.id = e.namespace_id WHERE n.name = '/'`,
        );
        lowest = Number(rows[0]?.low ?? 0);
        return lowest > start;
      },
      { timeout: 10_000, interval: 100, message: () => `entries up to o${start} to be pruned (lowest o${lowest})` },
    );
    expect(gotIdle).toEqual([]);
    expect(recoveryFields(idle)._lastOffset).toBe(`o${start}`);

    // It drops now, misses one packet, and recovers on the other node.
    const sid = idle.id!;
    goOffline(idle);
    await serverNoticed(cluster.node(0), sid);
    const head = await logHead(pool);
    cluster.node(1).io.to("quiet").emit("ev", { n: "missed" });
    await waitForHead(pool, head + 1);
    expect(await comeBack(idle, cluster.node(1))).toBe(true);
    expect(idle.id).toBe(sid);
    await waitFor(() => gotIdle.length >= 1);
    cluster.node(0).io.to("quiet").emit("ev", { n: "live" });
    await waitFor(() => gotIdle.length >= 2);
    expect(gotIdle.map((r) => r.args[0])).toEqual([{ n: "missed" }, { n: "live" }]);
  });
});
