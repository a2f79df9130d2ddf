/**
 * In-process Socket.IO clusters on Postgres for the recovery tests.
 *
 * A cluster is N nodes, each with its own `http.Server` on 127.0.0.1 (port 0),
 * its own `pg.Pool` (same config, separate pools, like separate processes) and
 * its own Socket.IO server using `createAdapter(pool, opts)`. Clients are
 * socket.io-client sockets on the websocket transport, one manager each
 * (`forceNew`), so dropping one connection never touches another client.
 *
 * Everything created here is registered; `closeAll()` closes it and
 * `assertNoLeaks()` checks that nothing of ours is left open (servers
 * listening, pools not ended, clients connected, database connections).
 */
import { spawn, type ChildProcess } from "node:child_process";
import http from "node:http";
import net from "node:net";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { Server, type Namespace, type ServerOptions, type Socket as ServerSocket } from "socket.io";
import { io as ioc, type ManagerOptions, type Socket as ClientSocket, type SocketOptions } from "socket.io-client";
import { createAdapter } from "../../src/index.js";
import type { PostgresRecoveryAdapterOptions } from "../../src/options.js";

export type { ClientSocket, ServerSocket };

/** Default name of the event that primes a new session's offset. */
export const PRIME_EVENT = "socket.io-postgres-recovery:offset";

/** Dynamic namespaces every test node accepts (`io.of(DYNAMIC_NAMESPACES)`). */
export const DYNAMIC_NAMESPACES = /^\/dyn-\w+$/;

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

export interface WaitOptions {
  /** Upper bound in ms (default 5000). */
  timeout?: number;
  /** Polling period in ms (default 10). */
  interval?: number;
  /** Shown when the wait times out; a function is evaluated at that moment. */
  message?: string | (() => string);
}

