/**
 * `prune` against a real cluster's tables: it removes exactly what is past
 * the retention the nodes stored (and expired sessions, old attachments, idle
 * writers), skips namespaces without a stored retention, and `--dry-run`
 * counts the same while deleting nothing.
 *
 * Rows are made old by moving their timestamps back (created_at, expires_at,
 * updated_at) rather than by waiting: the retention stays long (110 s), so
 * nothing fresh can age past it while the test runs, however slow the machine.
 */
import pg from "pg";
import { describe, expect, it } from "vitest";
import type { PruneOutcome } from "../src/prune.js";
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
  sql,
  urlWithPort,
} from "./helpers/cli.js";
import { Cluster, goOffline, waitFor, waitForHead, waitForSession } from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("cli_prune");

/** Nodes that never prune on their own during a test. */
const NO_SCHEDULED_PRUNE = { pruneIntervalMs: 86_400_000 };
/** maxDisconnectionDuration 60 s + the default margin (pingInterval 25 s + pingTimeout 20 s + 5 s). */
const RETENTION_MS = 110_000;

interface Counts {
  rootEntries: string[];
  legacyEntries: number;
  sessions: string[];
  attachments: number;
  writers: string[];
  pruneRuns: number;
}

async function counts(schema: string): Promise<Counts> {
  const [row] = await sql<{
    root_entries: string[];
    legacy_entries: number;
    sessions: string[];
    attachments: number;
    writers: string[];
    prune_runs: number;
  }>(
    db.url,
    `SELECT
       (SELECT COALESCE(array_agg(e."offset"::text ORDER BY e."offset"), '{}') FROM ${schema}.log_entries e
          JOIN ${schema}.namespaces n ON n.id = e.namespace_id WHERE n.name = '/') AS root_entries,
       (SELECT count(*)::int FROM ${schema}.log_entries e
          JOIN ${schema}.namespaces n ON n.id = e.namespace_id WHERE n.name = '/legacy') AS legacy_entries,
       (SELECT COALESCE(array_agg(sid ORDER BY sid), '{}') FROM ${schema}.sessions) AS sessions,
       (SELECT count(*)::int FROM ${schema}.socket_io_attachments) AS attachments,
       (SELECT COALESCE(array_agg(writer_id ORDER BY writer_id), '{}') FROM ${schema}.log_writers) AS writers,
       (SELECT count(*)::int FROM ${schema}.maintenance WHERE task = 'prune') AS prune_runs`,
  );
  return {
    rootEntries: row!.root_entries,
    legacyEntries: row!.legacy_entries,
    sessions: row!.sessions,
    attachments: row!.attachments,
    writers: row!.writers,
    pruneRuns: row!.prune_runs,
  };
}

/**
 * A node has written 4 entries to "/" (made 1 h old) and then 1 fresh one;
 * two sockets disconnected, one session made expired; a namespace "/legacy"
 * that no node with recovery started (no stored retention) has a day-old
 * entry; one writer idle for 2 h; one attachment 1 h old and one fresh.
 */
async function pastRetention(schema: string): Promise<{ liveSid: string; expiredSid: string }> {
  const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: { ...NO_SCHEDULED_PRUNE, schema } });
  const pool = cluster.node(0).pool;
  for (let i = 0; i < 4; i++) cluster.node(0).io.emit("ev", { n: i });
  await waitForHead(pool, 4, "/", schema);
  await pool.query(`UPDATE ${schema}.log_entries SET created_at = now() - interval '1 hour'`);
  cluster.node(0).io.emit("ev", { n: "fresh" });
  await waitForHead(pool, 5, "/", schema);

  const live = await cluster.connect(0);
  const expired = await cluster.connect(0);
  const [liveSid, expiredSid] = [live.id!, expired.id!];
  goOffline(live);
  goOffline(expired);
  await waitForSession(pool, liveSid, schema);
  await waitForSession(pool, expiredSid, schema);
  await pool.query(`UPDATE ${schema}.sessions SET expires_at = now() - interval '1 second' WHERE sid = $1`, [expiredSid]);

  const [legacy] = (
    await pool.query<{ id: number }>(`INSERT INTO ${schema}.namespaces (name, head) VALUES ('/legacy', 1) RETURNING id`)
  ).rows;
  await pool.query(
    `INSERT INTO ${schema}.log_entries (namespace_id, "offset", created_at, payload) VALUES ($1, 1, now() - interval '1 day', '\\x00')`,
    [legacy!.id],
  );
  await pool.query(
    `INSERT INTO ${schema}.log_writers (writer_id, namespace_id, updated_at)
     SELECT 'gone-node:/', id, now() - interval '2 hours' FROM ${schema}.namespaces WHERE name = '/'`,
  );
  await pool.query(
    `INSERT INTO ${schema}.socket_io_attachments (created_at, payload)
     VALUES (now() - interval '1 hour', '\\x00'), (now(), '\\x01')`,
  );
  await cluster.close();
  return { liveSid, expiredSid };
}

