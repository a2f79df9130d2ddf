/** SQL of sessions: batched writes and single-use takes. */
import type { Pool } from "pg";
import { qualifiedName } from "./identifiers.js";

/** A session as written (see the `sessions` table in schema.ts). */
export interface SessionRecord {
  readonly pidHash: Buffer;
  readonly namespaceId: number;
  readonly sid: string;
  readonly floorOffset: number;
  readonly lastOffset: number;
  /** encodeSession() of rooms and data. */
  readonly payload: Buffer;
  /** Time to live from the write, i.e. the server's maxDisconnectionDuration. */
  readonly ttlMs: number;
}

/** A session as taken back. */
export interface TakenSession {
  readonly sid: string;
  readonly floorOffset: number;
  readonly lastOffset: number;
  readonly payload: Buffer;
  /** False when found but past its expiry (then it is deleted all the same). */
  readonly live: boolean;
}

export class SessionQueries {
  private readonly sessions: string;

  constructor(
    private readonly pool: Pool,
    schema: string,
  ) {
    this.sessions = qualifiedName(schema, "sessions");
  }

  /** Writes a batch in one statement. A pid written twice keeps its newest session. */
  async insert(records: readonly SessionRecord[]): Promise<void> {
    // The newest record per pid wins, even inside one batch (ON CONFLICT cannot touch a row twice).
    const latest = new Map<string, SessionRecord>();
    for (const r of records) latest.set(r.pidHash.toString("hex"), r);
    const batch = [...latest.values()];
    await this.pool.query(
      `INSERT INTO ${this.sessions}
         (pid_hash, namespace_id, sid, floor_offset, last_offset, payload, expires_at)
       SELECT s.pid_hash, s.namespace_id, s.sid, s.floor_offset, s.last_offset, s.payload,
              now() + s.ttl_ms * interval '1 millisecond'
       FROM unnest($1::bytea[], $2::int[], $3::text[], $4::bigint[], $5::bigint[], $6::bytea[], $7::bigint[])
         AS s(pid_hash, namespace_id, sid, floor_offset, last_offset, payload, ttl_ms)
       ON CONFLICT (pid_hash) DO UPDATE SET
         namespace_id = EXCLUDED.namespace_id, sid = EXCLUDED.sid,
         floor_offset = EXCLUDED.floor_offset, last_offset = EXCLUDED.last_offset,
         payload = EXCLUDED.payload, disconnected_at = now(), expires_at = EXCLUDED.expires_at`,
      [
        batch.map((r) => r.pidHash),
        batch.map((r) => r.namespaceId),
        batch.map((r) => r.sid),
        batch.map((r) => r.floorOffset),
        batch.map((r) => r.lastOffset),
        batch.map((r) => r.payload),
        batch.map((r) => r.ttlMs),
      ],
    );
  }

  /**
   * Deletes and returns the session: a pid restores at most once, even when
   * several reconnects race for it. Only the session's own namespace can take
   * it, so a pid presented elsewhere leaves it intact.
   */
  async take(pidHash: Buffer, namespaceId: number): Promise<TakenSession | undefined> {
    const { rows } = await this.pool.query<{
      sid: string;
      floor_offset: string;
      last_offset: string;
      payload: Buffer;
      live: boolean;
    }>(
      `DELETE FROM ${this.sessions} WHERE pid_hash = $1 AND namespace_id = $2
       RETURNING sid, floor_offset::text, last_offset::text, payload, expires_at > now() AS live`,
      [pidHash, namespaceId],
    );
    const row = rows[0];
    if (!row) return undefined;
    return {
      sid: row.sid,
      floorOffset: Number(row.floor_offset),
      lastOffset: Number(row.last_offset),
      payload: row.payload,
      live: row.live,
    };
  }
}
