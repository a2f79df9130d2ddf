/**
 * SQL of pruning. Every DELETE is bounded (`limit` rows) and runs as its own
 * short transaction, so writers never wait long behind a prune.
 */
import type { ClientBase } from "pg";
import { qualifiedName } from "./identifiers.js";

export class PruneQueries {
  private readonly namespaces: string;
  private readonly log: string;
  private readonly sessions: string;
  private readonly maintenance: string;
  private readonly writers: string;
  private readonly nodes: string;
  private readonly gaps: string;
  private readonly staged: string;
  private readonly expiredSessions: string;
  private readonly lockKey: string;

  constructor(
    schema: string,
    /** The attachments table's qualified name (a function: the node resolves it at start). */
    private readonly attachmentsTable: string | (() => string),
    /** Where expired sessions are announced (the nodes' log channel); undefined: not notified, nodes find them at their next poll. */
    private readonly logChannel?: string,
  ) {
    this.namespaces = qualifiedName(schema, "namespaces");
    this.log = qualifiedName(schema, "log_entries");
    this.sessions = qualifiedName(schema, "sessions");
    this.maintenance = qualifiedName(schema, "maintenance");
    this.writers = qualifiedName(schema, "log_writers");
    this.nodes = qualifiedName(schema, "nodes");
    this.gaps = qualifiedName(schema, "log_gaps");
    this.staged = qualifiedName(schema, "staged_events");
    this.expiredSessions = qualifiedName(schema, "expired_sessions");
    this.lockKey = `socket.io-postgres-recovery:prune:${schema}`;
  }

  private get attachments(): string {
    return typeof this.attachmentsTable === "string" ? this.attachmentsTable : this.attachmentsTable();
  }

  /** One pruner per schema at a time: a session-level advisory lock, not waited for. */
  async tryLock(client: ClientBase): Promise<boolean> {
    const { rows } = await client.query<{ locked: boolean }>(
      "SELECT pg_try_advisory_lock(hashtext($1)) AS locked",
      [this.lockKey],
    );
    return rows[0]?.locked === true;
  }

  async unlock(client: ClientBase): Promise<void> {
    await client.query("SELECT pg_advisory_unlock(hashtext($1))", [this.lockKey]);
  }

  /**
   * Waits up to `timeoutMs` for the same lock (the CLI: a node's pass is short).
   * False when it is still held by then.
   */
  async lock(client: ClientBase, timeoutMs: number): Promise<boolean> {
    await client.query("SELECT set_config('lock_timeout', $1, false)", [`${timeoutMs}ms`]);
    let locked: boolean;
    try {
      await client.query("SELECT pg_advisory_lock(hashtext($1))", [this.lockKey]);
      locked = true;
    } catch (err) {
      if (!(typeof err === "object" && err !== null && "code" in err && err.code === "55P03")) throw err;
      locked = false;
    }
    await client.query("RESET lock_timeout");
    return locked;
  }

  /** Every namespace with the retention its nodes stored (null: none stored yet). */
  async listNamespaces(client: ClientBase): Promise<Array<{ id: number; name: string; retentionMs: number | null }>> {
    const { rows } = await client.query<{ id: number; name: string; retention_ms: string | null }>(
      `SELECT id, name, retention_ms::text AS retention_ms FROM ${this.namespaces} ORDER BY name`,
    );
    return rows.map((r) => ({ id: r.id, name: r.name, retentionMs: r.retention_ms === null ? null : Number(r.retention_ms) }));
  }

  /**
   * Deletes, among the namespace's `limit` oldest entries, those older than the
   * retention. Entries are appended in offset order at commit time, so age
   * follows offset: fewer than `limit` deleted means nothing older is left.
   */
  async pruneLog(client: ClientBase, namespaceId: number, retentionMs: number, limit: number): Promise<number> {
    const result = await client.query(
      `DELETE FROM ${this.log} AS l
       USING (SELECT "offset" FROM ${this.log} WHERE namespace_id = $1 ORDER BY "offset" LIMIT $3) AS oldest
       WHERE l.namespace_id = $1 AND l."offset" = oldest."offset"
         AND l.created_at < now() - $2 * interval '1 millisecond'`,
      [namespaceId, retentionMs, limit],
    );
    return result.rowCount ?? 0;
  }

