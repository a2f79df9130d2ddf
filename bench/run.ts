/**
 * `npm run bench`: our adapter against its peers, each Socket.IO node in its
 * own process, clients in another, loopback only.
 *
 *   npm run bench -- [--quick] [--reps N] [--only W1,W2,EMIT] [--peers ours,redis-streams] [--cpu-prof] [--self-check] [--soak-minutes N]
 *
 * SOAK (workloads/soak.ts, 10 minutes; --quick: 4) runs only when --only names it.
 *
 * EMIT is the emitters' throughput (workloads/emitters.ts): ours (direct and
 * transactional), @socket.io/postgres-emitter, and redis-streams' XADD per emit.
 *
 * DATABASE_URL (default postgres://postgres@127.0.0.1:5432/postgres) names a
 * server where the run creates, and then drops, a database of its own;
 * REDIS_URL (default redis://127.0.0.1:6379) the Redis for redis-streams,
 * which is left out when it does not answer.
 *
 * Repetitions interleave the peers (ours, in-memory, upstream, redis, ours, …)
 * so that drift on a shared machine hits all of them alike. Prints a Markdown
 * report and writes it, with the raw numbers, to bench/results/.
 */
import { execSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { parseArgs } from "node:util";
import pg from "pg";
import { migrate } from "../src/index.js";
import "./lib/children.js";
import { FULL, QUICK, type RunContext, type Workload } from "./lib/context.js";
import { createRunDatabase, serverVersion, type RunDatabase } from "./lib/database.js";
import { ALL_PEERS, PEERS, type PeerId } from "./peers.js";
import { markdown, type Outcome, type RunReport, type WorkloadResult } from "./report.js";
import { selfCheck } from "./self-check.js";
import { measureEmitters } from "./workloads/emitters.js";
import { measureRawLimits } from "./workloads/raw-limits.js";
import { w1, w1split } from "./workloads/w1-fanout.js";
import { w2 } from "./workloads/w2-latency.js";
import { w3 } from "./workloads/w3-storm.js";
import { w4 } from "./workloads/w4-replay.js";
import { w5 } from "./workloads/w5-prune.js";
import { w6 } from "./workloads/w6-crash-storm.js";
import { w7 } from "./workloads/w7-cotenancy.js";
import { w8 } from "./workloads/w8-at-rest.js";
import { gNsp } from "./workloads/g-nsp.js";
import { gPriv } from "./workloads/g-priv.js";
import { gRestore } from "./workloads/g-restore.js";
import { soak } from "./workloads/soak.js";
import { summariseProfiles } from "./profile-summary.js";

// The growth workloads (G-…) run only when named in --only: they are long and measure our adapter alone.
const GROWTH: Workload[] = [gNsp, gPriv, gRestore];
const WORKLOADS: Workload[] = [w1, w1split, w2, w3, w4, w5, w6, w7, w8, ...GROWTH, soak];

const { values: args } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    reps: { type: "string" },
    only: { type: "string" },
    peers: { type: "string" },
    "cpu-prof": { type: "boolean", default: false },
    "self-check": { type: "boolean", default: false },
    "soak-minutes": { type: "string" },
  },
});

function usage(message: string): never {
  process.stderr.write(`bench: ${message}\nusage: npm run bench -- [--quick] [--reps N] [--only ${[...WORKLOADS.map((w) => w.id), "EMIT"].join(",")}] [--peers ${ALL_PEERS.join(",")}] [--cpu-prof] [--self-check] [--soak-minutes N]\n`);
  process.exit(2);
}

const soakMinutes = args["soak-minutes"] === undefined ? undefined : Number(args["soak-minutes"]);
if (soakMinutes !== undefined && (!Number.isInteger(soakMinutes) || soakMinutes < 1 || soakMinutes > 120)) {
  usage(`--soak-minutes must be an integer from 1 to 120, got ${args["soak-minutes"]}`);
}
const sizes = { ...(args.quick ? QUICK : FULL), ...(soakMinutes === undefined ? {} : { soakMinutes }) };
const reps = args.reps === undefined ? (args.quick ? 1 : 3) : Number(args.reps);
if (!Number.isInteger(reps) || reps < 1 || reps > 20) usage(`--reps must be an integer from 1 to 20, got ${args.reps}`);
const only = args.only?.split(",").map((s) => s.trim());
const EMITTERS_ID = "EMIT";
for (const id of only ?? []) {
  if (id.toUpperCase() !== EMITTERS_ID && !WORKLOADS.some((w) => w.id.toLowerCase() === id.toLowerCase())) usage(`unknown workload ${id}`);
}
const measureEmittersToo = !only || only.some((id) => id.toUpperCase() === EMITTERS_ID);
const workloads = WORKLOADS.filter((w) =>
  only ? only.some((id) => id.toLowerCase() === w.id.toLowerCase()) : !GROWTH.includes(w) && !w.onRequestOnly,
);
let peers = (args.peers?.split(",").map((s) => s.trim()) ?? ALL_PEERS) as PeerId[];
for (const p of peers) if (!PEERS[p]) usage(`unknown peer ${p}`);

