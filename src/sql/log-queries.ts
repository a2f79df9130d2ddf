/** SQL of the message log: namespaces' heads, appending batches, reading ranges. */
import { createHash } from "node:crypto";
import { decodePacket, type LogEntry } from "../codec.js";
import type { Queryable } from "./bounded-queries.js";
import { flattenRoomKeys } from "../room-keys.js";
import { qualifiedName } from "./identifiers.js";

export interface NamespaceRow {
  id: number;
  head: number;
}

export interface AppendResult {
  /** Offset of the first entry of the batch; the others follow densely. */
  from: number;
  /** True when an earlier attempt had already committed this batch. */
  appliedBefore: boolean;
  /**
   * Set when this append was the first of a new database incarnation: the
   * head jumped from this offset to `from - 1` (a gap, see `log_gaps`).
   */
  jumpedFrom?: number;
}

/** A recorded range of offsets with no entry: (after, through]. See `log_gaps` in schema.ts. */
export interface LogGap {
  after: number;
  through: number;
  /** Entries in it were committed and delivered before the database lost them. */
  lost: boolean;
  /** How old the record is, on the database's clock, when it was read. */
  ageMs: number;
}

/** A namespace's gaps, and the database incarnation they were read from. */
export interface GapsRead {
  gaps: LogGap[];
  /** `pg_postmaster_start_time()` of the server that answered, as text. */
  incarnation: string;
}

/**
 * Where a jump of the head lands: past anything an earlier incarnation of
 * the database could have handed out. The database's clock in microseconds
 * (a namespace appending under a million entries a second never overtakes
 * it), plus an hour for clocks that differ between the old primary and the
 * new one. Safe integers last until the year 2255.
 */
export const JUMP_FLOOR_SQL = "((extract(epoch FROM now()) + 3600) * 1000000)::bigint";

/**
 * The part of an append shared by every writer of the log (nodes, and the
 * emitter's moves of staged rows): move the head by `$2` entries, jumping on
 * the first write into another database incarnation (log-gaps.ts), record the
 * jump as a gap, insert the payloads `$3` of namespace `$1` at the new
 * offsets, each with its room keys (`keysParams`: the three parameters of a
 * `FlatRoomKeys`, see room-keys.ts; NULLs: no keys). `bumpedWhere` narrows
 * the head update (an append's retry check).
 * Yields the CTEs `bumped (head, jumped_from)`, `gap` and `inserted`.
 */
export function bumpAndInsertCtes(
  tables: { namespaces: string; gaps: string; log: string },
  keysParams: { keys: string; starts: string; counts: string },
  bumpedWhere = "",
): string {
  return `bumped AS (
         UPDATE ${tables.namespaces}
         SET head = CASE WHEN incarnation = pg_postmaster_start_time() THEN head ELSE GREATEST(head, ${JUMP_FLOOR_SQL}) END + $2,
             jumped_from = CASE WHEN incarnation = pg_postmaster_start_time() THEN NULL ELSE head END,
             incarnation = pg_postmaster_start_time()
         WHERE id = $1${bumpedWhere}
         RETURNING head, jumped_from
       ), gap AS (
         INSERT INTO ${tables.gaps} (namespace_id, after_offset, through_offset)
         SELECT $1, jumped_from, head - $2 FROM bumped WHERE jumped_from IS NOT NULL AND head - $2 > jumped_from
         ON CONFLICT DO NOTHING
       ), inserted AS (
         INSERT INTO ${tables.log} (namespace_id, "offset", payload, room_keys)
         SELECT $1, bumped.head - $2 + entry.ord, entry.payload,
                CASE WHEN entry.key_count > 0 THEN (${keysParams.keys}::bigint[])[entry.key_start : entry.key_start + entry.key_count - 1] END
         FROM bumped, unnest($3::bytea[], ${keysParams.starts}::int[], ${keysParams.counts}::int[]) WITH ORDINALITY AS entry(payload, key_start, key_count, ord)
       )`;
}

/** Typed access to the log tables of one schema. */
export class LogQueries {
  private readonly namespaces: string;
  private readonly log: string;
  private readonly writers: string;
  private readonly gaps: string;
  private readonly nodes: string;
  private readonly appendSql: string;