  /** The namespace's writers (adapters of past processes, mostly) idle for longer than `idleMs`. */
  async pruneWriters(client: ClientBase, namespaceId: number, idleMs: number, limit: number): Promise<number> {
    const result = await client.query(
      `DELETE FROM ${this.writers} WHERE writer_id IN (
         SELECT writer_id FROM ${this.writers}
          WHERE namespace_id = $1 AND updated_at < now() - $2 * interval '1 millisecond' LIMIT $3)`,
      [namespaceId, idleMs, limit],
    );
    return result.rowCount ?? 0;
  }

  /**
   * The namespace's recorded gaps (log-gaps.ts) older than `idleMs`
   * (retention + 1 h): every session that could hold an offset below or
   * inside one has expired by then, except a socket still connected since;
   * its restore from inside a forgotten gap, or across one, finds the gap's
   * offsets missing from the log and is refused as pruned (fail closed), and
   * the offsets are never reused either way (the head is past them).
   */
  async pruneGaps(client: ClientBase, namespaceId: number, idleMs: number): Promise<number> {
    const result = await client.query(
      `DELETE FROM ${this.gaps} WHERE namespace_id = $1 AND created_at < now() - $2 * interval '1 millisecond'`,
      [namespaceId, idleMs],
    );
    return result.rowCount ?? 0;
  }

  /**
   * Deletes the namespace's row when nothing can refer to it any more: no
   * log entry, no session (live or expired), no writer left, and no node
   * marked it active for `idleMs` (nodes mark the namespaces they hold
   * periodically, and when they start one: see `LogQueries.namespace`). A
   * recreated row starts again at head 0; with no session, no entry and no
   * node serving it, no client holds an offset that the new head could
   * contradict. True when the row was deleted.
   *
   * A node starting the namespace meanwhile either marks it first (this
   * delete, waiting on the row lock, then sees the fresh mark and keeps it)
   * or finds it gone and creates a new row.
   */
  async pruneNamespace(client: ClientBase, namespaceId: number, idleMs: number): Promise<boolean> {
    // Its gaps go with it (a recreated row gets another id).
    const { rows } = await client.query<{ deleted: number }>(
      `WITH gone AS (DELETE FROM ${this.namespaces} AS n WHERE n.id = $1 AND ${this.unused("n")} RETURNING n.id),
            gaps AS (DELETE FROM ${this.gaps} WHERE namespace_id IN (SELECT id FROM gone))
       SELECT count(*)::int AS deleted FROM gone`,
      [namespaceId, idleMs],
    );
    return (rows[0]?.deleted ?? 0) > 0;
  }

  /** The condition of `pruneNamespace` on row `n` ($1 its id, $2 the idle time). */
  private unused(n: string): string {
    return `${n}.active_at < now() - $2 * interval '1 millisecond'
      AND NOT EXISTS (SELECT 1 FROM ${this.log} WHERE namespace_id = $1)
      AND NOT EXISTS (SELECT 1 FROM ${this.sessions} WHERE namespace_id = $1)
      AND NOT EXISTS (SELECT 1 FROM ${this.writers} WHERE namespace_id = $1)`;
  }

