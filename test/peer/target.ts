/**
 * Which adapter the vendored peer suites (test/peer/) run against. Each entry
 * file (test/peer-*.test.ts) configures one target, then imports the vendored
 * suite; their `util.ts` (the only adapted files besides imports) builds its
 * adapters and servers through here.
 */
import pg from "pg";
import type { Namespace, ServerOptions } from "socket.io";
import { createAdapter as createUpstreamAdapter } from "@socket.io/postgres-adapter";
import { createAdapter as createRedisStreamsAdapter } from "@socket.io/redis-streams-adapter";
import { createAdapter } from "../../src/index.js";

export type PeerTarget =
  /** This package, recovery off (the suite's own server options). */
  | "ours"
  /** This package with `connectionStateRecovery` on. */
  | "ours-recovery"
  /** `@socket.io/postgres-adapter` itself. */
  | "upstream"
  /** `@socket.io/redis-streams-adapter` itself, on the local Redis. */
  | "redis-streams";

interface PeerConfig {
  target: PeerTarget;
  databaseUrl: () => string;
}

let config: PeerConfig | undefined;

export function configurePeerTarget(next: PeerConfig): void {
  config = next;
}

function current(): PeerConfig {
  if (!config) throw new Error("configurePeerTarget() was not called before the peer suite ran");
  return config;
}

export function peerTarget(): PeerTarget {
  return current().target;
}

const pools = new Set<pg.Pool>();

/** A pool on the run's test database (the suites' `new Pool({ user, password })`). */
export function peerPool(): pg.Pool {
  const pool = new pg.Pool({ connectionString: current().databaseUrl(), max: 10 });
  // As upstream's README asks of an application: an idle client's error (the database
  // being dropped after the suite) must not crash the process.
  pool.on("error", () => undefined);
  pools.add(pool);
  return pool;
}

/** Ends the pools the suite left open or still ending (its cleanup does not wait), before the database goes. */
export async function endPeerPools(): Promise<void> {
  await Promise.all(
    [...pools].map(async (pool) => {
      if (!pool.ending) await pool.end();
      for (let i = 0; i < 100 && !pool.ended; i++) await new Promise((resolve) => setTimeout(resolve, 50));
    }),
  );
  pools.clear();
}

type AdapterFactory = (nsp: Namespace) => unknown;

/** The suite's `createAdapter(pool, opts)` of `@socket.io/postgres-adapter`, for the target. */
export function peerPostgresAdapter(pool: pg.Pool, opts: { tableName?: string }): ServerOptions["adapter"] {
  const factory: AdapterFactory = current().target === "upstream" ? createUpstreamAdapter(pool, opts) : createAdapter(pool, opts);
  return factory as unknown as ServerOptions["adapter"];
}

/** Server options the target needs besides the suite's own (recovery for "ours-recovery"). */
export function peerServerOptions(): Partial<ServerOptions> {
  return current().target === "ours-recovery" ? { connectionStateRecovery: { maxDisconnectionDuration: 60_000 } } : {};
}

/** The suite's "Redis client": a Redis client for redis-streams, a pg pool for ours. */
export async function peerRedisClient(): Promise<unknown> {
  if (current().target !== "redis-streams") return peerPool();
  const { createClient } = await import("redis");
  const client = createClient({ url: process.env.REDIS_URL ?? "redis://127.0.0.1:6379" });
  await client.connect();
  return client;
}

/** The suite's `createAdapter(redisClient, opts)` of the redis-streams adapter, for the target. */
export function peerRedisStreamsAdapter(client: unknown, opts: Record<string, unknown>): ServerOptions["adapter"] {
  if (current().target === "redis-streams") {
    return createRedisStreamsAdapter(client, opts) as unknown as ServerOptions["adapter"];
  }
  // Redis-only options (readCount, streamName, …) have no meaning here.
  return createAdapter(client as pg.Pool) as unknown as ServerOptions["adapter"];
}

/** The suite's `redisClient.quit()` (its setup lists a client once per connection it saw, hence once or more). */
export function closePeerClient(client: unknown): void {
  if (client instanceof pg.Pool) {
    if (!client.ended) client.end().catch(() => undefined);
    return;
  }
  const redis = client as { isOpen?: boolean; quit(): Promise<unknown> };
  if (redis.isOpen !== false) redis.quit().catch(() => undefined);
}
