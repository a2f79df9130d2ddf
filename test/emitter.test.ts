/**
 * Emitting from outside the nodes (createEmitter, the SQL function emit()):
 * events are logged like any node's broadcast, delivered live and replayed on
 * recovery; an event emitted in a transaction exists if and only if the
 * transaction commits; a transaction held open stalls nobody.
 */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { createEmitter } from "../src/index.js";
import { beginLockingTransaction, StagingQueries } from "../src/sql/staging-queries.js";
import {
  Cluster,
  comeBack,
  dropConnection,
  goOffline,
  logHead,
  moveTo,
  offsetNumber,
  recordEvents,
  recoveryFields,
  serverNoticed,
  waitFor,
  waitForSession,
  type Received,
} from "./helpers/cluster.js";
import { History, logOffsets, type ClientHandle } from "./helpers/history.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("emitter");
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** A pool for the emitter or the application (ended at the end of the test). */
async function withPool<T>(fn: (pool: pg.Pool) => Promise<T>): Promise<T> {
  const pool = new pg.Pool({ connectionString: db.url, max: 4 });
  pool.on("error", () => {});
  try {
    return await fn(pool);
  } finally {
    await pool.end();
  }
}

/** Runs test/fixtures/emitter-process.ts in a child process (bounded) and resolves with its output. */
function runEmitterProcess(work: Record<string, unknown>): Promise<string> {
  const fixture = fileURLToPath(new URL("./fixtures/emitter-process.ts", import.meta.url));
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", fixture, JSON.stringify({ databaseUrl: db.url, ...work })], {
      cwd: fileURLToPath(new URL("..", import.meta.url)),
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    let err = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), 30_000);
    child.on("exit", (code) => {
      clearTimeout(timer);
      if (code === 0) resolve(out);
      else reject(new Error(`emitter process exited with ${code}: ${err}`));
    });
  });
}

/** Ids of the "ev" events received, in order. */
function ids(received: Received[]): string[] {
  return received.filter((r) => r.event === "ev").map((r) => (r.args[0] as { id: string }).id);
}

async function stagedCount(pool: pg.Pool): Promise<number> {
  return (await pool.query<{ n: number }>("SELECT count(*)::int AS n FROM socket_io.staged_events")).rows[0]!.n;
}

