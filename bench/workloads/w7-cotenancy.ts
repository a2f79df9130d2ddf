/**
 * W7 co-tenancy: the application's own transactions on the same Postgres
 * instance. `pgbench` (TPC-B-like, 4 clients, 2 threads, as fast as it goes)
 * runs on a database of its own, first alone, then beside a 2-node cluster
 * of the peer that emits ~100-byte events at a fixed rate (the same for
 * every peer, so each offers Postgres the same work) to clients on both
 * nodes. Each peer's run measures both phases back to back, so the ratio
 * beside ÷ alone is taken within seconds on a noisy machine.
 *
 * Why: a transaction that NOTIFYs takes an instance-wide lock at commit
 * (the notification queue is kept in commit order), so every notifying
 * commit can delay the application's commits. What bounds the cost is how
 * many notifying commits per second the adapter makes and how large they
 * are: counted afterwards by a LISTEN connection during a few seconds of the
 * same emission (not during pgbench: a listener costs Postgres a wake-up per
 * NOTIFY, more for peers that notify more).
 */
import { execFile, execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { call } from "../lib/ipc.js";
import { startCluster, sleep } from "../lib/cluster.js";
import type { Metrics, MetricDef, RunContext, Workload } from "../lib/context.js";
import { percentile } from "../receipts.js";

const run = promisify(execFile);

/** Seconds of each pgbench phase. */
const PHASE_SECONDS = Number(process.env.W7_PHASE_SECONDS ?? 30);
/** The emission: one event every EMIT_INTERVAL_MS from node 0 (500 events/s). */
const EMIT_INTERVAL_MS = 2;
/** Few clients: their deliveries cost CPU in the client process, which would crowd out pgbench on a small machine whatever the adapter. */
const CLIENTS_PER_NODE = Number(process.env.W7_CLIENTS_PER_NODE ?? 5);
/** pgbench scale: one branch per client, so its clients do not all queue on one row. */
const PGBENCH_SCALE = 4;
const COUNT_WINDOW_MS = 3000;

const metrics: MetricDef[] = [
  { key: "tpsAlone", label: "app TPS alone", digits: 0 },
  { key: "tpsBeside", label: "app TPS beside the adapter", better: "higher", digits: 0 },
  { key: "tpsKept", label: "app TPS beside ÷ alone", better: "higher", digits: 3 },
  { key: "p50Alone", label: "app p50 alone (ms)", digits: 2 },
  { key: "p50Beside", label: "app p50 beside (ms)", better: "lower", digits: 2 },
  { key: "p99Alone", label: "app p99 alone (ms)", digits: 2 },
  { key: "p99Beside", label: "app p99 beside (ms)", better: "lower", digits: 2 },
  { key: "p99Grown", label: "app p99 beside ÷ alone", better: "lower", digits: 3 },
  { key: "eventsPerSec", label: "events/s emitted (offered, both peers alike)", digits: 0 },
  { key: "notifiesPerSec", label: "NOTIFYs/s (all channels, counting window)", better: "lower", digits: 0 },
  { key: "notifyBytes", label: "mean NOTIFY payload (bytes)", better: "lower", digits: 0 },
  { key: "notifiesPerEvent", label: "NOTIFYs per event (counting window)", better: "lower", digits: 2 },
  { key: "appendsPerSec", label: "log appends/s (ours: write transactions, each with one NOTIFY)", digits: 0 },
  { key: "adapterTxPerSec", label: "adapter database transactions/s (pg_stat_database, incl. LISTEN wake-ups)", better: "lower", digits: 0 },
  { key: "walSyncsAlone", label: "WAL flushes/s, instance, alone (pg_stat_wal)", digits: 0 },
  { key: "walSyncsBeside", label: "WAL flushes/s, instance, beside", digits: 0 },
  { key: "walKbAlone", label: "WAL KiB/s, instance, alone", digits: 0 },
  { key: "walKbBeside", label: "WAL KiB/s, instance, beside", digits: 0 },
  { key: "nodeCores", label: "adapter node CPU beside (cores, both nodes)", better: "lower", digits: 2 },
  { key: "lost", label: "events lost (all clients)" },
  { key: "duplicated", label: "events duplicated" },
];

/** The NOTIFY channels of a peer on namespace "/" (ours: the log channel and the cluster bus). */
function channelsOf(peerId: string): string[] {
  return peerId === "ours" ? ["socket.io:socket_io:log", "socket.io#/"] : ["socket.io#/"];
}

function hasPgbench(): boolean {
  try {
    execFileSync("pgbench", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** pgbench's database on the run's server, created and initialised once per bench run. */
let appDatabase: Promise<{ url: string; name: string; adminUrl: string }> | undefined;

function appDatabaseOf(ctx: RunContext) {
  return (appDatabase ??= (async () => {
    const name = `${ctx.db.name}_app`;
    const adminUrl = new URL(ctx.db.url);
    adminUrl.pathname = "/postgres";
    const admin = new pg.Client({ connectionString: adminUrl.toString() });
    await admin.connect();
    try {
      await admin.query(`CREATE DATABASE ${name}`);
    } finally {
      await admin.end();
    }
    const url = new URL(ctx.db.url);
    url.pathname = `/${name}`;
    await run("pgbench", ["-i", "-q", "-s", String(PGBENCH_SCALE), url.toString()], { timeout: 120_000 });
    return { url: url.toString(), name, adminUrl: adminUrl.toString() };
  })());
}

async function dropAppDatabase(): Promise<void> {
  if (!appDatabase) return;
  const db = await appDatabase.catch(() => undefined);
  appDatabase = undefined;
  if (!db) return;
  const admin = new pg.Client({ connectionString: db.adminUrl });
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${db.name} WITH (FORCE)`);
  } finally {
    await admin.end();
  }
}

interface PgbenchResult {
  tps: number;
  p50: number;
  p99: number;
  /** Instance-wide WAL flushes and KiB per second during the phase (pg_stat_wal). */
  walSyncs: number;
  walKb: number;
}

async function walStats(url: string): Promise<{ syncs: number; bytes: number; at: number }> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    // Backends report WAL statistics when idle or at least once a second: a phase of 30 s is off by a little.
    const { rows } = await client.query<{ syncs: string; bytes: string }>("SELECT wal_sync::text AS syncs, wal_bytes::text AS bytes FROM pg_stat_wal");
    return { syncs: Number(rows[0]!.syncs), bytes: Number(rows[0]!.bytes), at: Date.now() };
  } finally {
    await client.end();
  }
}

/** One pgbench phase; latencies from its per-transaction log (-l), in ms. */
async function pgbench(url: string): Promise<PgbenchResult> {
  const dir = mkdtempSync(path.join(os.tmpdir(), "w7-pgbench-"));
  const walBefore = await walStats(url);
  try {
    const { stdout } = await run(
      "pgbench",
      ["-c", "4", "-j", "2", "-T", String(PHASE_SECONDS), "-l", `--log-prefix=${path.join(dir, "tx")}`, url],
      { timeout: (PHASE_SECONDS + 60) * 1000 },
    );
    const tps = Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(stdout)?.[1]);
    const latencies: number[] = [];
    for (const file of readdirSync(dir)) {
      for (const line of readFileSync(path.join(dir, file), "utf8").split("\n")) {
        // client_id transaction_no time(µs) script_no time_epoch time_us
        const us = Number(line.split(" ")[2]);
        if (line && Number.isFinite(us)) latencies.push(us / 1000);
      }
    }
    latencies.sort((a, b) => a - b);
    if (!Number.isFinite(tps) || latencies.length === 0) throw new Error(`pgbench gave no result: ${stdout.slice(-500)}`);
    const walAfter = await walStats(url);
    const seconds = (walAfter.at - walBefore.at) / 1000;
    return {
      tps,
      p50: percentile(latencies, 50)!,
      p99: percentile(latencies, 99)!,
      walSyncs: (walAfter.syncs - walBefore.syncs) / seconds,
      walKb: (walAfter.bytes - walBefore.bytes) / 1024 / seconds,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Counts NOTIFYs and their payload bytes on `channels` until `stop()`. */
async function countNotifies(url: string, channels: string[]) {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  let count = 0;
  let bytes = 0;
  client.on("notification", (msg) => {
    count++;
    bytes += Buffer.byteLength(msg.payload ?? "");
  });
  for (const channel of channels) await client.query(`LISTEN "${channel.replace(/"/g, '""')}"`);
  return {
    stop: async () => {
      await client.end();
      return { count, bytes };
    },
  };
}

async function measure(ctx: RunContext): Promise<Metrics> {
  const app = await appDatabaseOf(ctx);
  const alone = await pgbench(app.url);

  const cluster = await startCluster(ctx, 2);
  try {
    const { nodes, clients } = cluster;
    for (const node of nodes) await call(clients, "connect", { url: node.url, count: CLIENTS_PER_NODE });
    const seconds = PHASE_SECONDS + 2 + COUNT_WINDOW_MS / 1000 + 2;
    const count = Math.ceil((seconds * 1000) / EMIT_INTERVAL_MS);
    const epoch = ctx.nextEpoch();
    await call(clients, "arm", { epoch, expect: { all: { 0: count } } });
    const emitting = call<{ startedAt: number; endedAt: number }>(
      nodes[0]!.child,
      "emit-paced",
      { epoch, source: 0, count, intervalMs: EMIT_INTERVAL_MS },
      (seconds + 60) * 1000,
    );
    await sleep(2000); // steady emission before pgbench starts

    const usageBefore = await cluster.usage();
    const commitsBefore = await ctx.db.commits();
    const appendsBefore = ctx.peer.id === "ours" ? await ctx.db.ourAppends() : 0;
    const startedAt = Date.now();
    const beside = await pgbench(app.url);
    const usageAfter = await cluster.usage();
    const cpuMs = usageAfter.reduce((n, u, i) => n + (u?.cpuMs ?? 0) - (usageBefore[i]?.cpuMs ?? 0), 0);
    const cpuSeconds = (Date.now() - startedAt) / 1000;
    await sleep(1100); // let backends flush their statistics
    const elapsed = (Date.now() - startedAt) / 1000;
    const adapterTx = (await ctx.db.commits()) - commitsBefore;
    const appends = ctx.peer.id === "ours" ? (await ctx.db.ourAppends()) - appendsBefore : 0;

    // Events delivered during the window (one client's receipts) set NOTIFYs against events.
    const receivedBefore = await call<{ received: number }>(clients, "summary", { clients: [0] });
    const counter = await countNotifies(ctx.db.url, channelsOf(ctx.peer.id));
    await sleep(COUNT_WINDOW_MS);
    const counted = await counter.stop();
    const receivedAfter = await call<{ received: number }>(clients, "summary", { clients: [0] });
    const windowEvents = receivedAfter.received - receivedBefore.received;
    const emitted = await emitting;
    await call(clients, "wait", { timeoutMs: 30_000 }, 40_000);
    const summary = await call<{ lost: number; duplicated: number }>(clients, "summary", {});

    return {
      tpsAlone: alone.tps,
      tpsBeside: beside.tps,
      tpsKept: beside.tps / alone.tps,
      p50Alone: alone.p50,
      p50Beside: beside.p50,
      p99Alone: alone.p99,
      p99Beside: beside.p99,
      p99Grown: beside.p99 / alone.p99,
      eventsPerSec: (count * 1000) / (emitted.endedAt - emitted.startedAt),
      notifiesPerSec: (counted.count * 1000) / COUNT_WINDOW_MS,
      notifyBytes: counted.count ? counted.bytes / counted.count : null,
      notifiesPerEvent: windowEvents > 0 ? counted.count / windowEvents : null,
      appendsPerSec: ctx.peer.id === "ours" ? appends / elapsed : null,
      adapterTxPerSec: adapterTx / elapsed,
      walSyncsAlone: alone.walSyncs,
      walSyncsBeside: beside.walSyncs,
      walKbAlone: alone.walKb,
      walKbBeside: beside.walKb,
      nodeCores: cpuMs / 1000 / cpuSeconds,
      lost: summary.lost,
      duplicated: summary.duplicated,
    };
  } finally {
    await cluster.stop();
  }
}

export const w7: Workload = {
  id: "W7",
  title: `co-tenancy: pgbench (TPC-B-like, -c 4 -j 2, scale ${PGBENCH_SCALE}, ${PHASE_SECONDS} s) alone, then beside 2 nodes emitting ${1000 / EMIT_INTERVAL_MS} events/s to ${2 * CLIENTS_PER_NODE} clients`,
  metrics,
  applies: (peer) => {
    if (peer.id !== "ours" && peer.id !== "upstream-pg") return "n/a: shares no Postgres with the application";
    return hasPgbench() ? true : "n/a: pgbench is not installed";
  },
  run: measure,
  teardown: dropAppDatabase,
};
