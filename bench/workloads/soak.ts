/**
 * SOAK: does a cluster of ours hold a steady state for many minutes? 3 nodes,
 * maxDisconnectionDuration 1 minute, logged broadcasts at half the maximum
 * rate, clients dropping and recovering all along.
 *
 * 1. Probe (at most ~soakProbeSeconds): the same paced emission in steps of
 *    rising rate, no churn; the maximum is the last rate whose events all
 *    arrived with p99 under PROBE_P99_MS (see `probeMaximum`).
 * 2. Soak (soakMinutes): each node emits maximum / 2 / 3 events per second on
 *    a fixed schedule. Half of the clients churn: every second CHURN_PER_SECOND
 *    of them close their transport and reconnect after 1–5 s to a node at
 *    random (recovered or refused, counted). The other half never drop: the
 *    delivery latency (emit on the node to receipt) is theirs, since a churning
 *    client's replayed events would measure its time away.
 * 3. Every minute: sizes of every table (pg_total_relation_size, pg_relation_size,
 *    pg_indexes_size, n_live_tup / n_dead_tup / autovacuum_count), log rows,
 *    age of the oldest entry (also polled every 2 s: its maximum within the
 *    minute), p50 / p99 latency, RSS of each node, prune passes (from the
 *    maintenance row, polled every 2 s) and their time.
 * 4. End: churn stops, every client gets everything each node emitted: lost
 *    and duplicated from the receipt ledgers (clients refused a recovery
 *    apart: they may legitimately miss what was sent while away).
 *
 * Targets (see `verdicts`): sizes flat after the first retention window, p99
 * steady, pruning keeping up, no heap growth (after a forced GC). Ours only: upstream pg has no log
 * nor recovery, redis-streams no tables, so none of the figures would exist.
 */
import os from "node:os";
import pg from "pg";
import { call } from "../lib/ipc.js";
import { startCluster, sleep, type BenchNode } from "../lib/cluster.js";
import type { Appendix, Metrics, RunContext, Workload } from "../lib/context.js";
import { isOurs } from "../peers.js";

const NODES = 3;
const CLIENTS_PER_NODE = 10;
const MAX_DISCONNECTION_MS = 60_000;
/** The adapter's default, passed explicitly so that the pruning bound below is known. */
const PRUNE_INTERVAL_MS = 60_000;
const PROBE_FIRST_RATE = 200;
const PROBE_GROWTH = 1.5;
const PROBE_STEP_MS = 4000;
const PROBE_DRAIN_MS = 2000;
/** Live: a step whose p99 (steady clients) stays under this. */
const PROBE_P99_MS = 1000;
const CHURN_PER_SECOND = 1;
const POLL_MS = 2000;
/** Flat: the last minute at most this × the reference minute (see `verdicts`). */
const SIZE_TOLERANCE = 1.1;
const P99_TOLERANCE = 1.2;
const HEAP_TOLERANCE = 1.1;
/** Tables smaller than this at the reference minute are reported but not judged: a page or two is noise. */
const JUDGED_TABLE_BYTES = 1 << 20;
/** A second of emission is summed up once this long has passed (later receipts count in the minute only). */
const SECOND_SETTLED_MS = 30_000;

/**
 * The steady clients' latencies, drained from the client process every poll (see its
 * "drain-latencies") and summed up here, in a process that receives no events.
 */
class LatencyCollector {
  private minute: number[] = [];
  private readonly bySecond = new Map<number, number[]>();

  add(groups: Array<[number, number[]]>): void {
    for (const [second, list] of groups) {
      for (const ms of list) this.minute.push(ms);
      const held = this.bySecond.get(second);
      if (held) for (const ms of list) held.push(ms);
      else this.bySecond.set(second, list);
    }
  }

  /** p50 / p99 / max of everything received since the last call. */
  takeMinute(): Latency {
    const sorted = Float64Array.from(this.minute).sort();
    this.minute = [];
    const n = sorted.length;
    return n ? { n, p50: rank(sorted, 50), p99: rank(sorted, 99), max: sorted[n - 1] } : { n };
  }

  /** [second, n, p99, max] of each second emitted before `beforeMs`, forgotten then. */
  takeSeconds(beforeMs: number): Array<[number, number, number, number]> {
    const out: Array<[number, number, number, number]> = [];
    for (const [second, list] of [...this.bySecond].sort((a, b) => a[0] - b[0])) {
      if ((second + 1) * 1000 > beforeMs) continue;
      const sorted = Float64Array.from(list).sort();
      out.push([second, sorted.length, Math.round(rank(sorted, 99)), Math.round(sorted[sorted.length - 1]!)]);
      this.bySecond.delete(second);
    }
    return out;
  }
}

