/**
 * Gaps at the SQL level (LogQueries.append / reconcile) and in the sequencer,
 * against a real Postgres. Another database incarnation is simulated by
 * writing another `incarnation` on the namespace's row (what a row last moved
 * by another server looks like); test/failover-loss.test.ts does it for real.
 */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodePacket, type LogEntry } from "../src/codec.js";
import { coveredThrough } from "../src/log-gaps.js";
import { Sequencer } from "../src/sequencer.js";
import { LivenessQueries } from "../src/sql/liveness-queries.js";
import { LogQueries } from "../src/sql/log-queries.js";
import { createTestDatabase, type TestDatabase } from "./helpers/database.js";

let db: TestDatabase;
let pool: pg.Pool;
let log: LogQueries;

beforeAll(async () => {
  db = await createTestDatabase("log_gaps", { migrated: true });
  pool = new pg.Pool({ connectionString: db.url, max: 4 });
  log = new LogQueries(pool, "socket_io");
});

afterAll(async () => {
  await pool?.end();
  await db?.drop();
});

/** The gaps after a reconciliation (see LogQueries.reconcile). */
const reconcile = async (id: number, known: number) => (await log.reconcile(id, known)).gaps;

const payload = (n: number) => encodePacket({ data: ["ev", n], rooms: [], except: [] });

/** A namespace with `count` entries; returns its id and an append function. */
async function namespaceWith(name: string, count: number) {
  const { id } = await log.namespace(name);
  const writerId = `writer:${name}`;
  await log.registerWriter(writerId, id);
  let batch = 0;
  const append = (n: number) => log.append(id, writerId, ++batch, Array.from({ length: n }, (_, i) => payload(i)), "log_gaps_unused", "");
  if (count > 0) await append(count);
  return { id, append };
}

/** As if another server had last moved the head (a restart, a failover, an older copy). */
async function anotherIncarnation(id: number): Promise<void> {
  await pool.query(`UPDATE socket_io.namespaces SET incarnation = '2000-01-01' WHERE id = $1`, [id]);
}

/** The database's clock in microseconds plus an hour: where a jump lands. */
async function floorNow(): Promise<number> {
  const { rows } = await pool.query<{ f: string }>(`SELECT ((extract(epoch FROM now()) + 3600) * 1000000)::bigint::text AS f`);
  return Number(rows[0]!.f);
}

describe("LogQueries: the head jumps on another incarnation", () => {
  it("appends densely within one incarnation, without a gap", async () => {
    const { id, append } = await namespaceWith("/same", 3);
    const next = await append(2);
    expect(next).toEqual({ from: 4, appliedBefore: false });
    expect((await log.gapsOf(id)).gaps).toEqual([]);
  });

  it("the first append into another incarnation jumps past the clock floor and records the gap, not lost", async () => {
    const { id, append } = await namespaceWith("/jump", 5);
    await anotherIncarnation(id);
    const before = await floorNow();
    const first = await append(2);
    expect(first.jumpedFrom).toBe(5);
    expect(first.from).toBeGreaterThan(before);
    const gaps = (await log.gapsOf(id)).gaps;
    expect(gaps).toEqual([{ after: 5, through: first.from - 1, lost: false, ageMs: expect.any(Number) }]);
    // The next append is dense again.
    expect(await append(1)).toEqual({ from: first.from + 2, appliedBefore: false });
  });

  it("reconcile: a node whose cursor lies inside a gap marks it lost; one below it does not", async () => {
    const { id, append } = await namespaceWith("/mark", 5);
    await anotherIncarnation(id);
    const { from } = await append(1);
    await reconcile(id, 5);
    // A cursor at the gap's end stepped over it: no evidence either.
    await reconcile(id, from - 1);
    expect(((await log.gapsOf(id)).gaps)[0]!.lost).toBe(false);
    const gaps = await reconcile(id, 42);
    expect(gaps).toEqual([{ after: 5, through: from - 1, lost: true, ageMs: expect.any(Number) }]);
  });

  it("reconcile before any append: a cursor above the head of a new incarnation jumps it and records the gap lost", async () => {
    const { id, append } = await namespaceWith("/before-append", 5);
    await anotherIncarnation(id);
    const gaps = await reconcile(id, 9);
    expect(gaps).toEqual([{ after: 5, through: expect.any(Number), lost: true, ageMs: expect.any(Number) }]);
    const { from, jumpedFrom } = await append(1);
    expect(jumpedFrom).toBeUndefined();
    expect(from).toBe(gaps[0]!.through + 1);
  });

  it("reconcile within one incarnation: a known offset above the head (lost without a restart) jumps past it", async () => {
    const { id, append } = await namespaceWith("/above-head", 5);
    const gaps = await reconcile(id, 8);
    expect(gaps).toEqual([{ after: 5, through: expect.any(Number), lost: true, ageMs: expect.any(Number) }]);
    expect(gaps[0]!.through).toBeGreaterThan(8);
    expect((await append(1)).from).toBe(gaps[0]!.through + 1);
    // Idempotent: the same evidence again changes nothing.
    expect(await reconcile(id, 8)).toEqual(gaps.map((g) => ({ ...g, ageMs: expect.any(Number) })));
  });
});

