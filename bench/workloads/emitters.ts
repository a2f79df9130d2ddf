/**
 * Emitter throughput: events per second an emitter process gets committed,
 * beside the emitters of the peers, in the same run.
 *
 * - ours, direct: `createEmitter(pool).emit()` × N, not awaited one by one
 *   (the emitter group-commits); committed = every promise resolved (the
 *   events are in the log).
 * - ours, transactional: 4 connections, each `BEGIN; withClient(c).emit();
 *   COMMIT` per event; committed = every COMMIT returned (staged), and
 *   logged = a node (in this process, our adapter on a Socket.IO server
 *   without clients) moved them all into the log.
 * - upstream: `@socket.io/postgres-emitter` × N (one autocommit pg_notify per
 *   emit, fire and forget); committed = an extra LISTEN connection received
 *   all N notifications.
 * - redis-streams: one XADD per emit in the adapter's message format, which
 *   is what `@socket.io/redis-streams-emitter` does (that package is not in
 *   the npm registry this machine reaches: see docs/performance.md);
 *   committed = every XADD answered.
 *
 * Every emitter uses a pool (or client) of 4 connections at most, and the
 * same payload (`{ n, text: 100 chars }`) to one room.
 */
import { Emitter as UpstreamEmitter } from "@socket.io/postgres-emitter";
import { createServer } from "node:http";
import pg from "pg";
import { Server } from "socket.io";
import { createAdapter, createEmitter } from "../../src/index.js";
import { nowMs } from "../lib/ipc.js";

export interface EmitterThroughput {
  emitter: string;
  /** Events per second, committed as the row's emitter defines it (see above). */
  eventsPerSec: number;
  events: number;
  rep: number;
}

const TEXT = "x".repeat(100);

/** A pool whose idle connections' errors do not crash the run (reported by the queries that use them). */
function pool_(url: string, max: number): pg.Pool {
  const p = new pg.Pool({ connectionString: url, max });
  p.on("error", () => undefined);
  return p;
}

async function timed(events: number, run: () => Promise<void>): Promise<number> {
  const started = nowMs();
  await run();
  return events / ((nowMs() - started) / 1000);
}

async function waitUntil(check: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`bench emitters: timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

async function head(pool: pg.Pool): Promise<number> {
  const { rows } = await pool.query<{ head: string }>("SELECT coalesce((SELECT head FROM socket_io.namespaces WHERE name = '/'), 0)::text AS head");
  return Number(rows[0]!.head);
}

async function oursDirect(url: string, events: number): Promise<number> {
  const pool = pool_(url, 4);
  const emitter = createEmitter(pool);
  try {
    await Promise.all(Array.from({ length: 100 }, (_, n) => emitter.to("room").emit("ev", { n, text: TEXT })));
    return await timed(events, async () => {
      await Promise.all(Array.from({ length: events }, (_, n) => emitter.to("room").emit("ev", { n, text: TEXT })));
    });
  } finally {
    await emitter.close();
    await pool.end();
  }
}

async function oursTransactional(url: string, events: number): Promise<{ committed: number; logged: number }> {
  const pool = pool_(url, 5);
  const nodePool = pool_(url, 5);
  const httpServer = createServer();
  const io = new Server(httpServer, { adapter: createAdapter(nodePool) as never, connectionStateRecovery: { maxDisconnectionDuration: 60_000 } });
  await new Promise<void>((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
  const emitter = createEmitter(pool);
  try {
    const before = await head(pool);
    await waitUntil(async () => (await head(pool)) >= before, 10_000, "the node to start");
    const workers = 4;
    const per = Math.ceil(events / workers);
    const started = nowMs();
    await Promise.all(
      Array.from({ length: workers }, async () => {
        const client = await pool.connect();
        try {
          for (let n = 0; n < per; n++) {
            await client.query("BEGIN");
            await emitter.to("room").withClient(client).emit("ev", { n, text: TEXT });
            await client.query("COMMIT");
          }
        } finally {
          client.release();
        }
      }),
    );
    const committedAt = nowMs();
    await waitUntil(async () => (await head(pool)) >= before + per * workers, 60_000, "the staged events to be logged");
    const loggedAt = nowMs();
    const total = per * workers;
    return { committed: total / ((committedAt - started) / 1000), logged: total / ((loggedAt - started) / 1000) };
  } finally {
    await emitter.close();
    await io.close();
    await pool.end();
    await nodePool.end();
  }
}

async function upstream(url: string, events: number): Promise<number> {
  const pool = pool_(url, 4);
  const listener = new pg.Client({ connectionString: url });
  await listener.connect();
  let heard = 0;
  listener.on("notification", () => heard++);
  await listener.query(`LISTEN "socket.io#/"`);
  const emitter = new UpstreamEmitter(pool);
  try {
    for (let n = 0; n < 100; n++) emitter.to("room").emit("ev", { n, text: TEXT });
    await waitUntil(() => heard >= 100, 10_000, "upstream's warm-up");
    heard = 0;
    return await timed(events, async () => {
      for (let n = 0; n < events; n++) emitter.to("room").emit("ev", { n, text: TEXT });
      await waitUntil(() => heard >= events, 60_000, "upstream's notifications");
    });
  } finally {
    await listener.end();
    await pool.end();
  }
}

async function redisStreams(redisUrl: string, streamName: string, events: number): Promise<number> {
  const { createClient } = await import("redis");
  const client = createClient({ url: redisUrl });
  client.on("error", () => undefined);
  await client.connect();
  const message = (n: number) => ({
    uid: "emitter",
    nsp: "/",
    type: "3", // MessageType.BROADCAST
    data: JSON.stringify({ packet: { type: 2, data: ["ev", { n, text: TEXT }], nsp: "/" }, opts: { rooms: ["room"], except: [], flags: {} } }),
  });
  const xadd = (n: number) => client.xAdd(streamName, "*", message(n), { TRIM: { strategy: "MAXLEN", strategyModifier: "~", threshold: 10_000 } });
  try {
    await Promise.all(Array.from({ length: 100 }, (_, n) => xadd(n)));
    return await timed(events, async () => {
      await Promise.all(Array.from({ length: events }, (_, n) => xadd(n)));
    });
  } finally {
    await client.del(streamName).catch(() => undefined);
    await client.close();
  }
}

/** `reps` interleaved repetitions of every emitter; `redisUrl` undefined leaves redis-streams out. */
export async function measureEmitters(url: string, redisUrl: string | undefined, events: number, reps: number, log: (line: string) => void): Promise<EmitterThroughput[]> {
  const results: EmitterThroughput[] = [];
  for (let rep = 0; rep < reps; rep++) {
    const push = (emitter: string, eventsPerSec: number) => {
      results.push({ emitter, eventsPerSec, events, rep });
      log(`emitters rep ${rep + 1}/${reps} ${emitter}: ${Math.round(eventsPerSec)} events/s`);
    };
    push("ours, direct", await oursDirect(url, events));
    const tx = await oursTransactional(url, Math.ceil(events / 5));
    push("ours, transactional (committed)", tx.committed);
    push("ours, transactional (logged by a node)", tx.logged);
    push("upstream @socket.io/postgres-emitter", await upstream(url, events));
    if (redisUrl) push("redis-streams (XADD per emit)", await redisStreams(redisUrl, `bench:emitters:${Date.now().toString(36)}`, events));
  }
  return results;
}
