/**
 * Least privilege: the servers log in as a runtime role that can only read and
 * write the adapter's tables, separate from the role that runs migrations.
 * The test runs docs/roles.sql and docs/runtime-grants.sql themselves (with
 * role names and passwords unique to the run: roles are server-wide), so the
 * documented grants cannot rot:
 * - the migrator migrates a fresh database;
 * - a 2-node cluster whose pools (and LISTEN connections) log in as the
 *   runtime role writes and delivers the log, stores and restores sessions
 *   across nodes, sends non-logged messages through the attachments table,
 *   prunes (advisory lock, DELETEs, the maintenance table), and takes events
 *   from the SQL function emit() and from createEmitter (direct and staged);
 * - the runtime role cannot CREATE, DROP, ALTER, TRUNCATE, write the
 *   migrations journal, or migrate.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { createEmitter } from "../src/emitter.js";
import { knownMigrations, migrate } from "../src/migrate.js";
import {
  Cluster,
  closeAll,
  comeBack,
  goOffline,
  recordEvents,
  serverNoticed,
  waitFor,
  waitForHead,
  waitForSession,
  whoami,
} from "./helpers/cluster.js";
import { runCliInProcess } from "./helpers/cli.js";
import { adminUrl, createTestDatabase } from "./helpers/database.js";
import { withAdminClient } from "./helpers/admin.js";

function doc(name: string): string {
  return readFileSync(fileURLToPath(new URL(`../docs/${name}`, import.meta.url)), "utf8");
}

/** The documented SQL with this run's role names and password. */
function personalize(sql: string, names: { migrator: string; runtime: string; password: string }): string {
  return sql
    .replace(/\bsio_migrator\b/g, names.migrator)
    .replace(/\bsio_runtime\b/g, names.runtime)
    .replace(/'change-me'/g, `'${names.password}'`);
}

function loginAs(url: string, user: string, password: string): string {
  const u = new URL(url);
  u.username = user;
  u.password = password;
  return u.toString();
}

async function withPool<T>(url: string, fn: (pool: pg.Pool) => Promise<T>): Promise<T> {
  const pool = new pg.Pool({ connectionString: url, max: 2 });
  pool.on("error", () => {});
  try {
    return await fn(pool);
  } finally {
    await pool.end();
  }
}

async function sqlState(pool: pg.Pool, sql: string): Promise<string> {
  try {
    await pool.query(sql);
    return "succeeded";
  } catch (err) {
    return String((err as { code?: unknown }).code);
  }
}

