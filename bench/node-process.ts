/**
 * One Socket.IO node for one peer adapter, in its own process, driven by
 * bench/run.ts over IPC (bench/lib/ipc.ts). Environment:
 *   PEER (see peers.ts), DATABASE_URL (Postgres peers), REDIS_URL and
 *   STREAM_NAME (redis-streams), NODE_INDEX; optionally MAX_DISCONNECTION_MS
 *   (default 120000), PRUNE_INTERVAL_MS and PRUNE_BATCH_SIZE (ours; the
 *   adapter's defaults when unset).
 *
 * Every emitted event is `("b", { e: epoch, s: source, q: seq, t?: emittedAt, p: padding })`,
 * about 100 bytes of JSON, so clients can account for each one.
 */
import { writeFileSync } from "node:fs";
import v8 from "node:v8";
import vm from "node:vm";
import { createServer } from "node:http";
import { Session } from "node:inspector";
import type { AddressInfo } from "node:net";
import pg from "pg";
import { Server, type ServerOptions } from "socket.io";
import { nowMs, push, serve } from "./lib/ipc.js";
import { PEERS, type PeerId } from "./peers.js";

const peer = PEERS[process.env.PEER as PeerId];
if (!peer) throw new Error(`PEER must be one of ${Object.keys(PEERS).join(", ")}`);
const PADDING = "x".repeat(60);
const MAX_DISCONNECTION_MS = Number(process.env.MAX_DISCONNECTION_MS || 120_000);
/** The adapter's own default when the variable is unset. */
const optionalInt = (name: string) => (process.env[name] ? Number(process.env[name]) : undefined);
const pruning = { pruneIntervalMs: optionalInt("PRUNE_INTERVAL_MS"), pruneBatchSize: optionalInt("PRUNE_BATCH_SIZE") };
/** RECENT_ENTRIES: the ring of recent entries that serves restores without a read (G-PRIV experiments). */
const tuning = { ...pruning, recentEntries: optionalInt("RECENT_ENTRIES") };

const cleanups: Array<() => Promise<void>> = [];
const errors: string[] = [];
function reportError(err: unknown): void {
  const text = err instanceof Error ? `${err.message}${err.cause instanceof Error ? ` <- ${err.cause.message}` : ""}` : String(err);
  if (errors.length < 50) errors.push(text);
  process.stderr.write(`adapter error: ${text}\n`);
}

async function adapterFor(): Promise<ServerOptions["adapter"] | undefined> {
  switch (peer.id) {
    case "ours":
    case "ours-no-crash-safety": {
      const { createAdapter } = await import("../src/index.js");
      const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 10 });
      pool.on("error", reportError);
      countStatements(pool);
      cleanups.push(() => pool.end());
      return createAdapter(pool, { errorHandler: reportError, crashSafety: peer.crashSafety ?? true, ...tuning }) as unknown as ServerOptions["adapter"];
    }
    case "ours-metrics": {
      const { createAdapter } = await import("../src/index.js");
      const { Registry } = await import("prom-client");
      const register = new Registry();
      const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 10 });
      pool.on("error", reportError);
      countStatements(pool);
      // Scraped every second (Prometheus usually scrapes every 15 s or more): the cost includes rendering.
      const scraper = setInterval(() => void register.metrics(), 1000);
      scraper.unref();
      cleanups.push(async () => {
        clearInterval(scraper);
        await pool.end();
      });
      return createAdapter(pool, { errorHandler: reportError, metrics: register }) as unknown as ServerOptions["adapter"];
    }
    case "upstream-pg": {
      const { createAdapter } = await import("@socket.io/postgres-adapter");
      const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 10 });
      pool.on("error", reportError);
      cleanups.push(() => pool.end());
      return createAdapter(pool, { errorHandler: reportError }) as unknown as ServerOptions["adapter"];
    }
    case "redis-streams": {
      const { createClient } = await import("redis");
      const { createAdapter } = await import("@socket.io/redis-streams-adapter");
      // No per-command timeout (commandOptions.timeout unset, no socketTimeout): with one, XADDs
      // queued behind a burst time out and their events are silently dropped.
      const client = createClient({ url: process.env.REDIS_URL, commandOptions: {}, maintNotifications: "disabled" });
      client.on("error", reportError);
      await client.connect();
      cleanups.push(async () => {
        await client.quit(); // after the queued commands (sessions being stored)
      });
      return createAdapter(client, {
        streamName: process.env.STREAM_NAME ?? "bench",
        sessionKeyPrefix: `${process.env.STREAM_NAME ?? "bench"}:session:`,
        // Its default (10,000, trimmed approximately) would refuse W4's 10,000-event replay.
        maxLen: 200_000,
      }) as unknown as ServerOptions["adapter"];
    }
    case "in-memory":
      return undefined;
  }
}

