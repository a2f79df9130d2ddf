/** SQL of sessions: batched writes and single-use takes. */
import type { Queryable } from "./bounded-queries.js";
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

  /**
   * `writtenChannel`: where each write announces the sessions it stored
   * (`s|` and their `writtenKey`s, see SessionStore.take), or nothing.
   */
  constructor(
    private readonly pool: Queryable,
    schema: string,
    private readonly writtenChannel?: string,
  ) {
    this.sessions = qualifiedName(schema, "sessions");
  }

  /** Writes a batch in one statement (and one NOTIFY). A pid written twice keeps its newest session. */
  async insert(records: readonly SessionRecord[]): Promise<void> {
    // The newest record per pid wins, even inside one batch (ON CONFLICT cannot touch a row twice).
    const latest = new Map<string, SessionRecord>();
    for (const r of records) latest.set(r.pidHash.toString("hex"), r);
    const batch = [...latest.values()];
    let announce = "";
    let written = "";
    if (this.writtenChannel !== undefined) {
      written = `s|${batch.map((r) => writtenKey(r.pidHash)).join(",")}`;
      // A NOTIFY payload stays under 8000 bytes: past it, every waiting restore looks again.
      if (written.length > 7900) written = "s|*";
      announce = `WITH written AS (`;
    }
    const insert = `INSERT INTO ${this.sessions}
         (pid_hash, namespace_id, sid, floor_offset, last_offset, payload, expires_at)
       SELECT s.pid_hash, s.namespace_id, s.sid, s.floor_offset, s.last_offset, s.payload,
              now() + s.ttl_ms * interval '1 millisecond'
       FROM unnest($1::bytea[], $2::int[], $3::text[], $4::bigint[], $5::bigint[], $6::bytea[], $7::bigint[])
         AS s(pid_hash, namespace_id, sid, floor_offset, last_offset, payload, ttl_ms)
       ON CONFLICT (pid_hash) DO UPDATE SET
         namespace_id = EXCLUDED.namespace_id, sid = EXCLUDED.sid,
         floor_offset = EXCLUDED.floor_offset, last_offset = EXCLUDED.last_offset,
         payload = EXCLUDED.payload, disconnected_at = now(), expires_at = EXCLUDED.expires_at`;
    const params: unknown[] = [
      batch.map((r) => r.pidHash),
      batch.map((r) => r.namespaceId),
      batch.map((r) => r.sid),
      batch.map((r) => r.floorOffset),
      batch.map((r) => r.lastOffset),
      batch.map((r) => r.payload),
      batch.map((r) => r.ttlMs),
    ];
    if (announce === "") {
      await this.pool.query(insert, params);
    } else {
      await this.pool.query(`${announce}${insert}) SELECT pg_notify($8, $9)`, [...params, this.writtenChannel, written]);
    }
  }

  /**
   * Deletes and returns the sessions of a batch of restores in one statement:
   * a pid restores at most once, even when several reconnects race for it
   * (the same pid twice in one batch: only the first gets it). Only the
   * session's own namespace can take it, so a pid presented elsewhere leaves
   * it intact. Results are in the order of `keys`.
   */
  async take(keys: ReadonlyArray<SessionKey>): Promise<Array<TakenSession | undefined>> {
    const { rows } = await this.pool.query<{
      pid_hash: Buffer;
      namespace_id: number;
      sid: string;
      floor_offset: string;
      last_offset: string;
      payload: Buffer;
      live: boolean;
    }>(
      `DELETE FROM ${this.sessions} s
       USING unnest($1::bytea[], $2::int[]) AS k(pid_hash, namespace_id)
       WHERE s.pid_hash = k.pid_hash AND s.namespace_id = k.namespace_id
       RETURNING s.pid_hash, s.namespace_id, s.sid, s.floor_offset::text, s.last_offset::text, s.payload,
                 s.expires_at > now() AS live`,
      [keys.map((k) => k.pidHash), keys.map((k) => k.namespaceId)],
    );
    const found = new Map<string, TakenSession>();
    for (const row of rows) {
      found.set(keyOf(row.pid_hash, row.namespace_id), {
        sid: row.sid,
        floorOffset: Number(row.floor_offset),
        lastOffset: Number(row.last_offset),
        payload: row.payload,
        live: row.live,
      });
    }
    return keys.map((k) => {
      const key = keyOf(k.pidHash, k.namespaceId);
      const session = found.get(key);
      found.delete(key); // a second request for the same pid in this batch gets nothing
      return session;
    });
  }
}

/** Which session a restore asks for. */
export interface SessionKey {
  readonly pidHash: Buffer;
  readonly namespaceId: number;
}

function keyOf(pidHash: Buffer, namespaceId: number): string {
  return `${namespaceId}:${pidHash.toString("hex")}`;
}

/** How a session write names a session in its NOTIFY: 8 bytes of the pid's hash, in hex (16 characters). */
export function writtenKey(pidHash: Buffer): string {
  return pidHash.subarray(0, 8).toString("hex");
}