describe("emitter", () => {
  it("an emitter in another process: its events reach live clients and are replayed to a recovering one", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const live = await cluster.connect(0, { rooms: ["news"] });
    const away = await cluster.connect(1, { rooms: ["news"] });
    const gotLive = recordEvents(live);
    const gotAway = recordEvents(away);
    const sid = away.id!;
    goOffline(away);
    await serverNoticed(cluster.node(1), sid);
    await waitForSession(cluster.node(0).pool, sid);

    const events = Array.from({ length: 20 }, (_, i) => ({ id: `direct-${i}`, bin: i === 3 ? [1, 2] : undefined }));
    expect(await runEmitterProcess({ rooms: ["news"], events })).toBe("done 20\n");
    // And transactionally, from another process: committed, then rolled back.
    await runEmitterProcess({ rooms: ["news"], events: [{ id: "tx-1" }, { id: "tx-2" }], transaction: "commit" });
    await runEmitterProcess({ rooms: ["news"], events: [{ id: "rolled-back" }], transaction: "rollback" });
    cluster.node(1).io.to("news").emit("ev", { id: "after" });

    const expected = [...events.map((e) => e.id), "tx-1", "tx-2", "after"];
    await waitFor(() => gotLive.length === expected.length, { message: () => `live got ${gotLive.length}` });
    expect(ids(gotLive)).toEqual(expected);
    // Offsets are dense and increasing: no gap where the rolled-back event would have been.
    const offsets = gotLive.map((r) => offsetNumber(r.offset));
    expect(offsets).toEqual(offsets.map((_, i) => offsets[0]! + i));

    expect(await comeBack(away, cluster.node(0))).toBe(true);
    await waitFor(() => gotAway.length === expected.length, { message: () => `recovered got ${gotAway.length}` });
    expect(ids(gotAway)).toEqual(expected);
    expect(gotAway.map((r) => r.offset)).toEqual(gotLive.map((r) => r.offset));
    expect(await stagedCount(cluster.node(0).pool)).toBe(0);
    expect(cluster.nodes.flatMap((n) => n.errors)).toEqual([]);
  });

  it("an event emitted in a transaction reaches live and recovering clients only if it commits", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const live = await cluster.connect(0, { rooms: ["user:7"] });
    const away = await cluster.connect(1, { rooms: ["user:7"] });
    const gotLive = recordEvents(live);
    const gotAway = recordEvents(away);
    const sid = away.id!;
    goOffline(away);
    await serverNoticed(cluster.node(1), sid);
    await waitForSession(cluster.node(0).pool, sid);
    const headBefore = await logHead(cluster.node(0).pool);

    await withPool(async (pool) => {
      const emitter = createEmitter(pool);
      await pool.query("CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, item text)");
      const client = await pool.connect();
      try {
        await client.query("BEGIN");
        const { rows } = await client.query<{ id: number }>("INSERT INTO orders (item) VALUES ('book') RETURNING id");
        await emitter.withClient(client).to("user:7").emit("ev", { id: "committed", order: rows[0]!.id, bin: Buffer.from([0, 255]) });
        await client.query("COMMIT");

        await client.query("BEGIN");
        await client.query("INSERT INTO orders (item) VALUES ('lamp')");
        await emitter.withClient(client).to("user:7").emit("ev", { id: "rolled-back" });
        await client.query("ROLLBACK");
      } finally {
        client.release();
      }
      await emitter.to("user:7").emit("ev", { id: "direct" });
      await emitter.close();
    });

    await waitFor(() => gotLive.length === 2, { message: () => `live got ${gotLive.length}` });
    expect(ids(gotLive)).toEqual(["committed", "direct"]);
    // Socket.IO's payload semantics: binary arrives as binary.
    expect(Buffer.from((gotLive[0]!.args[0] as { bin: Uint8Array }).bin)).toEqual(Buffer.from([0, 255]));
    expect(gotLive.map((r) => offsetNumber(r.offset))).toEqual([headBefore + 1, headBefore + 2]);

    expect(await comeBack(away, cluster.node(0))).toBe(true);
    await waitFor(() => gotAway.length === 2, { message: () => `recovered got ${gotAway.length}` });
    expect(ids(gotAway)).toEqual(["committed", "direct"]);
    expect(Buffer.from((gotAway[0]!.args[0] as { bin: Uint8Array }).bin)).toEqual(Buffer.from([0, 255]));
    await sleep(200);
    expect(ids(gotLive)).toEqual(["committed", "direct"]);
    expect(await logHead(cluster.node(0).pool)).toBe(headBefore + 2);
  });

  it("the SQL function emits from a trigger, transactionally", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const socket = await cluster.connect(1, { rooms: ["user:42"] });
    const other = await cluster.connect(0, { rooms: ["user:43"] });
    const got = recordEvents(socket);
    const gotOther = recordEvents(other);
    await withPool(async (pool) => {
      await pool.query(`
        CREATE TABLE IF NOT EXISTS shipments (id serial PRIMARY KEY, user_id int NOT NULL, status text NOT NULL);
        CREATE OR REPLACE FUNCTION shipment_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          PERFORM socket_io.emit('/', 'ev', jsonb_build_array(jsonb_build_object('id', 'shipment-' || NEW.status, 'row', to_jsonb(NEW))),
                                 rooms => ARRAY['user:' || NEW.user_id]);
          RETURN NEW;
        END $$;
        DROP TRIGGER IF EXISTS shipment_changed ON shipments;
        CREATE TRIGGER shipment_changed AFTER INSERT OR UPDATE ON shipments FOR EACH ROW EXECUTE FUNCTION shipment_changed();
      `);
      await pool.query("INSERT INTO shipments (user_id, status) VALUES (42, 'packed')");
      const client = await pool.connect();
      try {
        await client.query("BEGIN");
        await client.query("UPDATE shipments SET status = 'lost' WHERE user_id = 42");
        await client.query("ROLLBACK");
        await client.query("BEGIN");
        await client.query("UPDATE shipments SET status = 'sent' WHERE user_id = 42");
        await client.query("INSERT INTO shipments (user_id, status) VALUES (43, 'packed')");
        await client.query("COMMIT");
      } finally {
        client.release();
      }
    });
    await waitFor(() => got.length === 2 && gotOther.length === 1, { message: () => `got ${got.length} and ${gotOther.length}` });
    expect(ids(got)).toEqual(["shipment-packed", "shipment-sent"]);
    expect(got[1]!.args[0]).toMatchObject({ row: { user_id: 42, status: "sent" } });
    expect(ids(gotOther)).toEqual(["shipment-packed"]);
    // One order: the second transaction's two events are consecutive.
    expect(offsetNumber(gotOther[0]!.offset)).toBe(offsetNumber(got[1]!.offset) + 1);
  });

  it("a transaction held open 5 s stalls no node: their events are delivered meanwhile, the held one after its commit", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
    const watcher = await cluster.connect(0, { rooms: ["all"] });
    const got = recordEvents(watcher);
    await withPool(async (pool) => {
      const emitter = createEmitter(pool);
      const held = await pool.connect();
      try {
        await held.query("BEGIN");
        await emitter.withClient(held).to("all").emit("ev", { id: "held" });
        // The SQL function in the same open transaction, too.
        await held.query(`SELECT socket_io.emit('/', 'ev', '[{"id": "held-sql"}]', rooms => ARRAY['all'])`);
        const openedAt = Date.now();
        let n = 0;
        const deliveredWhileHeld: number[] = [];
        while (Date.now() - openedAt < 5000) {
          cluster.node(n % 2).io.to("all").emit("ev", { id: `node-${n}` });
          // Another emitter's direct emits take the namespace's lock the held transaction never touches.
          if (n % 10 === 0) await emitter.to("all").emit("ev", { id: `direct-${n}` });
          n++;
          await sleep(50);
          deliveredWhileHeld.push(got.length);
        }
        // Events kept arriving during the 5 s: delivery never waited for the open transaction.
        expect(deliveredWhileHeld.at(-1)!).toBeGreaterThan(0.8 * (n + n / 10) - 5);
        expect(deliveredWhileHeld.filter((c, i) => i > 0 && c > deliveredWhileHeld[i - 1]!).length).toBeGreaterThan(50);
        expect(ids(got)).not.toContain("held");
        await held.query("COMMIT");
      } finally {
        held.release();
      }
      await emitter.close();
    });
    await waitFor(() => ids(got).includes("held-sql"), { message: "the held events after the commit" });
    const order = ids(got);
    // After everything committed before it, in its own program order.
    expect(order.slice(-2)).toEqual(["held", "held-sql"]);
    const offsets = got.map((r) => offsetNumber(r.offset));
    expect(offsets).toEqual(offsets.map((_, i) => offsets[0]! + i));
  }, 20_000);

  it("emitter as one source among two nodes: 0 lost, duplicated or reordered while clients drop and recover", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, maxDisconnectionDuration: 30_000 });
    const history = new History();
    const rooms = ["r0", "r1", "r2"];
    const clients: ClientHandle[] = [];
    for (let i = 0; i < 12; i++) {
      const mine = rooms.filter((_, k) => (i + k) % 2 === 0);
      const socket = cluster.client(i % 2, { rooms: mine, reconnectionDelay: i % 3 === 0 ? 0 : 40 });
      clients.push(history.watch(socket, `c${i}`, mine));
    }
    await waitFor(() => clients.every((c) => c.socket.connected && recoveryFields(c.socket)._lastOffset !== undefined), {
      timeout: 10_000,
    });
    await withPool(async (pool) => {
      const emitter = createEmitter(pool);
      let running = 3;
      const nodeSource = async (i: number) => {
        for (let k = 0; k < 150; k++) {
          history.emit(cluster.node(i).io, k % 3 === 0 ? {} : { rooms: [rooms[k % 3]!] }, cluster.node(i).name);
          await sleep(4);
        }
        running--;
      };
      const emitterSource = async () => {
        const client = await pool.connect();
        try {
          for (let k = 0; k < 150; k++) {
            const target = { rooms: [rooms[k % 3]!], except: k % 5 === 0 ? [rooms[(k + 1) % 3]!] : [] };
            let op = emitter.to(target.rooms);
            if (target.except.length > 0) op = op.except(target.except);
            if (k % 4 === 0) {
              // In a transaction; every third one is rolled back and must never be seen.
              await client.query("BEGIN");
              const rolledBack = k % 12 === 0;
              const id = rolledBack ? `ev:rolled-back:${k}` : history.record(target, "emitter-tx").id;
              await op.withClient(client).emit("ev", { id });
              await client.query(rolledBack ? "ROLLBACK" : "COMMIT");
            } else {
              // Not awaited: program order and group commit are the emitter's job.
              void op.emit("ev", { id: history.record(target, "emitter").id });
            }
            await sleep(4);
          }
        } finally {
          client.release();
        }
        running--;
      };
      const chaos = async () => {
        let k = 0;
        while (running > 0) {
          await sleep(60);
          const c = clients[k++ % clients.length]!;
          if (!c.socket.connected) continue;
          moveTo(c.socket, cluster.node(k % 2));
          dropConnection(c.socket);
        }
      };
      await Promise.all([nodeSource(0), nodeSource(1), emitterSource(), chaos()]);
      await emitter.close();
    });
    await waitFor(() => clients.every((c) => c.socket.connected), { timeout: 15_000, message: "every client back" });
    const lookup = () => logOffsets(cluster.node(0).pool);
    await history.settle({ timeout: 20_000, lookup });
    history.assertClean({ lookup: await lookup() });
    expect(history.stats().recoveries).toBeGreaterThan(5);
    expect(history.stats().refusals).toBe(0);
    const received = clients.flatMap((c) => c.tracks.flatMap((t) => t.received.map((r) => r.id ?? "")));
    expect(received.filter((id) => id.startsWith("ev:rolled-back"))).toEqual([]);
  }, 60_000);

  it("a process frozen inside a move (holding the namespace's lock) stalls the namespace's writers only briefly: Postgres ends its session", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
    const socket = await cluster.connect(0);
    const got = recordEvents(socket);
    await withPool(async (pool) => {
      const frozen = await pool.connect();
      frozen.on("error", () => {});
      const staging = new StagingQueries("socket_io");
      await beginLockingTransaction(frozen);
      expect(await staging.lockNamespace(frozen, "/")).toBeTypeOf("number");
      // The move's process stops here. The node's append waits for the lock, then goes through.
      cluster.node(0).io.emit("ev", { id: "after-the-freeze" });
      await waitFor(() => got.length === 1, { timeout: 10_000, message: "the node's event despite the frozen move" });
      const outcome = await frozen.query("SELECT 1").then(
        () => "still open",
        (err: { code?: string }) => err.code ?? "closed",
      );
      expect(outcome).not.toBe("still open");
      frozen.release(true);
    });
  });

  it("events staged with no node running wait, and the first node serving their namespace logs them", async () => {
    await withPool(async (pool) => {
      const emitter = createEmitter(pool);
      const client = await pool.connect();
      try {
        await client.query("BEGIN");
        await emitter.withClient(client).emit("ev", { id: "while-down" });
        await emitter.of("/dyn-later").withClient(client).emit("ev", { id: "dynamic" });
        await client.query("COMMIT");
      } finally {
        client.release();
      }
      await emitter.close();
      expect(await stagedCount(pool)).toBe(2);
      const head = await logHead(pool);

      const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
      await waitFor(async () => (await logHead(pool)) === head + 1, { message: "the node to log the staged event of /" });
      // The dynamic namespace's event waits for a node to serve it.
      expect(await stagedCount(pool)).toBe(1);
      await cluster.connect(0, { nsp: "/dyn-later" });
      await waitFor(async () => (await stagedCount(pool)) === 0, { message: "the staged event of /dyn-later" });
      expect(await logHead(pool, "/dyn-later")).toBe(1);
      await cluster.close();
    });
  });

  it("prunes staged events no node logged within the longest retention, and keeps younger ones", async () => {
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 1,
      maxDisconnectionDuration: 1000,
      adapter: { retentionMarginMs: 0, pruneIntervalMs: 200 },
    });
    const pool = cluster.node(0).pool;
    // Retention is only ever raised: earlier tests of this file stored longer ones.
    await pool.query("UPDATE socket_io.namespaces SET retention_ms = 1000");
    await pool.query(`SELECT socket_io.emit('/dyn-nobody', 'ev', '[{"id": "old"}]')`);
    await pool.query("UPDATE socket_io.staged_events SET created_at = now() - interval '1 hour'");
    await pool.query(`SELECT socket_io.emit('/dyn-nobody', 'ev', '[{"id": "young"}]')`);
    await waitFor(async () => (await stagedCount(pool)) === 1, { message: "the old staged event to be pruned" });
    const { rows } = await pool.query<{ id: string }>("SELECT packet->0->1->>'id' AS id FROM socket_io.staged_events");
    expect(rows).toEqual([{ id: "young" }]);
    await waitFor(async () => {
      const r = await pool.query<{ result: string }>("SELECT last_result AS result FROM socket_io.maintenance WHERE task = 'prune'");
      return JSON.parse(r.rows[0]?.result ?? "{}").stagedEvents === 1;
    });
    await pool.query("DELETE FROM socket_io.staged_events");
  });

  it("refuses bad arguments with clear errors, in SQL and in JS", async () => {
    await withPool(async (pool) => {
      const refusal = async (sql: string) => {
        try {
          await pool.query(sql);
          return "accepted";
        } catch (err) {
          return `${(err as { code?: string }).code}: ${(err as Error).message}`;
        }
      };
      expect(await refusal(`SELECT socket_io.emit('admin', 'ev')`)).toMatch(/^22023: socket_io\.emit: nsp must be a namespace name starting with "\/"/);
      expect(await refusal(`SELECT socket_io.emit(NULL, 'ev')`)).toMatch(/^22023: .*nsp must be .*got NULL/);
      expect(await refusal(`SELECT socket_io.emit('/', NULL)`)).toMatch(/^22023: .*event must be a non-empty event name/);
      expect(await refusal(`SELECT socket_io.emit('/', 'disconnect')`)).toMatch(/^22023: .*"disconnect" is a reserved event name/);
      expect(await refusal(`SELECT socket_io.emit('/', 'ev', '{"a": 1}')`)).toMatch(/^22023: .*args must be a JSON array .*got object/);
      expect(await refusal(`SELECT socket_io.emit('/', 'ev', NULL)`)).toMatch(/^22023: .*args must be a JSON array .*got NULL/);
      expect(await refusal(`SELECT socket_io.emit('/', 'ev', '[{"a": {"__proto__": 1}}]')`)).toMatch(/^22023: .*"__proto__"/);
      expect(await refusal(`SELECT socket_io.emit('/', 'ev', '[]', rooms => NULL)`)).toMatch(/^22023: .*not NULL/);
      expect(await refusal(`SELECT socket_io.emit('/', 'ev', '[]', rooms => ARRAY['a', NULL])`)).toMatch(/^22023: .*cannot hold NULL/);
      expect(await refusal(`SELECT socket_io.emit('/', 'ev', '[]', rooms => ARRAY[['a'], ['b']])`)).toMatch(/^22023: .*one-dimensional/);
      expect(await refusal(`SELECT socket_io.emit('/' || repeat('x', 1000), 'ev')`)).toMatch(/^22023: .*1001 bytes long; at most 1000/);
      expect(await stagedCount(pool)).toBe(0);

      const emitter = createEmitter(pool);
      await expect(emitter.emit("connect")).rejects.toThrow('"connect" is a reserved event name');
      await expect(emitter.emit("ev", 1, () => undefined)).rejects.toThrow(/does not support acknowledgements/);
      const cycle: Record<string, unknown> = {};
      cycle.self = cycle;
      await expect(emitter.emit("ev", cycle)).rejects.toThrow(/its arguments do not serialize/);
      await expect(emitter.emit("ev", 1n)).rejects.toThrow(/its arguments do not serialize/);
      await expect(createEmitter(pool, { maxEntryBytes: 1024 }).emit("ev", "x".repeat(2000))).rejects.toThrow(/exceed maxEntryBytes \(1024\)/);
      expect(() => emitter.to(5 as unknown as string)).toThrow(/to\(\) takes room names/);
      expect(() => emitter.withClient({} as pg.PoolClient)).toThrow(/withClient\(\) takes a pg client/);
      expect(() => createEmitter(pool, { heartbeatInterval: 5 } as never)).toThrow(/unknown emitter option "heartbeatInterval"/);
      expect(() => createEmitter(pool, { schema: "no-dash" })).toThrow(/option "schema" must be a Postgres identifier/);
      expect(() => createEmitter({} as pg.Pool)).toThrow(/needs a pg.Pool/);
      await emitter.close();
      expect(await stagedCount(pool)).toBe(0);
    });
  });
});
