/**
 * The sequencer's catch-up against a real log table: each row is read once
 * (not re-read from the cursor after every delivery slice), and what waits
 * ahead of the cursor stays within its bounds without losing an entry.
 */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodePacket, type LogEntry } from "../src/codec.js";
import { Sequencer, type SequencerOptions } from "../src/sequencer.js";
import { LogQueries } from "../src/sql/log-queries.js";
import { createTestDatabase, type TestDatabase } from "./helpers/database.js";

let db: TestDatabase;
let pool: pg.Pool;
let log: LogQueries;

beforeAll(async () => {
  db = await createTestDatabase("sequencer_bounds", { migrated: true });
  pool = new pg.Pool({ connectionString: db.url, max: 4 });
  log = new LogQueries(pool, "socket_io");
});

afterAll(async () => {
  await pool?.end();
  await db?.drop();
});

/** Appends `count` entries to a new namespace in batches of 1000; returns its id. */
async function backlog(name: string, count: number, payloadBytes = 8): Promise<number> {
  const { id } = await log.namespace(name);
  const writerId = `writer:${name}`;
  await log.registerWriter(writerId, id);
  const filler = "x".repeat(payloadBytes);
  for (let batch = 1, done = 0; done < count; batch++) {
    const n = Math.min(1000, count - done);
    const payloads = Array.from({ length: n }, (_, i) => encodePacket({ data: ["ev", done + i + 1, filler], rooms: [], except: [] }));
    await log.append(id, writerId, batch, payloads, "sequencer_bounds_unused", "");
    done += n;
  }
  return id;
}

/** Some work per delivered entry, so that delivery is cut into slices as with real sockets. */
function busyDeliver(sink: number[]): (entry: LogEntry) => void {
  return (entry) => {
    let h = 0;
    for (let i = 0; i < 20_000; i++) h = (h * 31 + i) | 0;
    if (h === 42) sink.push(-1);
    sink.push(entry.offset);
  };
}

interface Harness {
  sequencer: Sequencer;
  delivered: number[];
  rowsRead: () => number;
  errors: Error[];
}

function harness(namespaceId: number, overrides: Partial<SequencerOptions> = {}): Harness {
  const delivered: number[] = [];
  const errors: Error[] = [];
  let rows = 0;
  const sequencer = new Sequencer({
    gapFillDelayMs: 20,
    recentEntries: 1000,
    readBatchSize: 5000,
    maxBufferedEntries: 20_000,
    maxBufferedBytes: 64 * 1024 * 1024,
    deliver: busyDeliver(delivered),
    read: async (after, upTo, limit, maxBytes) => {
      const { entries } = await log.range(namespaceId, after, upTo, limit, maxBytes);
      rows += entries.length;
      return entries;
    },
    onError: (err) => errors.push(err),
    ...overrides,
  });
  return { sequencer, delivered, rowsRead: () => rows, errors };
}

async function until(condition: () => boolean, what: () => string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what()}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function expectDense(delivered: number[], from: number, to: number): void {
  expect(delivered.length).toBe(to - from + 1);
  for (let i = 0; i < delivered.length; i++) {
    if (delivered[i] !== from + i) throw new Error(`delivered[${i}] is ${delivered[i]}, expected ${from + i}`);
  }
}

describe("sequencer catch-up", () => {
  it("reads each row of a 100,000-entry backlog once", async () => {
    const count = 100_000;
    const id = await backlog("/catch-up", count);
    const h = harness(id);
    h.sequencer.start(0);
    h.sequencer.catchUp();
    await until(() => h.sequencer.cursor === count, () => `cursor ${h.sequencer.cursor} to reach ${count}`);
    h.sequencer.close();
    expectDense(h.delivered, 1, count);
    // Before: every read after a slice re-read up to 5,000 rows from the new cursor (about 50x).
    console.log(`rows read for a ${count}-entry backlog: ${h.rowsRead()}`);
    expect(h.rowsRead()).toBeLessThanOrEqual(count + 5000);
  });

  it("holds at most maxBufferedEntries ahead of the cursor and reads the rest from the table, losing nothing", async () => {
    const count = 30_000;
    const id = await backlog("/ahead-entries", count);
    const all = (await log.range(id, 0, undefined, count)).entries;
    const h = harness(id, { maxBufferedEntries: 1000 });
    h.sequencer.start(0);
    // NOTIFY payloads of everything but the first entry: the cursor cannot move until 1 is read.
    h.sequencer.offer(all.slice(1));
    expect(h.sequencer.aheadCount).toBeLessThanOrEqual(1000);
    expect(h.errors.some((e) => /ahead of its cursor/.test(e.message))).toBe(true);
    let peak = 0;
    await until(
      () => {
        peak = Math.max(peak, h.sequencer.aheadCount);
        return h.sequencer.cursor === count;
      },
      () => `cursor ${h.sequencer.cursor} to reach ${count}`,
    );
    h.sequencer.close();
    expectDense(h.delivered, 1, count);
    expect(peak).toBeLessThanOrEqual(1000);
  });

  it("bounds what waits ahead by bytes too (maxBufferedBytes), one entry always fitting", async () => {
    const count = 3000;
    const id = await backlog("/ahead-bytes", count, 1000);
    const all = (await log.range(id, 0, undefined, count)).entries;
    const h = harness(id, { maxBufferedBytes: 100_000 });
    h.sequencer.start(0);
    h.sequencer.offer(all.slice(1));
    expect(h.sequencer.aheadBytes).toBeLessThanOrEqual(100_000 + 2000);
    let peak = 0;
    await until(
      () => {
        peak = Math.max(peak, h.sequencer.aheadBytes);
        return h.sequencer.cursor === count;
      },
      () => `cursor ${h.sequencer.cursor} to reach ${count}`,
    );
    h.sequencer.close();
    expectDense(h.delivered, 1, count);
    // One entry may go over (a read returns the row that crosses the bound).
    expect(peak).toBeLessThanOrEqual(100_000 + 2000);
  });

  it("is idle only once its catch-up delivered everything committed (no read under way or scheduled between batches, bounds and slices)", async () => {
    const count = 12_000;
    const id = await backlog("/idle", count);
    let reads = 0;
    let readsDone = 0;
    // Bounded ahead (each read stops at 3,000 and delivery resumes it) and cut into slices (busyDeliver).
    const h = harness(id, {
      readBatchSize: 2000,
      maxBufferedEntries: 3000,
      read: async (after, upTo, limit, maxBytes) => {
        reads++;
        try {
          return (await log.range(id, after, upTo, limit, maxBytes)).entries;
        } finally {
          readsDone++;
        }
      },
    });
    expect(h.sequencer.idle).toBe(false); // not started
    h.sequencer.start(0);
    h.sequencer.catchUp();
    expect(h.sequencer.idle).toBe(false); // its read is scheduled
    // Looked at on every turn of the event loop: idle must not show while a read is pending or the cursor short.
    const seenIdle: Array<{ cursor: number | undefined; pending: number }> = [];
    const deadline = Date.now() + 60_000;
    while (!(h.sequencer.idle && h.sequencer.cursor === count) && Date.now() < deadline) {
      if (h.sequencer.idle) seenIdle.push({ cursor: h.sequencer.cursor, pending: reads - readsDone });
      await new Promise((resolve) => setImmediate(resolve));
    }
    h.sequencer.close();
    expect(seenIdle).toEqual([]);
    expect(h.sequencer.cursor).toBe(count);
    expect(reads - readsDone).toBe(0);
    expect(reads).toBeGreaterThan(3); // the path went through several reads
    expectDense(h.delivered, 1, count);
  });
});