/** Polls `condition` until it is truthy; rejects after `timeout` ms with `message`. */
export async function waitFor(
  condition: () => boolean | Promise<boolean>,
  { timeout = 5000, interval = 10, message = "condition" }: WaitOptions = {},
): Promise<void> {
  const deadline = Date.now() + timeout;
  let lastError: unknown;
  for (;;) {
    try {
      if (await condition()) return;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const text = typeof message === "function" ? message() : message;
      const cause = lastError instanceof Error ? ` (last error: ${lastError.message})` : "";
      throw new Error(`timed out after ${timeout} ms waiting for ${text}${cause}`);
    }
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

/** Resolves with the arguments of the next `event` on `emitter`; rejects after `timeout` ms. */
export function once<T extends unknown[] = unknown[]>(target: object, event: string, timeout = 5000): Promise<T> {
  const emitter = target as {
    once(event: string, fn: (...args: unknown[]) => void): unknown;
    off(event: string, fn: (...args: unknown[]) => void): unknown;
  };
  return new Promise<T>((resolve, reject) => {
    const onEvent = (...args: unknown[]) => {
      clearTimeout(timer);
      resolve(args as unknown as T);
    };
    const timer = setTimeout(() => {
      emitter.off(event, onEvent);
      reject(new Error(`timed out after ${timeout} ms waiting for "${event}"`));
    }, timeout);
    emitter.once(event, onEvent);
  });
}

// ---------------------------------------------------------------------------
// Server side handlers shared by in-process nodes and node-process.ts
// ---------------------------------------------------------------------------

/** What a test client learns about its server-side socket (`whoami`). */
export interface WhoAmI {
  node: string;
  nsp: string;
  id: string;
  rooms: string[];
  recovered: boolean;
  data: unknown;
}

/**
 * The handlers every test namespace gets:
 * - at connection (not on recovery): join `auth.rooms` if given;
 * - `join` (room | rooms, ack?) and `leave` (room, ack?);
 * - `set-data` (data, ack?) sets `socket.data`;
 * - `whoami` (ack) answers a `WhoAmI`;
 * - `self-emit` ({ event, args }, ack?) does `socket.emit(event, ...args)`;
 * - `broadcast-emit` ({ rooms?, event, args }, ack?) does `socket.to(rooms)` or
 *   `socket.broadcast` `.emit(event, ...args)`.
 * Acks answer objects, never a bare string: the client takes the last string
 * argument of any event as its offset.
 */
export function installHandlers(nsp: Namespace, nodeName: string): void {
  nsp.on("connection", (socket: ServerSocket) => {
    const auth = socket.handshake.auth as { rooms?: unknown };
    if (!socket.recovered && Array.isArray(auth.rooms)) {
      socket.join(auth.rooms.filter((r): r is string => typeof r === "string"));
    }
    socket.on("join", (rooms: string | string[], ack?: (reply: object) => void) => {
      socket.join(rooms);
      if (typeof ack === "function") ack({ rooms: [...socket.rooms] });
    });
    socket.on("leave", (room: string, ack?: (reply: object) => void) => {
      socket.leave(room);
      if (typeof ack === "function") ack({ rooms: [...socket.rooms] });
    });
    // Leaves `room`, then tells the socket so through the log (to its own room): what an application
    // does to acknowledge a leave in order with what the socket receives.
    // `before`: an event to the socket first, which the leave then waits for (program order).
    socket.on("leave-and-mark", (spec: { room: string; marker: string; before?: string }, ack?: (reply: object) => void) => {
      if (spec.before !== undefined) socket.nsp.to(socket.id).emit("ev", spec.before);
      socket.leave(spec.room);
      socket.nsp.to(socket.id).emit("ev", spec.marker);
      if (typeof ack === "function") ack({ rooms: [...socket.rooms] });
    });
    socket.on("set-data", (data: unknown, ack?: (reply: object) => void) => {
      socket.data = data;
      if (typeof ack === "function") ack({ ok: true });
    });
    socket.on("whoami", (ack: (reply: WhoAmI) => void) => {
      if (typeof ack !== "function") return;
      ack({
        node: nodeName,
        nsp: socket.nsp.name,
        id: socket.id,
        rooms: [...socket.rooms],
        recovered: socket.recovered,
        data: socket.data,
      });
    });
    socket.on("self-emit", (spec: { event: string; args: unknown[] }, ack?: (reply: object) => void) => {
      socket.emit(spec.event, ...spec.args);
      if (typeof ack === "function") ack({ ok: true });
    });
    // socket.broadcast / socket.to(rooms): everyone (in rooms) but the sender.
    socket.on(
      "broadcast-emit",
      (spec: { rooms?: string[]; event: string; args: unknown[] }, ack?: (reply: object) => void) => {
        const op = spec.rooms?.length ? socket.to(spec.rooms) : socket.broadcast;
        op.emit(spec.event, ...spec.args);
        if (typeof ack === "function") ack({ ok: true });
      },
    );
  });
}

/**
 * Installs `installHandlers` on "/" and on every namespace the server creates
 * later (static ones from `io.of(name)`, children of the dynamic parent), and
 * accepts the dynamic namespaces `DYNAMIC_NAMESPACES`.
 */
export function installAllHandlers(io: Server, nodeName: string, namespaces: readonly string[] = []): void {
  installHandlers(io.of("/"), nodeName);
  io.on("new_namespace", (nsp: Namespace) => installHandlers(nsp, nodeName));
  io.of(DYNAMIC_NAMESPACES);
  for (const name of namespaces) io.of(name);
}

// ---------------------------------------------------------------------------
// Resource registry (leak check)
// ---------------------------------------------------------------------------

const liveClusters = new Set<Cluster>();
/** Adapter errors of every node started since the last `takeNodeErrors()`. */
const nodeErrors: Array<{ node: string; error: Error }> = [];

/** Returns and forgets what nodes reported to `errorHandler` (for failure diagnostics). */
export function takeNodeErrors(): Array<{ node: string; error: Error }> {
  return nodeErrors.splice(0);
}
const liveClients = new Set<ClientSocket>();
const ownPools = new Set<pg.Pool>();
const ownServers = new Set<http.Server>();

/** Closes every cluster and client created through this module and not closed yet. */
export async function closeAll(): Promise<void> {
  for (const client of [...liveClients]) closeClient(client);
  await Promise.all([...liveProxies].map((p) => p.close()));
  const children = killChildren();
  if (children > 0) await waitFor(() => liveChildren.size === 0, { message: "child nodes to exit" });
  await Promise.all([...liveClusters].map((c) => c.close()));
}

/** Throws when anything created through this module is still open. */
export async function assertNoLeaks(databaseUrl?: string): Promise<void> {
  const problems: string[] = [];
  for (const c of liveClusters) problems.push(`cluster on ${c.databaseUrl} not closed`);
  for (const child of liveChildren) problems.push(`child node ${child.pid} still running`);
  for (const s of ownServers) if (s.listening) problems.push(`http server ${JSON.stringify(s.address())} still listening`);
  for (const p of ownPools) if (!p.ended || p.totalCount > 0) problems.push(`pool not ended (${p.totalCount} clients)`);
  for (const client of liveClients) {
    if (client.connected || client.active) problems.push(`client ${client.id ?? "?"} still active`);
  }
  ownServers.clear();
  ownPools.clear();
  liveClients.clear();
  if (databaseUrl !== undefined) {
    // Connections of the adapters (pooled, and the dedicated LISTEN one) must all be gone.
    const name = new URL(databaseUrl).pathname.slice(1);
    const admin = new pg.Client({ connectionString: databaseUrl });
    admin.on("error", () => undefined); // a lost connection surfaces through the failed query
    await admin.connect();
    try {
      let rows: Array<{ pid: number; application_name: string; query: string }> = [];
      try {
        await waitFor(
          async () => {
            const res = await admin.query<{ pid: number; application_name: string; query: string }>(
              `SELECT pid, application_name, query FROM pg_stat_activity
                WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'`,
              [name],
            );
            rows = res.rows;
            return rows.length === 0;
          },
          { timeout: 3000, interval: 50 },
        );
      } catch {
        problems.push(
          `database connections still open: ${rows.map((r) => `${r.pid} ${r.application_name} ${r.query.slice(0, 40)}`).join("; ")}`,
        );
      }
    } finally {
      await admin.end();
    }
  }
  if (problems.length > 0) throw new Error(`leaks after test:\n- ${problems.join("\n- ")}`);
}

// ---------------------------------------------------------------------------
// Nodes and clusters
// ---------------------------------------------------------------------------

export interface NodeOptions {
  /** Connection string of the test database. */
  databaseUrl: string;
  /** Adapter options (schema, pruneIntervalMs, ...). */
  adapter?: PostgresRecoveryAdapterOptions;
  /** `false` turns connection state recovery off. Default on. */
  recovery?: boolean;
  /** ms, default 60000. */
  maxDisconnectionDuration?: number;
  /** connectionStateRecovery.skipMiddlewares, default true. */
  skipMiddlewares?: boolean;
  /** Extra Socket.IO server options (pingInterval, ...). */
  server?: Partial<ServerOptions>;
  /** Static namespaces to create besides "/" (dynamic `/dyn-*` ones always work). */
  namespaces?: readonly string[];
  /** Pool size, default 5. */
  poolMax?: number;
  /** Called after the default handlers are installed. */
  setup?: (node: TestNode) => void;
  /** Port to listen on, default 0 (any). */
  port?: number;
}

export interface TestNode {
  readonly name: string;
  readonly io: Server;
  readonly httpServer: http.Server;
  readonly pool: pg.Pool;
  readonly port: number;
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  /** Everything the adapter reported to `errorHandler`. */
  readonly errors: Error[];
  readonly closed: boolean;
  /** `io.close()` (awaits the adapters), then ends the pool. Idempotent. */
  close(): Promise<void>;
}

/** Starts one node. Prefer `Cluster.start`, which also tracks clients. */
export async function startNode(name: string, options: NodeOptions): Promise<TestNode> {
  const pool = new pg.Pool({ connectionString: options.databaseUrl, max: options.poolMax ?? 5 });
  ownPools.add(pool);
  // An idle pooled connection killed by a test must not crash the process.
  pool.on("error", () => {});
  const errors: Error[] = [];
  const adapterOptions: PostgresRecoveryAdapterOptions = {
    errorHandler: (err) => {
      errors.push(err);
      nodeErrors.push({ node: name, error: err });
    },
    ...options.adapter,
  };
  const httpServer = http.createServer();
  ownServers.add(httpServer);
  const serverOptions: Partial<ServerOptions> = {
    adapter: createAdapter(pool, adapterOptions) as unknown as ServerOptions["adapter"],
    ...options.server,
  };
  if (options.recovery !== false) {
    serverOptions.connectionStateRecovery = {
      maxDisconnectionDuration: options.maxDisconnectionDuration ?? 60_000,
      skipMiddlewares: options.skipMiddlewares ?? true,
    };
  }
  const io = new Server(httpServer, serverOptions);
  installAllHandlers(io, name, options.namespaces);
  await new Promise<void>((resolve, reject) => {
    httpServer.once("error", reject);
    httpServer.listen(options.port ?? 0, "127.0.0.1", () => {
      httpServer.off("error", reject);
      resolve();
    });
  });
  const port = (httpServer.address() as net.AddressInfo).port;
  let closing: Promise<void> | undefined;
  let closed = false;
  const node: TestNode = {
    name,
    io,
    httpServer,
    pool,
    port,
    url: `http://127.0.0.1:${port}`,
    errors,
    get closed() {
      return closed;
    },
    close() {
      closing ??= (async () => {
        try {
          await io.close();
        } finally {
          if (httpServer.listening) await new Promise<void>((resolve) => httpServer.close(() => resolve()));
          await pool.end();
          closed = true;
        }
      })();
      return closing;
    },
  };
  options.setup?.(node);
  return node;
}

export interface ClusterOptions extends NodeOptions {
  /** Number of nodes, default 2. */
  nodes?: number;
}

export interface ConnectOptions {
  /** Namespace, default "/". */
  nsp?: string;
  /** Rooms joined at connection (not on recovery) by the default handlers. */
  rooms?: string[];
  /** Extra auth fields. */
  auth?: Record<string, unknown>;
  /** ms before each reconnection attempt; 0 allowed. Default 50. */
  reconnectionDelay?: number;
  /** Default true. */
  autoConnect?: boolean;
  /**
   * `connect()` also waits until the client holds an offset (the prime event
   * arrived). Default true; pass false when the prime event is turned off.
   */
  waitForOffset?: boolean;
}

export class Cluster {
  readonly nodes: TestNode[] = [];
  readonly clients = new Set<ClientSocket>();
  private nextNode = 0;
  private closing: Promise<void> | undefined;

  private constructor(private readonly options: ClusterOptions) {
    liveClusters.add(this);
  }

  get databaseUrl(): string {
    return this.options.databaseUrl;
  }

  static async start(options: ClusterOptions): Promise<Cluster> {
    const cluster = new Cluster(options);
    try {
      for (let i = 0; i < (options.nodes ?? 2); i++) await cluster.addNode();
    } catch (err) {
      await cluster.close();
      throw err;
    }
    return cluster;
  }

  /** Starts one more node with the cluster's options (overridable). */
  async addNode(overrides: Partial<NodeOptions> = {}): Promise<TestNode> {
    const node = await startNode(`node${this.nextNode++}`, { ...this.options, ...overrides });
    this.nodes.push(node);
    return node;
  }

  node(i: number): TestNode {
    const node = this.nodes[i];
    if (!node) throw new Error(`no node ${i}`);
    return node;
  }

  /** Waits until every node counts every node (`serverCount()`, learnt from heartbeats). */
  async waitForServerCount(nsp = "/", timeout = 8000): Promise<void> {
    let counts: number[] = [];
    await waitFor(
      async () => {
        counts = await Promise.all(this.nodes.map((n) => n.io.of(nsp).adapter.serverCount()));
        return counts.every((c) => c === this.nodes.length);
      },
      { timeout, interval: 20, message: () => `serverCount ${this.nodes.length} on every node (got ${counts.join(",")})` },
    );
  }

  /** A new client socket on `node` (a new manager each time). Does not wait for the connection. */
  client(node: TestNode | { url: string } | number, options: ConnectOptions = {}): ClientSocket {
    const target = typeof node === "number" ? this.node(node) : node;
    const delay = options.reconnectionDelay ?? 50;
    const opts: Partial<ManagerOptions & SocketOptions> = {
      transports: ["websocket"],
      forceNew: true,
      reconnectionDelay: delay,
      reconnectionDelayMax: Math.max(delay, 1),
      randomizationFactor: 0,
      timeout: 5000,
      autoConnect: options.autoConnect ?? true,
      auth: { ...(options.rooms ? { rooms: options.rooms } : {}), ...options.auth },
    };
    const socket = ioc(`${target.url}${options.nsp ?? "/"}`, opts);
    // The manager option treats 0 as "unset" (1000 ms); the setter takes it.
    socket.io.reconnectionDelay(delay);
    this.clients.add(socket);
    liveClients.add(socket);
    return socket;
  }

  /** `client()` and wait for the first connection. */
  async connect(node: TestNode | { url: string } | number, options: ConnectOptions = {}): Promise<ClientSocket> {
    const socket = this.client(node, options);
    await connected(socket);
    if (options.waitForOffset !== false) {
      await waitFor(() => recoveryFields(socket)._lastOffset !== undefined, {
        message: `an offset (prime event) on new client ${socket.id}`,
      });
    }
    return socket;
  }

  /** Ends one client for good. */
  closeClient(socket: ClientSocket): void {
    closeClient(socket);
    this.clients.delete(socket);
  }

  /** Closes every client, then every node (io.close(), pool.end()). Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const socket of this.clients) closeClient(socket);
      this.clients.clear();
      const results = await Promise.allSettled(this.nodes.map((n) => n.close()));
      liveClusters.delete(this);
      const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
      if (failed) throw failed.reason;
    })();
    return this.closing;
  }
}

// ---------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------

function closeClient(socket: ClientSocket): void {
  socket.disconnect();
  socket.io.engine?.close();
  liveClients.delete(socket);
}

/** Resolves when `socket` is connected (now or at its next "connect"); bounded. */
export async function connected(socket: ClientSocket, timeout = 5000): Promise<void> {
  if (socket.connected) return;
  await once(socket, "connect", timeout);
}

/** Points the client's manager at `node` for its next (re)connection. */
export function moveTo(socket: ClientSocket, node: TestNode | string): void {
  const url = typeof node === "string" ? node : node.url;
  (socket.io as unknown as { uri: string }).uri = url;
}

/**
 * Drops the client's connection abruptly from the client side (the server sees
 * "transport close"); the manager then reconnects after its reconnection delay.
 */
export function dropConnection(socket: ClientSocket): void {
  socket.io.engine.close();
}

/**
 * Drops the connection (optionally moving the client to `node` first) and waits
 * for the reconnection. Resolves with `socket.recovered`.
 */
export async function reconnect(socket: ClientSocket, node?: TestNode | string, timeout = 8000): Promise<boolean> {
  if (node !== undefined) moveTo(socket, node);
  const wasConnected = socket.connected;
  const reconnected = once(socket, "connect", timeout);
  if (wasConnected) dropConnection(socket);
  else socket.connect();
  await reconnected;
  return socket.recovered;
}

/**
 * Drops the connection from the client side and keeps the client offline
 * (no automatic reconnection) until `comeBack()`.
 */
export function goOffline(socket: ClientSocket): void {
  socket.io.reconnection(false);
  if (socket.io.engine) socket.io.engine.close();
}

/** Reconnects a client taken offline by `goOffline`, optionally to another node. Resolves with `recovered`. */
export async function comeBack(socket: ClientSocket, node?: TestNode | ChildNode | string, timeout = 8000): Promise<boolean> {
  if (node !== undefined) moveTo(socket, typeof node === "string" ? node : node.url);
  socket.io.reconnection(true);
  const reconnected = once(socket, "connect", timeout);
  socket.connect();
  await reconnected;
  return socket.recovered;
}

/**
 * On the client's next connection, drops it as soon as the first Socket.IO
 * packet arrives (for a restore: the first replayed packet, before the CONNECT
 * packet): the server completed the restore, the client processed nothing of
 * it. Resolves once it did so (bounded).
 */
export function interruptNextConnection(socket: ClientSocket, timeout = 8000): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no connection to interrupt within ${timeout} ms`)), timeout);
    socket.io.once("open", () => {
      const engine = socket.io.engine;
      const onPacket = (packet: { type: string }) => {
        if (packet.type !== "message") return;
        engine.off("packet", onPacket);
        clearTimeout(timer);
        // Synchronously, before the engine hands the packet to the manager.
        engine.close();
        resolve();
      };
      engine.on("packet", onPacket);
    });
  });
}

/** Waits until `node` no longer has the socket `sid` in namespace `nsp` (it noticed the disconnection). */
export async function serverNoticed(node: TestNode, sid: string, nsp = "/", timeout = 5000): Promise<void> {
  await waitFor(() => !node.io.of(nsp).sockets.has(sid), { timeout, message: `${node.name} to notice ${sid} left` });
}

/** One event as a test client received it. */
export interface Received {
  event: string;
  args: unknown[];
  /** The last argument when it is a string (what socket.io-client takes as offset). */
  offset: string | undefined;
}

/** Records every event `socket` receives (onAny), except the prime event unless `includePrime`. */
export function recordEvents(socket: ClientSocket, { includePrime = false, primeEvent = PRIME_EVENT } = {}): Received[] {
  const received: Received[] = [];
  socket.onAny((event: string, ...args: unknown[]) => {
    if (event === primeEvent && !includePrime) return;
    const last = args[args.length - 1];
    received.push({ event, args, offset: typeof last === "string" ? last : undefined });
  });
  return received;
}

/** The numeric part of an `o<n>` offset; throws on anything else. */
export function offsetNumber(offset: unknown): number {
  const m = typeof offset === "string" ? /^o(0|[1-9][0-9]*)$/.exec(offset) : null;
  if (!m) throw new Error(`not an offset: ${JSON.stringify(offset)}`);
  return Number(m[1]);
}

function q(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** The namespace's head offset in the log (0 when it has no row yet). */
export async function logHead(db: pg.Pool | pg.Client, nsp = "/", schema = "socket_io"): Promise<number> {
  const res = await db.query<{ head: string }>(`SELECT head::text AS head FROM ${q(schema)}.namespaces WHERE name = $1`, [nsp]);
  return res.rows[0] ? Number(res.rows[0].head) : 0;
}

/** Waits until the namespace's head reaches `head` (the emits were committed). */
export async function waitForHead(db: pg.Pool | pg.Client, head: number, nsp = "/", schema = "socket_io", timeout = 5000): Promise<void> {
  let seen = -1;
  await waitFor(
    async () => {
      seen = await logHead(db, nsp, schema);
      return seen >= head;
    },
    { timeout, interval: 20, message: () => `head of ${nsp} to reach ${head} (at ${seen})` },
  );
}

/** Waits until the session of `sid` is written to the sessions table at its disconnect. */
export async function waitForSession(db: pg.Pool | pg.Client, sid: string, schema = "socket_io", timeout = 5000): Promise<void> {
  await waitFor(
    // The session written at the disconnect, not the skeleton kept while the socket is connected.
    async () => (await db.query(`SELECT 1 FROM ${q(schema)}.sessions WHERE sid = $1 AND state = 'disconnected'`, [sid])).rowCount === 1,
    { timeout, interval: 20, message: `session of ${sid} to be written` },
  );
}

/** Asks the server-side socket who it is (ack-based, not logged). */
export async function whoami(socket: ClientSocket, timeout = 3000): Promise<WhoAmI> {
  return (await socket.timeout(timeout).emitWithAck("whoami")) as WhoAmI;
}

/** Joins rooms through the default handler; resolves after the server joined. */
export async function join(socket: ClientSocket, rooms: string | string[], timeout = 3000): Promise<void> {
  await socket.timeout(timeout).emitWithAck("join", rooms);
}

/** The private fields socket.io-client uses for recovery. */
export interface RecoveryFields {
  _pid?: string;
  _lastOffset?: string;
}

export function recoveryFields(socket: ClientSocket): RecoveryFields {
  return socket as unknown as RecoveryFields;
}

// ---------------------------------------------------------------------------
// Nodes in child processes (test/fixtures/node-process.ts)
// ---------------------------------------------------------------------------

export interface ChildNodeOptions {
  databaseUrl: string;
  name?: string;
  /** Default 0 (any); pass the previous port to restart "the same" node. */
  port?: number;
  adapter?: Record<string, unknown>;
  maxDisconnectionDuration?: number;
  /** Bound on the start (tsx compiles on the fly), default 20000 ms. */
  startTimeout?: number;
}

export interface ChildNode {
  readonly name: string;
  readonly port: number;
  readonly url: string;
  readonly process: ChildProcess;
  /** Everything it wrote to stderr. */
  readonly stderr: string[];
  /** Runs a command (see node-process.ts); resolves with the reply. */
  command(body: Record<string, unknown>, timeout?: number): Promise<Record<string, unknown>>;
  /** Emits from the child node. */
  emit(target: { nsp?: string; rooms?: string[]; except?: string[] }, event: string, ...args: unknown[]): Promise<void>;
  /** Sends `signal` (default SIGTERM) and resolves with the exit code; bounded. */
  stop(signal?: NodeJS.Signals, timeout?: number): Promise<number | null>;
}

const liveChildren = new Set<ChildProcess>();
const FIXTURE = fileURLToPath(new URL("../fixtures/node-process.ts", import.meta.url));

export async function spawnNode(options: ChildNodeOptions): Promise<ChildNode> {
  const child = spawn(process.execPath, ["--import", "tsx", FIXTURE], {
    cwd: fileURLToPath(new URL("../..", import.meta.url)),
    env: {
      ...process.env,
      DATABASE_URL: options.databaseUrl,
      PORT: String(options.port ?? 0),
      NODE_NAME: options.name ?? "child",
      ADAPTER_OPTIONS: JSON.stringify(options.adapter ?? {}),
      MAX_DISCONNECTION_DURATION: String(options.maxDisconnectionDuration ?? 60_000),
    },
    stdio: ["pipe", "pipe", "pipe"],
  });
  liveChildren.add(child);
  child.once("exit", () => liveChildren.delete(child));
  const stderr: string[] = [];
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => stderr.push(chunk));
  const pending = new Map<number, (reply: Record<string, unknown>) => void>();
  let nextId = 1;
  let resolveReady: (port: number) => void = () => {};
  const ready = new Promise<number>((resolve) => (resolveReady = resolve));
  readline.createInterface({ input: child.stdout! }).on("line", (line) => {
    const r = /^ready (\d+)$/.exec(line);
    if (r) return resolveReady(Number(r[1]));
    if (line.startsWith("reply ")) {
      const body = JSON.parse(line.slice(6)) as Record<string, unknown>;
      const done = pending.get(body.id as number);
      pending.delete(body.id as number);
      done?.(body);
    }
  });
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  const timeout = options.startTimeout ?? 20_000;
  const port = await Promise.race([
    ready,
    exited.then((code) => {
      throw new Error(`node-process exited with ${code} before ready: ${stderr.join("")}`);
    }),
    new Promise<never>((_, reject) =>
      setTimeout(() => reject(new Error(`node-process not ready after ${timeout} ms: ${stderr.join("")}`)), timeout).unref(),
    ),
  ]).catch((err: unknown) => {
    child.kill("SIGKILL");
    throw err;
  });
  const node: ChildNode = {
    name: options.name ?? "child",
    port,
    url: `http://127.0.0.1:${port}`,
    process: child,
    stderr,
    command(body, wait = 5000) {
      const id = nextId++;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          pending.delete(id);
          reject(new Error(`no reply to ${JSON.stringify(body)} after ${wait} ms`));
        }, wait);
        pending.set(id, (reply) => {
          clearTimeout(timer);
          if (reply.ok) resolve(reply);
          else reject(new Error(`command failed: ${String(reply.error)}`));
        });
        child.stdin!.write(`${JSON.stringify({ ...body, id })}\n`);
      });
    },
    async emit(target, event, ...args) {
      await node.command({ cmd: "emit", nsp: target.nsp, rooms: target.rooms, except: target.except, event, args });
    },
    async stop(signal = "SIGTERM", wait = 10_000) {
      if (child.exitCode !== null || child.signalCode !== null) return child.exitCode;
      child.kill(signal);
      const code = await Promise.race([
        exited,
        new Promise<"timeout">((resolve) => setTimeout(() => resolve("timeout"), wait).unref()),
      ]);
      if (code === "timeout") {
        child.kill("SIGKILL");
        throw new Error(`node-process did not exit ${wait} ms after ${signal}: ${stderr.join("")}`);
      }
      return code;
    },
  };
  return node;
}