  /**
   * Sessions past expiry, and skeletons of dead nodes whose sockets' sessions
   * would have expired by now (`ttl_ms` after the node's last heartbeat): a
   * skeleton's own `expires_at` is infinite while its node lives.
   *
   * In the same statement, every deleted session that was not restored
   * (state other than `taken`) is announced: a row in `expired_sessions`
   * (dense ids after the current maximum: only the holder of the prune lock
   * inserts) and a NOTIFY `x|<last id>` on the log channel, both committed
   * with the delete or not at all (see `session-expiry.ts`). The expiry
   * conditions are repeated on the deleted row itself, so a row a restore took
   * meanwhile (this delete waited for its lock) is judged as it is now.
   */
  async pruneSessions(client: ClientBase, limit: number): Promise<{ deleted: number; announced: number }> {
    const { rows } = await client.query<{ deleted: number; announced: number }>(
      `WITH doomed AS (
         (SELECT pid_hash FROM ${this.sessions} WHERE expires_at < now() LIMIT $1)
         UNION ALL
         (SELECT s.pid_hash FROM ${this.nodes} n
            JOIN ${this.sessions} s ON s.node_id = n.node_id AND s.state = 'connected'
           WHERE ${deadSkeletonExpired("n", "s")}
           LIMIT $1)
       ), deleted AS (
         DELETE FROM ${this.sessions} s WHERE s.pid_hash IN (SELECT pid_hash FROM doomed)
           AND (s.expires_at < now()
                OR (s.state = 'connected' AND EXISTS (
                      SELECT 1 FROM ${this.nodes} n WHERE n.node_id = s.node_id AND ${deadSkeletonExpired("n", "s")})))
         RETURNING s.namespace_id, s.sid, s.state
       ), expired AS (
         SELECT ns.name, d.sid, row_number() OVER (ORDER BY ns.name, d.sid) AS ord
           FROM deleted d JOIN ${this.namespaces} ns ON ns.id = d.namespace_id
          WHERE d.state <> 'taken'
       ), announced AS (
         INSERT INTO ${this.expiredSessions} (id, namespace, sid)
         SELECT (SELECT COALESCE(max(id), 0) FROM ${this.expiredSessions}) + ord, name, sid FROM expired
         RETURNING id
       )
       SELECT (SELECT count(*) FROM deleted)::int AS deleted,
              (SELECT count(*) FROM announced)::int AS announced,
              CASE WHEN $2::text IS NOT NULL AND EXISTS (SELECT 1 FROM announced)
                   THEN pg_notify($2, 'x|' || (SELECT max(id) FROM announced)) END AS notified`,
      [limit, this.logChannel ?? null],
    );
    return { deleted: rows[0]?.deleted ?? 0, announced: rows[0]?.announced ?? 0 };
  }

  /**
   * Announcements of expired sessions older than `maxAgeMs`, but never the
   * newest: the next ids continue from it, and a node's cursor stays valid.
   */
  async pruneExpiryAnnouncements(client: ClientBase, maxAgeMs: number, limit: number): Promise<number> {
    const result = await client.query(
      `DELETE FROM ${this.expiredSessions} WHERE id IN (
         SELECT id FROM ${this.expiredSessions}
          WHERE expired_at < now() - $1 * interval '1 millisecond'
            AND id < (SELECT max(id) FROM ${this.expiredSessions})
          ORDER BY id LIMIT $2)`,
      [maxAgeMs, limit],
    );
    return result.rowCount ?? 0;
  }

  /** Rows of dead nodes that no skeleton names any more. */
  async pruneNodes(client: ClientBase): Promise<number> {
    const result = await client.query(
      `DELETE FROM ${this.nodes} n
        WHERE n.heartbeat_at < now() - n.dead_after_ms * interval '1 millisecond'
          AND NOT EXISTS (SELECT 1 FROM ${this.sessions} s WHERE s.node_id = n.node_id AND s.state = 'connected')`,
    );
    return result.rowCount ?? 0;
  }

  async pruneAttachments(client: ClientBase, maxAgeMs: number, limit: number): Promise<number> {
    const result = await client.query(
      `DELETE FROM ${this.attachments} WHERE id IN (
         SELECT id FROM ${this.attachments} WHERE created_at < now() - $1 * interval '1 millisecond'
         ORDER BY id LIMIT $2)`,
      [maxAgeMs, limit],
    );
    return result.rowCount ?? 0;
  }

