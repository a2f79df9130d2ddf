/**
 * G-PRIV: sizes.gPrivSockets sockets on node 0 of two, each receiving private
 * events (to a room of its own, "p-<i>", which is how `socket.emit()` is
 * logged with recovery on: to the socket's own room) at sizes.gPrivHz each;
 * sizes.gPrivDrop of them drop for sizes.gPrivAwayMs and reconnect to node 1
 * while the emits go on. Measured: the rate node 0 reached, restores and
 * their time (node 1's restoreSession, and client-side from connect() to
 * connected), the rows and bytes a restore read from the log against those
 * the socket needed, and loss/duplicates over every socket. G_PRIV_SOCKETS
 * (environment) sets another socket count, a tenth of them dropping.
 *
 * A restore replays the log's (offset, head]: every socket's entries, of
 * which it keeps its own. That range, not the socket's share, is what
 * maxReplayEntries bounds.
 */
import { call } from "../lib/ipc.js";
import { startCluster, sleep } from "../lib/cluster.js";
import type { Metrics, RunContext, Workload } from "../lib/context.js";
import { isOurs } from "../peers.js";

const WARM_MS = 3000;
const AFTER_MS = 3000;

interface Statements {
  replayReads: number;
  replayRows: number;
  replayBytes: number;
}

function quantile(values: number[], q: number): number | null {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
}

async function run(ctx: RunContext): Promise<Metrics> {
  const { gPrivHz: hz, gPrivAwayMs: awayMs } = ctx.sizes;
  // G_PRIV_SOCKETS: a point between the quick and full sizes (a tenth of them drop).
  const override = Number(process.env.G_PRIV_SOCKETS);
  const n = Number.isInteger(override) && override > 0 ? override : ctx.sizes.gPrivSockets;
  const drop = n === ctx.sizes.gPrivSockets ? ctx.sizes.gPrivDrop : Math.max(1, Math.round(n / 10));
  const cluster = await startCluster(ctx, 2);
  try {
    const { nodes, clients } = cluster;
    const [origin, target] = [nodes[0]!, nodes[nodes.length - 1]!];
    const rooms = Array.from({ length: n }, (_, i) => `p-${i}`);
    // In order: client i joins p-i.
    for (let k = 0; k < n; k += 200) {
      await call(clients, "connect", { url: origin.url, count: Math.min(200, n - k), rooms: rooms.slice(k, k + 200), reconnection: false }, 60_000);
    }
    const epoch = ctx.nextEpoch();
    await call(clients, "arm", { epoch, expect: {} });
    await call(origin.child, "private-start", { epoch, count: n, perSocketHz: hz });
    await sleep(WARM_MS);

    const dropped = Array.from({ length: drop }, (_, k) => Math.floor((k * n) / drop));
    const beforeDrop = await call<{ emitted: number; seconds: number }>(origin.child, "private-progress");
    await call(clients, "drop", { clients: dropped });
    await sleep(awayMs);
    const s0 = await call<Statements>(target.child, "statements");
    const atReconnect = await call<{ emitted: number; seconds: number }>(origin.child, "private-progress");
    // --cpu-prof: node 1's CPU while the dropped sockets restore on it (bench/profile-summary.ts).
    const profile = ctx.cpuProfDir !== undefined;
    if (profile) await call(target.child, "profile-start");
    const back = await call<Array<{ ms: number; recovered: boolean; failed?: boolean }>>(clients, "reconnect-timed", { clients: dropped, url: target.url }, 60_000);
    if (profile) await call(target.child, "profile-stop", { file: `${ctx.cpuProfDir}/${ctx.peer.id}-G-PRIV-node${target.index}.cpuprofile` });
    await sleep(AFTER_MS);
    const stopped = await call<{ last: number[]; emitted: number; seconds: number }>(origin.child, "private-stop");
    await call(clients, "expect", { expect: Object.fromEntries(rooms.map((room, i) => [room, { [i]: { from: 1, to: stopped.last[i]! } }])) });
    const waited = await call<{ complete: boolean }>(clients, "wait", { timeoutMs: 30_000 }, 40_000);
    // A dropped socket that did not recover got a new session (fail closed): what it missed is not
    // counted as lost. Lost / duplicated are over the others: never dropped, or dropped and recovered.
    const notRecovered = new Set(dropped.filter((_, k) => !back[k]!.recovered));
    // (A failed reconnection is not recovered either: it is left out the same way.)
    const kept = Array.from({ length: n }, (_, i) => i).filter((i) => !notRecovered.has(i));
    type Summary = { lost: number; duplicated: number; reordered: number; clientsWithLoss: number; received: number; expected: number };
    const summary = await call<Summary>(clients, "summary", { clients: kept });
    // Apart: the sockets never dropped, and those that recovered (which one a problem lies with).
    const droppedSet = new Set(dropped);
    const stayed = await call<Summary>(clients, "summary", { clients: kept.filter((i) => !droppedSet.has(i)) });
    const recoveredOnes = await call<Summary>(clients, "summary", { clients: kept.filter((i) => droppedSet.has(i)) });
    process.stderr.write(`[G-PRIV] never dropped: ${JSON.stringify(stayed)}\n[G-PRIV] recovered: ${JSON.stringify(recoveredOnes)}\n`);
    const restore = await call<{ count: number; restored: number; p50Ms: number | null; p99Ms: number | null; refusals: Record<string, number> }>(target.child, "restore-stats");
    if (Object.keys(restore.refusals).length) process.stderr.write(`[${ctx.peer.id}] G-PRIV refusals: ${JSON.stringify(restore.refusals)}\n`);
    const s1 = await call<Statements>(target.child, "statements");
    const reads = s1.replayReads - s0.replayReads;
    const rate = stopped.emitted / stopped.seconds;
    // Entries a dropped socket needed: its own while away; the range a restore covers: everyone's.
    const awaySeconds = (atReconnect.emitted - beforeDrop.emitted) / rate;
    const clientMs = back.map((b) => b.ms);
    return {
      targetRate: n * hz,
      rateReached: rate,
      recoveredPct: (100 * back.filter((b) => b.recovered).length) / drop,
      connectFailed: back.filter((b) => b.failed).length,
      restores: restore.count,
      restoreP50Ms: restore.p50Ms,
      restoreP99Ms: restore.p99Ms,
      clientP50Ms: quantile(clientMs, 0.5),
      clientP99Ms: quantile(clientMs, 0.99),
      rangeEntriesPerRestore: rate * awaySeconds,
      neededPerRestore: hz * awaySeconds,
      tableReads: reads,
      rowsReadPerTableRestore: reads ? (s1.replayRows - s0.replayRows) / reads : null,
      kbReadPerTableRestore: reads ? (s1.replayBytes - s0.replayBytes) / 1024 / reads : null,
      complete: waited.complete ? 1 : 0,
      lost: summary.lost,
      lostStayed: stayed.lost,
      reorderedStayed: stayed.reordered,
      lostRecovered: recoveredOnes.lost,
      reorderedRecovered: recoveredOnes.reordered,
      duplicated: summary.duplicated,
      reordered: summary.reordered,
    };
  } finally {
    await cluster.stop();
  }
}

