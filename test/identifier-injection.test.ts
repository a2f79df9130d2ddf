/**
 * Identifiers that reach SQL text or channel names: `schema`, `tableName`,
 * `channelPrefix` (options), and namespace names (client input with dynamic
 * namespaces). Each injection attempt is either refused by validation with a
 * message naming the option, or accepted and harmless because it only ever
 * travels quoted (LISTEN "…") or as a bound parameter (pg_notify, inserts).
 */
import pg from "pg";
import { Manager } from "socket.io-client";
import { describe, expect, it } from "vitest";
import { createAdapter, LISTENER_APPLICATION_NAME, migrate, OptionsError } from "../src/index.js";
import {
  Cluster,
  comeBack,
  connected,
  goOffline,
  logHead,
  recordEvents,
  recoveryFields,
  serverNoticed,
  waitFor,
  waitForHead,
  waitForSession,
  type ClientSocket,
} from "./helpers/cluster.js";
import { expectOneLineFailure, runCliInProcess } from "./helpers/cli.js";
import { expectHealthy } from "./helpers/recovery-attempts.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("identifier_injection");

const DROP = "; DROP TABLE socket_io.sessions; --";

/** The deployment's tables, to show that nothing was dropped or altered. */
async function tablesOf(pool: pg.Pool, schema = "socket_io"): Promise<string[]> {
  const { rows } = await pool.query<{ t: string }>(
    `SELECT table_name AS t FROM information_schema.tables WHERE table_schema = $1 ORDER BY 1`,
    [schema],
  );
  return rows.map((r) => r.t);
}

const TABLES = ["__drizzle_migrations", "expired_sessions", "log_entries", "log_gaps", "log_writers", "maintenance", "namespaces", "nodes", "sessions", "socket_io_attachments", "staged_events"];

/**
 * A client of namespace `nsp` exactly as written (a URL would percent-encode
 * it), on its own manager, with the websocket transport.
 */
function rawNamespaceClient(url: string, nsp: string): ClientSocket {
  const manager = new Manager(url, { transports: ["websocket"], forceNew: true, reconnectionDelay: 50, reconnectionDelayMax: 50, randomizationFactor: 0 });
  return manager.socket(nsp, { auth: { rooms: ["r"] } });
}

