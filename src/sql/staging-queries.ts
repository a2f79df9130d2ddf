/**
 * SQL of staged events (`staged_events`): writing one in the caller's
 * transaction, and moving committed ones into the log.
 *
 * A move runs in one transaction on one connection: it locks the namespace's
 * row (the lock every append takes, so moves and appends are serialized and
 * offsets stay dense and in commit order), deletes the oldest staged rows of
 * the namespace, appends them, and commits. Move and append commit together
 * or not at all, so a move retried after any failure (its commit's answer
 * lost included) neither loses nor repeats a row. Rows of a transaction that
 * has not committed are invisible to the move: nobody waits for them.
 */
import type { PoolClient, QueryConfig, QueryResult, QueryResultRow } from "pg";
import type { Queryable } from "./bounded-queries.js";
import { qualifiedName } from "./identifiers.js";
import { flattenRoomKeys } from "../room-keys.js";
import { bumpAndInsertCtes } from "./log-queries.js";

/** A staged row as the move takes it: exactly one of `payload` and `packet` is set. */
export interface StagedRow {
  id: number;
  /** msgpack of [data, rooms, except] (from createEmitter). */
  payload: Buffer | null;
  /** [[event, ...args], rooms, except] as JSON (from the SQL function). */
  packet: unknown;
}

/** The NOTIFY channel of staged events of `schema` (the migrated SQL function uses the same). */
export function emitChannel(schema: string): string {
  return `${schema}:emit`;
}

export class StagingQueries {
  private readonly namespaces: string;
  private readonly log: string;
  private readonly staged: string;
  private readonly gaps: string;
  readonly channel: string;

  constructor(schema: string) {
    this.namespaces = qualifiedName(schema, "namespaces");
    this.log = qualifiedName(schema, "log_entries");
    this.staged = qualifiedName(schema, "staged_events");
    this.gaps = qualifiedName(schema, "log_gaps");
    this.channel = emitChannel(schema);
  }

  /**
   * Stages events in the caller's transaction (on its own client), in the
   * order given (their ids follow it), and notifies the nodes: Postgres
   * delivers the NOTIFY at commit, and drops it on rollback.
   */
  async stage(db: Queryable, namespace: string, payloads: Buffer[]): Promise<void> {
    await db.query(
      `WITH staged AS (
         INSERT INTO ${this.staged} (namespace, payload)
         SELECT $1, entry.payload FROM unnest($2::bytea[]) WITH ORDINALITY AS entry(payload, ord) ORDER BY entry.ord
         RETURNING id
       )
       SELECT pg_notify($3, $1) FROM (SELECT 1 FROM staged LIMIT 1) AS any_row`,
      [namespace, payloads, this.channel],
    );
  }

  /** Creates the namespace's row when missing (an emitter may log into a namespace no node started yet). */
  async ensureNamespace(db: Queryable, name: string): Promise<void> {
    await db.query(`INSERT INTO ${this.namespaces} (name) VALUES ($1) ON CONFLICT (name) DO NOTHING`, [name]);
  }

  /**
   * Takes the namespace's row lock until the transaction ends (the same lock as
   * the append's `UPDATE … SET head`): appends and moves of the namespace wait
   * for each other. Undefined when the namespace has no row.
   */
  async lockNamespace(db: Queryable, name: string): Promise<number | undefined> {
    const { rows } = await db.query<{ id: number }>(`SELECT id FROM ${this.namespaces} WHERE name = $1 FOR NO KEY UPDATE`, [name]);
    return rows[0]?.id;
  }

  /** Whether anything committed is staged for the namespace (a cheap look before a move). */
  async hasStaged(db: Queryable, name: string): Promise<boolean> {
    const { rows } = await db.query<{ any: boolean }>(`SELECT EXISTS (SELECT 1 FROM ${this.staged} WHERE namespace = $1) AS any`, [name]);
    return rows[0]?.any === true;
  }

