/**
 * SQL of pruning. Every DELETE is bounded (`limit` rows) and runs as its own
 * short transaction, so writers never wait long behind a prune.
 */
import type { PoolClient } from "pg";
import { qualifiedName } from "./identifiers.js";

export class PruneQueries {
  private readonly namespaces: string;
  private readonly log: string;
  private readonly sessions: string;
  private readonly maintenance: string;
  private readonly writers: string;
  private readonly lockKey: string;

  constructor(
    schema: string,
    private readonly attachments: string,
  ) {
    this.namespaces = qualifiedName(schema, "namespaces");
    this.log = qualifiedName(schema, "log_entries");
    this.sessions = qualifiedName(schema, "sessions");
    this.maintenance = qualifiedName(schema, "maintenance");
    this.writers = qualifiedName(schema, "log_writers");
    this.lockKey = `socket.io-postgres-recovery:prune:${schema}`;
  }

  /** One pruner per schema at a time: a session-level advisory lock, not waited for. */
  async tryLock(client: PoolClient): Promise<boolean> {
    const { rows } = await client.query<{ locked: boolean }>(
      "SELECT pg_try_advisory_lock(hashtext($1)) AS locked",
      [this.lockKey],
    );
    return rows[0]?.locked === true;
  }

  async unlock(client: PoolClient): Promise<void> {
    await client.query("SELECT pg_advisory_unlock(hashtext($1))", [this.lockKey]);
  }

  async namespaceIds(client: PoolClient): Promise<number[]> {
    const { rows } = await client.query<{ id: number }>(`SELECT id FROM ${this.namespaces} ORDER BY id`);
    return rows.map((r) => r.id);
  }

  /**
   * Deletes, among the namespace's `limit` oldest entries, those older than the
   * retention. Entries are appended in offset order at commit time, so age
   * follows offset: fewer than `limit` deleted means nothing older is left.
   */
  async pruneLog(client: PoolClient, namespaceId: number, retentionMs: number, limit: number): Promise<number> {
    const result = await client.query(
      `DELETE FROM ${this.log} AS l
       USING (SELECT "offset" FROM ${this.log} WHERE namespace_id = $1 ORDER BY "offset" LIMIT $3) AS oldest
       WHERE l.namespace_id = $1 AND l."offset" = oldest."offset"
         AND l.created_at < now() - $2 * interval '1 millisecond'`,
      [namespaceId, retentionMs, limit],
    );
    return result.rowCount ?? 0;
  }

  /** Writers (adapters of past processes, mostly) idle for longer than `idleMs`. */
  async pruneWriters(client: PoolClient, idleMs: number, limit: number): Promise<number> {
    const result = await client.query(
      `DELETE FROM ${this.writers} WHERE writer_id IN (
         SELECT writer_id FROM ${this.writers} WHERE updated_at < now() - $1 * interval '1 millisecond' LIMIT $2)`,
      [idleMs, limit],
    );
    return result.rowCount ?? 0;
  }

  async pruneSessions(client: PoolClient, limit: number): Promise<number> {
    const result = await client.query(
      `DELETE FROM ${this.sessions} WHERE pid_hash IN (
         SELECT pid_hash FROM ${this.sessions} WHERE expires_at < now() LIMIT $1)`,
      [limit],
    );
    return result.rowCount ?? 0;
  }

  async pruneAttachments(client: PoolClient, maxAgeMs: number, limit: number): Promise<number> {
    const result = await client.query(
      `DELETE FROM ${this.attachments} WHERE id IN (
         SELECT id FROM ${this.attachments} WHERE created_at < now() - $1 * interval '1 millisecond'
         ORDER BY id LIMIT $2)`,
      [maxAgeMs, limit],
    );
    return result.rowCount ?? 0;
  }

  async recordRun(client: PoolClient, startedAt: Date, result: string): Promise<void> {
    await client.query(
      `INSERT INTO ${this.maintenance} (task, last_started_at, last_finished_at, last_result)
       VALUES ('prune', $1, now(), $2)
       ON CONFLICT (task) DO UPDATE SET last_started_at = EXCLUDED.last_started_at,
         last_finished_at = EXCLUDED.last_finished_at, last_result = EXCLUDED.last_result`,
      [startedAt, result],
    );
  }
}