describe("identifier injection", () => {
  describe("refused by validation, with a message naming the option", () => {
    const pool = new pg.Pool({ host: "127.0.0.1", port: 1 }); // never connected: validation comes first
    it.each([
      ["schema", `x"${DROP}`],
      ["schema", `socket_io${DROP}`],
      ["schema", "socket io"],
      ["schema", "Sch€ma"],
      ["schema", "x\u0000"],
      ["tableName", `socket_io_attachments"${DROP}`],
      ["tableName", `public.t${DROP}`],
      ["tableName", `"public"."t"`],
      ["tableName", "a.b.c"],
      ["tableName", "t\u0000"],
      ["channelPrefix", `x"${DROP}`],
      ["channelPrefix", "x\u0000y"],
      ["channelPrefix", "x".repeat(41)],
    ])("%s = %j", (option, value) => {
      expect(() => createAdapter(pool, { [option]: value })).toThrow(OptionsError);
      expect(() => createAdapter(pool, { [option]: value })).toThrow(new RegExp(`option "${option}"`));
    });

    it("the CLI refuses them too, before connecting (exit 2)", async () => {
      for (const command of ["migrate", "status", "prune"]) {
        const run = await runCliInProcess([command, "--schema", `x"${DROP}`, "--database-url", "postgres://nobody@127.0.0.1:1/db"]);
        expectOneLineFailure(run, 2, /invalid --schema/);
      }
    });

    it("migrate() refuses the same schema names", async () => {
      for (const schema of [`x"${DROP}`, "socket io", "x\u0000"]) {
        await expect(migrate(pool, { schema })).rejects.toThrow(/invalid schema name/);
      }
      await pool.end();
    });
  });

  describe("accepted and harmless: quoted or bound, never spliced", () => {
    for (const channelPrefix of [`x')${DROP}`, "$$; DROP TABLE socket_io.sessions; $$", "a\\b c;--", "ß💥'"]) {
      it(`channelPrefix ${JSON.stringify(channelPrefix)}: cluster traffic, logged broadcasts and recovery work`, async () => {
        const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: { channelPrefix } });
        const pool = cluster.node(0).pool;
        // Heartbeats and their answers travel on `${channelPrefix}#/`.
        await cluster.waitForServerCount();
        const heard: unknown[] = [];
        cluster.node(1).io.on("hello", (arg: unknown) => heard.push(arg));
        cluster.node(0).io.serverSideEmit("hello", "x".repeat(10_000)); // through the attachments table
        await waitFor(() => heard.length === 1);
        const socket = await cluster.connect(0, { rooms: ["r"] });
        expect((await cluster.node(1).io.fetchSockets()).map((s) => s.id)).toEqual([socket.id]);
        // Logged traffic uses `${channelPrefix}:socket_io:log`.
        const got = recordEvents(socket);
        const sid = socket.id!;
        goOffline(socket);
        await serverNoticed(cluster.node(0), sid);
        await waitForSession(pool, sid);
        const head = await logHead(pool);
        cluster.node(1).io.to("r").emit("ev", { n: 1 });
        await waitForHead(pool, head + 1);
        expect(await comeBack(socket, cluster.node(1))).toBe(true);
        await waitFor(() => got.length === 1);
        expect(await tablesOf(pool)).toEqual(TABLES);
        expect(cluster.nodes.flatMap((n) => n.errors).map(String)).toEqual([]);
      });
    }

    const hostileNamespaces = [`/evil"${DROP}`, "/evil'); SELECT pg_sleep(10); --", "/evil $$ \\ ß💥"];
    it("namespace names from clients (dynamic namespaces): logged broadcasts, recovery and cluster traffic work", async () => {
      const cluster = await Cluster.start({
        databaseUrl: db.url,
        nodes: 2,
        setup: (node) => {
          node.io.of(/^\/evil/);
        },
      });
      const pool = cluster.node(0).pool;
      const sockets: ClientSocket[] = [];
      try {
        for (const nsp of hostileNamespaces) {
          const socket = rawNamespaceClient(cluster.node(0).url, nsp);
          sockets.push(socket);
          await connected(socket);
          await waitFor(() => recoveryFields(socket)._lastOffset !== undefined, { message: `an offset in ${nsp}` });
          const got = recordEvents(socket);
          const sid = socket.id!;
          goOffline(socket);
          await serverNoticed(cluster.node(0), sid, nsp);
          await waitForSession(pool, sid);
          // The namespace exists on node1 once a client used it there: create it like a client would.
          cluster.node(1).io.of(nsp);
          await waitFor(async () => (await pool.query(`SELECT 1 FROM socket_io.namespaces WHERE name = $1`, [nsp])).rowCount === 1);
          const head = await logHead(pool, nsp);
          cluster.node(1).io.of(nsp).to("r").emit("ev", { nsp });
          await waitForHead(pool, head + 1, nsp);
          expect(await comeBack(socket, cluster.node(1))).toBe(true);
          await waitFor(() => got.length === 1);
          expect(got[0]!.args[0]).toEqual({ nsp });
          // Non-logged cluster traffic of that namespace (its channel is `socket.io#<nsp>`).
          // node0 counts node1 in that namespace once a heartbeat crossed its channel (node1's first one
          // may go out before node0 hears on it; the next comes within heartbeatInterval).
          await waitFor(async () => (await cluster.node(0).io.of(nsp).adapter.serverCount()) === 2, { timeout: 12_000, message: `node1 heard in ${nsp}` });
          expect((await cluster.node(0).io.of(nsp).fetchSockets()).map((s) => s.id)).toEqual([sid]);
        }
      } finally {
        for (const socket of sockets) {
          socket.disconnect();
          socket.io.engine?.close();
        }
      }
      expect(await tablesOf(pool)).toEqual(TABLES);
      expect(cluster.nodes.flatMap((n) => n.errors).map(String)).toEqual([]);
      await expectHealthy(cluster);
    });
  });

  it("a namespace too long for a NOTIFY channel loses its own cluster messages only, reported once", async () => {
    // "socket.io#" + 60 bytes > 63: Postgres refuses the channel. Batched with other namespaces'
    // messages, it used to fail the whole statement, and those messages with it.
    const long = `/${"l".repeat(60)}`;
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, namespaces: [long] });
    await cluster.waitForServerCount("/"); // both nodes listen on "/"
    const heard: unknown[] = [];
    cluster.node(1).io.on("hello", (arg: unknown) => heard.push(arg));
    for (let i = 0; i < 20; i++) {
      // Same tick: the two messages go out in one statement when a write is in flight.
      cluster.node(0).io.of(long).serverSideEmit("x", i);
      cluster.node(0).io.serverSideEmit("hello", i);
      if (i % 5 === 0) await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await waitFor(() => heard.length === 20, { message: () => `20 messages on "/" (got ${heard.length})` });
    expect(heard).toEqual(Array.from({ length: 20 }, (_, i) => i));
    const errors = cluster.node(0).errors.map((e) => e.message);
    expect(errors.filter((m) => m.includes("cannot be a NOTIFY channel"))).toHaveLength(1);
    expect(errors.filter((m) => !m.includes("cannot be a NOTIFY channel"))).toEqual([]);
    // Logged traffic does not use that channel: recovery works in that namespace.
    const socket = await cluster.connect(0, { nsp: long, rooms: ["r"] });
    const got = recordEvents(socket);
    const sid = socket.id!;
    goOffline(socket);
    await serverNoticed(cluster.node(0), sid, long);
    await waitForSession(cluster.node(0).pool, sid);
    const head = await logHead(cluster.node(0).pool, long);
    cluster.node(1).io.of(long).to("r").emit("ev", 1);
    await waitForHead(cluster.node(0).pool, head + 1, long);
    expect(await comeBack(socket, cluster.node(1))).toBe(true);
    await waitFor(() => got.length === 1);
  });

  it("a NUL in a client's dynamic namespace name is reported once and takes nothing else down, even the LISTEN connection", async () => {
    // `.` matches NUL: a common pattern for dynamic namespaces lets clients create such a name.
    // Postgres cannot hold NUL in text nor in a channel name; the LISTEN connection used to add
    // the channel, then fail every reconnection on it: the node stopped hearing anything.
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, setup: (node) => void node.io.of(/^\/chat-.+$/) });
    const live = await cluster.connect(1, { rooms: ["r"] });
    const got = recordEvents(live);
    const evil = rawNamespaceClient(cluster.node(1).url, "/chat-\u0000x");
    try {
      await connected(evil); // Socket.IO accepts it; the adapter just never starts the namespace
      const pool = cluster.node(0).pool;
      await waitFor(() => cluster.node(1).errors.some((e) => e.message.includes("contains a NUL byte")));
      cluster.node(0).io.to("r").emit("ev", 1);
      await waitFor(() => got.length === 1);
      // The LISTEN connections are cut: they come back (the NUL channel is not in their set).
      await pool.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()`, [
        LISTENER_APPLICATION_NAME,
      ]);
      await waitFor(async () => (await pool.query(`SELECT 1 FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()`, [LISTENER_APPLICATION_NAME])).rowCount === 2);
      cluster.node(0).io.to("r").emit("ev", 2);
      await waitFor(() => got.length === 2);
      expect(got.map((r) => r.args[0])).toEqual([1, 2]);
      const unexpected = cluster.nodes
        .flatMap((n) => n.errors.map((e) => e.message))
        .filter((m) => !/LISTEN connection (lost|failed|replaced)|contains a NUL byte/.test(m));
      expect(unexpected).toEqual([]);
      expect(cluster.node(1).errors.filter((e) => e.message.includes("contains a NUL byte"))).toHaveLength(1);
    } finally {
      evil.disconnect();
      evil.io.engine?.close();
    }
    await expectHealthy(cluster);
  });
});