/** Statements our adapter sent on its pool (W7 reads them): all, and those that write rows. */
const statements = { all: 0, writes: 0, sessionWrites: 0, clusterNotifies: 0, replayReads: 0, replayRows: 0, replayBytes: 0 };
const WRITE = /\b(INSERT\s+INTO|DELETE\s+FROM|UPDATE\s+\S+(\s+AS\s+\w+)?\s+SET)\b/i;
const SESSION_WRITE = /INSERT\s+INTO\s+\S*"sessions"/i;

const writeKinds = new Map<string, number>();

/** Counts every statement on the pool's connections (each is its own transaction: the adapter runs autocommit). */
function countStatements(pool: pg.Pool): void {
  pool.on("connect", (client) => {
    const query = client.query.bind(client) as (...args: unknown[]) => unknown;
    (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
      const first = args[0];
      const text = typeof first === "string" ? first : ((first as { text?: string } | undefined)?.text ?? "");
      statements.all++;
      if (WRITE.test(text)) {
        statements.writes++;
        // Which statements write (G-NSP shows them per step): the first words of each.
        const kind = text.replace(/\/\*.*?\*\//g, "").replace(/\s+/g, " ").trim().slice(0, 70);
        writeKinds.set(kind, (writeKinds.get(kind) ?? 0) + 1);
      }
      if (SESSION_WRITE.test(text)) statements.sessionWrites++;
      // Cluster messages (heartbeats, …): one pg_notify per element of the batch's channel array (G-NSP).
      if (text.includes("pg_notify(m.channel")) {
        const values = (Array.isArray(args[1]) ? args[1] : (first as { values?: unknown[] } | undefined)?.values) as unknown[] | undefined;
        statements.clusterNotifies += Array.isArray(values?.[0]) ? values[0].length : 1;
      }
      // A restore's read of the log (G-PRIV, G-RESTORE): how many rows and bytes it brought back.
      // pool.query() passes a callback; a client's own query() returns a promise.
      const replay = text.includes("replay read");
      const tally = (r: { rows?: Array<{ payload?: Buffer }> } | undefined) => {
        statements.replayReads++;
        for (const row of r?.rows ?? []) {
          // Entries only: the restore's read also returns one row of counts (its density proof), without a payload.
          if (!row.payload) continue;
          statements.replayRows++;
          statements.replayBytes += row.payload?.length ?? 0;
        }
      };
      const last = args.at(-1);
      if (replay && typeof last === "function") {
        args[args.length - 1] = (err: unknown, r: { rows?: Array<{ payload?: Buffer }> }) => {
          if (!err) tally(r);
          (last as (...a: unknown[]) => void)(err, r);
        };
      }
      const result = query(...args);
      if (replay && result instanceof Promise) void result.then(tally, () => undefined);
      return result;
    };
  });
}

function quantile(values: number[], q: number): number | null {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]!;
}

let profiler: Session | undefined;
function post(session: Session, method: string, params?: object): Promise<unknown> {
  return new Promise((resolve, reject) =>
    session.post(method, params ?? {}, (err, result) => (err ? reject(err) : resolve(result))),
  );
}