  /** `pool` is normally the pool with a query timeout (bounded-queries.ts); a client inside a transaction works too (tests use that). */
  constructor(
    private readonly pool: Queryable,
    schema: string,
    { preparedStatements = true }: { preparedStatements?: boolean } = {},
  ) {
    this.namespaces = qualifiedName(schema, "namespaces");
    this.log = qualifiedName(schema, "log_entries");
    this.writers = qualifiedName(schema, "log_writers");
    this.gaps = qualifiedName(schema, "log_gaps");
    this.nodes = qualifiedName(schema, "nodes");
    this.appendSql = this.appendText();
    this.appendStatementName = preparedStatements ? statementName("append", this.appendSql) : undefined;
  }

  /**
   * The append is the hot path and its plan costs about as much as running
   * it (measured: 1.1 ms unprepared, 0.55 ms prepared, one row, on the local
   * Postgres 15): it runs as a named prepared statement, parsed and planned
   * once per connection. Off (`preparedStatements: false`, then undefined)
   * for poolers that do not keep prepared statements across transactions.
   */
  readonly appendStatementName: string | undefined;

  /**
   * Creates the namespace's row if needed; returns its id and current head.
   * `retentionMs` (this node's log retention) raises the stored one, never
   * lowers it: the operator's `prune` must keep what the longest-retaining
   * node needs.
   *
   * The row is read first and written only when it is missing, its
   * retention must grow, or its activity mark (`active_at`) is over a minute
   * old. `INSERT … ON CONFLICT DO UPDATE … WHERE` would lock the row even when
   * its WHERE is false (Postgres locks every conflicting row it considers), so
   * every restart would wait for the namespace's writers and hold them up in
   * turn: behind a stuck writer (or another session's lock) a node could not
   * even start.
   *
   * The mark matters because pruning deletes rows of namespaces unused for
   * long (`pruneNamespace`), and a row deleted after a node read its id would
   * leave that node appending to a row that is gone. A mark under a minute
   * old cannot be pruned (that takes retention + 1 h without one), and the
   * node keeps marking it from now on (`touchNamespaces`).
   */
  async namespace(name: string, retentionMs?: number): Promise<NamespaceRow> {
    const current = await this.readNamespace(name);
    const wanted = retentionMs ?? null;
    const retentionCovered = wanted === null || (current?.retentionMs != null && current.retentionMs >= wanted);
    if (current && retentionCovered && current.markedRecently) return { id: current.id, head: current.head };
    await this.pool.query(
      `INSERT INTO ${this.namespaces} AS n (name, retention_ms) VALUES ($1, $2)
       ON CONFLICT (name) DO UPDATE SET retention_ms = GREATEST(n.retention_ms, EXCLUDED.retention_ms), active_at = now()
       WHERE EXCLUDED.retention_ms > COALESCE(n.retention_ms, -1) OR n.active_at < now() - interval '1 minute'`,
      [name, wanted],
    );
    const row = await this.readNamespace(name);
    if (!row) throw new Error(`socket.io-postgres-recovery: namespace row for "${name}" vanished`);
    return { id: row.id, head: row.head };
  }

  private async readNamespace(
    name: string,
  ): Promise<(NamespaceRow & { retentionMs: number | null; markedRecently: boolean }) | undefined> {
    const { rows } = await this.pool.query<{ id: number; head: string; retention_ms: string | null; marked_recently: boolean }>(
      `SELECT id, head::text AS head, retention_ms::text AS retention_ms,
              active_at >= now() - interval '1 minute' AS marked_recently
       FROM ${this.namespaces} WHERE name = $1`,
      [name],
    );
    const row = rows[0];
    if (!row) return undefined;
    return {
      id: row.id,
      head: Number(row.head),
      retentionMs: row.retention_ms === null ? null : Number(row.retention_ms),
      markedRecently: row.marked_recently,
    };
  }

  /**
   * Marks namespaces this node holds as active (see `namespace`), skipping
   * rows marked within `freshMs` (by this node or another), so that a
   * cluster writes each row about once per interval.
   */
  async touchNamespaces(ids: readonly number[], freshMs: number): Promise<void> {
    if (ids.length === 0) return;
    await this.pool.query(
      `UPDATE ${this.namespaces} SET active_at = now()
       WHERE id = ANY($1::int[]) AND active_at < now() - $2 * interval '1 millisecond'`,
      [ids, freshMs],
    );
  }

