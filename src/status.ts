/**
 * What an operator (or a dashboard) wants to know about one deployment:
 * migration state, each namespace's log, the stored sessions, table sizes and
 * the last pruning pass. Read in one read-only snapshot, with the database's
 * clock, and returned as a plain JSON-safe object (times as ISO 8601 strings,
 * sizes in bytes, durations in ms).
 */
import type pg from "pg";
import { requireMigratedSchema } from "./schema-ready.js";
import { StatusQueries } from "./sql/status-queries.js";
import { guardCheckedOut } from "./sql/guard-client.js";

export { SchemaNotReadyError, type SchemaNotReadyReason } from "./schema-ready.js";

export interface StatusOptions {
  /** @default "socket_io" */
  schema?: string;
}

export interface MigrationsState {
  /** Tags applied to the schema, oldest first. */
  readonly applied: readonly string[];
  /** Tags this package ships that the schema lacks (always empty in a returned status). */
  readonly pending: readonly string[];
}

/** The oldest entry still in a namespace's log. */
export interface OldestEntry {
  readonly offset: number;
  readonly createdAt: string;
  /** now() - createdAt, by the database clock. */
  readonly ageMs: number;
}

export interface NamespaceStatus {
  readonly name: string;
  /** Offset of the last committed entry (0: nothing logged yet). */
  readonly head: number;
  /** Stored log retention (the longest any node started with), null if no node with recovery started since migration 0001. */
  readonly retentionMs: number | null;
  /** null when the log of the namespace is empty (never written, or all pruned). */
  readonly oldest: OldestEntry | null;
  /** Log entries retained. */
  readonly entries: number;
  /** Bytes of their payloads (encoded size, before TOAST compression). */
  readonly entryBytes: number;
  /** Sessions stored for this namespace (live or expired). */
  readonly sessions: number;
  /** Log writers (one per adapter that wrote, until pruned). */
  readonly writers: number;
  /**
   * Entries logged since the furthest-behind live stored session's last
   * delivered entry (head minus its offset): the most a restore would read
   * now. null without live stored sessions.
   */
  readonly sessionLag: number | null;
  /** Sockets connected cluster-wide, by the rows their nodes keep for crash recovery. */
  readonly connectedSockets: number;
}

/** Nodes with a row in `nodes`: a node registers with its first socket and deletes its row at a clean shutdown. */
export interface NodesStatus {
  /** Heartbeat within its `nodeDeadAfterMs`, not declared dead. */
  readonly alive: number;
  /** Rows of nodes past their heartbeat deadline or declared dead (their sockets are restorable elsewhere). */
  readonly dead: number;
}

export interface SessionsStatus {
  readonly count: number;
  /** Not expired yet: can still be restored. */
  readonly live: number;
  /** Past expiry, waiting for the next prune. */
  readonly expired: number;
  /** Bytes of their payloads (rooms and `socket.data`, encoded). */
  readonly bytes: number;
  readonly earliestExpiresAt: string | null;
  readonly latestExpiresAt: string | null;
}

export interface TableStatus {
  /** Unqualified table name, in the status' schema. */
  readonly name: string;
  /** Planner estimate (pg_class.reltuples): 0 until the table is first analyzed (autovacuum), so only a rough guide. */
  readonly rowsEstimate: number;
  /** pg_total_relation_size: heap, TOAST and indexes. */
  readonly totalBytes: number;
  /** pg_indexes_size. */
  readonly indexBytes: number;
  /** pg_stat_user_tables.n_dead_tup: deleted or updated rows whose space vacuum has not reclaimed yet. */
  readonly deadRows: number;
}

export interface LastPruneStatus {
  readonly startedAt: string | null;
  readonly finishedAt: string | null;
  /** now() - finishedAt, by the database clock. */
  readonly finishedAgoMs: number | null;
  /** What the pass recorded (JSON text of its counts). */
  readonly result: string | null;
}

export interface RecoveryStatus {
  readonly schema: string;
  /** The database's now() when the snapshot was taken. */
  readonly collectedAt: string;
  readonly migrations: MigrationsState;
  /** Sorted by name. */
  readonly namespaces: readonly NamespaceStatus[];
  readonly sessions: SessionsStatus;
  readonly nodes: NodesStatus;
  /** The deployment's tables, in a fixed order; one missing from the schema is left out. */
  readonly tables: readonly TableStatus[];
  /** null until a pruning pass finished on this schema. */
  readonly lastPrune: LastPruneStatus | null;
  /** What an operator should fix, one sentence each (empty when nothing). */
  readonly warnings: readonly string[];
}