const baseUrl = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres";
const redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
const runId = Date.now().toString(36);
const notes: string[] = [];

async function redisVersion(): Promise<string | undefined> {
  const { createClient } = await import("redis");
  const client = createClient({ url: redisUrl, socket: { connectTimeout: 2000, reconnectStrategy: false } });
  client.on("error", () => undefined);
  try {
    await client.connect();
    const info = await client.info("server");
    return /redis_version:(\S+)/.exec(info)?.[1] ?? "?";
  } catch {
    return undefined;
  } finally {
    await client.close().catch(() => undefined);
  }
}

async function cleanRedis(prefix: string): Promise<void> {
  const { createClient } = await import("redis");
  const client = createClient({ url: redisUrl });
  client.on("error", () => undefined);
  await client.connect();
  try {
    for await (const keys of client.scanIterator({ MATCH: `${prefix}*`, COUNT: 1000 })) {
      if (keys.length) await client.del(keys);
    }
  } finally {
    await client.close();
  }
}

function packageVersion(name: string): string {
  try {
    return (JSON.parse(readFileSync(new URL(`../node_modules/${name}/package.json`, import.meta.url), "utf8")) as { version: string }).version;
  } catch {
    return "?";
  }
}

const loadavg = () => os.loadavg().map((x) => x.toFixed(2)).join(" ");

