/** SQL of node liveness: one row per running node, its heartbeat on the database clock. */
import type { Queryable } from "./bounded-queries.js";
import { qualifiedName } from "./identifiers.js";

/**
 * What a heartbeat says of the node's reconciliation (see `nodes.reconciled_incarnation`):
 * the incarnation (text) every namespace of the node reconciled under; "*" when it has none
 * to reconcile (whatever the database is); undefined when some has not yet (left as it was).
 */
export type Reconciled = string | undefined;

export class LivenessQueries {
  private readonly nodes: string;
  private readonly sessions: string;

  constructor(
    private readonly pool: Queryable,
    schema: string,
  ) {
    this.nodes = qualifiedName(schema, "nodes");
    this.sessions = qualifiedName(schema, "sessions");
  }

  /**
   * Creates (or revives) the node's row: alive from now on, not declared
   * dead. `lockKey`: its liveness lock's key once held (liveness-lock.ts);
   * without one, only its heartbeat says whether it is alive.
   */
  async register(nodeId: string, deadAfterMs: number, lockKey?: string): Promise<void> {
    await this.pool.query(
      `INSERT INTO ${this.nodes} AS n (node_id, dead_after_ms, lock_key) VALUES ($1, $2, $3)
       ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now(), declared_dead = false,
         dead_after_ms = EXCLUDED.dead_after_ms, lock_key = COALESCE(EXCLUDED.lock_key, n.lock_key)`,
      [nodeId, deadAfterMs, lockKey ?? null],
    );
  }

  /**
   * Refreshes the heartbeat. False when the node was declared dead (a take
   * marked it so) or its row is gone: what it held may have been taken.
   * Takes lock the row to declare it dead, so a heartbeat either commits
   * before such a take (which then sees the node alive) or sees the mark.
   */
  async heartbeat(nodeId: string, reconciled: Reconciled = undefined, lockKey?: string): Promise<boolean> {
    // The lock key is published once held and never withdrawn (a node that took its lock late gets it here).
    const { rowCount } = await this.pool.query(
      `UPDATE ${this.nodes} SET heartbeat_at = now(), lock_key = COALESCE($3::bigint, lock_key),
         reconciled_incarnation = CASE WHEN $2::text = '*' THEN pg_postmaster_start_time()
                                       WHEN $2::text IS NULL THEN reconciled_incarnation
                                       ELSE $2::timestamptz END
       WHERE node_id = $1 AND NOT declared_dead`,
      [nodeId, reconciled ?? null, lockKey ?? null],
    );
    return rowCount === 1;
  }

  /**
   * Clean shutdown: the node's sockets left with their sessions written, and
   * its row goes. Should a skeleton be left (its session could not be
   * written), the row stays, dead from now on, so that skeleton is restorable
   * at once and pruned when its session would have expired.
   */
  async remove(nodeId: string): Promise<void> {
    // Two statements: one statement cannot both update and delete the same row.
    const { rowCount } = await this.pool.query(
      `DELETE FROM ${this.nodes} n WHERE n.node_id = $1
         AND NOT EXISTS (SELECT 1 FROM ${this.sessions} s WHERE s.node_id = $1 AND s.state = 'connected')`,
      [nodeId],
    );
    if (rowCount === 0) {
      await this.pool.query(
        `UPDATE ${this.nodes} SET declared_dead = true, heartbeat_at = now() WHERE node_id = $1`,
        [nodeId],
      );
    }
  }
}
