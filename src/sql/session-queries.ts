/**
 * SQL of sessions: batched, fenced writes and single-use takes.
 *
 * One row per pid. Its `state` says what it is: the durable skeleton of a
 * socket a node still serves (`connected`), the session written at the
 * disconnect (`disconnected`), a skeleton taken from a dead node and put back
 * (`orphaned`), or a session restored elsewhere, kept as a fence until it
 * expires (`taken`). Every take bumps the row's `generation` and names the
 * taker in `node_id`; every write carries the generation and node it was made
 * for and a `version`, and changes the row only when both still match and the
 * version is newer. So a node declared dead that is still running (a zombie),
 * or a retried write whose first attempt committed, never resurrects a
 * session restored elsewhere nor overwrites a newer one.
 */
import { randomUUID } from "node:crypto";
import type { Queryable } from "./bounded-queries.js";
import { qualifiedName } from "./identifiers.js";
import { lockReleasedSql } from "../liveness-lock.js";

export type SessionState = "connected" | "disconnected" | "orphaned";

/** A session as written (see the `sessions` table in schema.ts). */
export interface SessionRecord {
  readonly pidHash: Buffer;
  readonly namespaceId: number;
  readonly sid: string;
  readonly floorOffset: number;
  /** Last offset written to the socket (`connected`, `orphaned`: unknown, the floor). */
  readonly lastOffset: number;
  /** The node's cursor when the session was written: entries in (lastOffset, cursorOffset] were not addressed to the socket. */
  readonly cursorOffset: number;
  /** encodeSession() of rooms and data. */
  readonly payload: Buffer;
  /** Time to live from the write (`connected`: from the serving node's death), i.e. the server's maxDisconnectionDuration. */
  readonly ttlMs: number;
  /** Default `disconnected`. */
  readonly state?: SessionState;
  /** The writing node and the generation it holds the session in (default: this queries' node, 0). */
  readonly nodeId?: string;
  readonly generation?: number;
  /** Orders the owner's writes (default 0; newer writes must carry higher versions). */
  readonly version?: number;
}

/** A session as taken back. */
export interface TakenSession {
  readonly sid: string;
  readonly floorOffset: number;
  readonly lastOffset: number;
  readonly cursorOffset: number;
  readonly payload: Buffer;
  /** False when found but past its expiry (then it is consumed all the same). */
  readonly live: boolean;
  /**
   * True when the socket's node died without writing the session (a
   * skeleton): the last offset written to the socket is unknown.
   */
  readonly crashed: boolean;
  /** The generation the taker now holds it in (its writes must carry it). */
  readonly generation: number;
  /** Taken from this node's queue before it was written (the table still holds this node's skeleton). */
  readonly fromQueue?: boolean;
  /**
   * The take left the row as this node's skeleton of the restored socket
   * (`connected`, this node, `generation`), holding the session's rooms and
   * data: no first skeleton write is needed. A restore refused after the take
   * turns it into a fence (`fence`).
   */
  readonly skeleton?: boolean;
  /** A skeleton taken from a dead node: how that node was found dead. */
  readonly deadBy?: DeadBy;
}

/**
 * How a node was found dead by the take of one of its skeletons: its
 * liveness lock was released (its process is gone, liveness-lock.ts), its
 * heartbeat was older than its `nodeDeadAfterMs`, an earlier take had
 * declared it dead, or its row was gone.
 */
export type DeadBy = "lock" | "heartbeat" | "declared" | "gone";

/** The outcome of one key of a take batch. */
export interface TakeOutcome {
  readonly taken: TakenSession | undefined;
  /** Not taken because the node serving it is alive: its session may come, or it may die. */
  readonly held: boolean;
}

/** What a write did to one record. */
export interface WriteOutcome {
  readonly written: boolean;
  /** False when the row belongs to another node or generation: the session was taken elsewhere. */
  readonly owned: boolean;
}

export class SessionQueries {
  private readonly sessions: string;
  private readonly nodes: string;

  /**
   * `writtenChannel`: where each write announces the sessions it stored at a
   * disconnect (`s|` and their `writtenKey`s, see SessionStore.take), or
   * nothing. Skeleton writes are not announced: no restore waits for them.
   */
  constructor(
    private readonly pool: Queryable,
    schema: string,
    private readonly writtenChannel?: string,
    /** This node's id (`nodes.node_id`): takes name it, writes default to it. */
    readonly nodeId: string = randomUUID(),
  ) {
    this.sessions = qualifiedName(schema, "sessions");
    this.nodes = qualifiedName(schema, "nodes");
  }

  /** Writes a batch in one statement. A pid written twice keeps its newest session. */
  async insert(records: readonly SessionRecord[]): Promise<void> {
    await this.write(records);
  }

