/**
 * The log's central promise, checked at the SQL level: with several writers
 * on separate pools appending concurrently, offsets are dense (1..N, no gap,
 * no repeat), every batch's rows are consecutive, and the NOTIFYs arrive in
 * offset order, i.e. commit order equals offset order.
 */
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFinished } from "vitest";
import { decodeBatchFromNotify, decodePacket, encodeBatchForNotify, encodePacket } from "../src/codec.js";
import { LogQueries } from "../src/sql/log-queries.js";
import { createTestDatabase, type TestDatabase } from "./helpers/database.js";

const CHANNEL = "test:log-ordering";
const WRITERS = 4;
const BATCHES_PER_WRITER = 60;

describe("log ordering", () => {
  let db: TestDatabase;
  const pools: pg.Pool[] = [];
  const clients: pg.Client[] = [];
  /** Errors of idle pooled connections and of the LISTEN client (none expected while tests run). */
  const connectionErrors: Error[] = [];

  /** A pool of this file, ended in afterAll; an idle connection's error is recorded, never unhandled. */
  function newPool(max: number): pg.Pool {
    const pool = new pg.Pool({ connectionString: db.url, max });
    pool.on("error", (err) => connectionErrors.push(err));
    pools.push(pool);
    return pool;
  }

  beforeAll(async () => {
    db = await createTestDatabase("log_ordering", { migrated: true });
  });

  afterEach(() => {
    expect(connectionErrors.map(String)).toEqual([]);
  });

  afterAll(async () => {
    // Everything of ours ends before the database is dropped: DROP ... WITH (FORCE) terminates
    // what is left, which an idle connection would report as an error.
    await Promise.all(clients.map((c) => c.end().catch(() => undefined)));
    await Promise.all(pools.map((p) => p.end()));
    await db?.drop();
  });

  it("assigns dense offsets in commit order to concurrent writers, and NOTIFYs in that order", async () => {
    const listener = new pg.Client({ connectionString: db.url });
    listener.on("error", (err) => connectionErrors.push(err));
    clients.push(listener);
    await listener.connect();
    const notified: Array<{ from: number; count: number; inline: string }> = [];
    listener.on("notification", (msg) => {
      const [, from, count, inline] = (msg.payload ?? "").split("|");
      notified.push({ from: Number(from), count: Number(count), inline: inline ?? "" });
    });
    await listener.query(`LISTEN "${CHANNEL}"`);

    const writers = Array.from({ length: WRITERS }, (_, i) => {
      const pool = newPool(2);
      // Half the writers append through the prepared statement, half without (preparedStatements: false).
      return new LogQueries(pool, "socket_io", { preparedStatements: i % 2 === 0 });
    });
    const { id } = await writers[0]!.namespace("/ordering");
    await Promise.all(writers.map((log, writer) => log.registerWriter(`writer-${writer}`, id)));

    const appended: Array<{ writer: number; batch: number; from: number; size: number }> = [];
    await Promise.all(
      writers.map(async (log, writer) => {
        for (let batch = 0; batch < BATCHES_PER_WRITER; batch++) {
          const size = 1 + ((writer + batch) % 7);
          const payloads = Array.from({ length: size }, (_, i) =>
            encodePacket({ data: ["e", writer, batch, i], rooms: [], except: [] }),
          );
          // Every other batch inline, the others by range only, as the adapter does by size.
          const inline = batch % 2 === 0 ? "" : encodeBatchForNotify(payloads);
          const { from, appliedBefore } = await log.append(id, `writer-${writer}`, batch + 1, payloads, CHANNEL, inline);
          expect(appliedBefore).toBe(false);
          appended.push({ writer, batch, from, size });
        }
      }),
    );

    const total = appended.reduce((n, a) => n + a.size, 0);
    // Dense: the batches tile 1..total exactly.
    const tiles = [...appended].sort((x, y) => x.from - y.from);
    let next = 1;
    for (const t of tiles) {
      expect(t.from).toBe(next);
      next += t.size;
    }
    expect(next - 1).toBe(total);

    // Rows match: each offset holds the packet its writer put there.
    const { entries } = await writers[0]!.range(id, 0, undefined, total + 10);
    expect(entries.map((e) => e.offset)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    for (const t of tiles) {
      for (let i = 0; i < t.size; i++) expect(entries[t.from - 1 + i]!.data).toEqual(["e", t.writer, t.batch, i]);
    }

    // NOTIFYs arrive in commit order, which is offset order: gap-free ranges.
    const deadline = Date.now() + 10_000;
    while (notified.reduce((n, x) => n + x.count, 0) < total && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    let expected = 1;
    for (const n of notified) {
      expect(n.from).toBe(expected);
      if (n.inline !== "") {
        const inlined = decodeBatchFromNotify(n.inline).map((p, i) => decodePacket(n.from + i, p));
        expect(inlined.map((e) => e.data)).toEqual(entries.slice(n.from - 1, n.from - 1 + n.count).map((e) => e.data));
      }
      expected += n.count;
    }
    expect(expected - 1).toBe(total);
  });

  it("does not log a batch twice when a retry follows an attempt that committed", async () => {
    const pool = newPool(2);
    const log = new LogQueries(pool, "socket_io");
    const { id } = await log.namespace("/idempotent");
    await log.registerWriter("w-retry", id);
    const payloads = [encodePacket({ data: ["a"], rooms: [], except: [] }), encodePacket({ data: ["b"], rooms: [], except: [] })];

    const first = await log.append(id, "w-retry", 1, payloads, CHANNEL, "");
    const retry = await log.append(id, "w-retry", 1, payloads, CHANNEL, "");
    expect(first).toEqual({ from: 1, appliedBefore: false });
    expect(retry).toEqual({ from: 1, appliedBefore: true });
    const next = await log.append(id, "w-retry", 2, payloads.slice(0, 1), CHANNEL, "");
    expect(next).toEqual({ from: 3, appliedBefore: false });

    const { rows } = await pool.query<{ head: string; n: string }>(
      `SELECT (SELECT head FROM socket_io.namespaces WHERE id = $1)::text AS head,
              (SELECT count(*) FROM socket_io.log_entries WHERE namespace_id = $1)::text AS n`,
      [id],
    );
    expect(rows[0]).toEqual({ head: "3", n: "3" });
  });

  it("waits for an earlier attempt still running on the server and then skips the batch", async () => {
    const pool = newPool(3);
    const log = new LogQueries(pool, "socket_io");
    const { id } = await log.namespace("/in-flight");
    await log.registerWriter("w-inflight", id);
    const payloads = [encodePacket({ data: ["only once"], rooms: [], except: [] })];

    // The first attempt runs inside a transaction that has not committed yet,
    // as when the client's connection died while the server kept going.
    const first = await pool.connect();
    // Ends the connection if the test fails before COMMIT (a client still checked out would stall pool.end()).
    onTestFinished(() => first.release(true));
    await first.query("BEGIN");
    const firstResult = await new LogQueries(first, "socket_io").append(id, "w-inflight", 1, payloads, CHANNEL, "");
    expect(firstResult.appliedBefore).toBe(false);

    let retrySettled = false;
    const retry = (async () => {
      await log.registerWriter("w-inflight", id);
      return log.append(id, "w-inflight", 1, payloads, CHANNEL, "");
    })().finally(() => (retrySettled = true));
    // The retry must be blocked on the writer's row (a lock wait), not racing ahead.
    const deadline = Date.now() + 10_000;
    let waiting = 0;
    while (waiting === 0 && Date.now() < deadline) {
      const { rows } = await pool.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
      );
      waiting = rows[0]!.n;
    }
    expect(waiting).toBe(1);
    expect(retrySettled).toBe(false);
    await first.query("COMMIT");

    expect(await retry).toEqual({ from: firstResult.from, appliedBefore: true });
    const { rows } = await pool.query<{ n: string }>(
      "SELECT count(*)::text AS n FROM socket_io.log_entries WHERE namespace_id = $1",
      [id],
    );
    expect(rows[0]!.n).toBe("1");
  });
});