/** Nearest-rank percentile of sorted values. */
function rank(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

interface TableSize {
  table: string;
  totalBytes: number;
  heapBytes: number;
  indexBytes: number;
  live: number;
  dead: number;
  autovacuums: number;
}

interface Latency {
  n: number;
  p50?: number;
  p99?: number;
  max?: number;
  /** Per second of emission (wall clock, s): [second, n, p99 ms, max ms]. */
  seconds?: Array<[number, number, number, number]>;
}

/** A node's memory right after a forced full GC (bench node's "memory" command). */
interface AfterGc {
  rssMb: number;
  heapUsedMb: number;
  externalMb: number;
  arrayBuffersMb: number;
  /** How long the forced GC held the node's event loop. */
  gcMs: number;
}

/** One prune pass as the maintenance row recorded it (wall clock ms). */
interface PassRecord {
  startedAtMs: number;
  ms: number;
  logEntries: number;
}

interface ChurnStats {
  dropped: number;
  recovered: number;
  refused: number;
  away: number;
  refusedClients: number[];
}

interface ProbeStep {
  rate: number;
  p99Ms: number | null;
  complete: boolean;
  live: boolean;
}

interface MinuteRow {
  minute: number;
  tables: TableSize[];
  logRows: number;
  /** Age of the oldest log entry at the minute's end, and the largest seen by the 2 s polls. */
  oldestAgeS: number | null;
  oldestAgeMaxS: number | null;
  latency: Latency;
  rssMb: number[];
  heapUsedMb: number[];
  /** After a forced full GC, sampled right after `rssMb` / `heapUsedMb`: retained memory, not garbage. */
  gcRssMb: number[];
  gcHeapUsedMb: number[];
  gcExternalMb: number[];
  gcMs: number[];
  prunePasses: number;
  pruneMsTotal: number;
  pruneMsMax: number;
  /** Log entries deleted by the passes of this minute (from their maintenance records). */
  prunedEntries: number;
  churn: ChurnStats;
  emitted: number;
}

interface SoakResult {
  probeEventsPerSec: number;
  probeSteps: ProbeStep[];
  rateEventsPerSec: number;
  retentionMs: number;
  pruneIntervalMs: number;
  referenceMinute: number;
  autovacuum: string;
  minutes: MinuteRow[];
  verdicts: Array<{ target: string; pass: boolean | null; detail: string }>;
  loadavg: string[];
  /** Every prune pass seen, and the steady clients' p99 per second: to line stalls up with passes. */
  passes: PassRecord[];
  seconds: Array<[number, number, number, number]>;
  /** Per node, sizes of the adapter's collections (path → size) at minute 2 and at the last minute. */
  structures: { minute2: Array<Record<string, number> | null>; last: Array<Record<string, number> | null> };
}

let lastResult: SoakResult | undefined;

/**
 * The highest rate this cluster keeps live: the same paced emission as the soak, in steps of
 * PROBE_STEP_MS from PROBE_FIRST_RATE (after a warm-up step at that rate), each PROBE_GROWTH ×
 * the last, until a rate fails twice in a row: its events not all delivered within PROBE_DRAIN_MS
 * after the step, or its p99 over PROBE_P99_MS (or the time is up). Bursts measure a higher figure (group commit turns them into a few large appends) that
 * paced traffic cannot hold: half of it built a backlog within two minutes here.
 */
async function probeMaximum(ctx: RunContext, nodes: BenchNode[], clients: BenchNode["child"], steady: number[], seconds: number): Promise<{ max: number; steps: ProbeStep[] }> {
  const steps: ProbeStep[] = [];
  let max = 0;
  const started = Date.now();
  let retried = false;
  // The first step warms up (JIT, pools, first appends) and is not counted.
  for (let rate = PROBE_FIRST_RATE, warm = true; Date.now() - started < seconds * 1000; ) {
    const epoch = ctx.nextEpoch();
    await call(clients, "arm", { epoch, expect: {} });
    const t0 = Date.now();
    await Promise.all(nodes.map((n, i) => call(n.child, "pace-start", { epoch, source: i, perSecond: rate / nodes.length })));
    await sleep(PROBE_STEP_MS);
    const last = await Promise.all(nodes.map((n) => call<number>(n.child, "pace-stop")));
    const emitted = last.reduce((a, b) => a + b, 0) / ((Date.now() - t0) / 1000);
    await call(clients, "expect", { expect: { all: Object.fromEntries(last.map((seq, i) => [i, seq])) } });
    const { complete } = await call<{ complete: boolean }>(clients, "wait", { timeoutMs: PROBE_DRAIN_MS }, PROBE_DRAIN_MS + 10_000);
    const latency = await call<Latency>(clients, "take-latencies", { clients: steady });
    const live = complete && (latency.p99 ?? Infinity) <= PROBE_P99_MS;
    log(`SOAK probe${warm ? " (warm-up)" : ""}: ${emitted.toFixed(0)} events/s, p99 ${latency.p99?.toFixed(1)} ms, ${complete ? "all delivered" : "not all delivered"}`);
    if (warm) {
      warm = false;
      continue;
    }
    steps.push({ rate: emitted, p99Ms: latency.p99 ?? null, complete, live });
    // A step fails twice in a row to end the probe: a shared machine has hiccups.
    if (!live && !retried) {
      retried = true;
      continue;
    }
    if (!live) break;
    retried = false;
    max = emitted;
    rate *= PROBE_GROWTH;
  }
  if (max === 0) throw new Error(`SOAK: not even ${PROBE_FIRST_RATE} events/s kept p99 under ${PROBE_P99_MS} ms`);
  return { max, steps };
}

/** Reads the database's figures: table sizes, the log, the prune record. */
function databaseSampler(client: pg.Client) {
  return {
    async tables(): Promise<TableSize[]> {
      const { rows } = await client.query<TableSize>(`
        SELECT schemaname || '.' || relname AS "table",
               pg_total_relation_size(relid)::float8 AS "totalBytes",
               pg_relation_size(relid)::float8 AS "heapBytes",
               pg_indexes_size(relid)::float8 AS "indexBytes",
               n_live_tup::float8 AS live, n_dead_tup::float8 AS dead, autovacuum_count::float8 AS autovacuums
          FROM pg_stat_user_tables ORDER BY 1`);
      return rows;
    },
    async logRows(): Promise<number> {
      const { rows } = await client.query<{ n: number }>("SELECT count(*)::float8 AS n FROM socket_io.log_entries");
      return rows[0]!.n;
    },
    /** The oldest entry by offset (the primary key's order): one index probe, cheap every 2 s. */
    async oldestAgeS(): Promise<number | null> {
      const { rows } = await client.query<{ age: number }>(
        `SELECT extract(epoch FROM now() - created_at)::float8 AS age FROM socket_io.log_entries ORDER BY namespace_id, "offset" LIMIT 1`,
      );
      return rows[0]?.age ?? null;
    },
    async lastPrune(): Promise<{ startedAt: string; startedAtMs: number; ms: number; logEntries: number } | undefined> {
      const { rows } = await client.query<{ startedAt: string; startedAtMs: number; ms: number; result: string }>(
        `SELECT last_started_at::text AS "startedAt", (extract(epoch FROM last_started_at) * 1000)::float8 AS "startedAtMs",
                (extract(epoch FROM last_finished_at - last_started_at) * 1000)::float8 AS ms,
                last_result AS result FROM socket_io.maintenance WHERE task = 'prune'`,
      );
      const row = rows[0];
      if (!row) return undefined;
      return { startedAt: row.startedAt, startedAtMs: row.startedAtMs, ms: row.ms, logEntries: (JSON.parse(row.result) as { logEntries?: number }).logEntries ?? 0 };
    },
    /** The server's autovacuum settings: without autovacuum, deleted rows' space is never reused. */
    async autovacuum(): Promise<string> {
      const { rows } = await client.query<{ s: string }>(
        `SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) AS s FROM pg_settings
          WHERE name IN ('autovacuum', 'autovacuum_naptime', 'autovacuum_vacuum_scale_factor', 'autovacuum_vacuum_threshold')`,
      );
      return rows[0]!.s;
    },
    async retentionMs(): Promise<number> {
      const { rows } = await client.query<{ ms: number }>("SELECT max(retention_ms)::float8 AS ms FROM socket_io.namespaces");
      return rows[0]!.ms;
    },
  };
}

async function run(ctx: RunContext): Promise<Metrics> {
  const { soakMinutes, soakProbeSeconds } = ctx.sizes;
  const cluster = await startCluster(ctx, NODES, {
    MAX_DISCONNECTION_MS: String(MAX_DISCONNECTION_MS),
    PRUNE_INTERVAL_MS: String(PRUNE_INTERVAL_MS),
  });
  const db = new pg.Client({ connectionString: ctx.db.url });
  await db.connect();
  try {
    const { nodes, clients } = cluster;
    const urls = nodes.map((n) => n.url);
    for (const node of nodes) await call(clients, "connect", { url: node.url, count: CLIENTS_PER_NODE, reconnection: false });
    const total = CLIENTS_PER_NODE * nodes.length;
    // Alternate: each node holds steady and churning clients alike.
    const steady = Array.from({ length: total }, (_, i) => i).filter((i) => i % 2 === 0);
    const churning = Array.from({ length: total }, (_, i) => i).filter((i) => i % 2 === 1);
    const sampler = databaseSampler(db);

    const { max: probeEventsPerSec, steps: probeSteps } = await probeMaximum(ctx, nodes, clients, steady, soakProbeSeconds);
    const rate = probeEventsPerSec / 2;
    log(`SOAK: probe ${probeEventsPerSec.toFixed(0)} events/s; soaking at ${rate.toFixed(0)} events/s for ${soakMinutes} min`);

    const epoch = ctx.nextEpoch();
    await call(clients, "arm", { epoch, expect: {} });
    await Promise.all(nodes.map((n, i) => call(n.child, "pace-start", { epoch, source: i, perSecond: rate / nodes.length })));
    await call(clients, "churn-start", { perSecond: CHURN_PER_SECOND, minDownMs: 1000, maxDownMs: 5000, urls, clients: churning });
    const started = Date.now();
    const minutes: MinuteRow[] = [];
    const loadavg: string[] = [];
    const passes: PassRecord[] = [];
    const structures: SoakResult["structures"] = { minute2: [], last: [] };
    const structureSizes = () => Promise.all(nodes.map((n) => call<Record<string, number>>(n.child, "structure-sizes").catch(() => null)));
    const seconds: Latency["seconds"] & object = [];
    const latencies = new LatencyCollector();
    const drainLatencies = async () => latencies.add(await call<Array<[number, number[]]>>(clients, "drain-latencies", { clients: steady }));
    let lastPruneStart = (await sampler.lastPrune())?.startedAt;
    for (let minute = 1; minute <= soakMinutes; minute++) {
      const row = { prunePasses: 0, pruneMsTotal: 0, pruneMsMax: 0, prunedEntries: 0, oldestAgeMaxS: null as number | null };
      while (Date.now() < started + minute * 60_000) {
        await sleep(Math.min(POLL_MS, started + minute * 60_000 - Date.now()));
        await drainLatencies();
        const [prune, age] = [await sampler.lastPrune(), await sampler.oldestAgeS()];
        if (age !== null) row.oldestAgeMaxS = Math.max(row.oldestAgeMaxS ?? 0, age);
        if (prune && prune.startedAt !== lastPruneStart) {
          lastPruneStart = prune.startedAt;
          row.prunePasses++;
          row.pruneMsTotal += prune.ms;
          row.pruneMsMax = Math.max(row.pruneMsMax, prune.ms);
          row.prunedEntries += prune.logEntries;
          passes.push({ startedAtMs: prune.startedAtMs, ms: prune.ms, logEntries: prune.logEntries });
        }
      }
      await drainLatencies();
      const latency = latencies.takeMinute();
      seconds.push(...latencies.takeSeconds(Date.now() - SECOND_SETTLED_MS));
      const usage = await cluster.usage();
      // A forced full GC in each bench node (never in the library), one node after the other: what
      // is retained, minute over minute. It holds that node's loop for gcMs (reported).
      const afterGc: Array<AfterGc | null> = [];
      for (const n of nodes) afterGc.push(await call<AfterGc>(n.child, "memory").catch(() => null));
      if (minute === 2) structures.minute2 = await structureSizes();
      if (minute === soakMinutes) structures.last = await structureSizes();
      // Diagnosis only (stalls node 0 for a second or more): heap snapshots to compare, minute 2 and last.
      const snapshots = process.env.SOAK_HEAP_SNAPSHOTS;
      if (snapshots && (minute === 2 || minute === soakMinutes)) {
        log(`SOAK: heap snapshot of node 0: ${await call<string>(nodes[0]!.child, "heap-snapshot", { file: `${snapshots}/node0-minute${minute}.heapsnapshot` }, 120_000)}`);
      }
      const emitted = await Promise.all(nodes.map((n) => call<number>(n.child, "pace-emitted")));
      minutes.push({
        minute,
        ...row,
        tables: await sampler.tables(),
        logRows: await sampler.logRows(),
        oldestAgeS: await sampler.oldestAgeS(),
        latency,
        rssMb: usage.map((u) => u?.rssMb ?? NaN),
        heapUsedMb: usage.map((u) => u?.heapUsedMb ?? NaN),
        gcRssMb: afterGc.map((m) => m?.rssMb ?? NaN),
        gcHeapUsedMb: afterGc.map((m) => m?.heapUsedMb ?? NaN),
        gcExternalMb: afterGc.map((m) => m?.externalMb ?? NaN),
        gcMs: afterGc.map((m) => m?.gcMs ?? NaN),
        churn: await call<ChurnStats>(clients, "churn-stats"),
        emitted: emitted.reduce((a, b) => a + b, 0),
      });
      loadavg.push(osLoad());
      const m = minutes.at(-1)!;
      log(`SOAK minute ${minute}: ${m.logRows} log rows, oldest ${m.oldestAgeMaxS?.toFixed(0)} s, p99 ${m.latency.p99?.toFixed(1)} ms, schema ${(schemaBytes(m) / 2 ** 20).toFixed(1)} MiB, RSS ${m.rssMb.map((x) => x.toFixed(0)).join("/")} MiB, after GC RSS ${m.gcRssMb.map((x) => x.toFixed(0)).join("/")} heap ${m.gcHeapUsedMb.map((x) => x.toFixed(1)).join("/")} MiB, passes ${m.prunePasses} (${m.pruneMsMax.toFixed(0)} ms max), load ${loadavg.at(-1)}`);
    }

    seconds.push(...latencies.takeSeconds(Infinity));
    const churn = await call<ChurnStats>(clients, "churn-stop", {}, 40_000);
    const last = await Promise.all(nodes.map((n) => call<number>(n.child, "pace-stop")));
    const soakSeconds = (Date.now() - started) / 1000;
    await call(clients, "expect", { expect: { all: Object.fromEntries(last.map((seq, i) => [i, seq])) } });
    await call(clients, "wait", { timeoutMs: 60_000 }, 70_000);
    const refused = new Set(churn.refusedClients);
    const kept = Array.from({ length: total }, (_, i) => i).filter((i) => !refused.has(i));
    const summary = await call<{ lost: number; duplicated: number; reordered: number }>(clients, "summary", { clients: kept });
    const all = await call<{ lost: number; duplicated: number }>(clients, "summary", {});

    const retentionMs = await sampler.retentionMs();
    const result: SoakResult = {
      probeEventsPerSec,
      probeSteps,
      rateEventsPerSec: last.reduce((a, b) => a + b, 0) / soakSeconds,
      retentionMs,
      pruneIntervalMs: PRUNE_INTERVAL_MS,
      referenceMinute: Math.ceil((retentionMs + PRUNE_INTERVAL_MS) / 60_000),
      autovacuum: await sampler.autovacuum(),
      minutes,
      verdicts: [],
      loadavg,
      passes,
      seconds,
      structures,
    };
    result.verdicts = verdicts(result);
    lastResult = result;
    const first = minutes[0];
    const final = minutes.at(-1);
    const ref = minutes[result.referenceMinute - 1];
    const second = minutes[1];
    return {
      probeEventsPerSec,
      rateEventsPerSec: result.rateEventsPerSec,
      dropped: churn.dropped,
      recovered: churn.recovered,
      refused: churn.refused,
      lost: summary.lost,
      duplicated: summary.duplicated,
      reordered: summary.reordered,
      lostRefusedClients: all.lost - summary.lost,
      schemaMbRef: ref ? schemaBytes(ref) / 2 ** 20 : null,
      schemaMbLast: final ? schemaBytes(final) / 2 ** 20 : null,
      p99MsMinute2: second?.latency.p99 ?? null,
      p99MsLast: final?.latency.p99 ?? null,
      oldestAgeMaxS: Math.max(...minutes.map((m) => m.oldestAgeMaxS ?? 0)),
      prunePasses: minutes.reduce((n, m) => n + m.prunePasses, 0),
      pruneMsMax: Math.max(...minutes.map((m) => m.pruneMsMax)),
      rssMbMinute1: first ? Math.max(...first.rssMb) : null,
      gcHeapMbMinute2: second ? Math.max(...second.gcHeapUsedMb) : null,
      gcHeapMbLast: final ? Math.max(...final.gcHeapUsedMb) : null,
      rssMbLast: final ? Math.max(...final.rssMb) : null,
      targetsPassed: result.verdicts.filter((v) => v.pass === true).length,
      targetsFailed: result.verdicts.filter((v) => v.pass === false).length,
    };
  } finally {
    await db.end().catch(() => undefined);
    await cluster.stop();
  }
}

function schemaBytes(m: MinuteRow): number {
  return m.tables.reduce((n, t) => n + t.totalBytes, 0);
}

/**
 * The targets, each judged on figures of this run only:
 * - sizes flat: nothing is pruned before retention + prune interval (the log fills
 *   up until then), so the reference is the minute that interval ends in
 *   (`referenceMinute`, 3 with the defaults). The last minute must be at most
 *   SIZE_TOLERANCE × the reference, for the whole database and for each table
 *   of at least 1 MiB there: DELETE leaves dead tuples whose space must be reused
 *   (autovacuum), not added to.
 * - p99 steady: the last minute's p99 at most P99_TOLERANCE × the second minute's.
 * - pruning keeps up: the oldest entry never older than retention + prune interval
 *   + the longest pass + the poll period (a pass deletes what is past retention at
 *   its start; the next starts an interval later and takes its time).
 * - heap: each node's V8 heap used after a forced full GC, last minute at most
 *   HEAP_TOLERANCE × its second minute (warm-up done: JIT, pools, the recent-entries
 *   ring filled). RSS is reported beside it, not judged.
 */
function verdicts(r: SoakResult): SoakResult["verdicts"] {
  const out: SoakResult["verdicts"] = [];
  const last = r.minutes.at(-1);
  const ref = r.minutes[r.referenceMinute - 1];
  const second = r.minutes[1];
  const na = (target: string, why: string) => out.push({ target, pass: null, detail: `n/a: ${why}` });
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(2)} MiB`;
  if (!last || !ref || r.minutes.length <= r.referenceMinute) {
    na("sizes flat", `needs more than ${r.referenceMinute} minutes (retention ${r.retentionMs / 1000} s + prune interval ${r.pruneIntervalMs / 1000} s)`);
  } else {
    const [a, b] = [schemaBytes(ref), schemaBytes(last)];
    out.push({ target: "sizes flat: all tables", pass: b <= SIZE_TOLERANCE * a, detail: `${mib(b)} at minute ${last.minute} vs ${mib(a)} at minute ${ref.minute} (${(b / a).toFixed(2)}×, limit ${SIZE_TOLERANCE}×)` });
    for (const t of ref.tables.filter((t) => t.totalBytes >= JUDGED_TABLE_BYTES)) {
      const now = last.tables.find((x) => x.table === t.table)?.totalBytes ?? 0;
      out.push({ target: `sizes flat: ${t.table}`, pass: now <= SIZE_TOLERANCE * t.totalBytes, detail: `${mib(now)} vs ${mib(t.totalBytes)} (${(now / t.totalBytes).toFixed(2)}×)` });
    }
  }
  if (!last || !second || r.minutes.length < 3 || second.latency.p99 === undefined || last.latency.p99 === undefined) {
    na("p99 latency steady", "needs 3 minutes or more");
  } else {
    const [a, b] = [second.latency.p99, last.latency.p99];
    out.push({ target: "p99 latency steady", pass: b <= P99_TOLERANCE * a, detail: `${b.toFixed(1)} ms at minute ${last.minute} vs ${a.toFixed(1)} ms at minute 2 (${(b / a).toFixed(2)}×, limit ${P99_TOLERANCE}×)` });
  }
  const longestPassS = Math.max(0, ...r.minutes.map((m) => m.pruneMsMax)) / 1000;
  const boundS = (r.retentionMs + r.pruneIntervalMs) / 1000 + longestPassS + POLL_MS / 1000;
  const oldest = Math.max(0, ...r.minutes.map((m) => m.oldestAgeMaxS ?? 0));
  if (r.minutes.length <= r.referenceMinute) na("pruning keeps up", `needs more than ${r.referenceMinute} minutes`);
  else out.push({ target: "pruning keeps up", pass: oldest <= boundS, detail: `oldest entry ${oldest.toFixed(1)} s, bound ${boundS.toFixed(1)} s (retention ${r.retentionMs / 1000} + interval ${r.pruneIntervalMs / 1000} + longest pass ${longestPassS.toFixed(1)} + poll ${POLL_MS / 1000})` });
  if (!last || !second || r.minutes.length < 3) {
    na("node heap flat", "needs 3 minutes or more");
  } else {
    // Judged on the V8 heap after a forced full GC: what the node retains. RSS (reported, not
    // judged) also holds what V8 and the allocator keep after a peak and give back when they
    // please, and it hid a real leak of ~1.5 MiB a minute (docs/performance.md, Soak).
    last.gcHeapUsedMb.forEach((mb, i) => {
      const a = second.gcHeapUsedMb[i]!;
      out.push({ target: `node ${i} heap after GC flat`, pass: mb <= HEAP_TOLERANCE * a, detail: `${mb.toFixed(1)} MiB at minute ${last.minute} vs ${a.toFixed(1)} MiB at minute 2 (${(mb / a).toFixed(2)}×, limit ${HEAP_TOLERANCE}×); RSS ${last.rssMb[i]!.toFixed(0)} vs ${second.rssMb[i]!.toFixed(0)} MiB (${(last.rssMb[i]! / second.rssMb[i]!).toFixed(2)}×, not judged)` });
    });
  }
  return out;
}

function appendix(): Appendix | undefined {
  const r = lastResult;
  if (!r) return undefined;
  const kib = (b: number) => (b / 1024).toFixed(0);
  const f = (x: number | null | undefined, d = 0) => (x === null || x === undefined || Number.isNaN(x) ? "–" : x.toFixed(d));
  const lines = [
    `### SOAK per minute (ours)`,
    ``,
    `Probe (events/s, p99 ms): ${r.probeSteps.map((p) => `${f(p.rate)} → ${f(p.p99Ms)}${p.live ? "" : p.complete ? " (p99 over the limit)" : " (not all delivered)"}`).join("; ")}.`,
    ``,
    `Probe maximum ${f(r.probeEventsPerSec)} events/s; soaked at ${f(r.rateEventsPerSec)} events/s. Retention ${r.retentionMs / 1000} s, prune interval ${r.pruneIntervalMs / 1000} s, reference minute for sizes ${r.referenceMinute}. Server: ${r.autovacuum}.`,
    ``,
    `| min | log rows | oldest entry (s, end / max) | all tables (KiB) | log_entries total / heap / idx (KiB) | log live / dead | log autovacuums | p50 / p99 (ms) | latencies | RSS per node (MiB) | V8 heap used per node (MiB) | after a full GC: RSS / heap used / external per node (MiB) (GC pause) | prune passes / ms / entries | dropped / recovered / refused | load |`,
    `|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|`,
  ];
  r.minutes.forEach((m, i) => {
    const log = m.tables.find((t) => t.table === "socket_io.log_entries");
    lines.push(
      `| ${m.minute} | ${m.logRows} | ${f(m.oldestAgeS)} / ${f(m.oldestAgeMaxS)} | ${kib(schemaBytes(m))} | ${log ? `${kib(log.totalBytes)} / ${kib(log.heapBytes)} / ${kib(log.indexBytes)}` : "–"} | ${log ? `${log.live} / ${log.dead}` : "–"} | ${log?.autovacuums ?? "–"} | ${f(m.latency.p50, 1)} / ${f(m.latency.p99, 1)} | ${m.latency.n} | ${m.rssMb.map((x) => f(x)).join(" / ")} | ${m.heapUsedMb.map((x) => f(x)).join(" / ")} | ${m.gcRssMb.map((x, k) => `${f(x)}/${f(m.gcHeapUsedMb[k], 1)}/${f(m.gcExternalMb[k], 1)} (${f(m.gcMs[k])} ms)`).join(" · ")} | ${m.prunePasses} / ${f(m.pruneMsTotal)} / ${m.prunedEntries} | ${m.churn.dropped} / ${m.churn.recovered} / ${m.churn.refused} | ${r.loadavg[i]} |`,
    );
  });
  const tables = r.minutes[0]?.tables.map((t) => t.table) ?? [];
  lines.push(``, `Every table, total KiB (heap + indexes + TOAST) and live / dead tuples, per minute:`, ``);
  lines.push(`| table | ${r.minutes.map((m) => m.minute).join(" | ")} |`, `|---|${r.minutes.map(() => "---").join("|")}|`);
  for (const name of tables) {
    const cells = r.minutes.map((m) => {
      const t = m.tables.find((x) => x.table === name);
      return t ? `${kib(t.totalBytes)} (${t.live}/${t.dead})` : "–";
    });
    lines.push(`| ${name} | ${cells.join(" | ")} |`);
  }
  lines.push(``, ...passLines(r), ``, ...structureLines(r));
  lines.push(``, `Targets:`, ``);
  for (const v of r.verdicts) lines.push(`- ${v.pass === null ? "n/a " : v.pass ? "PASS" : "FAIL"} ${v.target}: ${v.detail}`);
  return { markdown: lines.join("\n"), data: r };
}