describe("Sequencer over a gap", () => {
  it("steps over a recorded gap without reporting entries as pruned, and delivers what follows", async () => {
    const { id, append } = await namespaceWith("/deliver", 3);
    await anotherIncarnation(id);
    const { from } = await append(2);
    const delivered: number[] = [];
    const errors: Error[] = [];
    const sequencer = new Sequencer({
      gapFillDelayMs: 20,
      recentEntries: 100,
      readBatchSize: 100,
      maxBufferedEntries: 1000,
      maxBufferedBytes: 1 << 20,
      deliver: (entry: LogEntry) => delivered.push(entry.offset),
      read: async (after, upTo, limit, maxBytes) => (await log.range(id, after, upTo, limit, maxBytes)).entries,
      explainHole: async (after, end, known) => coveredThrough(await reconcile(id, known), after, end),
      onError: (err) => errors.push(err),
    });
    // A node that started before the restart, at head 3: reading on, it finds a hole.
    sequencer.start(3);
    sequencer.catchUp();
    const deadline = Date.now() + 5000;
    while (sequencer.cursor !== from + 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    sequencer.close();
    expect(delivered).toEqual([from, from + 1]);
    expect(errors).toEqual([]);
    // A cursor at the gap's start is no evidence of a loss.
    expect(((await log.gapsOf(id)).gaps)[0]!.lost).toBe(false);
  });

  it("drops what it held inside a gap (entries of the lost history) and goes on after it", () => {
    const delivered: number[] = [];
    const sequencer = new Sequencer({
      gapFillDelayMs: 10_000,
      recentEntries: 100,
      readBatchSize: 100,
      maxBufferedEntries: 1000,
      maxBufferedBytes: 1 << 20,
      deliver: (entry: LogEntry) => delivered.push(entry.offset),
      read: async () => [],
      onError: () => undefined,
    });
    sequencer.start(5);
    const at = (offset: number): LogEntry => ({ offset, bytes: 1, data: ["ev"], rooms: [], except: [] });
    sequencer.offer([at(7), at(9)]); // waiting for 6, which the database lost
    sequencer.skip(5, 100);
    sequencer.offer([at(101), at(102)]);
    sequencer.close();
    expect(delivered).toEqual([101, 102]);
    expect(sequencer.cursor).toBe(102);
  });
});

describe("settling: every live node reconciled with the current database", () => {
  it("counts live nodes whose heartbeat has not reported the current incarnation", async () => {
    const liveness = new LivenessQueries(pool, "socket_io");
    await pool.query("DELETE FROM socket_io.nodes");
    await liveness.register("settle-a", 3000);
    await liveness.register("settle-b", 3000);
    expect(await log.unreconciledNodes()).toBe(2); // registered, not yet reported
    await liveness.heartbeat("settle-a", "*"); // nothing to tell: any database
    const { incarnation } = await log.gapsOf(1);
    await liveness.heartbeat("settle-b", incarnation);
    expect(await log.unreconciledNodes()).toBe(0);
    // Reconciled under another incarnation (the database changed since): not settled; undefined keeps it.
    await pool.query(`UPDATE socket_io.nodes SET reconciled_incarnation = '2000-01-01' WHERE node_id = 'settle-b'`);
    await liveness.heartbeat("settle-b", undefined);
    expect(await log.unreconciledNodes()).toBe(1);
    // A dead node does not count.
    await pool.query(`UPDATE socket_io.nodes SET heartbeat_at = now() - interval '1 minute' WHERE node_id = 'settle-b'`);
    expect(await log.unreconciledNodes()).toBe(0);
  });
});