  /**
   * Deletes and returns the namespace's oldest committed staged rows, in id
   * order, at most `limit`. Run after `lockNamespace` in the same
   * transaction: its snapshot then holds every row committed before the lock
   * was granted, and no other move runs meanwhile. SKIP LOCKED: a row some
   * other session locked (a prune) is not waited for.
   */
  async take(db: Queryable, name: string, limit: number): Promise<StagedRow[]> {
    const { rows } = await db.query<{ id: string; payload: Buffer | null; packet: unknown }>(
      `WITH taken AS (
         DELETE FROM ${this.staged}
         WHERE id IN (SELECT id FROM ${this.staged} WHERE namespace = $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING id, payload, packet
       )
       SELECT id::text AS id, payload, packet FROM taken ORDER BY id`,
      [name, limit],
    );
    return rows.map((r) => ({ id: Number(r.id), payload: r.payload, packet: r.packet }));
  }

  /**
   * Appends `payloads` at the end of the namespace's log and notifies the
   * nodes as every append does (`namespaceId|from|count|inline`). Runs under
   * the lock of `lockNamespace`; returns the first offset.
   */
  async append(
    db: Queryable,
    namespaceId: number,
    payloads: Buffer[],
    logChannel: string,
    inline: string,
    /** Per payload, its room keys, as `LogQueries.append` takes them. */
    roomKeys: ReadonlyArray<readonly string[] | null> | null = null,
  ): Promise<number> {
    const flat = roomKeys === null ? null : flattenRoomKeys(roomKeys);
    const { rows } = await db.query<{ from_offset: string }>(
      // The head jumps like the append's on the first write into another database incarnation (see
      // LogQueries.append and log-gaps.ts): a failover that lost commits never has their offsets reused.
      `WITH ${bumpAndInsertCtes({ namespaces: this.namespaces, gaps: this.gaps, log: this.log }, { keys: "$6", starts: "$7", counts: "$8" })}
       SELECT (bumped.head - $2 + 1)::text AS from_offset,
              pg_notify($4, concat_ws('|', $1::text, (bumped.head - $2 + 1)::text, $2::text, $5::text, bumped.jumped_from::text))
       FROM bumped`,
      [namespaceId, payloads.length, payloads, logChannel, inline, flat?.keys ?? null, flat?.starts ?? null, flat?.counts ?? null],
    );
    const row = rows[0];
    if (!row) throw new Error(`socket.io-postgres-recovery: namespace ${namespaceId} has no row; cannot append moved events`);
    return Number(row.from_offset);
  }

  /**
   * Deletes staged rows written longer than `retentionMs` ago, at most
   * `limit`: a client whose session is that old cannot recover anyway, and
   * rows of a namespace no node serves must not pile up forever.
   */
  async pruneStaged(db: Queryable, retentionMs: number, limit: number): Promise<number> {
    const result = await db.query(
      `DELETE FROM ${this.staged} WHERE id IN (
         SELECT id FROM ${this.staged}
         WHERE created_at < clock_timestamp() - $1 * interval '1 millisecond'
         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
       )`,
      [retentionMs, limit],
    );
    return result.rowCount ?? 0;
  }
}

/**
 * How long a move (or an emitter's direct batch) may sit idle inside its
 * transaction, between two of its own statements, holding the namespace's
 * row lock: a process frozen there (a stopped process, a long GC pause, a
 * half-open connection) would otherwise stall every writer of the namespace
 * until it resumes or TCP gives up. Postgres then ends the session, which
 * rolls the move back; it is retried. Between statements a healthy process
 * takes milliseconds.
 */
export const IDLE_IN_MOVE_MS = 2000;

/** Starts a transaction that holds the namespace's row lock (see IDLE_IN_MOVE_MS). */
export async function beginLockingTransaction(db: Queryable): Promise<void> {
  await db.query(`BEGIN; SET LOCAL idle_in_transaction_session_timeout = ${IDLE_IN_MOVE_MS}`);
}

/** `client` with pg's `query_timeout` on every statement (see bounded-queries.ts); undefined: none. */
export function timedClient(client: PoolClient, timeoutMs: number | undefined): Queryable {
  if (timeoutMs === undefined) return client;
  return {
    query<R extends QueryResultRow>(textOrConfig: string | QueryConfig, values?: unknown[]): Promise<QueryResult<R>> {
      const config = typeof textOrConfig === "string" ? { text: textOrConfig, values } : { ...textOrConfig };
      return client.query<R>({ ...config, query_timeout: timeoutMs } as QueryConfig);
    },
  };
}