/**
 * Each prune pass against the steady clients' per-second p99 (by second of emission): the worst
 * second during the pass (start to end, +1 s) and the median second outside every pass; then the
 * ten worst seconds of the soak and whether a pass was running.
 */
function passLines(r: SoakResult): string[] {
  const during = (sec: number) => r.passes.some((p) => sec >= Math.floor(p.startedAtMs / 1000) && sec <= Math.floor((p.startedAtMs + p.ms) / 1000) + 1);
  const outside = r.seconds.filter(([sec]) => !during(sec)).map(([, , p99]) => p99).sort((a, b) => a - b);
  const median = outside.length ? outside[Math.floor(outside.length / 2)]! : NaN;
  const t0 = r.seconds[0]?.[0] ?? 0;
  const lines = [`Prune passes vs per-second p99 of the steady clients (median second outside passes: ${median} ms over ${outside.length} s; s = seconds since the soak's first second):`, ``];
  lines.push(`| pass start (s) | ms | log entries | worst per-second p99 during (ms) | worst max during (ms) |`, `|---|---|---|---|---|`);
  for (const p of r.passes) {
    const [a, b] = [Math.floor(p.startedAtMs / 1000), Math.floor((p.startedAtMs + p.ms) / 1000) + 1];
    const inside = r.seconds.filter(([sec]) => sec >= a && sec <= b);
    lines.push(`| ${a - t0} | ${p.ms.toFixed(0)} | ${p.logEntries} | ${Math.max(0, ...inside.map((x) => x[2]))} | ${Math.max(0, ...inside.map((x) => x[3]))} |`);
  }
  const worst = [...r.seconds].sort((x, y) => y[2] - x[2]).slice(0, 10);
  lines.push(``, `Ten worst seconds (s since start: p99 / max ms, n; during a pass?): ${worst.map(([sec, n, p99, max]) => `${sec - t0}: ${p99}/${max} (${n})${during(sec) ? " pass" : ""}`).join("; ")}.`);
  return lines;
}

