/**
 * The demo's supervisor (started by start.mjs): the database, migrations, N
 * Socket.IO node processes (node.ts) on loopback ports, and the page.
 *
 * Settings (environment):
 *   DATABASE_URL  a Postgres to use; unset: an embedded one, data in .embedded-pg/
 *   DEMO_PORT     the page's port (default 3000); node i listens on DEMO_PORT + i.
 *                 Taken ports are replaced by free ones. 0: free ports everywhere.
 *   DEMO_NODES    how many nodes (default 2, 2 to 8)
 *
 * Stable ports let a tab left open across a Ctrl-C and a new `npm start`
 * reconnect to the same address and recover its session from the database.
 *
 * Startup overlaps what can: the node processes load their modules and this
 * process loads pg and the adapter (imported when needed, not at the top)
 * while Postgres starts.
 *
 * Stopping (SIGINT, SIGTERM, or start.mjs going away): nodes are closed with
 * SIGTERM (their `io.close()` writes the sessions of their sockets), then the
 * embedded Postgres is stopped. A second request forces: SIGKILL to the
 * nodes, Postgres stopped at once.
 */
import { spawn } from "node:child_process";
import path from "node:path";
import type pg from "pg";
import type { RecoveryStatus } from "../src/index.js";
import { ManagedNode } from "./managed-node.js";
import type { NodeReport } from "./node-protocol.js";
import { startPageServer, type PageServer } from "./page-server.js";
import { demoDatabase, type DemoDatabase } from "./postgres.js";
import { RecoveryStats } from "./recovery-stats.js";

// From start.mjs's start when it tells us, else from ours.
const startedAt = Number(process.env.DEMO_LAUNCHED_AT) || Date.now() - process.uptime() * 1000;
const say = (line: string) => console.log(line);
const elapsed = () => `${((Date.now() - startedAt) / 1000).toFixed(1)} s`;

function readSettings(): { port: number; nodeCount: number } {
  const port = Number(process.env.DEMO_PORT ?? 3000);
  const nodeCount = Number(process.env.DEMO_NODES ?? 2);
  if (!Number.isInteger(port) || port < 0 || port > 65535 - 8) {
    throw new Error(`DEMO_PORT must be a port number (0 for free ports); got ${process.env.DEMO_PORT}`);
  }
  if (!Number.isInteger(nodeCount) || nodeCount < 2 || nodeCount > 8) {
    throw new Error(`DEMO_NODES must be an integer from 2 to 8; got ${process.env.DEMO_NODES}`);
  }
  return { port, nodeCount };
}

function statusLine(node: ManagedNode): string {
  const pid = node.pid === undefined ? "" : `  pid ${node.pid}`;
  return `  ${node.name.padEnd(8)} ${node.url}${pid}  ${node.state}${node.restarts ? `  (restarts: ${node.restarts})` : ""}`;
}

const recoveries = new RecoveryStats();
const recentErrors: string[] = [];
const nodes: ManagedNode[] = [];
let databaseStarting: Promise<DemoDatabase> | undefined;
let database: DemoDatabase | undefined;
let statusPool: pg.Pool | undefined;
let readStatus: ((pool: pg.Pool) => Promise<RecoveryStatus>) | undefined;
let page: PageServer | undefined;
let stopRequests = 0;

function onReport(node: ManagedNode, report: NodeReport): void {
  switch (report.type) {
    case "restored":
      recoveries.restored(report.replayed);
      break;
    case "refused":
      recoveries.refused(report.reason);
      break;
    case "sockets":
      node.sockets = report.count;
      break;
    case "error":
      recentErrors.push(`${new Date().toISOString().slice(11, 19)} ${node.name}: ${report.message}`);
      recentErrors.splice(0, Math.max(recentErrors.length - 5, 0));
      break;
  }
}

function onUnexpectedExit(node: ManagedNode, code: number | null, signal: NodeJS.Signals | null): void {
  if (stopRequests > 0) return;
  say(`${node.name} exited (code ${code}, signal ${signal}); the page's restart button starts it again`);
}

function restart(name: string): "started" | "unknown" | "busy" {
  const node = nodes.find((n) => n.name === name);
  if (!node) return "unknown";
  if (stopRequests > 0 || node.state === "restarting" || node.state === "stopping" || node.state === "starting") return "busy";
  say(`${name}: restarting (graceful: its sessions are written, its tabs reconnect)`);
  node.restart().then(
    () => say(statusLine(node)),
    (err: unknown) => say(`${name}: restart failed: ${err instanceof Error ? err.message : String(err)}`),
  );
  return "started";
}

function crash(name: string): "started" | "unknown" | "busy" {
  const node = nodes.find((n) => n.name === name);
  if (!node) return "unknown";
  if (stopRequests > 0 || node.state !== "up") return "busy";
  say(`${name}: SIGKILL (a crash: it writes nothing; its tabs recover on another node once it is declared dead)`);
  node.stop({ force: true }).then(
    () => say(`${name} is down; the page's start button starts it again`),
    (err: unknown) => say(`${name}: crash failed: ${err instanceof Error ? err.message : String(err)}`),
  );
  return "started";
}