async function main(): Promise<void> {
  const adapter = await adapterFor();
  const http = createServer();
  const io = new Server(http, {
    serveClient: false,
    ...(adapter ? { adapter } : {}),
    ...(peer.recovery ? { connectionStateRecovery: { maxDisconnectionDuration: MAX_DISCONNECTION_MS, skipMiddlewares: true } } : {}),
  });
  const nsp = io.of("/");
  let recoveredConnections = 0;
  nsp.on("connection", (socket) => {
    if (socket.recovered) {
      recoveredConnections++;
      return;
    }
    const room = (socket.handshake.auth as { room?: unknown }).room;
    if (typeof room === "string") void socket.join(room);
  });

  // Time every restoreSession (Socket.IO calls it on the namespace's adapter).
  const restores: number[] = [];
  let restoresRestored = 0;
  const refusals = new Map<string, number>();
  const adapterObject = nsp.adapter as unknown as {
    restoreSession?: (pid: string, offset: string) => Promise<unknown>;
    on?: (event: string, fn: (e: { reason: string }) => void) => void;
  };
  const original = adapterObject.restoreSession?.bind(nsp.adapter);
  if (original) {
    adapterObject.restoreSession = async (pid: string, offset: string) => {
      const started = nowMs();
      try {
        const session = await original(pid, offset);
        if (session) restoresRestored++;
        return session;
      } finally {
        restores.push(nowMs() - started);
      }
    };
  }
  adapterObject.on?.("restore-refused", ({ reason }) => {
    const key = reason.replace(/\d+/g, "N");
    refusals.set(key, (refusals.get(key) ?? 0) + 1);
  });

  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  const port = (http.address() as AddressInfo).port;

  let storm: { timer: NodeJS.Timeout; seqs: number[] } | undefined;
  // G-PRIV: one private stream per room "p-<i>" (a room of one socket, as socket.emit() logs to the socket's own room).
  let privateStreams: { timer: NodeJS.Timeout; seqs: number[]; emitted: number; startedAt: number } | undefined;
  let dynamic = false;
  let paced: { timer: NodeJS.Timeout; emitted: number } | undefined;
  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      storm && clearInterval(storm.timer);
      privateStreams && clearInterval(privateStreams.timer);
      paced && clearInterval(paced.timer);
      await io.close();
      for (const cleanup of cleanups) await cleanup().catch(reportError);
    })());

  interface Burst {
    epoch: number;
    /** Emitted round-robin, one event of each in turn, synchronously. */
    sources: Array<{ source: number; count: number; startSeq?: number; room?: string }>;
  }

  serve({
    info: () => ({ port, pid: process.pid }),
    "emit-burst": ({ epoch, sources }: Burst) => {
      const startedAt = nowMs();
      const next = sources.map((s) => s.startSeq ?? 1);
      const ops = sources.map((s) => (s.room === undefined ? nsp : nsp.to(s.room)));
      let left = true;
      for (let i = 0; left; i++) {
        left = false;
        for (let k = 0; k < sources.length; k++) {
          const s = sources[k]!;
          if (i >= s.count) continue;
          left = true;
          ops[k]!.emit("b", { e: epoch, s: s.source, q: next[k]!++, p: PADDING });
        }
      }
      return { startedAt, endedAt: nowMs() };
    },
    "emit-paced": async ({ epoch, source, count, intervalMs }: { epoch: number; source: number; count: number; intervalMs: number }) => {
      // One event every intervalMs on a fixed schedule (a late tick does not shift the next ones).
      const start = nowMs();
      for (let q = 1; q <= count; q++) {
        const due = start + (q - 1) * intervalMs;
        const wait = due - nowMs();
        if (wait > 0.5) await new Promise((resolve) => setTimeout(resolve, Math.floor(wait)));
        nsp.emit("b", { e: epoch, s: source, q, t: nowMs(), p: PADDING.slice(0, 40) });
      }
      return { startedAt: start, endedAt: nowMs() };
    },
    "storm-start": ({ epoch, rooms, startSeq, intervalMs }: { epoch: number; rooms: string[]; startSeq: number[]; intervalMs: number }) => {
      const seqs = [...startSeq];
      let turn = 0;
      const timer = setInterval(() => {
        const r = turn++ % rooms.length;
        nsp.to(rooms[r]!).emit("b", { e: epoch, s: r, q: seqs[r]!++, p: PADDING });
      }, intervalMs);
      storm = { timer, seqs };
      return null;
    },
    "storm-stop": () => {
      if (!storm) return null;
      clearInterval(storm.timer);
      // Last seq emitted per room.
      return storm.seqs.map((next) => next - 1);
    },
    // SOAK: a steady rate until "pace-stop", on a fixed schedule (a late tick emits what fell due,
    // so the rate holds on a loaded machine). Each event carries its emission time for latency.
    "pace-start": ({ epoch, source, perSecond }: { epoch: number; source: number; perSecond: number }) => {
      const start = nowMs();
      let emitted = 0;
      const timer = setInterval(() => {
        const due = Math.floor(((nowMs() - start) * perSecond) / 1000);
        while (emitted < due) nsp.emit("b", { e: epoch, s: source, q: ++emitted, t: nowMs(), p: PADDING });
        paced!.emitted = emitted;
      }, 10);
      paced = { timer, emitted };
      return null;
    },
    "pace-emitted": () => paced?.emitted ?? 0,
    /** The last seq emitted. */
    "pace-stop": () => {
      if (!paced) return 0;
      clearInterval(paced.timer);
      return paced.emitted;
    },
    "drop-transports": () => {
      // The transport closes under the socket: Socket.IO stores its session ("transport close").
      for (const socket of nsp.sockets.values()) socket.conn.close();
      return nsp.sockets.size;
    },
    sockets: () => nsp.sockets.size,
    /** G-NSP: dynamic namespaces /t-<n>, whose sockets join their auth.room like those of "/". */
    "dynamic-namespaces": () => {
      if (dynamic) return null;
      dynamic = true;
      io.of(/^\/t-\d+$/).on("connection", (socket) => {
        const room = (socket.handshake.auth as { room?: unknown }).room;
        if (typeof room === "string" && !socket.recovered) void socket.join(room);
      });
      return null;
    },
    "namespace-count": () => io._nsps.size,
    /** LISTEN channels of our node's listener (one shared by all namespaces); null for other peers. */
    "listen-channels": () => {
      const ctx = (nsp.adapter as unknown as { ctx?: { listener?: { channels?: Set<string> } } }).ctx;
      return ctx?.listener?.channels?.size ?? null;
    },
    /** Heap and RSS after a full GC (so deltas are retained memory, not garbage). */
    memory: () => {
      v8.setFlagsFromString("--expose-gc");
      const gc = vm.runInNewContext("gc") as () => void;
      const t0 = nowMs();
      gc();
      const gcMs = nowMs() - t0;
      const m = process.memoryUsage();
      return { rssMb: m.rss / 2 ** 20, heapUsedMb: m.heapUsed / 2 ** 20, externalMb: m.external / 2 ** 20, arrayBuffersMb: m.arrayBuffers / 2 ** 20, gcMs };
    },
    /**
     * SOAK: sizes of every Map, Set and array reachable from the adapter within a few hops
     * (path → size), to tell which structure grows when the heap does. Read-only reflection.
     */
    "structure-sizes": () => structureSizes(nsp.adapter, 5),
    /** SOAK with SOAK_HEAP_SNAPSHOTS: a heap snapshot (blocks this node for a second or more). */
    "heap-snapshot": ({ file }: { file: string }) => v8.writeHeapSnapshot(file),
    /**
     * G-PRIV: `perSocketHz` events per second to each of rooms p-0..p-(count-1), spread over
     * 20 ms ticks; emitted whether or not the socket is connected (it is logged either way).
     */
    "private-start": ({ epoch, count, perSocketHz }: { epoch: number; count: number; perSocketHz: number }) => {
      const tickMs = 20;
      const perTick = (count * perSocketHz * tickMs) / 1000;
      const seqs = new Array<number>(count).fill(0);
      const state = { timer: undefined as unknown as NodeJS.Timeout, seqs, emitted: 0, startedAt: nowMs() };
      let next = 0;
      let due = 0;
      state.timer = setInterval(() => {
        // Catch up on ticks the loop missed, so the rate reached is what the node could sustain.
        due = ((nowMs() - state.startedAt) / 1000) * count * perSocketHz;
        const burst = Math.min(due - state.emitted, perTick * 50);
        for (let k = 0; k < burst; k++) {
          const i = next;
          next = (next + 1) % count;
          nsp.to(`p-${i}`).emit("b", { e: epoch, s: i, q: ++seqs[i]!, p: PADDING });
          state.emitted++;
        }
      }, tickMs);
      privateStreams = state;
      return null;
    },
    "private-progress": () => (privateStreams ? { emitted: privateStreams.emitted, seconds: (nowMs() - privateStreams.startedAt) / 1000 } : null),
    "private-stop": () => {
      if (!privateStreams) return null;
      clearInterval(privateStreams.timer);
      return { last: privateStreams.seqs, emitted: privateStreams.emitted, seconds: (nowMs() - privateStreams.startedAt) / 1000 };
    },
    "restore-stats": () => ({
      count: restores.length,
      restored: restoresRestored,
      meanMs: restores.length ? restores.reduce((a, b) => a + b, 0) / restores.length : null,
      maxMs: restores.length ? Math.max(...restores) : null,
      p50Ms: quantile(restores, 0.5),
      p99Ms: quantile(restores, 0.99),
      recoveredConnections,
      refusals: Object.fromEntries(refusals),
    }),
    statements: () => ({ ...statements }),
    "write-kinds": () => Object.fromEntries(writeKinds),
    usage: () => {
      const cpu = process.cpuUsage();
      return { maxRssMb: process.resourceUsage().maxRSS / 1024, rssMb: process.memoryUsage.rss() / 2 ** 20, heapUsedMb: process.memoryUsage().heapUsed / 2 ** 20, cpuMs: (cpu.user + cpu.system) / 1000, errors };
    },
    // CPU profile of a window (not of the process' startup): bench/profile-summary.ts reads it.
    "profile-start": async () => {
      profiler ??= new Session();
      profiler.connect();
      await post(profiler, "Profiler.enable");
      await post(profiler, "Profiler.setSamplingInterval", { interval: 200 });
      await post(profiler, "Profiler.start");
      return null;
    },
    "profile-stop": async ({ file }: { file: string }) => {
      if (!profiler) return null;
      const { profile } = (await post(profiler, "Profiler.stop")) as { profile: unknown };
      writeFileSync(file, JSON.stringify(profile));
      profiler.disconnect();
      return file;
    },
    close: async () => {
      const started = nowMs();
      await close();
      return { closeMs: nowMs() - started };
    },
  });
  process.on("SIGTERM", () => {
    void close().finally(() => process.exit(0));
  });
  push("ready", { port });
}