  /** Creates the writer's row (before its first batch, and before each retry: see `append`). */
  async registerWriter(writerId: string, namespaceId: number): Promise<void> {
    await this.pool.query(
      `INSERT INTO ${this.writers} (writer_id, namespace_id) VALUES ($1, $2) ON CONFLICT (writer_id) DO NOTHING`,
      [writerId, namespaceId],
    );
  }

  /**
   * Appends batch number `batch` of `writerId` in one statement, hence one
   * round trip and one transaction:
   * 1. lock the writer's row; if it already committed this batch (a retry
   *    after the connection died past the commit), change nothing and return
   *    where the batch went;
   * 2. bump the namespace's head: its row lock serializes the namespace's
   *    writers until commit, so offsets are dense and in commit order;
   * 3. insert the rows, record the batch on the writer's row; its
   *    `updated_at` (indexed, for pruning idle writers after retention + 1 h)
   *    moves at most once a minute, so that the update is a HOT one (no
   *    index entry, a quarter less WAL per append) on all appends but one a minute;
   * 4. NOTIFY once with `namespaceId|from|count|inline`, where `inline` is
   *    the batch itself when it fits in a NOTIFY payload, else empty
   *    (receivers then read the rows); followed by `|jumpedFrom` when the
   *    head jumped (the first append into another database incarnation:
   *    see `namespaces.incarnation`), so receivers step over the gap at once.
   *
   * A batch is only ever appended while its writer's row is locked, and
   * recorded on that row in the same transaction: every attempt of the same
   * batch waits for the one before it and sees its outcome. Without the row
   * (never registered, or pruned after a long idle time) the statement
   * changes nothing; the row is then registered and the statement run again.
   */
  async append(
    namespaceId: number,
    writerId: string,
    batch: number,
    payloads: Buffer[],
    channel: string,
    inline: string,
    /**
     * Per payload, its room keys (`entryRoomKeys`): null for an entry to every
     * socket. Left out, every row gets NULL (read by every restore: correct, not narrowed).
     */
    roomKeys: ReadonlyArray<readonly string[] | null> | null = null,
  ): Promise<AppendResult> {
    const flat = roomKeys === null ? null : flattenRoomKeys(roomKeys);
    const args = [namespaceId, payloads.length, payloads, channel, inline, writerId, batch, flat?.keys ?? null, flat?.starts ?? null, flat?.counts ?? null];
    let result = await this.runAppend(args);
    if (result === "unregistered") {
      // Registering waits for a registration still running elsewhere; then the row can be locked.
      await this.registerWriter(writerId, namespaceId);
      result = await this.runAppend(args);
    }
    if (result === "unregistered") {
      throw new Error(`socket.io-postgres-recovery: writer ${writerId} has no row in log_writers even after registering it; is the schema migrated?`);
    }
    return result;
  }

  private async runAppend(values: unknown[]): Promise<AppendResult | "unregistered"> {
    let rows: Array<{ from_offset: string | null; applied_before: boolean | null; jumped_from: string | null }>;
    try {
      ({ rows } = await this.pool.query<{ from_offset: string | null; applied_before: boolean | null; jumped_from: string | null }>({
        ...(this.appendStatementName === undefined ? {} : { name: this.appendStatementName }),
        text: this.appendSql,
        values,
      }));
    } catch (err) {
      throw this.appendStatementName === undefined ? err : explainLostPreparedStatement(err);
    }
    const row = rows[0];
    if (!row) {
      throw new Error(
        `socket.io-postgres-recovery: batch ${String(values[6])} of writer ${String(values[5])} was neither appended nor found (the writer's row records a later batch)`,
      );
    }
    if (row.from_offset === null) return "unregistered";
    const result: AppendResult = { from: Number(row.from_offset), appliedBefore: row.applied_before === true };
    if (row.jumped_from !== null) result.jumpedFrom = Number(row.jumped_from);
    return result;
  }

