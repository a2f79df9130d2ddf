/**
 * The node's direct connections: those that must reach Postgres itself, one
 * server session from start to end, never through a pooler in transaction mode
 * (PgBouncer's `pool_mode = transaction` hands each transaction to whichever
 * server connection is free). Two things of ours need that:
 * - LISTEN (a notification reaches the session that listened; PgBouncer's
 *   documentation lists LISTEN among what transaction pooling breaks);
 * - session-scoped state: the pruner's session advisory lock, held across the
 *   many short transactions of a pass (and anything else that must outlive one
 *   transaction, e.g. a liveness lock).
 * The pool serves everything else: single statements and transactions.
 *
 * Settings: the `directConnection` option when given (complete: nothing is
 * taken from the pool), else the pool's own settings (the pool is then
 * assumed to reach Postgres directly, as without a pooler).
 */
import pg from "pg";
import { guardCheckedOut } from "./sql/guard-client.js";

/** Settings of every direct connection the node opens. */
export function directConnectionConfig(pool: pg.Pool, configured: Readonly<pg.ClientConfig> | undefined): pg.ClientConfig {
  return { ...(configured ?? (pool.options as pg.ClientConfig)) };
}

/** A connection for work that holds session state across transactions, and how to give it back. */
export interface SessionConnection {
  readonly client: pg.ClientBase;
  /** `err`: the connection may be in an unknown state (a lock held, a transaction open): closed, never reused. */
  release(err?: Error): Promise<void>;
}

/**
 * Opens a connection for session-scoped work. Without `directConnection` the
 * pool reaches Postgres directly, so one of its connections is borrowed (no
 * extra connection); with it, a dedicated client is opened on those settings
 * and closed on release.
 */
export async function openSessionConnection(
  pool: pg.Pool,
  configured: Readonly<pg.ClientConfig> | undefined,
  applicationName: string,
): Promise<SessionConnection> {
  if (configured === undefined) {
    const client = await pool.connect();
    const unguard = guardCheckedOut(client);
    return {
      client,
      release: async (err) => {
        const lost = unguard();
        client.release(err ?? lost);
      },
    };
  }
  const client = new pg.Client({
    ...configured,
    application_name: applicationName,
    connectionTimeoutMillis: configured.connectionTimeoutMillis || 5000,
    keepAlive: true,
  });
  // A failure between statements (server restart) must not crash the process; the next statement fails instead.
  client.on("error", () => undefined);
  await client.connect();
  return {
    client,
    release: async () => {
      // Ending the session releases whatever it held (session advisory locks included).
      await client.end().catch(() => undefined);
    },
  };
}