  /**
   * Writes a batch in one statement, fenced: a row changes only when it is
   * still held by the record's node and generation and the record is newer.
   * Results are in the order of `records`.
   */
  async write(records: readonly SessionRecord[]): Promise<WriteOutcome[]> {
    // The newest record per pid wins, even inside one batch (ON CONFLICT cannot touch a row twice).
    const latest = new Map<string, SessionRecord>();
    for (const r of records) {
      const key = r.pidHash.toString("hex");
      const seen = latest.get(key);
      if (!seen || (r.version ?? 0) >= (seen.version ?? 0)) latest.set(key, r);
    }
    const batch = [...latest.values()];
    const sessions = batch.filter((r) => (r.state ?? "disconnected") !== "connected");
    let written = "";
    if (this.writtenChannel !== undefined && sessions.length > 0) {
      written = `s|${sessions.map((r) => writtenKey(r.pidHash)).join(",")}`;
      // A NOTIFY payload stays under 8000 bytes: past it, every waiting restore looks again.
      if (written.length > 7900) written = "s|*";
    }
    // The announcement goes out with the commit (NOTIFY is transactional), only when something was written.
    const announce = written === "" ? "" : `, (SELECT pg_notify($13, $14) FROM (SELECT 1 FROM w LIMIT 1) AS any_written) AS announced`;
    const { rows } = await this.pool.query<{ pid_hash: Buffer; written: boolean; owned: boolean }>(
      `WITH k AS (
         SELECT * FROM unnest($1::bytea[], $2::int[], $3::text[], $4::bigint[], $5::bigint[], $6::bytea[],
                              $7::bigint[], $8::bigint[], $9::text[], $10::text[], $11::bigint[], $12::bigint[])
           AS k(pid_hash, namespace_id, sid, floor_offset, last_offset, payload, ttl_ms, cursor_offset,
                state, node_id, generation, version)
       ), w AS (
         INSERT INTO ${this.sessions} AS s
           (pid_hash, namespace_id, sid, floor_offset, last_offset, cursor_offset, payload, expires_at,
            state, node_id, generation, version, ttl_ms, disconnected_at)
         SELECT k.pid_hash, k.namespace_id, k.sid, k.floor_offset, k.last_offset, k.cursor_offset, k.payload,
                CASE WHEN k.state = 'connected' THEN 'infinity'::timestamptz
                     ELSE now() + k.ttl_ms * interval '1 millisecond' END,
                k.state, k.node_id, k.generation, k.version, k.ttl_ms, now()
         FROM k
         ON CONFLICT (pid_hash) DO UPDATE SET
           namespace_id = EXCLUDED.namespace_id, sid = EXCLUDED.sid,
           floor_offset = EXCLUDED.floor_offset, last_offset = EXCLUDED.last_offset,
           cursor_offset = EXCLUDED.cursor_offset, payload = EXCLUDED.payload,
           expires_at = EXCLUDED.expires_at, state = EXCLUDED.state, version = EXCLUDED.version,
           ttl_ms = EXCLUDED.ttl_ms, disconnected_at = now()
         WHERE s.node_id IS NOT DISTINCT FROM EXCLUDED.node_id AND s.generation = EXCLUDED.generation
           AND s.version < EXCLUDED.version
         RETURNING s.pid_hash
       )
       SELECT k.pid_hash,
              EXISTS (SELECT 1 FROM w WHERE w.pid_hash = k.pid_hash) AS written,
              COALESCE((SELECT s.node_id IS NOT DISTINCT FROM k.node_id AND s.generation = k.generation
                          FROM ${this.sessions} s WHERE s.pid_hash = k.pid_hash), true) AS owned${announce}
       FROM k`,
      [
        batch.map((r) => r.pidHash),
        batch.map((r) => r.namespaceId),
        batch.map((r) => r.sid),
        batch.map((r) => r.floorOffset),
        batch.map((r) => r.lastOffset),
        batch.map((r) => r.payload),
        batch.map((r) => r.ttlMs),
        batch.map((r) => r.cursorOffset),
        batch.map((r) => r.state ?? "disconnected"),
        batch.map((r) => r.nodeId ?? this.nodeId),
        batch.map((r) => r.generation ?? 0),
        batch.map((r) => r.version ?? 0),
        ...(written === "" ? [] : [this.writtenChannel, written]),
      ],
    );
    const outcomes = new Map<string, WriteOutcome>();
    for (const row of rows) outcomes.set(row.pid_hash.toString("hex"), { written: row.written, owned: row.owned });
    return records.map((r) => {
      const key = r.pidHash.toString("hex");
      const outcome = outcomes.get(key) ?? { written: false, owned: true };
      // A record superseded inside the batch was not written itself.
      return latest.get(key) === r ? outcome : { written: false, owned: outcome.owned };
    });
  }