/** The adapter's collections whose size changed between minute 2 and the last minute, per node. */
function structureLines(r: SoakResult): string[] {
  const lines = [`Adapter collections (Map / Set / array sizes reachable from nsp.adapter) that changed from minute 2 to the last minute:`, ``];
  r.structures.last.forEach((last, i) => {
    const first = r.structures.minute2[i];
    if (!last || !first) return void lines.push(`- node ${i}: not sampled`);
    const changed = Object.keys(last).filter((k) => last[k] !== first[k]).map((k) => `${k} ${first[k] ?? "–"} → ${last[k]}`);
    lines.push(`- node ${i} (${Object.keys(last).length} collections): ${changed.length ? changed.join("; ") : "none changed"}`);
  });
  return lines;
}

function osLoad(): string {
  return os.loadavg().map((x) => x.toFixed(2)).join(" ");
}

function log(line: string): void {
  process.stderr.write(`bench: ${line}\n`);
}

export const soak: Workload = {
  id: "SOAK",
  title: "soak: 3 nodes, half the probed maximum rate, clients churning, maxDisconnectionDuration 1 min",
  oncePerRun: true,
  onRequestOnly: "runs for minutes (10 by default): `--only SOAK`",
  metrics: [
    { key: "probeEventsPerSec", label: "probed maximum (events/s, 3 nodes)", digits: 0 },
    { key: "rateEventsPerSec", label: "soak rate (events/s)", digits: 0 },
    { key: "dropped", label: "client drops" },
    { key: "recovered", label: "recovered" },
    { key: "refused", label: "refused (fresh session)" },
    { key: "lost", label: "lost (clients never refused)" },
    { key: "duplicated", label: "duplicated (clients never refused)" },
    { key: "reordered", label: "per-source reorderings" },
    { key: "lostRefusedClients", label: "missed by refused clients" },
    { key: "schemaMbRef", label: "all tables at the reference minute (MiB)", digits: 2 },
    { key: "schemaMbLast", label: "all tables at the last minute (MiB)", digits: 2 },
    { key: "p99MsMinute2", label: "p99 latency, minute 2 (ms)", digits: 1 },
    { key: "p99MsLast", label: "p99 latency, last minute (ms)", digits: 1 },
    { key: "oldestAgeMaxS", label: "oldest log entry, max (s)", digits: 1 },
    { key: "prunePasses", label: "prune passes" },
    { key: "pruneMsMax", label: "longest prune pass (ms)", digits: 0 },
    { key: "gcHeapMbMinute2", label: "node heap after a full GC, minute 2 (MiB, max)", digits: 1 },
    { key: "gcHeapMbLast", label: "node heap after a full GC, last minute (MiB, max)", digits: 1 },
    { key: "rssMbMinute1", label: "node RSS, minute 1 (MiB, max)", digits: 0 },
    { key: "rssMbLast", label: "node RSS, last minute (MiB, max)", digits: 0 },
    { key: "targetsPassed", label: "targets passed" },
    { key: "targetsFailed", label: "targets failed" },
  ],
  applies: (peer) => (isOurs(peer) ? true : "n/a: its figures (log table, prune passes) are ours"),
  run,
  appendix,
};