describe("prune", () => {
  it("removes what is past each namespace's stored retention; --dry-run counts the same and deletes nothing", async () => {
    const schema = await freshSchema(db.url, "prune");
    const { liveSid } = await pastRetention(schema);
    const before = await counts(schema);
    expect(before.rootEntries).toEqual(["1", "2", "3", "4", "5"]);
    expect(before.sessions).toHaveLength(2);
    expect(before.writers).toHaveLength(2);
    const expected = {
      schema,
      logEntries: 4,
      sessions: 1,
      attachments: 1,
      writers: 1,
      namespaceRows: 0,
      stagedEvents: 0,
      namespaces: [{ name: "/", retentionMs: RETENTION_MS, logEntries: 4, writers: 1 }],
      skipped: ["/legacy"],
    };

    // Human dry run, in a real process.
    const human = await runCli(["prune", "--dry-run", "--database-url", db.url, "--schema", schema]);
    expectSuccess(human);
    const lines = human.stdout.trimEnd().split("\n");
    expect(lines[0]).toMatch(
      new RegExp(`^dry run on schema "${schema}" on 127\\.0\\.0\\.1:\\d+/t_cli_prune_\\w+: would remove 4 log entries, 1 expired session, 1 attachment, 1 idle writer$`),
    );
    expect(lines[1]).toMatch(/^\s+NAMESPACE\s+RETENTION\s+LOG ENTRIES\s+WRITERS$/);
    expect(lines[2]).toMatch(/^\s+\/\s+1m 50s\s+4\s+1$/);
    expect(lines[3]).toMatch(/^skipped 1 namespace with no stored retention .*: \/legacy$/);
    expect(lines[4]).toBe("nothing was deleted (--dry-run)");
    expect(await counts(schema)).toEqual(before);

    const dry = await runCliInProcess(["prune", "--dry-run", "--json", "--schema", schema], { DATABASE_URL: db.url });
    expectSuccess(dry);
    expect(JSON.parse(dry.stdout) as PruneOutcome).toEqual({ ...expected, dryRun: true });
    expect(await counts(schema)).toEqual(before);

    const real = await runCliInProcess(["prune", "--json", "--schema", schema], { DATABASE_URL: db.url });
    expectSuccess(real);
    expect(JSON.parse(real.stdout) as PruneOutcome).toEqual({ ...expected, dryRun: false });
    expect(await counts(schema)).toEqual({
      rootEntries: ["5"],
      legacyEntries: 1,
      sessions: [liveSid],
      attachments: 1,
      writers: before.writers.filter((w) => w !== "gone-node:/"),
      pruneRuns: 1,
    });

    // Recorded for `status`, with who ran it.
    const status = JSON.parse((await runCliInProcess(["status", "--json", "--schema", schema], { DATABASE_URL: db.url })).stdout) as RecoveryStatus;
    expect(JSON.parse(status.lastPrune!.result!)).toEqual({ source: "cli", logEntries: 4, sessions: 1, attachments: 1, writers: 1, namespaceRows: 0 });

    // Nothing left to do: a second pass removes nothing.
    const again = await runCliInProcess(["prune", "--schema", schema], { DATABASE_URL: db.url });
    expectSuccess(again);
    expect(again.stdout).toMatch(/^pruned schema "prune_\d+" on .*: removed 0 log entries, 0 expired sessions, 0 attachments, 0 idle writers\n/);
  });

  it("prunes with the longest retention any node started with", async () => {
    const schema = await freshSchema(db.url, "prune");
    const retention = async () =>
      (await sql<{ r: string | null }>(db.url, `SELECT retention_ms::text AS r FROM ${schema}.namespaces WHERE name = '/'`))[0]?.r;
    const writers = async () => (await sql<{ n: number }>(db.url, `SELECT count(*)::int AS n FROM ${schema}.log_writers`))[0]!.n;
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 1,
      maxDisconnectionDuration: 1000,
      adapter: { ...NO_SCHEDULED_PRUNE, schema },
    });
    await waitFor(async () => (await retention()) === "51000", { message: "the first node's retention (1 s + 50 s margin)" });
    await cluster.addNode({ maxDisconnectionDuration: 120_000 });
    await waitFor(async () => (await retention()) === "170000", { message: "the longer retention of the second node" });
    await cluster.addNode({ maxDisconnectionDuration: 1000 });
    await waitFor(async () => (await writers()) === 3, { message: "the third node to register" });
    expect(await retention()).toBe("170000");

    const run = await runCliInProcess(["prune", "--dry-run", "--json", "--schema", schema], { DATABASE_URL: db.url });
    expectSuccess(run);
    expect((JSON.parse(run.stdout) as PruneOutcome).namespaces).toEqual([{ name: "/", retentionMs: 170_000, logEntries: 0, writers: 0 }]);
  });

  it("waits for a pass under way, and gives up after --lock-timeout (exit 1)", async () => {
    const schema = await freshSchema(db.url, "prune");
    const holder = new pg.Client({ connectionString: db.url });
    await holder.connect();
    try {
      await holder.query("SELECT pg_advisory_lock(hashtext($1))", [`socket.io-postgres-recovery:prune:${schema}`]);
      const blocked = await runCliInProcess(["prune", "--lock-timeout", "300", "--schema", schema], { DATABASE_URL: db.url });
      expectOneLineFailure(blocked, 1, new RegExp(`another pruning pass on schema "${schema}" held the lock for 300 ms; try again`));
      // A dry run takes no lock.
      expectSuccess(await runCliInProcess(["prune", "--dry-run", "--schema", schema], { DATABASE_URL: db.url }));
      await holder.query("SELECT pg_advisory_unlock(hashtext($1))", [`socket.io-postgres-recovery:prune:${schema}`]);
    } finally {
      await holder.end();
    }
    expectSuccess(await runCliInProcess(["prune", "--lock-timeout", "300", "--schema", schema], { DATABASE_URL: db.url }));
  });
});

describe("prune failures (exit 1, one line)", () => {
  it("cannot reach the database (a closed port)", async () => {
    const port = await closedPort();
    const run = await runCli(["prune", "--database-url", urlWithPort(db.url, port)]);
    expectOneLineFailure(run, 1, new RegExp(`cannot connect to Postgres at 127\\.0\\.0\\.1:${port}/t_cli_prune_\\w+: connection refused`));
  });

  it("refuses a missing schema and one with pending migrations, dry or not", async () => {
    await migratePartially(db.url, "prune_older", 1);
    for (const dry of [[], ["--dry-run"]]) {
      const missing = await runCliInProcess(["prune", ...dry, "--schema", "no_such_schema"], { DATABASE_URL: db.url });
      expectOneLineFailure(missing, 1, /schema "no_such_schema" does not exist/);
      const older = await runCliInProcess(["prune", ...dry, "--schema", "prune_older"], { DATABASE_URL: db.url });
      const pending = knownMigrations().slice(1).map((m) => m.tag);
      expectOneLineFailure(older, 1, new RegExp(`schema "prune_older" lacks ${pending.length} migration\\(s\\) \\(${pending.join(", ")}\\)`));
    }
  });
});