  /** The append's SQL (see `append`). */
  private appendText(): string {
    return `WITH writer AS (
         SELECT last_batch, last_from FROM ${this.writers} WHERE writer_id = $6 FOR UPDATE
       ), ${bumpAndInsertCtes({ namespaces: this.namespaces, gaps: this.gaps, log: this.log }, { keys: "$8", starts: "$9", counts: "$10" }, " AND (SELECT last_batch FROM writer) < $7")}, recorded AS (
         UPDATE ${this.writers} SET last_batch = $7, last_from = bumped.head - $2 + 1,
                updated_at = CASE WHEN updated_at < now() - interval '1 minute' THEN now() ELSE updated_at END
         FROM bumped WHERE writer_id = $6
       )
       SELECT (bumped.head - $2 + 1)::text AS from_offset, false AS applied_before,
              pg_notify($4, concat_ws('|', $1::text, (bumped.head - $2 + 1)::text, $2::text, $5::text, bumped.jumped_from::text)),
              bumped.jumped_from::text AS jumped_from
       FROM bumped
       UNION ALL
       SELECT last_from::text, true, NULL, NULL FROM writer WHERE last_batch = $7
       UNION ALL
       SELECT NULL, NULL, NULL, NULL WHERE NOT EXISTS (SELECT 1 FROM writer)`;
  }

  /**
   * Brings a namespace's head in line with what this node knows, in one
   * statement: `known` is an offset that was committed and delivered (this
   * node's cursor, or a client's offset at a restore).
   * 1. The database is another incarnation than the one that last moved the
   *    head (Postgres restarted, a replica promoted, an older copy put back),
   *    or `known` is above the head (commits were lost without one): the
   *    head jumps past both and the range skipped is recorded as a gap,
   *    lost when `known` lies inside it. The append does the same jump; this
   *    lets a node do it before anyone appends.
   * 2. Any gap `known` lies inside is marked lost: offsets in it were
   *    delivered, and the database no longer has them. Inside means
   *    strictly: a gap's ends are where a cursor stands before and after
   *    stepping over it (and where priming puts a client's offset), never
   *    an entry (a jump lands strictly above every offset it covers).
   * Returns the namespace's gaps afterwards (a second statement: a
   * statement does not see its own writes).
   */
  async reconcile(namespaceId: number, known: number): Promise<GapsRead> {
    await this.pool.query(
      `WITH moved AS (
         UPDATE ${this.namespaces}
         SET head = GREATEST(head, $2 + 1, ${JUMP_FLOOR_SQL}),
             jumped_from = head,
             incarnation = pg_postmaster_start_time()
         WHERE id = $1 AND (incarnation <> pg_postmaster_start_time() OR head < $2)
         RETURNING jumped_from AS after_offset, head AS through_offset
       ), recorded AS (
         INSERT INTO ${this.gaps} (namespace_id, after_offset, through_offset, lost)
         SELECT $1, after_offset, through_offset, $2 > after_offset FROM moved WHERE through_offset > after_offset
         ON CONFLICT (namespace_id, after_offset) DO UPDATE
           SET through_offset = GREATEST(${this.gaps}.through_offset, EXCLUDED.through_offset),
               lost = ${this.gaps}.lost OR EXCLUDED.lost
       )
       UPDATE ${this.gaps} SET lost = true
       WHERE namespace_id = $1 AND NOT lost AND after_offset < $2 AND $2 < through_offset`,
      [namespaceId, known],
    );
    return this.gapsOf(namespaceId);
  }

  /** The recorded gaps of a namespace, oldest first. */
  async gapsOf(namespaceId: number): Promise<GapsRead> {
    const { rows } = await this.pool.query<{
      incarnation: string;
      after_offset: string | null;
      through_offset: string | null;
      lost: boolean | null;
      age_ms: string | null;
    }>(
      `SELECT i.incarnation, g.after_offset::text, g.through_offset::text, g.lost,
              (extract(epoch FROM now() - g.created_at) * 1000)::bigint::text AS age_ms
       FROM (SELECT pg_postmaster_start_time()::text AS incarnation) AS i
       LEFT JOIN ${this.gaps} AS g ON g.namespace_id = $1
       ORDER BY g.after_offset`,
      [namespaceId],
    );
    const gaps = rows
      .filter((r) => r.after_offset !== null)
      .map((r) => ({ after: Number(r.after_offset), through: Number(r.through_offset), lost: r.lost === true, ageMs: Number(r.age_ms) }));
    return { gaps, incarnation: rows[0]!.incarnation };
  }

