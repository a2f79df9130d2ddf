/**
 * SQL of `inspect`: stored sessions looked up by socket id. The pid hash is
 * never selected: what an operator prints must not help hijack a session.
 */
import type { Pool, PoolClient } from "pg";
import { qualifiedName } from "./identifiers.js";

export interface StoredSessionRow {
  namespace: string;
  sid: string;
  floor_offset: string;
  last_offset: string;
  payload: Buffer;
  disconnected_at: Date;
  expires_at: Date;
  live: boolean;
  /** expires_at - now() in ms (negative once expired), by the database clock. */
  expires_in_ms: string;
}

export class InspectQueries {
  private readonly sessions: string;
  private readonly namespaces: string;

  constructor(schema: string) {
    this.sessions = qualifiedName(schema, "sessions");
    this.namespaces = qualifiedName(schema, "namespaces");
  }

  /** Sessions stored under socket id `sid` (one, normally), newest first; `namespace` narrows them. */
  async sessionsBySid(db: Pool | PoolClient, sid: string, namespace: string | undefined): Promise<StoredSessionRow[]> {
    const { rows } = await db.query<StoredSessionRow>(
      `SELECT n.name AS namespace, s.sid, s.floor_offset::text AS floor_offset, s.last_offset::text AS last_offset,
              s.payload, s.disconnected_at, s.expires_at, s.expires_at > now() AS live,
              (extract(epoch FROM s.expires_at - now()) * 1000)::bigint::text AS expires_in_ms
         FROM ${this.sessions} s JOIN ${this.namespaces} n ON n.id = s.namespace_id
        WHERE s.sid = $1 AND ($2::text IS NULL OR n.name = $2)
          -- Sessions waiting to be restored; not a connected socket's skeleton nor a taken one's fence.
          AND s.state IN ('disconnected', 'orphaned')
        ORDER BY s.disconnected_at DESC`,
      [sid, namespace ?? null],
    );
    return rows;
  }
}
