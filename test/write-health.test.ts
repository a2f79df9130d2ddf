/**
 * Write health: a log write that fails with an error that does not pass on its
 * own within a retry or two (a failover to read-only, a statement or lock
 * timeout behind another session's lock, a revoked grant, a prepared statement
 * that the connection no longer has or has with another text) must neither
 * drop its batch nor leave the node in outage mode for good. One node (A)
 * gets the fault; a client on another node (B) must receive the event that A
 * emitted during the fault, logged, once, in order, and what A emits after the
 * fault is fixed. When outage mode started, it must end without a restart.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { describe, expect, it } from "vitest";
import { LogQueries } from "../src/sql/log-queries.js";
import { Cluster, recordEvents, waitFor, type TestNode } from "./helpers/cluster.js";
import { withAdminClient } from "./helpers/admin.js";
import { adminUrl } from "./helpers/database.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("write_health");

const UNLOGGED_AFTER_MS = 300;

/** The suite's database URL with extra connection parameters (application_name, options, user). */
function urlWith(params: Record<string, string>, auth?: { user: string; password: string }): string {
  const url = new URL(db.url);
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  if (auth) {
    url.username = auth.user;
    url.password = auth.password;
  }
  return url.toString();
}

interface Fault {
  /** Connection parameters of node A's pool. */
  url?: string;
  poolMax?: number;
  /** Breaks A's log writes (A and B are running, A's client and B's client connected). */
  inject(a: TestNode, admin: pg.Client): Promise<void>;
  repair(a: TestNode, admin: pg.Client): Promise<void>;
  /** SQLSTATE (or message) of the failures A must have reported. */
  failure: RegExp;
  /** What outage-started's `lastError` may be, when not `failure` (the latest error at that moment). */
  outageError?: RegExp;
  /** Whether the fault lasts long enough for outage mode (it then must end). */
  outage: boolean;
}

interface OutageLog {
  started: Array<{ lastError: Error | undefined }>;
  ended: number;
}

async function runFault(fault: Fault): Promise<void> {
  const admin = new pg.Client({ connectionString: db.url });
  await admin.connect();
  // Repaired even when the test fails half-way: the next tests share the database (a read-only one failed them all).
  let unrepaired: TestNode | undefined;
  try {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: { unloggedDeliveryAfterMs: UNLOGGED_AFTER_MS } });
    const b = cluster.node(0);
    const a = await cluster.addNode({ databaseUrl: fault.url ?? db.url, poolMax: fault.poolMax ?? 2 });
    await cluster.waitForServerCount();
    const outage: OutageLog = { started: [], ended: 0 };
    a.io.of("/").adapter.on("outage-started", (e: { lastError: Error | undefined }) => outage.started.push(e));
    a.io.of("/").adapter.on("outage-ended", () => outage.ended++);

    const onB = await cluster.connect(b);
    const got = recordEvents(onB);
    const ns = () => got.filter((r) => r.event === "ev").map((r) => r.args[0]);

    const logged = async () =>
      Number((await admin.query<{ n: string }>("SELECT count(*)::text AS n FROM socket_io.log_entries")).rows[0]!.n);
    const before = await logged();
    a.io.emit("ev", 1);
    await waitFor(() => ns().length === 1, { message: "the event before the fault" });

    unrepaired = a;
    await fault.inject(a, admin);
    a.io.emit("ev", 2); // its batch fails; it must be retried, not dropped
    await waitFor(() => a.errors.some((e) => fault.failure.test(explain(e))), {
      message: () => `A to report the failure (got: ${a.errors.map(explain).join(" | ")})`,
    });
    if (fault.outage) {
      await waitFor(() => outage.started.length === 1, { timeout: 10_000, message: "outage mode" });
      expect(explain(outage.started[0]!.lastError)).toMatch(fault.outageError ?? fault.failure);
    }

    await fault.repair(a, admin);
    unrepaired = undefined;
    // Nothing new is emitted: what ends outage mode is the retry of the failed batch.
    if (fault.outage) await waitFor(() => outage.ended === 1, { timeout: 10_000, message: "outage mode to end" });
    await waitFor(() => ns().includes(2), { timeout: 10_000, message: () => `the event of the failed batch on B (got ${ns().join()})` });
    a.io.emit("ev", 3);
    await waitFor(() => ns().includes(3), { message: () => `the event after the repair on B (got ${ns().join()})` });
    expect(ns()).toEqual([1, 2, 3]);
    expect((await logged()) - before).toBe(3); // each once
  } finally {
    if (unrepaired) await fault.repair(unrepaired, admin).catch(() => undefined);
    await admin.end();
  }
}