  /**
   * How many live nodes have not yet told this database incarnation what
   * they delivered (`nodes.reconciled_incarnation`, written by their
   * heartbeat): while any has not, a gap nobody marked lost may still be.
   */
  async unreconciledNodes(): Promise<number> {
    const { rows } = await this.pool.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM ${this.nodes}
       WHERE NOT declared_dead AND heartbeat_at >= now() - dead_after_ms * interval '1 millisecond'
         AND reconciled_incarnation IS DISTINCT FROM pg_postmaster_start_time()`,
    );
    return rows[0]?.n ?? 0;
  }

  /**
   * Committed entries with offsets in (after, upTo], oldest first, at most
   * `limit` of them. `upTo` undefined: up to the newest committed entry.
   *
   * `maxBytes` bounds what is read by stored size too: rows stop after the
   * first one that brings the total over it (that row is included, so the
   * caller sees the total exceed `maxBytes` and knows the range was cut).
   * Sizes come from `octet_length`, which reads a payload's length without
   * fetching the payload, so rows past the bound cost no transfer.
   */
  async range(
    namespaceId: number,
    after: number,
    upTo: number | undefined,
    limit: number,
    maxBytes?: number,
  ): Promise<{ entries: LogEntry[] }> {
    // Named in the statement, so that pg_stat_activity tells delivery's reads from a restore's (replayRead).
    const label = "/* socket.io-postgres-recovery: delivery read */ ";
    // The text alias must not be named "offset": ORDER BY would then sort the text, not the number.
    const { rows } =
      maxBytes === undefined
        ? await this.pool.query<{ offset_text: string; payload: Buffer }>(
            `${label}SELECT "offset"::text AS offset_text, payload FROM ${this.log}
             WHERE namespace_id = $1 AND "offset" > $2 AND ($3::bigint IS NULL OR "offset" <= $3)
             ORDER BY "offset" LIMIT $4`,
            [namespaceId, after, upTo ?? null, limit],
          )
        : await this.pool.query<{ offset_text: string; payload: Buffer }>(
            `${label}SELECT r."offset"::text AS offset_text, l.payload
             FROM (
               SELECT "offset", sum(octet_length(payload)) OVER (ORDER BY "offset") - octet_length(payload) AS bytes_before
               FROM ${this.log}
               WHERE namespace_id = $1 AND "offset" > $2 AND ($3::bigint IS NULL OR "offset" <= $3)
               ORDER BY "offset" LIMIT $4
             ) AS r
             JOIN ${this.log} AS l ON l.namespace_id = $1 AND l."offset" = r."offset"
             WHERE r.bytes_before <= $5
             ORDER BY r."offset"`,
            [namespaceId, after, upTo ?? null, limit, maxBytes],
          );
    return { entries: rows.map((row) => decodePacket(Number(row.offset_text), row.payload)) };
  }

  /**
   * A restore's read of (after, upTo], in one statement (one snapshot):
   * 1. the candidates: entries whose `room_keys` is NULL (to every socket,
   *    or written without keys) or shares a key with `roomKeys` (the keys of
   *    the socket's rooms). A superset of what the socket gets; the replay
   *    filter (replay.ts) still runs on each. Bounded like `range` by `limit`
   *    and `maxBytes` (the row that crosses `maxBytes` comes back too);
   * 2. how many entries each interval (after, through] of `needed` holds,
   *    counted on the primary key without fetching payloads: the replay's
   *    density proof (a pruned entry of a needed interval refuses the restore)
   *    costs no transfer of the entries that are not the socket's.
   * Both come from the same snapshot, so a prune between them cannot hide a
   * missing candidate.
   */
  async replayRead(
    namespaceId: number,
    after: number,
    upTo: number,
    limit: number,
    maxBytes: number,
    roomKeys: readonly string[],
    needed: ReadonlyArray<readonly [after: number, through: number]>,
  ): Promise<ReplayRead> {
    const { rows } = await this.pool.query<{ part: number; offset_text: string | null; payload: Buffer | null; present: string[] | null }>(
      `/* socket.io-postgres-recovery: replay read */
       WITH counted AS (
         SELECT coalesce(array_agg(k.present ORDER BY n.ord), '{}')::text[] AS present
         FROM unnest($6::bigint[], $7::bigint[]) WITH ORDINALITY AS n(after_offset, through_offset, ord)
         CROSS JOIN LATERAL (
           SELECT count(*) AS present FROM ${this.log} AS c
           WHERE c.namespace_id = $1 AND c."offset" > n.after_offset AND c."offset" <= n.through_offset
         ) AS k
       ), candidates AS (
         SELECT "offset", sum(octet_length(payload)) OVER (ORDER BY "offset") - octet_length(payload) AS bytes_before
         FROM ${this.log}
         WHERE namespace_id = $1 AND "offset" > $2 AND "offset" <= $3
           AND (room_keys IS NULL OR room_keys && $8::bigint[])
         ORDER BY "offset" LIMIT $4
       )
       SELECT 0 AS part, NULL::bigint AS sort_offset, NULL::text AS offset_text, NULL::bytea AS payload, present FROM counted
       UNION ALL
       SELECT 1, r."offset", r."offset"::text, l.payload, NULL
       FROM candidates AS r
       JOIN ${this.log} AS l ON l.namespace_id = $1 AND l."offset" = r."offset"
       WHERE r.bytes_before <= $5
       ORDER BY part, sort_offset`,
      [namespaceId, after, upTo, limit, maxBytes, needed.map((n) => n[0]), needed.map((n) => n[1]), roomKeys],
    );
    const present = (rows[0]?.present ?? []).map(Number);
    const entries = rows.slice(1).map((row) => decodePacket(Number(row.offset_text), row.payload!));
    return { entries, present };
  }

  /** The first offset of (after, through] that holds no entry, or undefined (for a refusal's message). */
  async firstAbsent(namespaceId: number, after: number, through: number): Promise<number | undefined> {
    const { rows } = await this.pool.query<{ absent: string | null }>(
      `SELECT min(n)::text AS absent FROM generate_series($2::bigint + 1, $3::bigint) AS n
       WHERE NOT EXISTS (SELECT 1 FROM ${this.log} WHERE namespace_id = $1 AND "offset" = n)`,
      [namespaceId, after, through],
    );
    const absent = rows[0]?.absent;
    return absent == null ? undefined : Number(absent);
  }
}

/** What a restore's table read returns (`LogQueries.replayRead`). */
export interface ReplayRead {
  /** The candidates: entries of the range that may be addressed to the socket, oldest first. */
  entries: LogEntry[];
  /** Per interval of `needed`, in order: how many offsets in it hold an entry. */
  present: number[];
}

/**
 * pg prepares a named statement once per client connection; behind a pooler
 * in transaction mode the next transaction may run on another server
 * connection, which has not prepared it (26000) or already has (42P05).
 * Said plainly, since the append is retried and would fail alike forever.
 */
function explainLostPreparedStatement(err: unknown): unknown {
  const code = typeof err === "object" && err !== null && "code" in err ? err.code : undefined;
  if (code !== "26000" && code !== "42P05") return err;
  return new Error(
    "socket.io-postgres-recovery: the log append's prepared statement was not found on the server connection (or was there already): " +
      "the pool seems to go through a pooler that does not keep prepared statements (PgBouncer in transaction mode before 1.21, " +
      "or without max_prepared_statements); set the option preparedStatements: false",
    { cause: err },
  );
}

/**
 * A prepared statement's name: Postgres cuts names at 63 bytes, so the name
 * must not grow with the schema's (two schemas sharing a long prefix on one
 * connection would otherwise clash: "prepared statement … already exists").
 * A hash of the text itself, which names the schema, also keeps two versions
 * of this package (a statement whose text changed) from clashing on one pool.
 */
function statementName(kind: string, text: string): string {
  return `socket.io-postgres-recovery:${kind}:${createHash("sha256").update(text).digest("hex").slice(0, 16)}`;
}
