/**
 * The node's LISTEN connection: a dedicated client (not one borrowed from the
 * caller's pool) that receives every NOTIFY of this deployment.
 *
 * LISTEN is not durable: what is notified while this connection is down is
 * gone. So the connection is checked periodically (a half-open TCP connection
 * answers nothing and would otherwise look healthy forever), replaced when it
 * fails, and after each replacement `onReconnected` runs, once LISTEN is in
 * place again, so that the log can be read from the table for what was missed.
 *
 * The connection also carries the node's liveness lock (liveness-lock.ts):
 * taken on every new connection, and again at each check until held.
 */
import pg from "pg";
import { debug } from "./debug.js";
import type { ConnectionResource } from "./liveness-lock.js";
import { operatorNotice } from "./operator-events.js";
import { quoteIdentifier } from "./sql/identifiers.js";

/** Postgres' application_name of the listener connection, for operators (and tests) to find it. */
export const LISTENER_APPLICATION_NAME = "socket.io-postgres-recovery:listener";

export interface ListenerOptions {
  /** Connection settings (those of the caller's pool). */
  connection: pg.ClientConfig;
  checkIntervalMs: number;
  onNotification(channel: string, payload: string): void;
  /** After the connection was replaced and LISTEN re-issued (not after the first connection). */
  onReconnected(): void;
  /** The connection failed (before it is replaced): the database may be another one when it is back. */
  onLost?(): void;
  onError(err: Error): void;
  /** A session-level resource (the liveness lock) held on this connection. */
  resource?: ConnectionResource;
}

export class Listener {
  private client: pg.Client | undefined;
  private readonly channels = new Set<string>();
  private connecting: Promise<void> | undefined;
  private checkTimer: NodeJS.Timeout | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private failures = 0;
  private connectedOnce = false;
  /** When the connection in use was lost (undefined while one works): the replacement says how long it took. */
  private lostAt: number | undefined;
  private closed = false;
  private readyWaiters: Array<() => void> = [];

  constructor(private readonly opts: ListenerOptions) {}

  /** Starts connecting (in the background, retrying until `close()`). */
  start(): void {
    this.connect();
    this.checkTimer = setInterval(() => this.check(), this.opts.checkIntervalMs);
    this.checkTimer.unref();
  }

  /** Resolves once LISTEN is in place for every channel added so far. */
  ready(): Promise<void> {
    if (this.client && !this.connecting) return Promise.resolve();
    return new Promise((resolve) => this.readyWaiters.push(resolve));
  }

  /** Adds a channel; resolves once it is listened to on the current connection. */
  async listen(channel: string): Promise<void> {
    if (channel.includes("\0")) {
      // Never added to the set: every later reconnection would fail on it, for every channel.
      throw new Error(`socket.io-postgres-recovery: cannot LISTEN to ${JSON.stringify(channel.slice(0, 100))}: a channel name cannot contain a NUL byte`);
    }
    if (this.channels.has(channel)) return this.ready();
    this.channels.add(channel);
    const client = this.client;
    if (client && !this.connecting) {
      try {
        await client.query(`LISTEN ${quoteIdentifier(channel)}`);
      } catch (err) {
        // The connection is failing; the replacement will LISTEN to every channel.
        this.replace(client, err);
        await this.ready();
      }
    } else {
      await this.ready();
    }
  }

  /**
   * Removes a channel (a dynamic namespace that Socket.IO closed). Its
   * NOTIFYs stop reaching this node; a later `listen()` adds it again.
   */
  async unlisten(channel: string): Promise<void> {
    if (!this.channels.delete(channel)) return;
    const client = this.client;
    if (!client || this.connecting) return; // the next connection listens only to the channels left
    try {
      await client.query(`UNLISTEN ${quoteIdentifier(channel)}`);
    } catch {
      // The connection is failing: its replacement listens only to the channels left.
    }
  }

  /** The channels listened to (or to be, once connected). */
  get channelNames(): readonly string[] {
    return [...this.channels];
  }

  async close(): Promise<void> {
    this.closed = true;
    clearInterval(this.checkTimer);
    clearTimeout(this.retryTimer);
    await this.connecting;
    const client = this.client;
    this.client = undefined;
    this.opts.resource?.lost();
    if (client) await endQuietly(client);
    for (const resolve of this.readyWaiters.splice(0)) resolve();
  }