  /**
   * Deletes the skeletons of sockets that left for good (no session to
   * restore), fenced like writes: only rows still held by the record's node
   * and generation.
   */
  async remove(keys: ReadonlyArray<{ pidHash: Buffer; nodeId: string; generation: number }>): Promise<void> {
    if (keys.length === 0) return;
    await this.pool.query(
      `DELETE FROM ${this.sessions} s
       USING unnest($1::bytea[], $2::text[], $3::bigint[]) AS k(pid_hash, node_id, generation)
       WHERE s.pid_hash = k.pid_hash AND s.node_id = k.node_id AND s.generation = k.generation
         AND s.state = 'connected'`,
      [keys.map((k) => k.pidHash), keys.map((k) => k.nodeId), keys.map((k) => k.generation)],
    );
  }

  /**
   * Takes the sessions of a batch of restores in one statement: a pid
   * restores at most once, even when several reconnects race for it (the same
   * pid twice in one batch: only the first gets it). Only the session's own
   * namespace can take it, so a pid presented elsewhere leaves it intact.
   * Results are in the order of `keys`.
   */
  async take(keys: ReadonlyArray<SessionKey>): Promise<Array<TakenSession | undefined>> {
    return (await this.takeOrWait(keys)).map((o) => o.taken);
  }

  /**
   * Like `take`, and says which sessions are held by a live node. A
   * `connected` row is taken only when its node is dead: its heartbeat is
   * older than the node's `dead_after_ms`, nobody holds the liveness lock its
   * row names (its process is gone; never said of this node itself, whose
   * lock is only missing while its listener reconnects), or its row is gone. The take then
   * marks that node `declared_dead` in the same statement; the node row's lock
   * orders this against the node's own heartbeat, so a node that was only
   * paused always learns at its next heartbeat that it must check what it
   * still holds. A taken row stays as a fence (`taken`, next generation, this
   * node) until it expires.
   */
  async takeOrWait(keys: ReadonlyArray<SessionKey>, asSkeleton = false): Promise<TakeOutcome[]> {
    const { rows } = await this.pool.query<{
      pid_hash: Buffer;
      namespace_id: number;
      sid: string;
      floor_offset: string;
      last_offset: string;
      cursor_offset: string;
      payload: Buffer;
      live: boolean;
      crashed: boolean;
      generation: string | null;
      dead_by: DeadBy | null;
    }>(
      `WITH k AS (
         SELECT * FROM unnest($1::bytea[], $2::int[]) AS k(pid_hash, namespace_id)
       ), cand AS (
         SELECT s.pid_hash, s.namespace_id, s.sid, s.floor_offset, s.last_offset,
                COALESCE(s.cursor_offset, s.last_offset) AS cursor_offset, s.payload, s.state, s.node_id,
                s.expires_at, s.ttl_ms, s.disconnected_at
         FROM ${this.sessions} s JOIN k ON s.pid_hash = k.pid_hash AND s.namespace_id = k.namespace_id
         WHERE s.state IN ('connected', 'disconnected', 'orphaned')
         ORDER BY s.pid_hash -- rows locked in one order by every taker
         FOR UPDATE OF s
       ), verdict AS (
         -- pg_locks is read only for a node neither declared dead nor stale (CASE stops early).
         SELECT n.node_id,
                CASE WHEN n.declared_dead THEN 'declared'
                     WHEN n.heartbeat_at < now() - n.dead_after_ms * interval '1 millisecond' THEN 'heartbeat'
                     WHEN n.lock_key IS NOT NULL AND n.node_id <> $3 AND ${lockReleasedSql("n.lock_key")} THEN 'lock'
                END AS why
         FROM ${this.nodes} n
         WHERE n.node_id IN (SELECT node_id FROM cand WHERE state = 'connected')
       ), dead AS (
         -- Rechecked on the locked row: a heartbeat committed meanwhile keeps a node alive, unless its lock is gone.
         UPDATE ${this.nodes} n SET declared_dead = true
         FROM verdict v
         WHERE n.node_id = v.node_id AND v.why IS NOT NULL
           AND (n.declared_dead OR n.heartbeat_at < now() - n.dead_after_ms * interval '1 millisecond' OR v.why = 'lock')
         RETURNING n.node_id, n.heartbeat_at, v.why
       ), takeable AS (
         SELECT cand.*,
                CASE WHEN cand.state = 'connected'
                     THEN COALESCE((SELECT heartbeat_at FROM dead WHERE dead.node_id = cand.node_id), cand.disconnected_at)
                          + COALESCE(cand.ttl_ms, 0) * interval '1 millisecond' > now()
                     ELSE cand.expires_at > now() END AS live
         FROM cand
         WHERE cand.state <> 'connected' OR cand.node_id IS NULL
            OR cand.node_id IN (SELECT node_id FROM dead)
            OR NOT EXISTS (SELECT 1 FROM ${this.nodes} n WHERE n.node_id = cand.node_id)
       ), taken AS (
         UPDATE ${this.sessions} s
         SET state = CASE WHEN $4 AND t.live THEN 'connected' ELSE 'taken' END,
             generation = s.generation + 1, version = 0, node_id = $3,
             -- As the restored socket's skeleton (a node that writes skeletons, registered), like
             -- SessionQueries.write; else a fence: a crashed skeleton lives maxDisconnectionDuration
             -- from now on, a session keeps its expiry.
             expires_at = CASE WHEN $4 AND t.live THEN 'infinity'::timestamptz
                               WHEN s.state = 'disconnected' THEN s.expires_at
                               ELSE now() + COALESCE(s.ttl_ms, 0) * interval '1 millisecond' END,
             disconnected_at = CASE WHEN $4 AND t.live THEN now() ELSE s.disconnected_at END
         FROM takeable t WHERE s.pid_hash = t.pid_hash
         RETURNING s.pid_hash, s.generation
       )
       SELECT c.pid_hash, c.namespace_id, c.sid, c.floor_offset::text, c.last_offset::text,
              c.cursor_offset::text, c.payload, COALESCE(t.live, false) AS live,
              c.state IN ('connected', 'orphaned') AS crashed, tk.generation::text AS generation,
              CASE WHEN c.state = 'connected'
                   THEN COALESCE((SELECT dead.why FROM dead WHERE dead.node_id = c.node_id), 'gone') END AS dead_by
       FROM cand c LEFT JOIN takeable t ON t.pid_hash = c.pid_hash LEFT JOIN taken tk ON tk.pid_hash = c.pid_hash`,
      [keys.map((k) => k.pidHash), keys.map((k) => k.namespaceId), this.nodeId, asSkeleton],
    );
    const found = new Map<string, TakeOutcome>();
    for (const row of rows) {
      const taken: TakenSession | undefined =
        row.generation === null
          ? undefined
          : {
              sid: row.sid,
              floorOffset: Number(row.floor_offset),
              lastOffset: Number(row.last_offset),
              cursorOffset: Number(row.cursor_offset),
              payload: row.payload,
              live: row.live,
              ...(asSkeleton && row.live ? { skeleton: true } : {}),
              crashed: row.crashed,
              generation: Number(row.generation),
              ...(row.dead_by === null ? {} : { deadBy: row.dead_by }),
            };
      found.set(keyOf(row.pid_hash, row.namespace_id), { taken, held: taken === undefined });
    }
    return keys.map((k) => {
      const key = keyOf(k.pidHash, k.namespaceId);
      const outcome = found.get(key);
      found.delete(key); // a second request for the same pid in this batch gets nothing
      return outcome ?? { taken: undefined, held: false };
    });
  }

