/**
 * The session store against a real Postgres: what a restore waits for and
 * what it costs. A take waits for its own session's write, not for the
 * sessions queued after it; a pid nobody is writing costs two takes however
 * long `sessionWaitMs`; a session another node writes during the wait is
 * found when that write is announced (NOTIFY), without polling; a full queue
 * is reported, not silent.
 */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { hashPid, SessionStore } from "../src/session-store.js";
import { SessionQueries, type SessionKey, type SessionRecord, type TakeOutcome } from "../src/sql/session-queries.js";
import { waitFor } from "./helpers/cluster.js";
import { createTestDatabase, type TestDatabase } from "./helpers/database.js";

const CHANNEL = "test:session-store";

/** The real queries, counting the take statements that completed. */
class CountingQueries extends SessionQueries {
  takes = 0;
  /** What SessionStore calls: a take that also says which sessions a live node still holds. */
  override async takeOrWait(keys: ReadonlyArray<SessionKey>): Promise<TakeOutcome[]> {
    const taken = await super.takeOrWait(keys);
    this.takes++;
    return taken;
  }
}

function bounded<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} still pending after ${ms} ms`)), ms).unref()),
  ]);
}

describe("session store", () => {
  let db: TestDatabase;
  const pools: pg.Pool[] = [];
  let namespaceId = 0;

  beforeAll(async () => {
    db = await createTestDatabase("session_store", { migrated: true });
    for (let i = 0; i < 2; i++) pools.push(new pg.Pool({ connectionString: db.url, max: 3 }));
    const { rows } = await pools[0]!.query<{ id: number }>(`INSERT INTO socket_io.namespaces (name) VALUES ('/') RETURNING id`);
    namespaceId = rows[0]!.id;
  });

  afterAll(async () => {
    await Promise.all(pools.map((p) => p.end()));
    await db?.drop();
  });

  const record = (pid: string, sid: string): SessionRecord => ({
    pidHash: hashPid(pid),
    namespaceId,
    sid,
    floorOffset: 1,
    lastOffset: 5,
    cursorOffset: 5,
    payload: Buffer.from(sid),
    ttlMs: 60_000,
  });

  const store = (queries: SessionQueries, errors: Error[] = [], maxPending = 100) =>
    new SessionStore(queries, { maxBatchSize: 10, maxPending, onError: (err) => errors.push(err) });

  it("costs a pid nobody is writing two takes, however long sessionWaitMs", async () => {
    const queries = new CountingQueries(pools[0]!, "socket_io", CHANNEL);
    const sessions = store(queries);
    expect(await sessions.take(hashPid("nobody"), namespaceId, 300)).toBeUndefined();
    expect(queries.takes).toBe(2);
    await sessions.close(1000);
  });

  it("finds a session another node writes during the wait as soon as that write is announced", async () => {
    const writer = store(new SessionQueries(pools[0]!, "socket_io", CHANNEL));
    const queries = new CountingQueries(pools[1]!, "socket_io", CHANNEL);
    const taker = store(queries);
    // What the node's listener does with the announcements on its channel.
    const listener = new pg.Client({ connectionString: db.url });
    listener.on("error", () => undefined);
    await listener.connect();
    try {
      listener.on("notification", (msg) => {
        if (msg.payload?.startsWith("s|")) taker.onWritten(msg.payload.slice(2));
      });
      await listener.query(`LISTEN "${CHANNEL}"`);
      // Far longer than the test may run: only the announcement can end this wait in time.
      const taking = taker.take(hashPid("late"), namespaceId, 60_000);
      await waitFor(() => queries.takes === 1); // the first look found nothing

      writer.persist(record("late", "s-late"));
      const taken = await bounded(taking, 5000, "the take");
      expect(taken?.sid).toBe("s-late");
      expect(queries.takes).toBe(2);
    } finally {
      await listener.end();
      await writer.close(1000);
      await taker.close(1000);
    }
  });

  it("waits for its own session's write, not for sessions queued after it", async () => {
    const queries = new SessionQueries(pools[0]!, "socket_io", CHANNEL);
    await queries.insert([record("a", "old-a"), record("b", "old-b")]);
    const sessions = store(queries);
    const lockers = [new pg.Client({ connectionString: db.url }), new pg.Client({ connectionString: db.url })];
    const [lockA, lockB] = lockers as [pg.Client, pg.Client];
    const lockWaits = async () =>
      (
        await pools[1]!.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`,
        )
      ).rows[0]!.n;
    try {
      for (const [client, pid] of [[lockA, "a"], [lockB, "b"]] as const) {
        await client.connect();
        await client.query("BEGIN");
        await client.query(`SELECT 1 FROM socket_io.sessions WHERE pid_hash = $1 FOR UPDATE`, [hashPid(pid)]);
      }
      // a's write is under way (waiting for its row); b's queues behind it.
      sessions.persist(record("a", "new-a"));
      await waitFor(async () => (await lockWaits()) === 1, { message: "a's write waiting" });
      sessions.persist(record("b", "new-b"));
      const taking = sessions.take(hashPid("a"), namespaceId, 0);
      await lockA.query("COMMIT");
      // a is written; b's write now waits for its row, as long as the test wants.
      await waitFor(async () => (await lockWaits()) === 1, { message: "b's write waiting" });
      const taken = await bounded(taking, 5000, "the take of a");
      expect(taken?.sid).toBe("new-a");
    } finally {
      for (const client of lockers) await client.query("ROLLBACK").catch(() => undefined);
      await Promise.all(lockers.map((c) => c.end().catch(() => undefined)));
      await sessions.close(5000);
    }
  });

  it("reports a session it cannot queue (maxPendingWrites reached)", async () => {
    const errors: Error[] = [];
    const sessions = store(new SessionQueries(pools[0]!, "socket_io", CHANNEL), errors, 1);
    sessions.persist(record("full-1", "s1"));
    sessions.persist(record("full-2", "s2"));
    await waitFor(() => errors.length === 1);
    expect(errors[0]!.message).toMatch(/session of s2 was not stored \(session queue full: maxPendingWrites\)/);
    await sessions.close(1000);
  });
});