/** An error with its causes, and their SQLSTATEs, on one line. */
function explain(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const code = (err as { code?: unknown }).code;
  const own = `${typeof code === "string" ? `[${code}] ` : ""}${err.message}`;
  return err.cause === undefined ? own : `${own} <- ${explain(err.cause)}`;
}

async function terminate(admin: pg.Client, applicationName: string): Promise<void> {
  await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()", [
    applicationName,
  ]);
}

/** A session holding the lock of the namespace row that every append of "/" takes. */
function rowLockHolder() {
  const holder = new pg.Client({ connectionString: db.url });
  return {
    async take() {
      await holder.connect();
      await holder.query("BEGIN");
      await holder.query("SELECT 1 FROM socket_io.namespaces WHERE name = '/' FOR UPDATE");
    },
    async release() {
      await holder.query("COMMIT");
      await holder.end();
    },
  };
}

describe("write health: a failed log write is retried until it commits, and outage mode ends", () => {
  it("a failover to read-only (25006): outage mode while the database refuses writes, then the batch commits", async () => {
    await runFault({
      url: urlWith({ application_name: "wh-node-a" }),
      inject: async (_a, admin) => {
        // As during a failover: new sessions land on a read-only server; the old ones are cut.
        await admin.query(`ALTER DATABASE ${pg.escapeIdentifier(db.name)} SET default_transaction_read_only = on`);
        await terminate(admin, "wh-node-a");
      },
      repair: async (_a, admin) => {
        await admin.query(`ALTER DATABASE ${pg.escapeIdentifier(db.name)} RESET default_transaction_read_only`);
        await terminate(admin, "wh-node-a"); // the read-only sessions go; new ones are writable
      },
      failure: /\[25006\]/,
      // The failover also cut A's sessions: when outage mode starts (300 ms here) before the retry on a
      // read-only session has run (slow under CI load), the latest error is that cut (57P01).
      outageError: /\[25006\]|\[57P01\]/,
      outage: true,
    });
  });

  for (const [label, setting, code] of [
    ["a statement timeout (57014)", "statement_timeout", "57014"],
    ["a lock timeout (55P03)", "lock_timeout", "55P03"],
  ] as const) {
    it(`${label} behind another session's lock on the namespace row`, async () => {
      const lock = rowLockHolder();
      await runFault({
        url: urlWith({ options: `-c ${setting}=100` }),
        inject: () => lock.take(),
        repair: () => lock.release(),
        failure: new RegExp(`\\[${code}\\]`),
        outage: true,
      });
    });
  }

  it("a revoked grant (42501): outage mode until the grant is back", async () => {
    const role = `wh_runtime_${randomBytes(4).toString("hex")}`;
    const password = randomBytes(12).toString("hex");
    const grants = readFileSync(fileURLToPath(new URL("../docs/runtime-grants.sql", import.meta.url)), "utf8").replace(/\bsio_runtime\b/g, role);
    await withAdminClient(adminUrl(), (c) => c.query(`CREATE ROLE ${role} LOGIN PASSWORD '${password}'`));
    try {
      await withAdminClient(db.url, (c) => c.query(grants));
      await runFault({
        url: urlWith({}, { user: role, password }),
        inject: async (_a, admin) => {
          await admin.query(`REVOKE INSERT ON socket_io.log_entries FROM ${role}`);
        },
        repair: async (_a, admin) => {
          await admin.query(`GRANT INSERT ON socket_io.log_entries TO ${role}`);
        },
        failure: /\[42501\]/,
        outage: true,
      });
    } finally {
      await withAdminClient(db.url, (c) => c.query(`DROP OWNED BY ${role}`));
      await withAdminClient(adminUrl(), (c) => c.query(`DROP ROLE IF EXISTS ${role}`));
    }
  });

  it("a prepared statement the connection lost (26000, e.g. DEALLOCATE or DISCARD ALL by a pooler)", async () => {
    await runFault({
      poolMax: 1, // the append's statement is prepared on this one connection
      inject: async (a) => {
        await a.pool.query("DEALLOCATE ALL");
      },
      repair: async () => undefined, // the pool replaces the connection the error came from
      failure: /\[26000\]/,
      outage: false,
    });
  });

  it("a connection that has another statement under the append's name", async () => {
    await runFault({
      poolMax: 1,
      inject: async (a) => {
        // A fresh connection (the old one knows the append's text under that name), on which
        // something else took the name first.
        (await a.pool.connect()).release(true);
        const name = new LogQueries(a.pool, "socket_io").appendStatementName!;
        await a.pool.query({ name, text: "SELECT 1" });
      },
      repair: async () => undefined,
      failure: /Prepared statements must be unique/,
      outage: false,
    });
  });
});
