/**
 * `npm start`: a live two-node cluster on Postgres, in the terminal.
 *
 * Node A and node B are two Socket.IO servers with their own pools. A ticker
 * on node B broadcasts to the room "news". A client on node A joins "news",
 * then its connection drops; while it is away node A and node B keep
 * emitting; it reconnects to node B and gets its session and every missed
 * event, once and in order. Ctrl-C stops everything cleanly.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import pg from "pg";
import { Server } from "socket.io";
import { io as connect } from "socket.io-client";
import { createAdapter, migrate } from "../src/index.js";
import { demoDatabase } from "./postgres.js";

const log = (line: string) => console.log(`${new Date().toISOString().slice(11, 23)}  ${line}`);

const database = await demoDatabase();
log(`database: ${database.description}`);
const pools: pg.Pool[] = [];
const servers: Server[] = [];
let stopping = false;

async function stop(code: number): Promise<void> {
  if (stopping) process.exit(code);
  stopping = true;
  await Promise.all(servers.map((io) => io.close()));
  await Promise.all(pools.map((pool) => pool.end()));
  await database.stop();
  log("stopped cleanly");
  process.exit(code);
}
process.on("SIGINT", () => void stop(130));
process.on("SIGTERM", () => void stop(143));

async function startNode(name: string): Promise<{ io: Server; url: string }> {
  const pool = new pg.Pool({ connectionString: database.url, max: 5 });
  pools.push(pool);
  const http = createServer();
  const io = new Server(http, {
    connectionStateRecovery: { maxDisconnectionDuration: 60_000 },
    adapter: createAdapter(pool, { errorHandler: (err) => log(`[${name}] ${err.message}`) }),
  });
  io.on("connection", (socket) => {
    log(`[${name}] ${socket.recovered ? "recovered" : "new"} socket ${socket.id} in rooms ${[...socket.rooms].join(", ")}`);
    socket.on("join", (room: string, ack: () => void) => {
      socket.join(room);
      socket.data.joined = [...(socket.data.joined ?? []), room];
      ack();
    });
  });
  servers.push(io);
  await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  log(`[${name}] listening on ${url}`);
  return { io, url };
}

try {
  const setup = new pg.Pool({ connectionString: database.url, max: 1 });
  const migrated = await migrate(setup);
  await setup.end();
  log(`migrations: ${JSON.stringify(migrated)}`);

  const a = await startNode("node A");
  const b = await startNode("node B");

  let tick = 0;
  const ticker = setInterval(() => b.io.to("news").emit("news", `tick ${++tick} from node B`), 100);

  const client = connect(a.url, { transports: ["websocket"], reconnectionDelay: 200 });
  const seen: string[] = [];
  client.on("news", (text: string) => seen.push(text));
  await new Promise<void>((resolve) => client.once("connect", () => resolve()));
  log(`[client] connected to node A as ${client.id}`);
  await client.emitWithAck("join", "news");
  await new Promise((resolve) => setTimeout(resolve, 1000));
  log(`[client] received ${seen.length} events so far, last: "${seen.at(-1)}"`);

  // The connection drops; the client will come back through node B.
  const before = seen.length;
  client.io.opts.hostname = "127.0.0.1";
  (client.io as unknown as { uri: string }).uri = b.url;
  client.io.engine.close();
  log("[client] connection dropped; reconnecting to node B while node A and node B keep emitting");
  for (let i = 1; i <= 5; i++) a.io.to("news").emit("news", `flash ${i} from node A`);

  await new Promise<void>((resolve) => client.once("connect", () => resolve()));
  log(`[client] reconnected to node B: id ${client.id}, recovered=${client.recovered}`);
  await new Promise((resolve) => setTimeout(resolve, 500));
  clearInterval(ticker);
  const replayed = seen.slice(before);
  const ticks = seen.filter((t) => t.startsWith("tick")).map((t) => Number(t.split(" ")[1]));
  const inOrder = ticks.every((n, i) => i === 0 || n === ticks[i - 1]! + 1);
  const flashes = seen.filter((t) => t.startsWith("flash")).length;
  log(`[client] since the drop: ${replayed.length} events (${flashes}/5 flashes from node A); ticks ${ticks[0]}..${ticks.at(-1)} ${inOrder ? "complete and in order" : "WITH GAPS OR DUPLICATES"}`);
  client.close();
  await stop(client.recovered && inOrder && flashes === 5 ? 0 : 1);
} catch (err) {
  console.error(err);
  await stop(1);
}