main().catch((err: unknown) => {
  process.stderr.write(`node-process failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(2);
});

/** Sizes of the Maps, Sets and arrays reachable from `root` within `depth` property hops, by path (first path seen). */
function structureSizes(root: object, depth: number): Record<string, number> {
  const out: Record<string, number> = {};
  const seen = new WeakSet<object>();
  const visit = (value: unknown, path: string, left: number) => {
    if (typeof value !== "object" || value === null || seen.has(value)) return;
    seen.add(value);
    if (value instanceof Map || value instanceof Set) out[path] = value.size;
    else if (Array.isArray(value)) out[path] = value.length;
    if (left === 0 || ArrayBuffer.isView(value) || value instanceof Server) return;
    if (value instanceof Map) {
      // Nested collections (per socket, per namespace): their summed sizes under one path.
      let nested = 0;
      for (const v of value.values()) if (v instanceof Map || v instanceof Set) nested += v.size;
      else if (Array.isArray(v)) nested += v.length;
      if (nested) out[`${path}[*]`] = nested;
      let k = 0;
      for (const v of value.values()) if (k++ < 3) visit(v, `${path}[v]`, left - 1);
      return;
    }
    if (value instanceof Set || Array.isArray(value)) return;
    for (const key of Object.keys(value)) {
      let v: unknown;
      try {
        v = (value as Record<string, unknown>)[key];
      } catch {
        continue;
      }
      visit(v, `${path}.${key}`, left - 1);
    }
  };
  visit(root, "adapter", depth);
  return out;
}
