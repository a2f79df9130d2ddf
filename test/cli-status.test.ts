/**
 * `status` against a real cluster writing to Postgres: every number it shows
 * is checked against the tables themselves, and every way the schema can be
 * unusable is an exit 1 in one line.
 */
import pg from "pg";
import { describe, expect, it } from "vitest";
import type { RecoveryStatus } from "../src/index.js";
import { knownMigrations } from "../src/migrate.js";
import {
  closedPort,
  expectOneLineFailure,
  expectSuccess,
  freshSchema,
  migratePartially,
  runCli,
  runCliInProcess,
  urlWithPort,
} from "./helpers/cli.js";
import { Cluster, goOffline, join, waitFor, waitForHead, waitForSession } from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

/** Every migration this version ships, in order (the literal list changes with each new migration). */
const TAGS = knownMigrations().map((m) => m.tag);
const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

const db = useClusterSuite("cli_status");

/** Nodes that never prune on their own during a test. */
const NO_SCHEDULED_PRUNE = { pruneIntervalMs: 86_400_000 };

async function withClient<T>(fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

const newSchema = () => freshSchema(db.url, "status");

interface NamespaceFacts {
  name: string;
  head: number;
  retentionMs: number | null;
  oldest: number | null;
  entries: number;
  bytes: number;
  sessions: number;
  writers: number;
}

/** What the tables say, read independently of the status code. */
async function namespaceFacts(schema: string): Promise<NamespaceFacts[]> {
  return withClient(async (client) => {
    const { rows } = await client.query<Record<string, string | null>>(
      `SELECT n.name, n.head::text, n.retention_ms::text,
              (SELECT min("offset") FROM ${schema}.log_entries e WHERE e.namespace_id = n.id)::text AS oldest,
              (SELECT count(*) FROM ${schema}.log_entries e WHERE e.namespace_id = n.id)::text AS entries,
              (SELECT COALESCE(sum(length(payload)), 0) FROM ${schema}.log_entries e WHERE e.namespace_id = n.id)::text AS bytes,
              (SELECT count(*) FROM ${schema}.sessions s WHERE s.namespace_id = n.id)::text AS sessions,
              (SELECT count(*) FROM ${schema}.log_writers w WHERE w.namespace_id = n.id)::text AS writers
         FROM ${schema}.namespaces n ORDER BY n.name`,
    );
    const num = (v: string | null | undefined) => (v === null || v === undefined ? null : Number(v));
    return rows.map((r) => ({
      name: r.name!,
      head: num(r.head)!,
      retentionMs: num(r.retention_ms),
      oldest: num(r.oldest),
      entries: num(r.entries)!,
      bytes: num(r.bytes)!,
      sessions: num(r.sessions)!,
      writers: num(r.writers)!,
    }));
  });
}

/** Two nodes, "/" and "/chat" written by both, one disconnected client with a stored session. */
async function busyCluster(schema: string): Promise<{ cluster: Cluster; sid: string }> {
  const cluster = await Cluster.start({
    databaseUrl: db.url,
    nodes: 2,
    namespaces: ["/chat"],
    maxDisconnectionDuration: 60_000,
    adapter: { ...NO_SCHEDULED_PRUNE, schema },
  });
  const pool = cluster.node(0).pool;
  for (let i = 0; i < 5; i++) cluster.node(i % 2).io.emit("ev", { n: i, text: "x".repeat(10 * i) });
  for (let i = 0; i < 3; i++) cluster.node(1).io.of("/chat").emit("ev", { n: i });
  await waitForHead(pool, 5, "/", schema);
  await waitForHead(pool, 3, "/chat", schema);
  const client = await cluster.connect(0);
  await join(client, ["room-a"]);
  const sid = client.id!;
  goOffline(client);
  await waitForSession(pool, sid, schema);
  return { cluster, sid };
}

describe("status", () => {
  it("reports each namespace's log, the sessions, table sizes and migrations, as the tables hold them (--json)", async () => {
    const schema = await newSchema();
    await busyCluster(schema);
    const run = await runCliInProcess(["status", "--json", "--schema", schema], { DATABASE_URL: db.url });
    expectSuccess(run);
    const status = JSON.parse(run.stdout) as RecoveryStatus;
    const facts = await namespaceFacts(schema);

    expect(status.schema).toBe(schema);
    expect(status.migrations).toEqual({ applied: TAGS, pending: [] });
    expect(status.namespaces.map((n) => n.name)).toEqual(["/", "/chat"]);
    expect(facts.map((f) => f.name)).toEqual(["/", "/chat"]);
    for (const [i, fact] of facts.entries()) {
      const shown = status.namespaces[i]!;
      expect(shown).toMatchObject({
        name: fact.name,
        head: fact.head,
        retentionMs: fact.retentionMs,
        entries: fact.entries,
        entryBytes: fact.bytes,
        sessions: fact.sessions,
        writers: fact.writers,
      });
      expect(shown.oldest?.offset).toBe(fact.oldest);
      expect(shown.oldest!.ageMs).toBeGreaterThanOrEqual(0);
      expect(Date.parse(shown.oldest!.createdAt)).toBeLessThanOrEqual(Date.parse(status.collectedAt));
    }
    expect(facts[0]).toMatchObject({ head: 5, entries: 5, oldest: 1, sessions: 1, writers: 2 });
    expect(facts[1]).toMatchObject({ head: 3, entries: 3, oldest: 1, sessions: 0 });
    // maxDisconnectionDuration + the default margin (pingInterval 25 s + pingTimeout 20 s + 5 s), written by the nodes.
    expect(facts.map((f) => f.retentionMs)).toEqual([110_000, 110_000]);

    const expiry = await withClient(async (c) => (await c.query<{ expires_at: Date }>(`SELECT expires_at FROM ${schema}.sessions`)).rows);
    expect(expiry).toHaveLength(1);
    expect(status.sessions).toMatchObject({
      count: 1,
      live: 1,
      expired: 0,
      earliestExpiresAt: expiry[0]!.expires_at.toISOString(),
      latestExpiresAt: expiry[0]!.expires_at.toISOString(),
    });
    expect(status.sessions.bytes).toBeGreaterThan(0);

    expect(status.tables.map((t) => t.name)).toEqual([
      "namespaces",
      "log_entries",
      "log_writers",
      "log_gaps",
      "sessions",
      "nodes",
      "staged_events",
      "expired_sessions",
      "socket_io_attachments",
      "maintenance",
    ]);
    // Every table the migrations created is listed (a new table must not be left out of the sizes and dead rows).
    const created = await withClient(
      async (c) =>
        (await c.query<{ tablename: string }>(`SELECT tablename FROM pg_tables WHERE schemaname = $1 AND tablename <> '__drizzle_migrations'`, [schema]))
          .rows,
    );
    expect(created.map((r) => r.tablename).sort()).toEqual(status.tables.map((t) => t.name).sort());
    for (const table of status.tables) {
      expect(table.indexBytes).toBeGreaterThan(0);
      expect(table.totalBytes).toBeGreaterThanOrEqual(table.indexBytes);
    }
    expect(status.lastPrune).toBeNull();
  });

  it("shows what the database knows of the figures /metrics gives: session lag, connected sockets, nodes alive", async () => {
    const schema = await newSchema();
    const { cluster } = await busyCluster(schema);
    const pool = cluster.node(0).pool;
    // Two sockets stay connected on "/chat"; "/" gets 2 entries the stored session missed.
    await cluster.connect(0, { nsp: "/chat" });
    await cluster.connect(1, { nsp: "/chat" });
    cluster.node(1).io.emit("ev", { n: "after" });
    cluster.node(0).io.emit("ev", { n: "after" });
    await waitForHead(pool, 7, "/", schema);
    const connectedRows = async () =>
      withClient(async (c) => Number((await c.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${schema}.sessions WHERE state = 'connected'`)).rows[0]!.n));
    await waitFor(async () => (await connectedRows()) === 2, { message: "the connected sockets' rows written" });

    const statusNow = async () => {
      const run = await runCliInProcess(["status", "--json", "--schema", schema], { DATABASE_URL: db.url });
      expectSuccess(run);
      return JSON.parse(run.stdout) as RecoveryStatus;
    };
    const status = await statusNow();
    expect(status.namespaces.map((n) => [n.name, n.head, n.sessionLag, n.connectedSockets])).toEqual([
      ["/", 7, 2, 0],
      ["/chat", 3, null, 2],
    ]);
    expect(status.nodes).toEqual({ alive: 2, dead: 0 });

    // A node that went away without a word: its row stays, its heartbeat gets old.
    await withClient((c) => c.query(`INSERT INTO ${schema}.nodes (node_id, heartbeat_at, dead_after_ms) VALUES ('gone', now() - interval '1 hour', 3000)`));
    expect((await statusNow()).nodes).toEqual({ alive: 2, dead: 1 });
  });

  it("prints an aligned human report, and the last prune once there was one", async () => {
    const schema = await newSchema();
    await busyCluster(schema);
    await withClient((c) =>
      c.query(
        `INSERT INTO ${schema}.maintenance (task, last_started_at, last_finished_at, last_result)
         VALUES ('prune', now() - interval '3 seconds', now() - interval '2 seconds',
                 '{"source":"adapter","logEntries":7,"sessions":1,"attachments":0,"writers":2}')`,
      ),
    );
    const run = await runCli(["status", "--database-url", db.url, "--schema", schema]);
    expectSuccess(run);
    const lines = run.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(
      new RegExp(
        `^schema "status_\\d+" on 127\\.0\\.0\\.1:\\d+/t_cli_status_\\w+: up to date, ${TAGS.length} migrations applied \\(${escapeRegExp(TAGS.join(", "))}\\)$`,
      ),
    );
    const header = lines.findIndex((l) => /^\s+NAME\s+HEAD\s+OLDEST\s+OLDEST AGE\s+ENTRIES\s+BYTES\s+RETENTION\s+SESSIONS\s+SESSION LAG\s+CONNECTED\s+WRITERS$/.test(l));
    expect(header).toBeGreaterThan(0);
    const tableLines = lines.slice(header, header + 3);
    expect(tableLines[1]).toMatch(/^\s+\/\s+5\s+1\s+\S+( \S+)?\s+5\s+[\d.]+ (B|KiB)\s+1m 50s\s+1\s+0\s+0\s+2$/);
    expect(tableLines[2]).toMatch(/^\s+\/chat\s+3\s+1\s+\S+( \S+)?\s+3\s+[\d.]+ (B|KiB)\s+1m 50s\s+0\s+-\s+0\s+2$/);
    // The last column is right-aligned: aligned rows have the header's length.
    expect(new Set(tableLines.map((l) => l.length)).size).toBe(1);
    expect(run.stdout).toMatch(/\n  1 stored session: 1 live, 0 expired \(awaiting prune\); payloads [\d.]+ (B|KiB)\n/);
    expect(run.stdout).toMatch(/\n  expiry: earliest \S+ \(in \d+\.\d s\), latest \S+ \(in \d+\.\d s\)\n/);
    // Only node 0 held a socket: a node registers with its first one (node-liveness.ts).
    expect(run.stdout).toMatch(/\nNodes\n  1 alive, 0 dead \(/);
    expect(run.stdout).toMatch(/\n\s+TABLE\s+TOTAL\s+INDEXES\s+DEAD ROWS\n\s+namespaces\s+[\d.]+ KiB\s+[\d.]+ KiB\s+\d+\n/);
    expect(run.stdout).toMatch(
      /\nLast prune\n  finished \S+ \([\d.]+ s ago\): removed 7 log entries, 1 session, 0 attachments, 2 writers \(by adapter\)\n$/,
    );
  });

  it("says so when there is nothing yet (a migrated schema no node used)", async () => {
    const run = await runCliInProcess(["status", "--database-url", db.url, "--schema", await newSchema()]);
    expectSuccess(run);
    expect(run.stdout).toContain("(none yet: no node with this schema has started a namespace)");
    expect(run.stdout).toContain("0 stored sessions: 0 live, 0 expired");
    expect(run.stdout).toContain("never (no pruning pass has finished on this schema)");
  });

  it("warns when vacuum would not reclaim what pruning deletes (server setting, table parameter), and counts dead rows", async () => {
    const schema = await newSchema();
    // The server's own setting, read independently: CI's local server runs with autovacuum off, embedded Postgres with it on.
    const serverOn = await withClient(
      async (c) => (await c.query<{ on: boolean }>(`SELECT current_setting('autovacuum') = 'on' AND current_setting('track_counts') = 'on' AS on`)).rows[0]!.on,
    );
    const statusOf = async (): Promise<RecoveryStatus> => {
      const run = await runCliInProcess(["status", "--json", "--database-url", db.url, "--schema", schema]);
      expectSuccess(run);
      return JSON.parse(run.stdout) as RecoveryStatus;
    };
    const serverWarning = /autovacuum is off on this server/;
    const before = await statusOf();
    expect(before.warnings.some((w) => serverWarning.test(w))).toBe(!serverOn);
    expect(before.warnings.some((w) => /log_entries/.test(w))).toBe(false);

    await withClient(async (c) => {
      await c.query(`ALTER TABLE ${schema}.log_entries SET (autovacuum_enabled = false)`);
      // Dead rows: pg_stat counters are flushed when this backend's transaction ends (at most ~1 s later).
      await c.query(`INSERT INTO ${schema}.namespaces (name) VALUES ('/dead-rows')`);
      await c.query(`DELETE FROM ${schema}.namespaces WHERE name = '/dead-rows'`);
    });
    await waitFor(async () => (await statusOf()).tables.find((t) => t.name === "namespaces")!.deadRows >= 1, { timeout: 10_000, interval: 200, message: "a dead row counted" });
    const after = await statusOf();
    expect(after.warnings.filter((w) => /autovacuum is disabled on log_entries \(storage parameter/.test(w))).toHaveLength(1);
    expect(after.warnings.some((w) => serverWarning.test(w))).toBe(!serverOn);

    const human = await runCliInProcess(["status", "--database-url", db.url, "--schema", schema]);
    expectSuccess(human);
    expect(human.stdout).toContain("\nWarnings\n");
    expect(human.stdout).toMatch(/\n {2}! autovacuum is disabled on log_entries/);
    expect(human.stdout).toMatch(/TABLE +TOTAL +INDEXES +DEAD ROWS/);

    await withClient((c) => c.query(`ALTER TABLE ${schema}.log_entries RESET (autovacuum_enabled)`));
    expect((await statusOf()).warnings.some((w) => /log_entries/.test(w))).toBe(false);
  });
});

describe("status failures (exit 1, one line)", () => {
  it("cannot reach the database (a closed port)", async () => {
    const port = await closedPort();
    const run = await runCli(["status", "--database-url", urlWithPort(db.url, port)]);
    expectOneLineFailure(run, 1, new RegExp(`cannot connect to Postgres at 127\\.0\\.0\\.1:${port}/t_cli_status_\\w+: connection refused`));
  });

  it("names a schema that does not exist", async () => {
    const run = await runCliInProcess(["status", "--database-url", db.url, "--schema", "no_such_schema"]);
    expectOneLineFailure(run, 1, /schema "no_such_schema" does not exist \(wrong --schema, or never migrated/);
  });

  it("lists the pending migrations of an empty schema and of one an older version migrated, even with --json", async () => {
    await withClient((c) => c.query("CREATE SCHEMA empty_schema"));
    await migratePartially(db.url, "older_schema", 1);
    const empty = await runCli(["status", "--json", "--database-url", db.url, "--schema", "empty_schema"]);
    expectOneLineFailure(
      empty,
      1,
      new RegExp(`schema "empty_schema" lacks ${TAGS.length} migration\\(s\\) \\(${escapeRegExp(TAGS.join(", "))}\\): run \`socket\\.io-postgres-recovery migrate\``),
    );
    const older = await runCliInProcess(["status", "--database-url", db.url, "--schema", "older_schema"]);
    expectOneLineFailure(older, 1, new RegExp(`schema "older_schema" lacks ${TAGS.length - 1} migration\\(s\\) \\(${escapeRegExp(TAGS.slice(1).join(", "))}\\)`));
  });

  it("refuses a schema migrated by a newer version", async () => {
    await migratePartially(db.url, "newer_schema", TAGS.length);
    await withClient((c) =>
      c.query(`INSERT INTO newer_schema."__drizzle_migrations" (hash, created_at) VALUES ('feed', $1)`, [Date.now() + 86_400_000]),
    );
    const run = await runCliInProcess(["status", "--database-url", db.url, "--schema", "newer_schema"]);
    expectOneLineFailure(run, 1, /schema "newer_schema" has 1 migration\(s\) this version does not know/);
  });
});
