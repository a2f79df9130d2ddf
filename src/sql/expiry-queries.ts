/**
 * Reading the announcements of expired sessions (`expired_sessions`, written
 * by the pruning pass: see `PruneQueries.pruneSessions`).
 */
import type { Queryable } from "./bounded-queries.js";
import { qualifiedName } from "./identifiers.js";

export interface ExpiryAnnouncement {
  readonly id: number;
  readonly namespace: string;
  readonly sid: string;
}

export class ExpiryQueries {
  private readonly table: string;

  constructor(
    private readonly pool: Queryable,
    schema: string,
  ) {
    this.table = qualifiedName(schema, "expired_sessions");
  }

  /** The id of the newest announcement (0: none yet). */
  async last(): Promise<number> {
    const { rows } = await this.pool.query<{ id: string }>(`SELECT COALESCE(max(id), 0)::text AS id FROM ${this.table}`);
    return Number(rows[0]?.id ?? 0);
  }

  /** Announcements after `id`, oldest first, at most `limit`. */
  async after(id: number, limit: number): Promise<ExpiryAnnouncement[]> {
    const { rows } = await this.pool.query<{ id: string; namespace: string; sid: string }>(
      `SELECT id::text AS id, namespace, sid FROM ${this.table} WHERE id > $1 ORDER BY id LIMIT $2`,
      [id, limit],
    );
    return rows.map((r) => ({ id: Number(r.id), namespace: r.namespace, sid: r.sid }));
  }
}