  /**
   * Staged events (createEmitter, emit()) written longer than `retentionMs`
   * ago and still not moved into a log: no node served their namespace
   * meanwhile (a dynamic namespace nobody connected to). A client whose
   * session is that old cannot recover anyway. SKIP LOCKED: a row a node is
   * moving right now is left to it.
   */
  async pruneStaged(client: ClientBase, retentionMs: number, limit: number): Promise<number> {
    const result = await client.query(
      `DELETE FROM ${this.staged} WHERE id IN (
         SELECT id FROM ${this.staged} WHERE created_at < now() - $1 * interval '1 millisecond'
         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)`,
      [retentionMs, limit],
    );
    return result.rowCount ?? 0;
  }

  // ---- counting what a pass would delete (dry run; same conditions, no batches)

  async countStaged(client: ClientBase, retentionMs: number): Promise<number> {
    return this.count(client, `SELECT count(*) AS n FROM ${this.staged} WHERE created_at < now() - $1 * interval '1 millisecond'`, [retentionMs]);
  }

  /** Entries older than the retention: what the batched pruneLog loop removes. */
  async countLog(client: ClientBase, namespaceId: number, retentionMs: number): Promise<number> {
    return this.count(
      client,
      `SELECT count(*) AS n FROM ${this.log}
        WHERE namespace_id = $1 AND created_at < now() - $2 * interval '1 millisecond'`,
      [namespaceId, retentionMs],
    );
  }

  async countWriters(client: ClientBase, namespaceId: number, idleMs: number): Promise<number> {
    return this.count(
      client,
      `SELECT count(*) AS n FROM ${this.writers}
        WHERE namespace_id = $1 AND updated_at < now() - $2 * interval '1 millisecond'`,
      [namespaceId, idleMs],
    );
  }

  /** Whether `pruneNamespace` would delete the row now. */
  async countNamespace(client: ClientBase, namespaceId: number, idleMs: number): Promise<boolean> {
    return (await this.count(client, `SELECT count(*) AS n FROM ${this.namespaces} AS n WHERE n.id = $1 AND ${this.unused("n")}`, [namespaceId, idleMs])) > 0;
  }

  async countSessions(client: ClientBase): Promise<number> {
    return this.count(
      client,
      `SELECT (SELECT count(*) FROM ${this.sessions} WHERE expires_at < now())
            + (SELECT count(*) FROM ${this.nodes} n
                 JOIN ${this.sessions} s ON s.node_id = n.node_id AND s.state = 'connected'
                WHERE ${deadSkeletonExpired("n", "s")}) AS n`,
      [],
    );
  }

  async countAttachments(client: ClientBase, maxAgeMs: number): Promise<number> {
    return this.count(
      client,
      `SELECT count(*) AS n FROM ${this.attachments} WHERE created_at < now() - $1 * interval '1 millisecond'`,
      [maxAgeMs],
    );
  }

  private async count(client: ClientBase, sql: string, params: unknown[]): Promise<number> {
    const { rows } = await client.query<{ n: string }>(sql, params);
    return Number(rows[0]?.n ?? 0);
  }

  async recordRun(client: ClientBase, startedAt: Date, result: string): Promise<void> {
    await client.query(
      `INSERT INTO ${this.maintenance} (task, last_started_at, last_finished_at, last_result)
       VALUES ('prune', $1, now(), $2)
       ON CONFLICT (task) DO UPDATE SET last_started_at = EXCLUDED.last_started_at,
         last_finished_at = EXCLUDED.last_finished_at, last_result = EXCLUDED.last_result`,
      [startedAt, result],
    );
  }
}

/** Node `n` is dead and skeleton `s` of one of its sockets outlived its ttl after the last heartbeat. */
function deadSkeletonExpired(n: string, s: string): string {
  return `${n}.heartbeat_at < now() - ${n}.dead_after_ms * interval '1 millisecond'
             AND ${n}.heartbeat_at + COALESCE(${s}.ttl_ms, 0) * interval '1 millisecond' < now()`;
}
