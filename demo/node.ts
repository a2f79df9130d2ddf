/**
 * One Socket.IO node of the demo, in its own process (spawned by supervisor.ts).
 *
 *   DATABASE_URL=... NODE_NAME=node-1 PORT=3001 PAGE_ORIGINS=http://127.0.0.1:3000 \
 *   node --import tsx demo/node.ts
 *
 * Without DATABASE_URL it loads its modules, reports "waiting" and gets the
 * URL from the supervisor: loading overlaps with Postgres starting.
 *
 * It has its own pg.Pool and `createAdapter` from src, and serves Socket.IO on
 * 127.0.0.1:PORT (PORT=0: any free port; PORT_FALLBACK=1: any free port when
 * PORT is taken). What it sends:
 * - "tick" `{ node, n, at }` to everyone every TICK_MS (default 500) ms;
 * - "chat" `{ node, from, text }` to everyone when a tab sends "chat" (text);
 * - "welcome" `{ node, id, recovered, replayed }` to each socket at connection,
 *   right after the replay of a restore, `replayed` being the number of missed
 *   packets the adapter sent back ("session-restored"). Local: not logged.
 * Every broadcast is logged, so every tab sees one offset sequence.
 *
 * It reports to the supervisor over IPC (`NodeReport` in node-protocol.ts):
 * ready, restores and refusals, connected sockets, adapter errors.
 * GET /metrics: this node's Prometheus metrics (the adapter's, option
 * `metrics`, and Node's process metrics), linked from the page.
 * SIGTERM or SIGINT or the supervisor going away: stop ticking, `io.close()`
 * (flushes the log and the sessions of every socket it disconnects), end the
 * pool, exit 0 (1 when closing failed).
 */
import { createServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import pg from "pg";
import { collectDefaultMetrics, Registry } from "prom-client";
import { Server, type Socket } from "socket.io";
import { createAdapter, type RefusedEvent, type RestoredEvent } from "../src/index.js";
import { isSupervisorMessage, type NodeReport } from "./node-protocol.js";

/** How long a disconnected tab may stay away and still recover (also covers a demo restart). */
export const MAX_DISCONNECTION_MS = 5 * 60_000;
const CHAT_MAX_LENGTH = 200;

function report(message: NodeReport): void {
  // Without an IPC channel (run by hand) the node just logs.
  if (process.send) process.send(message);
  else console.log(JSON.stringify(message));
}

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
}

function listen(http: HttpServer, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    http.once("error", reject);
    http.listen(port, "127.0.0.1", () => {
      http.off("error", reject);
      resolve((http.address() as AddressInfo).port);
    });
  });
}

function databaseUrlFromSupervisor(): Promise<string> {
  if (!process.send) throw new Error("DATABASE_URL is required");
  return new Promise((resolve) => {
    // The supervisor went away before the database was ready: nothing to close yet.
    const onGone = () => process.exit(1);
    const onMessage = (message: unknown) => {
      if (!isSupervisorMessage(message)) return;
      process.off("message", onMessage);
      // From now on a disconnection means a graceful stop (see main), not this early exit.
      process.off("disconnect", onGone);
      resolve(message.url);
    };
    process.on("message", onMessage);
    process.once("disconnect", onGone);
    report({ type: "waiting" });
  });
}

async function main(): Promise<void> {
  const databaseUrl = process.env.DATABASE_URL || (await databaseUrlFromSupervisor());
  const name = required("NODE_NAME");
  const origins = (process.env.PAGE_ORIGINS ?? "").split(",").filter(Boolean);
  const tickMs = Number(process.env.TICK_MS ?? 500);

  const pool = new pg.Pool({ connectionString: databaseUrl, max: 5 });
  // An idle pooled connection dropped by the server must not crash the node.
  pool.on("error", () => {});
  const register = new Registry();
  collectDefaultMetrics({ register });
  // Socket.IO answers its own path first; every other request comes here.
  const http = createServer((req, res) => {
    if (req.method !== "GET" || req.url !== "/metrics") {
      res.writeHead(404).end();
      return;
    }
    register.metrics().then(
      (text) => res.writeHead(200, { "content-type": register.contentType }).end(text),
      (err: unknown) => res.writeHead(500).end(String(err)),
    );
  });
  const io = new Server(http, {
    connectionStateRecovery: { maxDisconnectionDuration: MAX_DISCONNECTION_MS, skipMiddlewares: true },
    cors: { origin: origins },
    adapter: createAdapter(pool, {
      pruneIntervalMs: 30_000,
      // A crashed node is declared dead 2 s after its last heartbeat; its tabs recover meanwhile.
      nodeHeartbeatIntervalMs: 500,
      nodeDeadAfterMs: 2000,
      restoreTimeoutMs: 8000,
      metrics: register,
      errorHandler: (err) => {
        process.stderr.write(`[${name}] adapter error: ${err.message}\n`);
        report({ type: "error", message: err.message });
      },
    }),
  });

  // "session-restored" comes before the restored socket's "connection": keep the count until then.
  const replayedBySid = new Map<string, { replayed: number }>();
  const adapter = io.of("/").adapter;
  adapter.on("session-restored", ({ sid, replayed }: RestoredEvent) => {
    const entry = { replayed };
    replayedBySid.set(sid, entry);
    // A restore whose connection dropped before "connection" leaves its count behind: forget it.
    setTimeout(() => replayedBySid.get(sid) === entry && replayedBySid.delete(sid), 30_000).unref();
    report({ type: "restored", replayed });
  });
  adapter.on("restore-refused", ({ reason }: RefusedEvent) => report({ type: "refused", reason }));

  const census = () => report({ type: "sockets", count: io.of("/").sockets.size });
  io.on("connection", (socket: Socket) => {
    census();
    socket.on("disconnect", census);
    const replayed = replayedBySid.get(socket.id)?.replayed ?? 0;
    replayedBySid.delete(socket.id);
    // Local, so not logged: with recovery on, `socket.emit` is a logged broadcast to the socket's
    // own room, which would take an offset that other tabs never see (a gap in their stream).
    // An object, never a bare string: the client would take a trailing string for its offset.
    io.local.to(socket.id).emit("welcome", { node: name, id: socket.id, recovered: socket.recovered, replayed });
    socket.on("chat", (text: unknown) => {
      if (typeof text !== "string" || text.trim() === "") return;
      io.emit("chat", { node: name, from: socket.id, text: text.slice(0, CHAT_MAX_LENGTH) });
    });
  });

  const requestedPort = Number(process.env.PORT ?? 0);
  let port: number;
  try {
    port = await listen(http, requestedPort);
  } catch (err) {
    const taken = (err as NodeJS.ErrnoException).code === "EADDRINUSE";
    if (!taken || process.env.PORT_FALLBACK !== "1") throw err;
    port = await listen(http, 0);
  }

  let n = 0;
  const ticker = setInterval(() => io.emit("tick", { node: name, n: ++n, at: Date.now() }), tickMs);

  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      clearInterval(ticker);
      let code = 0;
      try {
        await io.close();
      } catch (err) {
        process.stderr.write(`[${name}] close failed: ${(err as Error).message}\n`);
        code = 1;
      }
      await pool.end().catch(() => {});
      process.exit(code);
    })());
  process.on("SIGTERM", () => void stop());
  process.on("SIGINT", () => void stop());
  // The supervisor is gone (even killed): do not stay behind.
  process.on("disconnect", () => void stop());

  report({ type: "ready", port });
}

main().catch((err: unknown) => {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`node failed to start: ${message}\n`);
  report({ type: "failed", message });
  process.exit(2);
});