  /**
   * Turns the skeletons a take left for restores that were then refused into
   * fences (`taken`), as a take without a skeleton leaves them: no socket will
   * write them, and the pid must not restore again.
   */
  async fence(keys: ReadonlyArray<{ pidHash: Buffer; generation: number }>): Promise<void> {
    if (keys.length === 0) return;
    await this.pool.query(
      `UPDATE ${this.sessions} s
       SET state = 'taken', expires_at = now() + COALESCE(s.ttl_ms, 0) * interval '1 millisecond'
       FROM unnest($1::bytea[], $2::bigint[]) AS k(pid_hash, generation)
       WHERE s.pid_hash = k.pid_hash AND s.generation = k.generation AND s.node_id = $3
         AND s.state = 'connected' AND s.version = 0`,
      [keys.map((k) => k.pidHash), keys.map((k) => k.generation), this.nodeId],
    );
  }

  /** Of `keys`, those whose rows another node or generation now holds (taken elsewhere). */
  async lost(keys: ReadonlyArray<{ pidHash: Buffer; generation: number }>): Promise<Buffer[]> {
    if (keys.length === 0) return [];
    const { rows } = await this.pool.query<{ pid_hash: Buffer }>(
      `SELECT s.pid_hash FROM ${this.sessions} s
       JOIN unnest($1::bytea[], $2::bigint[]) AS k(pid_hash, generation) ON s.pid_hash = k.pid_hash
       WHERE s.node_id IS DISTINCT FROM $3 OR s.generation <> k.generation`,
      [keys.map((k) => k.pidHash), keys.map((k) => k.generation), this.nodeId],
    );
    return rows.map((r) => r.pid_hash);
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
