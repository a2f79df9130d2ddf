/**
 * Fast death detection for process crashes: the node's liveness lock.
 *
 * Each node holds a session-level advisory lock, keyed by its node id, on its
 * LISTEN connection (listener.ts). When the process dies (SIGKILL, OOM,
 * a crash) the kernel closes its sockets, Postgres ends that backend and the
 * lock is gone at once; a restore that finds a node's row with its
 * `lock_key` and nobody holding that lock takes the node's skeletons without
 * waiting `nodeDeadAfterMs` (see SessionQueries.takeOrWait). Heartbeat
 * staleness stays the rule for what the lock cannot see: a lost host or a
 * half-open connection keeps the backend (and the lock) until TCP gives up,
 * a paused process (SIGSTOP, GC) keeps it too.
 *
 * Why an advisory lock on the LISTEN connection: the lock must live exactly
 * as long as a session the process owns. A row lock would need a
 * transaction left open (which holds back vacuum, and on the LISTEN
 * connection would hold back notifications: they arrive between
 * transactions). The LISTEN connection already is a dedicated session,
 * checked and replaced when it fails; behind PgBouncer in transaction mode
 * `directConnection` sends it to Postgres itself (LISTEN needs that too).
 *
 * While the connection is being replaced the node does not hold its lock:
 * a client presenting one of its pids elsewhere then takes its socket, and
 * the node, told at its next heartbeat (or its next skeleton write) that it
 * was declared dead, drops that socket (fencing, docs/design.md). Only
 * clients that actually reconnect elsewhere present their pids, so such a
 * window never moves the node's other sockets.
 */
import type pg from "pg";
import { debug } from "./debug.js";

/** Advisory lock keys are per database; this prefix keeps ours apart from an application's. */
const KEY_PREFIX = "socket.io-postgres-recovery:node:";

/**
 * SQL (bigint) of the lock key of the node whose id is `nodeIdSql`. The
 * 64-bit hash could collide with another lock of the database: the node then
 * fails to take it and looks alive by its lock, which only leaves the
 * heartbeat rule (never a false death).
 */
export function lockKeySql(nodeIdSql: string): string {
  return `hashtextextended('${KEY_PREFIX}' || ${nodeIdSql}, 0)`;
}

/**
 * SQL (boolean): nobody holds the advisory lock `keySql` in this database.
 * Reads `pg_locks` (open to every role): cheap, but it walks the lock
 * table, so it runs only on the restore path, for nodes of skeletons found.
 */
export function lockReleasedSql(keySql: string): string {
  return `NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
      AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = current_database())
      AND l.classid = ((${keySql} >> 32) & 4294967295)::oid
      AND l.objid = (${keySql} & 4294967295)::oid)`;
}

/** What the listener needs to keep a session-level resource on its connection. */
export interface ConnectionResource {
  /** Takes it on `client` (a new connection, or one that did not get it yet). */
  acquire(client: pg.Client): Promise<void>;
  /** Whether the current connection holds it. */
  readonly held: boolean;
  /** The connection that held it is gone. */
  lost(): void;
}

export class LivenessLock implements ConnectionResource {
  private heldNow = false;
  /** The key (bigint as text), once the lock was held. */
  private key: string | undefined;
  /** Said once per streak of refusals (another session holds the key). */
  private refusedSaid = false;
  private firstAttempt: Promise<void>;
  private attempted: () => void = () => undefined;

  constructor(
    private readonly nodeId: string,
    private readonly onError: (err: Error) => void,
  ) {
    this.firstAttempt = new Promise((resolve) => (this.attempted = resolve));
  }

  get held(): boolean {
    return this.heldNow;
  }

  /** The key to publish in the node's row: set while (and after) the lock was held; see `nodes.lock_key`. */
  get publishedKey(): string | undefined {
    return this.key;
  }

  /** Resolves after the first attempt to take the lock, or after `ms`. */
  async firstAttemptDone(ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.firstAttempt, new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))]);
    clearTimeout(timer);
  }

  async acquire(client: pg.Client): Promise<void> {
    try {
      const { rows } = await client.query<{ key: string; held: boolean }>(
        `SELECT ${lockKeySql("$1::text")}::text AS key, pg_try_advisory_lock(${lockKeySql("$1::text")}) AS held`,
        [this.nodeId],
      );
      const row = rows[0]!;
      this.heldNow = row.held;
      if (row.held) {
        this.key = row.key;
        this.refusedSaid = false;
        debug("liveness lock %s held", row.key);
      } else if (!this.refusedSaid) {
        // An earlier connection of ours whose backend has not ended yet (half-open), or a collision.
        this.refusedSaid = true;
        this.onError(
          new Error(
            "socket.io-postgres-recovery: this node's liveness lock is held by another session; retrying at each listener check " +
              "(meanwhile a crash of this node is detected by its heartbeat only)",
          ),
        );
      }
    } finally {
      this.attempted();
    }
  }

  lost(): void {
    this.heldNow = false;
  }
}
