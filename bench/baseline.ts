/**
 * A quick baseline, not the benchmark harness: 2 Socket.IO nodes with recovery
 * on (same process), 50 clients on each, node 0 emits N ~100-byte events as
 * fast as it can; prints deliveries/s until every client has every event, and
 * checks that each client saw every offset once and in order.
 *
 *   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npx tsx bench/baseline.ts [events] [clientsPerNode]
 *
 * It creates (and drops) a database of its own next to the one in DATABASE_URL.
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import pg from "pg";
import { Server } from "socket.io";
import { io as connect, type Socket as ClientSocket } from "socket.io-client";
import { createAdapter, migrate } from "../src/index.js";

const events = Number(process.argv[2] ?? 5000);
const clientsPerNode = Number(process.argv[3] ?? 50);
const base = new URL(process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/postgres");
const dbName = `bench_baseline_${process.pid}`;

async function admin(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: base.toString() });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

await admin(`CREATE DATABASE ${dbName}`);
const url = new URL(base.toString());
url.pathname = `/${dbName}`;
const pools: pg.Pool[] = [];
const servers: Server[] = [];
const clients: ClientSocket[] = [];
try {
  const setupPool = new pg.Pool({ connectionString: url.toString(), max: 1 });
  await migrate(setupPool);
  await setupPool.end();

  const ports: number[] = [];
  for (let i = 0; i < 2; i++) {
    const pool = new pg.Pool({ connectionString: url.toString(), max: 5 });
    pools.push(pool);
    const http = createServer();
    const io = new Server(http, {
      connectionStateRecovery: { maxDisconnectionDuration: 60_000 },
      adapter: createAdapter(pool),
    });
    servers.push(io);
    await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
    ports.push((http.address() as AddressInfo).port);
  }

  const received = new Map<ClientSocket, number>();
  let violations = 0;
  let delivered = 0;
  let resolveDone: () => void = () => undefined;
  const done = new Promise<void>((resolve) => (resolveDone = resolve));
  for (const port of ports) {
    for (let i = 0; i < clientsPerNode; i++) {
      const socket = connect(`http://127.0.0.1:${port}`, { transports: ["websocket"], forceNew: true });
      let last = -1;
      socket.on("tick", (_payload: string, offset: string) => {
        const n = Number(offset.slice(1));
        if (last !== -1 && n !== last + 1) violations++;
        last = n;
        received.set(socket, (received.get(socket) ?? 0) + 1);
        if (++delivered === events * clientsPerNode * 2) resolveDone();
      });
      clients.push(socket);
    }
  }
  await Promise.all(clients.map((c) => new Promise<void>((resolve) => (c.connected ? resolve() : c.once("connect", () => resolve())))));

  // Committed transactions in this database (pg_stat_database is updated with a little delay).
  const commits = async () => {
    await new Promise((resolve) => setTimeout(resolve, 1200));
    const { rows } = await pools[0]!.query<{ n: string }>(
      "SELECT xact_commit::text AS n FROM pg_stat_database WHERE datname = current_database()",
    );
    return Number(rows[0]?.n);
  };
  const commitsBefore = await commits();
  const payload = "x".repeat(100);
  const started = process.hrtime.bigint();
  for (let i = 0; i < events; i++) servers[0]!.emit("tick", payload);
  await done;
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const { rows } = await pools[0]!.query<{ n: string }>("SELECT count(*)::text AS n FROM socket_io.log_entries");
  // Includes heartbeats, the listeners' liveness checks and these stat queries: an upper bound.
  const transactions = (await commits()) - commitsBefore;
  console.log(
    JSON.stringify({
      events,
      clients: clients.length,
      deliveries: delivered,
      seconds: Number(seconds.toFixed(3)),
      eventsPerSecond: Math.round(events / seconds),
      deliveriesPerSecond: Math.round(delivered / seconds),
      orderViolations: violations,
      loggedEntries: Number(rows[0]?.n),
      eventsPerTransaction: Number((events / transactions).toFixed(1)),
    }),
  );
} finally {
  clients.forEach((c) => c.close());
  await Promise.all(servers.map((io) => io.close()));
  await Promise.all(pools.map((p) => p.end()));
  await admin(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
}