  private connect(): void {
    if (this.closed || this.connecting) return;
    this.connecting = this.openClient()
      .then(({ client, listened }) => {
        this.client = client;
        this.connecting = undefined;
        // Added between openClient's last look and now (a microtask apart): listen to them too.
        const late = [...this.channels].filter((c) => !listened.has(c));
        if (late.length > 0) {
          client.query(late.map((c) => `LISTEN ${quoteIdentifier(c)}`).join("; ")).catch((err: unknown) => this.replace(client, err));
        }
        const attempts = this.failures + 1;
        this.failures = 0;
        const reconnected = this.connectedOnce;
        this.connectedOnce = true;
        debug("listener connected (%d channels)", this.channels.size);
        if (reconnected && this.lostAt !== undefined) {
          const downForMs = Date.now() - this.lostAt;
          this.opts.onError(
            operatorNotice({ event: "listener-replaced", downForMs, attempts }, `LISTEN connection replaced after ${downForMs} ms; reading what was missed from the tables`),
          );
        }
        this.lostAt = undefined;
        for (const resolve of this.readyWaiters.splice(0)) resolve();
        if (reconnected) this.opts.onReconnected();
      })
      .catch((err: unknown) => {
        this.connecting = undefined;
        if (this.closed) return;
        this.failures++;
        const delay = Math.min(100 * 2 ** (this.failures - 1), 2000);
        // Said at the first failure; the retries go to debug (a database away for minutes would report every 2 s).
        if (this.failures === 1) {
          this.opts.onError(new Error("socket.io-postgres-recovery: LISTEN connection failed; retrying (every 2 s at most; said once until it connects)", { cause: err }));
        } else {
          debug("LISTEN connection attempt %d failed: %s; retrying in %d ms", this.failures, err instanceof Error ? err.message : String(err), delay);
        }
        this.retryTimer = setTimeout(() => this.connect(), delay);
        this.retryTimer.unref();
      });
  }

  private async openClient(): Promise<{ client: pg.Client; listened: ReadonlySet<string> }> {
    const client = new pg.Client({
      ...this.opts.connection,
      application_name: LISTENER_APPLICATION_NAME,
      // A connection attempt to an unreachable host must not hang the retry loop.
      connectionTimeoutMillis: this.opts.connection.connectionTimeoutMillis || 5000,
      keepAlive: true,
    });
    client.on("error", (err) => this.replace(client, err));
    client.on("end", () => this.replace(client, new Error("connection ended")));
    client.on("notification", (msg) => {
      if (client === this.client && msg.payload !== undefined) this.opts.onNotification(msg.channel, msg.payload);
    });
    try {
      await client.connect();
      // Before the LISTEN loop: whatever is awaited after the loop's last look would miss the
      // channels added meanwhile (listen() while connecting only waits for ready()), and their
      // cluster traffic would never reach this node.
      await this.opts.resource?.acquire(client);
      // Notifications sent before LISTEN returns may be missed, which is why a
      // reconnect is followed by reading the table (onReconnected). Channels
      // added or removed while this runs are picked up by the loop: it ends only
      // after a look that finds nothing to do, with no await after it.
      const listened = new Set<string>();
      for (;;) {
        if (this.closed) throw new Error("closed while connecting");
        const missing = [...this.channels].filter((c) => !listened.has(c));
        const removed = [...listened].filter((c) => !this.channels.has(c));
        if (missing.length === 0 && removed.length === 0) break;
        const statements = [...missing.map((c) => `LISTEN ${quoteIdentifier(c)}`), ...removed.map((c) => `UNLISTEN ${quoteIdentifier(c)}`)];
        await client.query(statements.join("; "));
        missing.forEach((c) => listened.add(c));
        removed.forEach((c) => listened.delete(c));
      }
      return { client, listened };
    } catch (err) {
      await endQuietly(client);
      throw err;
    }
  }

  /** Drops a failed connection and starts a new one. */
  private replace(client: pg.Client, cause: unknown): void {
    if (client !== this.client) return;
    this.client = undefined;
    this.lostAt = Date.now();
    this.opts.resource?.lost();
    this.opts.onLost?.();
    const reason = cause instanceof Error ? cause.message : String(cause);
    this.opts.onError(operatorNotice({ event: "listener-lost", reason }, "LISTEN connection lost; reconnecting", cause));
    destroy(client);
    this.connect();
  }

  private check(): void {
    const client = this.client;
    if (!client || this.connecting || this.closed) return;
    let answered = false;
    const timer = setTimeout(() => {
      if (!answered) this.replace(client, new Error(`liveness check unanswered after ${this.opts.checkIntervalMs} ms`));
    }, this.opts.checkIntervalMs);
    timer.unref();
    client.query("SELECT 1").then(
      () => {
        answered = true;
        clearTimeout(timer);
        // Not held (an earlier backend of ours still had it): try again now.
        const resource = this.opts.resource;
        if (resource && !resource.held && client === this.client) {
          resource.acquire(client).catch((err: unknown) => this.replace(client, err));
        }
      },
      (err: unknown) => {
        answered = true;
        clearTimeout(timer);
        this.replace(client, err);
      },
    );
  }
}

/** Tears the socket down at once: `end()` waits for an answer a half-open connection never sends. */
function destroy(client: pg.Client): void {
  const stream = (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream;
  stream?.destroy();
  client.end().catch(() => undefined);
}

async function endQuietly(client: pg.Client): Promise<void> {
  try {
    await Promise.race([client.end(), new Promise((resolve) => setTimeout(resolve, 1000).unref())]);
  } catch {
    destroy(client);
  }
}