const EMIT_WORKER = path.join(import.meta.dirname, "emit-worker.ts");
let workers = 0;

/** A separate process emits with createEmitter (see emit-worker.ts); at most 4 at once. */
function emitFromWorker(mode: "worker" | "rollback"): "started" | "busy" {
  if (!database || stopRequests > 0 || workers >= 4) return "busy";
  workers++;
  const child = spawn(process.execPath, ["--import", "tsx", EMIT_WORKER, database.url, mode], {
    cwd: path.resolve(import.meta.dirname, ".."),
    stdio: ["ignore", "inherit", "inherit"],
  });
  child.on("exit", (code) => {
    workers--;
    if (code !== 0) say(`  emit worker exited with ${code}`);
  });
  return "started";
}

async function cluster(): Promise<unknown> {
  // What the database holds (heads, retained entries, sessions, last prune): the CLI's `status`.
  const db = statusPool && readStatus ? await readStatus(statusPool).catch((err: Error) => ({ error: err.message })) : null;
  return {
    database: database?.description,
    nodes: nodes.map((n) => ({ name: n.name, url: n.url, state: n.state, pid: n.pid ?? null, sockets: n.sockets, restarts: n.restarts })),
    status: db,
    recoveries: recoveries.summary(),
    errors: recentErrors,
  };
}

async function start(): Promise<void> {
  const { port, nodeCount } = readSettings();
  page = await startPageServer(port, port !== 0, { cluster, restart, crash, emitFromWorker });
  // Postgres starts while the nodes load their modules; they get its URL once it is migrated.
  databaseStarting = demoDatabase();
  const libraries = Promise.all([import("pg"), import("../src/index.js")]);
  // Awaited below once Postgres is up; a failure surfaces there, not as an unhandled rejection now.
  libraries.catch(() => {});
  const databaseReady = databaseStarting.then(async (db) => {
    database = db;
    say(`  database  ${db.description}, up at ${elapsed()}`);
    const [{ default: pgModule }, { collectStatus, migrate }] = await libraries;
    statusPool = new pgModule.Pool({ connectionString: db.url, max: 2 });
    statusPool.on("error", () => {});
    readStatus = collectStatus;
    const migrated = await migrate(statusPool);
    say(`  schema    ${migrated.schema}: ${migrated.applied.length ? `applied ${migrated.applied.join(", ")}` : "up to date"}`);
    return db.url;
  });
  const origins = [`http://127.0.0.1:${page.port}`, `http://localhost:${page.port}`];
  for (let i = 1; i <= nodeCount; i++) {
    nodes.push(
      new ManagedNode({
        name: `node-${i}`,
        databaseUrl: () => databaseReady,
        port: port === 0 ? 0 : port + i,
        portFallback: port !== 0,
        pageOrigins: origins,
        onReport,
        onUnexpectedExit,
      }),
    );
  }
  await Promise.all([databaseReady, ...nodes.map((node) => node.start())]);
  if (stopRequests > 0) return;
  for (const node of nodes) say(statusLine(node));
  say(`\nopen http://127.0.0.1:${page.port}   (ready in ${elapsed()}; Ctrl-C stops, a second Ctrl-C forces)`);
}

/** The first request stops gracefully; a later one forces and owns the exit. */
async function stop(): Promise<void> {
  stopRequests++;
  if (stopRequests > 1) {
    if (stopRequests === 2) await forceStop();
    return;
  }
  const forced = () => stopRequests > 1;
  say("\nstopping: closing the nodes (their sessions are written)...");
  await Promise.all(nodes.map((node) => node.stop()));
  if (forced()) return;
  await page?.close();
  await statusPool?.end().catch(() => {});
  // Postgres may still be starting: wait for it, then stop it.
  const db = await databaseStarting?.catch(() => undefined);
  if (forced()) return;
  if (db?.embedded) say("stopping the embedded Postgres...");
  await db?.stop();
  if (forced()) return;
  say("stopped cleanly");
  process.exit();
}

async function forceStop(): Promise<void> {
  say("forcing: killing the nodes, stopping Postgres now");
  await Promise.all(nodes.map((node) => node.stop({ force: true })));
  const db = await databaseStarting?.catch(() => undefined);
  await db?.stop().catch(() => {});
  process.exit(130);
}

process.on("SIGINT", () => void stop());
process.on("SIGTERM", () => void stop());
// start.mjs went away (even killed): nothing must stay behind.
process.on("disconnect", () => void stop());

say("socket.io-postgres-recovery demo");
start().catch(async (err: unknown) => {
  // A stop under way (it made the start fail, or came meanwhile) finishes and exits by itself.
  if (stopRequests > 0) return;
  console.error(`the demo could not start: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
  await stop().catch(() => {});
});
