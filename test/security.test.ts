/**
 * Security properties of sessions and of the replay:
 * - no raw pid at rest: every column of every table of the deployment is
 *   searched for it, as text and as bytes;
 * - a pid restores at most once, even when 10 reconnects race for it on two
 *   nodes: exactly one wins;
 * - a session restores only in its own namespace and its own deployment
 *   (schema), and a pid presented elsewhere does not use it up;
 * - a tampered offset cannot make a restore read unbounded history.
 */
import { createHash } from "node:crypto";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { migrate } from "../src/migrate.js";
import { LogQueries } from "../src/sql/log-queries.js";
import {
  Cluster,
  comeBack,
  goOffline,
  logHead,
  recordEvents,
  serverNoticed,
  waitFor,
  waitForHead,
  waitForSession,
  whoami,
  type ClientSocket,
} from "./helpers/cluster.js";
import { attempt, expectFresh, expectHealthy, prepare, type Prepared } from "./helpers/recovery-attempts.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("security");

/** Every row of every table in `schema`, as text (bytea shows as hex), searched for each needle. */
async function findInTables(pool: pg.Pool, schema: string, needles: string[]): Promise<string[]> {
  const { rows: tables } = await pool.query<{ table_name: string }>(
    `SELECT table_name FROM information_schema.tables WHERE table_schema = $1 AND table_type = 'BASE TABLE'`,
    [schema],
  );
  expect(tables.length).toBeGreaterThanOrEqual(6);
  const found: string[] = [];
  for (const { table_name } of tables) {
    const table = `${pg.escapeIdentifier(schema)}.${pg.escapeIdentifier(table_name)}`;
    for (const needle of needles) {
      const { rows } = await pool.query<{ n: string }>(
        `SELECT count(*)::text AS n FROM ${table} AS t WHERE strpos(lower(t::text), lower($1)) > 0`,
        [needle],
      );
      if (rows[0]!.n !== "0") found.push(`${table_name} contains ${JSON.stringify(needle)}`);
    }
  }
  return found;
}

/** Disconnects `socket` abruptly and waits until its session is written. */
async function dropAndStore(cluster: Cluster, socket: ClientSocket, node: number, nsp = "/"): Promise<void> {
  const sid = socket.id!;
  goOffline(socket);
  await serverNoticed(cluster.node(node), sid, nsp);
  await waitForSession(cluster.node(node).pool, sid);
}

