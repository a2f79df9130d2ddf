/**
 * Session takes at the SQL level: a batch of restores is one DELETE … RETURNING,
 * and each pid still restores at most once — also when it appears twice in a
 * batch, and when batches race on several pools. A pid presented in another
 * namespace leaves the session where it is.
 */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SessionQueries, type SessionRecord } from "../src/sql/session-queries.js";
import { hashPid } from "../src/session-store.js";
import { createTestDatabase, type TestDatabase } from "./helpers/database.js";

describe("session takes", () => {
  let db: TestDatabase;
  const pools: pg.Pool[] = [];
  let namespaces: number[] = [];

  beforeAll(async () => {
    db = await createTestDatabase("session_take", { migrated: true });
    for (let i = 0; i < 3; i++) pools.push(new pg.Pool({ connectionString: db.url, max: 2 }));
    const { rows } = await pools[0]!.query<{ id: number }>(
      `INSERT INTO socket_io.namespaces (name) VALUES ('/'), ('/other') RETURNING id`,
    );
    namespaces = rows.map((r) => r.id);
  });

  afterAll(async () => {
    await Promise.all(pools.map((p) => p.end()));
    await db?.drop();
  });

  const record = (pid: string, namespaceId: number, sid: string): SessionRecord => ({
    pidHash: hashPid(pid),
    namespaceId,
    sid,
    floorOffset: 1,
    lastOffset: 5,
    cursorOffset: 5,
    payload: Buffer.from(sid),
    ttlMs: 60_000,
  });

  it("takes a batch in order, once per pid, only in the session's own namespace", async () => {
    const queries = new SessionQueries(pools[0]!, "socket_io");
    const [root, other] = namespaces as [number, number];
    await queries.insert([record("p1", root, "s1"), record("p2", root, "s2"), record("p3", other, "s3")]);
    const taken = await queries.take([
      { pidHash: hashPid("p2"), namespaceId: root },
      { pidHash: hashPid("p1"), namespaceId: root },
      { pidHash: hashPid("p2"), namespaceId: root }, // the same pid again in the batch
      { pidHash: hashPid("p3"), namespaceId: root }, // another namespace's session
      { pidHash: hashPid("nope"), namespaceId: root },
    ]);
    expect(taken.map((t) => t?.sid)).toEqual(["s2", "s1", undefined, undefined, undefined]);
    expect(taken[0]).toMatchObject({ floorOffset: 1, lastOffset: 5, live: true });
    expect(taken[0]!.payload.toString()).toBe("s2");
    // p3 is still there for its own namespace, once.
    expect((await queries.take([{ pidHash: hashPid("p3"), namespaceId: other }]))[0]?.sid).toBe("s3");
    expect((await queries.take([{ pidHash: hashPid("p3"), namespaceId: other }]))[0]).toBeUndefined();
  });

  it("gives each of 200 sessions to exactly one of three racing takers", async () => {
    const [root] = namespaces as [number];
    const pids = Array.from({ length: 200 }, (_, i) => `race-${i}`);
    await new SessionQueries(pools[0]!, "socket_io").insert(pids.map((p, i) => record(p, root, `sid-${i}`)));
    const keys = pids.map((p) => ({ pidHash: hashPid(p), namespaceId: root }));
    // Each taker asks for every pid, in batches of 20, on its own pool, all at once.
    const results = await Promise.all(
      pools.map(async (pool) => {
        const queries = new SessionQueries(pool, "socket_io");
        const got: string[] = [];
        await Promise.all(
          Array.from({ length: 10 }, async (_, b) => {
            const taken = await queries.take(keys.slice(b * 20, b * 20 + 20));
            for (const t of taken) if (t) got.push(t.sid);
          }),
        );
        return got;
      }),
    );
    const all = results.flat().sort();
    expect(all).toEqual(pids.map((_, i) => `sid-${i}`).sort());
  });
});