/** Kills child nodes still running (after a failed test). */
export function killChildren(): number {
  const n = liveChildren.size;
  for (const child of liveChildren) child.kill("SIGKILL");
  return n;
}

// ---------------------------------------------------------------------------
// A TCP proxy to simulate a dead network between a client and a node
// ---------------------------------------------------------------------------

export interface Proxy {
  readonly port: number;
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  /** Stops forwarding in both directions without closing anything (a dead network). */
  freeze(): void;
  /** Forwards again (connections that lost data while frozen should be cut first). */
  thaw(): void;
  /** Destroys every connection at once (a reset). */
  cut(): void;
  close(): Promise<void>;
}

const liveProxies = new Set<Proxy>();

/** Listens on 127.0.0.1 (port 0) and forwards every connection to `targetPort`. */
export async function startProxy(targetPort: number): Promise<Proxy> {
  const sockets = new Set<net.Socket>();
  let frozen = false;
  const server = net.createServer((downstream) => {
    const upstream = net.connect(targetPort, "127.0.0.1");
    sockets.add(downstream);
    sockets.add(upstream);
    const forward = (from: net.Socket, to: net.Socket) => {
      from.on("data", (chunk) => {
        if (!frozen) to.write(chunk);
      });
      from.on("close", () => {
        sockets.delete(from);
        if (!frozen) to.destroy();
      });
      from.on("error", () => undefined);
    };
    forward(downstream, upstream);
    forward(upstream, downstream);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;
  const proxy: Proxy = {
    port,
    url: `http://127.0.0.1:${port}`,
    freeze() {
      frozen = true;
    },
    thaw() {
      frozen = false;
    },
    cut() {
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    async close() {
      liveProxies.delete(proxy);
      proxy.cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  liveProxies.add(proxy);
  return proxy;
}