export const gPriv: Workload = {
  id: "G-PRIV",
  title: "growth: private emits to every socket, some drop and restore on the other node",
  metrics: [
    { key: "targetRate", label: "target events / s (sockets × per-socket rate)" },
    { key: "rateReached", label: "events / s node 0 reached", better: "higher" },
    { key: "recoveredPct", label: "dropped sockets recovered (%)", better: "higher", digits: 1 },
    { key: "connectFailed", label: "dropped sockets whose reconnection failed (connect_error)" },
    { key: "restores", label: "restoreSession calls on node 1" },
    { key: "restoreP50Ms", label: "restoreSession p50 (ms)", better: "lower", digits: 1 },
    { key: "restoreP99Ms", label: "restoreSession p99 (ms)", better: "lower", digits: 1 },
    { key: "clientP50Ms", label: "client connect() → recovered p50 (ms)", better: "lower", digits: 1 },
    { key: "clientP99Ms", label: "client connect() → recovered p99 (ms)", better: "lower", digits: 1 },
    { key: "rangeEntriesPerRestore", label: "log entries in a restore's range (all sockets', while away)" },
    { key: "neededPerRestore", label: "of which the socket's own (while away)", digits: 1 },
    { key: "tableReads", label: "restores that read the log table (others: node 1's memory)" },
    { key: "rowsReadPerTableRestore", label: "rows read / restore from the table" },
    { key: "kbReadPerTableRestore", label: "KiB read / restore from the table", digits: 1 },
    { key: "complete", label: "every socket got all its events (1 = yes; 0 when some did not recover)" },
    { key: "lost", label: "lost (sockets never dropped, or recovered)" },
    { key: "duplicated", label: "duplicated" },
    { key: "reordered", label: "reordered" },
    { key: "lostStayed", label: "of which lost, sockets never dropped" },
    { key: "reorderedStayed", label: "of which reordered, sockets never dropped" },
    { key: "lostRecovered", label: "of which lost, recovered sockets" },
    { key: "reorderedRecovered", label: "of which reordered, recovered sockets" },
  ],
  applies: (peer) => (isOurs(peer) ? true : "n/a: counts our adapter's replay reads"),
  run,
};