describe("security", () => {
  it("stores no raw pid: only sha256(pid), in no column of any table of the deployment", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, namespaces: ["/a"] });
    const pool = cluster.node(0).pool;
    const pids: string[] = [];
    const sids: string[] = [];
    for (const [node, nsp] of [[0, "/"], [1, "/"], [0, "/a"], [1, "/a"]] as const) {
      const socket = await cluster.connect(node, { nsp, rooms: ["r"] });
      pids.push((socket as unknown as { _pid: string })._pid);
      sids.push(socket.id!);
      // The app echoes things back; none of it contains the pid (it never sees it).
      cluster.node(node).io.of(nsp).to("r").emit("ev", { n: sids.length });
      await dropAndStore(cluster, socket, node, nsp);
    }
    // Non-logged traffic large enough to go through the attachments table.
    await cluster.node(0).io.serverSideEmit("big", "x".repeat(20_000));
    await waitFor(async () => (await pool.query(`SELECT 1 FROM socket_io.socket_io_attachments`)).rowCount! > 0);

    const { rows } = await pool.query<{ pid_hash: Buffer; sid: string }>(`SELECT pid_hash, sid FROM socket_io.sessions`);
    expect(rows).toHaveLength(4);
    for (const [i, pid] of pids.entries()) {
      const row = rows.find((r) => r.sid === sids[i]);
      expect(row?.pid_hash).toEqual(createHash("sha256").update(pid).digest());
    }
    // The pid as text, as the hex of its bytes (bytea columns and msgpack payloads), and base64 of its bytes.
    const needles = pids.flatMap((pid) => [pid, Buffer.from(pid).toString("hex"), Buffer.from(pid).toString("base64")]);
    expect(await findInTables(pool, "socket_io", needles)).toEqual([]);
    // The search does find what is there (the sids are stored in clear, they are public).
    expect(await findInTables(pool, "socket_io", [sids[0]!])).toEqual(["sessions contains " + JSON.stringify(sids[0])]);
  });

  for (const stage of [
    "written to the table",
    "just disconnected (possibly still queued on its node)",
    "written, restores going through a slow middleware",
  ] as const) {
    it(`10 reconnects racing for one pid on two nodes: exactly one restores (session ${stage})`, async () => {
      const cluster =
        stage === "written, restores going through a slow middleware"
          ? await Cluster.start({
              databaseUrl: db.url,
              nodes: 2,
              // A restored socket waits here before it connects; one discarded meanwhile puts its session back.
              skipMiddlewares: false,
              setup: (node) => node.io.use((_socket, next) => void setTimeout(next, 30)),
            })
          : await Cluster.start({ databaseUrl: db.url, nodes: 2 });
      for (let round = 0; round < 3; round++) {
        let old: Prepared;
        if (stage !== "just disconnected (possibly still queued on its node)") {
          old = await prepare(cluster);
        } else {
          const socket = await cluster.connect(0, { rooms: ["secret-room"] });
          await socket.timeout(3000).emitWithAck("set-data", { secret: "s3cr3t" });
          const fields = socket as unknown as { _pid: string; _lastOffset: string };
          old = { socket, sid: socket.id!, pid: fields._pid, offset: fields._lastOffset };
          goOffline(socket);
          await serverNoticed(cluster.node(0), old.sid);
        }
        const results = await Promise.all(
          Array.from({ length: 10 }, (_, i) => attempt(cluster, i % 2, old.pid, old.offset)),
        );
        const winners = results.filter((r) => r.recovered);
        expect(winners, `round ${round}`).toHaveLength(1);
        expect(winners[0]!.who).toMatchObject({ id: old.sid, recovered: true, data: { secret: "s3cr3t" } });
        for (const loser of results.filter((r) => !r.recovered)) expectFresh(loser, old);
        expect(new Set(results.map((r) => r.who.id)).size).toBe(10);
        // Nothing restorable is left: the winner's socket holds the pid (its skeleton, on a live node).
        const { rows: left } = await cluster.node(0).pool.query<{ state: string }>(
          `SELECT state FROM socket_io.sessions WHERE sid = $1 AND state NOT IN ('taken', 'connected')`,
          [old.sid],
        );
        expect(left).toEqual([]);
        for (const r of results) cluster.closeClient(r.socket);
        cluster.closeClient(old.socket);
      }
      await expectHealthy(cluster);
    });
  }

  it("a session restores only in its own namespace; presented elsewhere, it is refused and not used up", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, namespaces: ["/a", "/b"] });
    const old = await prepare(cluster, "/a");
    for (const nsp of ["/", "/b", "/dyn-x"]) {
      for (const node of [0, 1]) {
        const result = await attempt(cluster, node, old.pid, old.offset, nsp);
        expectFresh(result, old);
        cluster.closeClient(result.socket);
      }
    }
    const got = recordEvents(old.socket);
    const head = await logHead(cluster.node(0).pool, "/a");
    cluster.node(1).io.of("/a").to("secret-room").emit("ev", { n: 1 });
    await waitForHead(cluster.node(0).pool, head + 1, "/a");
    expect(await comeBack(old.socket, cluster.node(1))).toBe(true);
    expect((await whoami(old.socket)).data).toEqual({ secret: "s3cr3t" });
    await waitFor(() => got.length === 1);
    await expectHealthy(cluster);
  });

  it("a session restores only in its own deployment (schema) of the same database", async () => {
    const admin = new pg.Pool({ connectionString: db.url, max: 1 });
    try {
      await migrate(admin, { schema: "tenant_b" });
    } finally {
      await admin.end();
    }
    const a = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
    const b = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: { schema: "tenant_b" } });
    const socket = await a.connect(0, { rooms: ["secret-room"] });
    const fields = socket as unknown as { _pid: string; _lastOffset: string };
    const { _pid: pid, _lastOffset: offset } = fields;
    const sid = socket.id!;
    await dropAndStore(a, socket, 0);
    const elsewhere = await attempt(b, 0, pid, offset);
    expect(elsewhere.recovered).toBe(false);
    expect(elsewhere.who.id).not.toBe(sid);
    b.closeClient(elsewhere.socket);
    expect(await comeBack(socket, a.node(0))).toBe(true);
    expect(socket.id).toBe(sid);
  });

  describe("replay bounds", () => {
    /** Reasons announced by the adapters of "/" on every node. */
    function refusals(cluster: Cluster): string[] {
      const reasons: string[] = [];
      for (const node of cluster.nodes) {
        node.io.of("/").adapter.on("restore-refused", ({ reason }: { reason: string }) => reasons.push(reason));
      }
      return reasons;
    }

    it("a tampered offset outside the session's range is refused before any log read", async () => {
      const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2 });
      // Long history before the session: offsets 1..300.
      for (let i = 0; i < 300; i++) cluster.node(0).io.emit("ev", { n: i });
      await waitForHead(cluster.node(0).pool, 300);
      const reasons = refusals(cluster);
      for (const tampered of ["o0", "o1", "o299", "o9007199254740991"]) {
        const old = await prepare(cluster);
        // The range check compares with the session's [floor, last] (both >= 300 here) and
        // refuses before the replay is collected: no history is read at all for it.
        const result = await attempt(cluster, 1, old.pid, tampered);
        expectFresh(result, old);
        expect(reasons.at(-1)).toMatch(/^offset \d+ outside the session's range \[\d+, \d+\]$/);
        cluster.closeClient(result.socket);
        cluster.closeClient(old.socket);
      }
      await expectHealthy(cluster);
    });

    it("a replay over maxReplayEntries is refused from the offsets alone, before reading", async () => {
      const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: { maxReplayEntries: 50 } });
      const reasons = refusals(cluster);
      const old = await prepare(cluster);
      const head = await logHead(cluster.node(0).pool);
      for (let i = 0; i < 60; i++) cluster.node(0).io.emit("ev", { n: i });
      await waitForHead(cluster.node(0).pool, head + 60);
      // Offsets are dense, so (offset, cursor] has cursor - offset entries: refused without a query.
      expect(await comeBack(old.socket, cluster.node(1))).toBe(false);
      expect(reasons).toEqual(["60 entries to replay exceed maxReplayEntries (50)"]);
      await expectHealthy(cluster);
    });

    it("the replay read stops past maxReplayBytes instead of fetching every row", async () => {
      const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
      const pool = cluster.node(0).pool;
      const h = await logHead(pool); // earlier tests of this file wrote to "/" too
      for (let i = 0; i < 20; i++) cluster.node(0).io.emit("ev", "x".repeat(1000));
      await waitForHead(pool, h + 20);
      const { rows } = await pool.query<{ id: number }>(`SELECT id FROM socket_io.namespaces WHERE name = '/'`);
      const id = rows[0]!.id;
      const log = new LogQueries(pool, "socket_io");
      const offsets = (entries: Array<{ offset: number }>) => entries.map((e) => e.offset - h);
      const all = (await log.range(id, h, h + 20, 1000)).entries;
      expect(offsets(all)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
      const size = all[0]!.bytes;
      expect(size).toBeGreaterThan(1000);
      // 2.5 entries' worth: two fit, the third crosses the bound and is the last one read.
      const bounded = (await log.range(id, h, h + 20, 1000, Math.floor(size * 2.5))).entries;
      expect(offsets(bounded)).toEqual([1, 2, 3]);
      expect(bounded.reduce((sum, e) => sum + e.bytes, 0)).toBeGreaterThan(size * 2.5);
      // Exactly at a boundary: the bound is reached, not crossed, so one more row shows it is crossed.
      expect(offsets((await log.range(id, h, h + 20, 1000, size * 3)).entries)).toEqual([1, 2, 3, 4]);
      // The count limit still applies.
      expect(offsets((await log.range(id, h + 5, h + 20, 2, size * 100)).entries)).toEqual([6, 7]);
    });

    it("a replay over maxReplayBytes read from the table is refused with its reason", async () => {
      const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: { maxReplayBytes: 4096 } });
      const old = await prepare(cluster);
      const head = await logHead(cluster.node(0).pool);
      for (let i = 0; i < 10; i++) cluster.node(0).io.to("secret-room").emit("ev", { pad: "x".repeat(1000) });
      await waitForHead(cluster.node(0).pool, head + 10);
      // A node started now has nothing in memory: the replay is read from the table.
      const fresh = await cluster.addNode();
      // Started (listening, heartbeats exchanged), so a slow start cannot turn into a restore timeout.
      await cluster.waitForServerCount();
      const reasons: string[] = [];
      fresh.io.of("/").adapter.on("restore-refused", ({ reason }: { reason: string }) => reasons.push(reason));
      expect(await comeBack(old.socket, fresh)).toBe(false);
      expect(reasons, JSON.stringify(reasons)).toHaveLength(1);
      // Five 1 KB entries cross 4096 bytes; the read stopped there (not 10 entries' worth).
      const bytes = Number(/^(\d+) bytes to replay exceed maxReplayBytes \(4096\)$/.exec(reasons[0]!)?.[1]);
      expect(bytes).toBeGreaterThan(4096);
      expect(bytes).toBeLessThan(4096 + 1100);
      await expectHealthy(cluster);
    });
  });
});