async function main(): Promise<void> {
  if (args["self-check"]) {
    process.exit((await selfCheck(baseUrl)) ? 0 : 1);
  }
  const started = Date.now();
  const redis = peers.includes("redis-streams") ? await redisVersion() : undefined;
  if (peers.includes("redis-streams") && !redis) {
    notes.push(`redis-streams left out: no Redis answered at ${redisUrl}`);
    peers = peers.filter((p) => p !== "redis-streams");
  }
  if (redis) {
    notes.push("redis-streams runs with the `redis` client's per-command timeout off (no commandOptions.timeout, no socketTimeout): with one, XADDs queued behind a burst time out and their events are dropped, which would make the comparison meaningless. Its stream maxLen is raised to 200,000 so that W4's replay is not trimmed away.");
  }
  notes.push("upstream pg runs without connection state recovery (it has none); in-memory is Socket.IO's own adapter on one node with recovery on, so W1-split interleaves both sources on that node and W2 measures same-node latency; W3 there closes the transports under the sockets and they come back to the same node.");
  notes.push("Cost (W1): NOTIFYs are counted by an extra LISTEN connection during a second, untimed burst of a fifth of the size (not during the timed one: every listener costs Postgres one wake-up transaction per NOTIFY, which would slow one-NOTIFY-per-event peers most). Write transactions: ours counted exactly from its writers' batch numbers (log_writers.last_batch, one per append), upstream = its NOTIFYs (one autocommit pg_notify per publish). \"All Postgres transactions\" is the pg_stat_database delta of the run's own database over both bursts, read after the nodes exit: it includes every listener's wake-ups, heartbeats and shutdown.");
  notes.push("Clients reconnect with socket.io-client's default backoff (reconnectionDelay 1000 ms, randomization 0.5): W3 times include it.");

  const db: RunDatabase = await createRunDatabase(baseUrl);
  let aborted = false;
  process.on("bench-abort" as never, () => {
    if (aborted) return;
    aborted = true;
    void db.drop().finally(() => process.exit(130));
  });
  const report: RunReport = {
    date: new Date().toISOString(),
    command: `npm run bench --${process.argv.slice(2).length ? " " + process.argv.slice(2).join(" ") : ""}`,
    mode: args.quick ? "quick" : "full",
    reps,
    machine: {
      cpuModel: os.cpus()[0]?.model ?? "?",
      cpus: os.cpus().length,
      totalMemGb: Number((os.totalmem() / 2 ** 30).toFixed(1)),
      loadavgStart: loadavg(),
      platform: `${os.type()} ${os.release()}`,
      node: process.version,
      postgres: await serverVersion(baseUrl),
      redis: redis ?? "n/a",
      gitCommit: (() => {
        try {
          return execSync("git rev-parse --short HEAD", { encoding: "utf8" }).trim();
        } catch {
          return "?";
        }
      })(),
      packages: Object.fromEntries(
        ["socket.io", "socket.io-client", "socket.io-adapter", "@socket.io/postgres-adapter", "@socket.io/redis-streams-adapter", "redis", "pg"].map((n) => [n, packageVersion(n)]),
      ),
      sizes,
    },
    notes,
    rawLimits: [],
    emitters: [],
    workloads: workloads.map((w): WorkloadResult => ({ id: w.id, title: w.title, metrics: w.metrics, outcomes: {} })),
  };
  const profileDir = args["cpu-prof"] ? `bench/results/profiles-${runId}` : undefined;
  if (profileDir) mkdirSync(profileDir, { recursive: true });
  try {
    const setup = new pg.Pool({ connectionString: db.url, max: 1 });
    await migrate(setup);
    // Upstream's table for binary / large messages (its README's DDL).
    await setup.query("CREATE TABLE IF NOT EXISTS socket_io_attachments (id bigserial UNIQUE, created_at timestamptz DEFAULT NOW(), payload bytea)");
    await setup.end();

    log(`raw limits (${args.quick ? 1 : 2} s per batch size)`);
    report.rawLimits = await measureRawLimits(db.url, args.quick ? 1 : 2);

    if (measureEmittersToo) {
      const events = args.quick ? 2000 : 5000;
      log(`emitters: ${events} events each (transactional: ${Math.ceil(events / 5)}), ${reps} repetition(s)`);
      report.emitters = await measureEmitters(db.url, peers.includes("redis-streams") ? redisUrl : undefined, events, reps, log);
    }

    let epoch = 0;
    let runs = 0;
    for (let rep = 0; rep < reps; rep++) {
      for (const w of workloads) {
        const result = report.workloads.find((r) => r.id === w.id)!;
        for (const peerId of peers) {
          const peer = PEERS[peerId];
          const list = (result.outcomes[peerId] ??= []);
          // W5 and SOAK are long and have no peer to interleave with: once per run.
          const applies = w.oncePerRun && rep > 0 ? "n/a: measured in repetition 1 only" : w.applies(peer);
          if (applies !== true) {
            list.push({ na: applies });
            continue;
          }
          const streamName = `bench:${runId}:${runs++}`;
          const ctx: RunContext = {
            peer,
            sizes,
            db,
            redisUrl,
            streamName,
            rep,
            cpuProfDir: profileDir && rep === 0 ? profileDir : undefined,
            nextEpoch: () => ++epoch,
          };
          const t = Date.now();
          let outcome: Outcome;
          try {
            outcome = { metrics: await w.run(ctx) };
          } catch (err) {
            outcome = { error: err instanceof Error ? err.message : String(err) };
          }
          list.push(outcome);
          log(`rep ${rep + 1}/${reps} ${w.id} ${peerId}: ${((Date.now() - t) / 1000).toFixed(1)} s ${JSON.stringify("metrics" in outcome ? outcome.metrics : outcome)}`);
          if (peerId === "redis-streams") await cleanRedis(streamName).catch(() => undefined);
        }
      }
    }
  } finally {
    for (const w of workloads) await w.teardown?.().catch((err: unknown) => log(`${w.id} teardown failed: ${String(err)}`));
    await db.drop().catch((err: unknown) => log(`could not drop ${db.name}: ${String(err)}`));
  }
  report.machine.loadavgEnd = loadavg();
  report.durationSeconds = Math.round((Date.now() - started) / 1000);
  const profiles = profileDir ? `\n### CPU profiles of our nodes during the timed burst (repetition 1)\n\n${summariseProfiles(profileDir)}\n` : "";
  for (const w of workloads) {
    const appendix = w.appendix?.();
    if (appendix) (report.appendices ??= []).push({ id: w.id, ...appendix });
  }
  const appendices = (report.appendices ?? []).map((a) => `\n${a.markdown}\n`).join("");
  const text = markdown(report) + `\nRun took ${report.durationSeconds} s.\n` + profiles + appendices;
  process.stdout.write(`\n${text}`);
  mkdirSync(new URL("./results/", import.meta.url), { recursive: true });
  const stamp = report.date.replace(/[:.]/g, "-").slice(0, 19);
  const file = new URL(`./results/${stamp}-${report.mode}.json`, import.meta.url);
  writeFileSync(file, JSON.stringify(report, null, 2) + "\n");
  writeFileSync(new URL(`./results/${stamp}-${report.mode}.md`, import.meta.url), text);
  log(`results written to bench/results/${stamp}-${report.mode}.{json,md}`);
}

function log(line: string): void {
  process.stderr.write(`bench: ${line}\n`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