describe("least privilege", () => {
  it("the adapter works under a runtime role that can only read and write its tables", async () => {
    const suffix = randomBytes(4).toString("hex");
    const names = { migrator: `sio_migrator_${suffix}`, runtime: `sio_runtime_${suffix}`, password: randomBytes(12).toString("hex") };
    const db = await createTestDatabase("least_privilege");
    const rejections: string[] = [];
    const onRejection = (reason: unknown) => rejections.push(String(reason));
    process.on("unhandledRejection", onRejection);
    try {
      await withAdminClient(db.url, (client) => client.query(personalize(doc("roles.sql"), names)));
      const migratorUrl = loginAs(db.url, names.migrator, names.password);
      const runtimeUrl = loginAs(db.url, names.runtime, names.password);

      // The runtime role cannot migrate (no CREATE on the database); the migrator can.
      await withPool(runtimeUrl, async (pool) => {
        await expect(migrate(pool)).rejects.toThrow(/permission denied/);
      });
      await withPool(migratorUrl, async (pool) => {
        expect((await migrate(pool)).applied).toEqual(knownMigrations().map((m) => m.tag));
        await pool.query(personalize(doc("runtime-grants.sql"), names));
      });

      const cluster = await Cluster.start({
        databaseUrl: runtimeUrl,
        nodes: 2,
        maxDisconnectionDuration: 1000,
        adapter: { retentionMarginMs: 0, pruneIntervalMs: 200, cleanupInterval: 1000 },
      });
      const pool = cluster.node(0).pool;
      const { rows: who } = await pool.query<{ current_user: string }>("SELECT current_user");
      expect(who[0]!.current_user).toBe(names.runtime);
      await cluster.waitForServerCount();

      // Log, LISTEN/NOTIFY and sessions: a client recovers on the other node with what it missed.
      const socket = await cluster.connect(0, { rooms: ["r"] });
      await socket.timeout(3000).emitWithAck("set-data", { n: 1 });
      const got = recordEvents(socket);
      const sid = socket.id!;
      goOffline(socket);
      await serverNoticed(cluster.node(0), sid);
      await waitForSession(pool, sid);
      cluster.node(1).io.to("r").emit("ev", { n: "missed" });
      await waitForHead(pool, 1);
      expect(await comeBack(socket, cluster.node(1))).toBe(true);
      expect((await whoami(socket)).data).toEqual({ n: 1 });
      await waitFor(() => got.length === 1);
      cluster.node(0).io.to("r").emit("ev", { n: "live" });
      await waitFor(() => got.length === 2);

      // Emitting from outside the nodes: the SQL function, an emitter's direct emit, and one
      // staged in a transaction (the nodes move it into the log).
      await pool.query(`SELECT socket_io.emit('/', 'ev', '[{"n": "sql"}]', rooms => ARRAY['r'])`);
      const emitter = createEmitter(pool);
      await emitter.to("r").emit("ev", { n: "emitter" });
      const tx = await pool.connect();
      try {
        await tx.query("BEGIN");
        await emitter.to("r").withClient(tx).emit("ev", { n: "staged" });
        await tx.query("COMMIT");
      } finally {
        tx.release();
      }
      await emitter.close();
      await waitFor(() => got.length === 5, { message: () => `events from outside the nodes (got ${got.length - 2} of 3)` });
      expect(got.slice(2).map((r) => (r.args[0] as { n: string }).n)).toEqual(["sql", "emitter", "staged"]);
      // The SQL function runs as its owner: EXECUTE is the runtime role's by grant, not everyone's.
      const { rows: canExecute } = await pool.query<{ public: boolean }>(
        "SELECT has_function_privilege('public', 'socket_io.emit(text, text, jsonb, text[], text[])', 'EXECUTE') AS public",
      );
      expect(canExecute[0]!.public).toBe(false);

      // Non-logged traffic over the NOTIFY limit goes through the attachments table.
      const heard: unknown[] = [];
      cluster.node(1).io.on("big", (arg: string) => heard.push(arg.length));
      cluster.node(0).io.serverSideEmit("big", "x".repeat(20_000));
      await waitFor(() => heard.length === 1);

      // Pruning under the runtime role: advisory lock, DELETEs of entries, sessions and
      // attachments past their time, and the maintenance record.
      cluster.closeClient(socket); // nothing left to restore; the entries age past the 1 s retention
      await waitFor(
        async () => {
          const { rows } = await pool.query<{ entries: string; attachments: string; prunes: string }>(
            `SELECT (SELECT count(*) FROM socket_io.log_entries)::text AS entries,
                    (SELECT count(*) FROM socket_io.socket_io_attachments)::text AS attachments,
                    (SELECT count(*) FROM socket_io.maintenance WHERE task = 'prune' AND last_finished_at IS NOT NULL)::text AS prunes`,
          );
          return rows[0]!.entries === "0" && rows[0]!.attachments === "0" && rows[0]!.prunes === "1";
        },
        { timeout: 10_000, interval: 100, message: "pruning as the runtime role" },
      );

      // What the runtime role cannot do.
      const denied = "42501"; // insufficient_privilege (also "must be owner of")
      const attempts = {
        createTableInSchema: "CREATE TABLE socket_io.evil (id int)",
        createTableInPublic: "CREATE TABLE public.evil (id int)",
        createSchema: "CREATE SCHEMA evil",
        dropTable: "DROP TABLE socket_io.sessions",
        alterTable: "ALTER TABLE socket_io.sessions ADD COLUMN evil int",
        createIndex: "CREATE INDEX evil ON socket_io.log_entries (created_at)",
        truncate: "TRUNCATE socket_io.log_entries",
        writeJournal: "INSERT INTO socket_io.__drizzle_migrations (hash, created_at) VALUES ('x', 1)",
        deleteJournal: "DELETE FROM socket_io.__drizzle_migrations",
        dropSchema: "DROP SCHEMA socket_io CASCADE",
      };
      const outcomes: Record<string, string> = {};
      for (const [what, sql] of Object.entries(attempts)) outcomes[what] = await sqlState(pool, sql);
      expect(outcomes).toEqual(Object.fromEntries(Object.keys(attempts).map((k) => [k, denied])));
      // It can read the journal (which migrations are applied).
      expect((await pool.query("SELECT count(*)::int AS n FROM socket_io.__drizzle_migrations")).rows[0]).toEqual({
        n: knownMigrations().length,
      });

      // The operator's CLI works under the runtime role too (status reads the journal and the
      // tables, prune deletes under the advisory lock), except migrate.
      for (const args of [["status"], ["prune"]]) {
        const run = await runCliInProcess([...args, "--database-url", runtimeUrl]);
        expect(run.stderr, args.join(" ")).toBe("");
        expect(run.code, args.join(" ")).toBe(0);
      }
      expect((await runCliInProcess(["migrate", "--database-url", runtimeUrl])).code).toBe(1);

      const reported = cluster.nodes.flatMap((n) => n.errors).map((e) => `${e.message} <- ${String(e.cause)}`);
      await cluster.close();
      expect(reported).toEqual([]);
      expect(rejections).toEqual([]);
    } finally {
      process.off("unhandledRejection", onRejection);
      await closeAll();
      await db.drop();
      await withAdminClient(adminUrl(), async (client) => {
        await client.query(`DROP ROLE IF EXISTS ${pg.escapeIdentifier(names.runtime)}`);
        await client.query(`DROP ROLE IF EXISTS ${pg.escapeIdentifier(names.migrator)}`);
      });
    }
  });
});