const num = (text: string): number => Number(text);
const numOrNull = (text: string | null): number | null => (text === null ? null : Number(text));
const iso = (date: Date | null): string | null => (date === null ? null : date.toISOString());

/**
 * Pruning deletes log entries and sessions; only vacuum makes their space
 * reusable. Without autovacuum the tables grow with the event rate however
 * short the retention (bench SOAK: log_entries 1.8x in 3 minutes at 336
 * events/s), and every append's update of its writer row leaves a dead row.
 */
function vacuumWarnings(autovacuumOn: boolean, disabledTables: readonly string[]): string[] {
  const warnings: string[] = [];
  if (!autovacuumOn) {
    warnings.push(
      "autovacuum is off on this server (autovacuum or track_counts): pruned rows are never reclaimed and the tables grow with the event rate; turn it on, or VACUUM the schema's tables on a schedule (docs/operations.md)",
    );
  }
  if (disabledTables.length > 0) {
    warnings.push(
      `autovacuum is disabled on ${disabledTables.join(", ")} (storage parameter autovacuum_enabled = false): pruned rows there are never reclaimed; ALTER TABLE ... RESET (autovacuum_enabled)`,
    );
  }
  return warnings;
}

/**
 * Reads the status of one deployment. Throws `SchemaNotReadyError` when the
 * schema is missing, lacks migrations or has newer ones. Uses one client of
 * `pool` for the duration (a read-only snapshot) and never ends the pool.
 *
 * Cost: entry counts and bytes read every retained log entry and session (an
 * index-only count is not enough for bytes), so on a log of millions this
 * takes seconds: poll it every few seconds at most, not per request.
 */
export async function collectStatus(pool: pg.Pool, options: StatusOptions = {}): Promise<RecoveryStatus> {
  const migrations = await requireMigratedSchema(pool, options.schema);
  const schema = migrations.schema;
  const queries = new StatusQueries(schema);
  const client = await pool.connect();
  const unguard = guardCheckedOut(client);
  let broken: Error | undefined;
  try {
    // One snapshot: the counts, sizes and ages agree with each other.
    await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    try {
      const collectedAt = await queries.databaseNow(client);
      const namespaces = await queries.namespaceRows(client);
      const sessions = await queries.sessionsRow(client);
      const nodes = await queries.nodesRow(client);
      const tables = await queries.tableSizes(client);
      const prune = await queries.lastPrune(client);
      const vacuum = await queries.vacuumSettings(client);
      return {
        schema,
        collectedAt: collectedAt.toISOString(),
        migrations: { applied: migrations.applied.map((m) => m.tag), pending: [] },
        namespaces: namespaces.map((r) => ({
          name: r.name,
          head: num(r.head),
          retentionMs: numOrNull(r.retention_ms),
          oldest:
            r.oldest_offset === null || r.oldest_created_at === null
              ? null
              : { offset: num(r.oldest_offset), createdAt: r.oldest_created_at.toISOString(), ageMs: num(r.oldest_age_ms ?? "0") },
          entries: num(r.entries),
          entryBytes: num(r.entry_bytes),
          sessions: num(r.sessions),
          writers: num(r.writers),
          sessionLag: numOrNull(r.session_lag),
          connectedSockets: num(r.connected),
        })),
        sessions: {
          count: num(sessions.total),
          live: num(sessions.live),
          expired: num(sessions.expired),
          bytes: num(sessions.bytes),
          earliestExpiresAt: iso(sessions.earliest_expires_at),
          latestExpiresAt: iso(sessions.latest_expires_at),
        },
        nodes: { alive: num(nodes.alive), dead: num(nodes.dead) },
        tables: tables.map((t) => ({
          name: t.table_name,
          rowsEstimate: num(t.rows_estimate),
          totalBytes: num(t.total_bytes),
          indexBytes: num(t.index_bytes),
          deadRows: num(t.dead_rows),
        })),
        lastPrune:
          prune === undefined
            ? null
            : {
                startedAt: iso(prune.last_started_at),
                finishedAt: iso(prune.last_finished_at),
                finishedAgoMs: numOrNull(prune.finished_age_ms),
                result: prune.last_result,
              },
        warnings: vacuumWarnings(vacuum.autovacuum_on, tables.filter((t) => t.autovacuum_disabled).map((t) => t.table_name)),
      };
    } finally {
      await client.query("ROLLBACK");
    }
  } catch (err) {
    broken = err instanceof Error ? err : new Error(String(err));
    throw err;
  } finally {
    const lost = unguard();
    client.release(broken ?? lost);
  }
}
