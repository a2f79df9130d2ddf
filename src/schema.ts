/**
 * The tables, as drizzle-kit reads them to generate `migrations/`.
 *
 * They are declared without a Postgres schema on purpose: `migrate()` runs the
 * generated SQL with `search_path` set to the configured schema, so one set of
 * migration files serves every deployment (`socket_io` by default, any other
 * name for a second, independent deployment in the same database). Runtime
 * queries never rely on `search_path`: they name `"schema"."table"` through
 * the escaping helper in `sql/identifiers.ts`.
 */
import { sql } from "drizzle-orm";
import {
  bigint,
  bigserial,
  boolean,
  check,
  customType,
  index,
  jsonb,
  integer,
  pgTable,
  primaryKey,
  serial,
  text,
  timestamp,
} from "drizzle-orm/pg-core";

const bytea = customType<{ data: Buffer }>({
  dataType: () => "bytea",
});

/**
 * One row per namespace. `head` is the offset of the last committed log entry:
 * writers bump it in the same transaction as their insert, so its row lock
 * serializes the writers of one namespace and offsets come out dense and in
 * commit order.
 */
export const namespaces = pgTable("namespaces", {
  id: serial("id").primaryKey(),
  name: text("name").notNull().unique(),
  head: bigint("head", { mode: "number" }).notNull().default(0),
  /**
   * Log retention in ms (maxDisconnectionDuration + margin) of the node that
   * needs the longest, written by each adapter at start-up and only ever
   * raised. Lets `socket.io-postgres-recovery prune` prune without knowing the
   * nodes' settings; NULL until a node with recovery starts.
   */
  retentionMs: bigint("retention_ms", { mode: "number" }),
  /**
   * Last time a node started or held this namespace: set when a node starts
   * it, refreshed periodically while a node holds it. Pruning deletes a row
   * only when it is long past (see `pruneNamespace` in sql/prune-queries.ts),
   * so the head of a namespace some node still serves never goes back to 0.
   */
  activeAt: timestamp("active_at", { withTimezone: true }).notNull().defaultNow(),
  /**
   * The database server incarnation (`pg_postmaster_start_time()`) that last
   * moved `head`. A write that finds another one (Postgres restarted, a
   * replica promoted, an older copy of the data put back) first moves `head`
   * past every offset the history before it could have used, and records
   * the range skipped in `log_gaps`: commits lost in a failover never have
   * their offsets handed out again. See docs/design.md, "Failover".
   */
  incarnation: timestamp("incarnation", { withTimezone: true }).notNull().default(sql`pg_postmaster_start_time()`),
  /** `head` before the jump made by the latest update that jumped (that update reads it back). */
  jumpedFrom: bigint("jumped_from", { mode: "number" }),
});

/**
 * Ranges of a namespace's offsets that hold no entry and never will:
 * `(after_offset, through_offset]`, skipped by a jump of `head` (see
 * `namespaces.incarnation`). `lost`: some of them were committed and
 * delivered before the database lost them (a node's cursor or a client's
 * offset lay inside), so a restore whose replay crosses the range would miss
 * events and is refused; a restore from an offset inside it always is.
 */
export const logGaps = pgTable(
  "log_gaps",
  {
    namespaceId: integer("namespace_id").notNull(),
    afterOffset: bigint("after_offset", { mode: "number" }).notNull(),
    throughOffset: bigint("through_offset", { mode: "number" }).notNull(),
    lost: boolean("lost").notNull().default(false),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
  },
  (t) => [primaryKey({ columns: [t.namespaceId, t.afterOffset] })],
);

/** The message log: one row per logged broadcast, addressed by (namespace, offset). */
export const logEntries = pgTable(
  "log_entries",
  {
    namespaceId: integer("namespace_id").notNull(),
    offset: bigint("offset", { mode: "number" }).notNull(),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    /** msgpack of [data, rooms, except]: see `codec.ts`. */
    payload: bytea("payload").notNull(),
    /**
     * Keys of the entry's rooms (`room-keys.ts`: the first 8 bytes of each
     * name's MD5), so that a restore reading the table fetches only the
     * entries that may be addressed to its socket. NULL: to every socket (no
     * rooms: a broadcast to the namespace, except-rooms or not), or unknown
     * (rows written before migration 0010, or by an older version of this
     * package during a rolling upgrade); a NULL row is always read. A filter
     * on it only ever narrows to a superset: `replay.ts` decides.
     */
    roomKeys: bigint("room_keys", { mode: "bigint" }).array(),
  },
  (t) => [primaryKey({ columns: [t.namespaceId, t.offset] })],
);

/**
 * One row per log writer (a namespace's adapter on one node): the last batch
 * it committed. The append statement locks this row first and skips a batch
 * it already committed, so a write retried after an ambiguous failure (the
 * connection died after the commit, before the answer) is not logged twice.
 */
export const logWriters = pgTable(
  "log_writers",
  {
    writerId: text("writer_id").primaryKey(),
    namespaceId: integer("namespace_id").notNull(),
    lastBatch: bigint("last_batch", { mode: "number" }).notNull().default(0),
    /** First offset of that batch, so a retry learns where it went. */
    lastFrom: bigint("last_from", { mode: "number" }).notNull().default(0),
    updatedAt: timestamp("updated_at", { withTimezone: true }).notNull().defaultNow(),
  },
  // Pruning looks up a namespace's idle writers: without it, every pass scans the whole table.
  (t) => [index("log_writers_namespace_updated_at_idx").on(t.namespaceId, t.updatedAt)],
);

/** Sessions of disconnected sockets, waiting to be restored once or to expire. */
export const sessions = pgTable(
  "sessions",
  {
    /** sha256 of the private session id: a leaked table must not allow hijacking. */
    pidHash: bytea("pid_hash").primaryKey(),
    namespaceId: integer("namespace_id").notNull(),
    sid: text("sid").notNull(),
    /** The lowest offset the client may present (its session's first cursor). */
    floorOffset: bigint("floor_offset", { mode: "number" }).notNull(),
    /**
     * Offset of the last entry written to the socket before it disconnected:
     * its client processed at most that far. For a `connected` row (the
     * socket's node may have crashed) it is not known and equals the floor.
     */
    lastOffset: bigint("last_offset", { mode: "number" }).notNull(),
    /**
     * The serving node's delivery cursor when the session was written at the
     * disconnect: entries in (last_offset, cursor_offset] were delivered by
     * that node and not addressed to the socket; every entry after it may be.
     * NULL for rows written before this column existed (read as last_offset).
     */
    cursorOffset: bigint("cursor_offset", { mode: "number" }),
    /**
     * `connected`: the durable skeleton of a socket still served by `node_id`
     * (restorable once that node is dead); `disconnected`: the session written
     * at the disconnect; `taken`: restored, kept as a fence until it expires.
     */
    state: text("state").notNull().default("disconnected"),
    /** The node that serves (or served) the socket (`nodes.node_id`). */
    nodeId: text("node_id"),
    /** Bumped by every take: a write carrying an older generation is refused (zombies, late retries). */
    generation: bigint("generation", { mode: "number" }).notNull().default(0),
    /** Order of the owner's writes within one generation: an older write never overwrites a newer one. */
    version: bigint("version", { mode: "number" }).notNull().default(0),
    /** maxDisconnectionDuration of the serving node: a crashed node's skeleton lives that long after its last heartbeat. */
    ttlMs: bigint("ttl_ms", { mode: "number" }),
    /** msgpack of { rooms: [room, joinedAtOffset][], data }: see `codec.ts`. */
    payload: bytea("payload").notNull(),
    disconnectedAt: timestamp("disconnected_at", { withTimezone: true }).notNull().defaultNow(),
    expiresAt: timestamp("expires_at", { withTimezone: true }).notNull(),
  },
  (t) => [
    index("sessions_expires_at_idx").on(t.expiresAt),
    index("sessions_namespace_sid_idx").on(t.namespaceId, t.sid),
    index("sessions_node_id_idx").on(t.nodeId),
  ],
);

/**
 * Liveness of the nodes: each running node refreshes its heartbeat on the
 * database clock. A node whose heartbeat is older than its `dead_after_ms` is
 * dead, and the skeletons of its sockets can be restored elsewhere; the take
 * that does so sets `declared_dead`, so a node that was only paused learns it
 * at its next heartbeat and stops serving what was taken. Clean shutdown
 * deletes the row.
 */
export const nodes = pgTable("nodes", {
  nodeId: text("node_id").primaryKey(),
  startedAt: timestamp("started_at", { withTimezone: true }).notNull().defaultNow(),
  heartbeatAt: timestamp("heartbeat_at", { withTimezone: true }).notNull().defaultNow(),
  deadAfterMs: bigint("dead_after_ms", { mode: "number" }).notNull(),
  declaredDead: boolean("declared_dead").notNull().default(false),
  /**
   * The database incarnation (`pg_postmaster_start_time()`) under which this
   * node last told the database what it delivered, for every namespace it
   * serves (see `log_gaps`): once every live node shows the current one, a
   * gap nobody marked lost is known to hold nothing anyone delivered.
   */
  reconciledIncarnation: timestamp("reconciled_incarnation", { withTimezone: true }),
  /**
   * Key of the session-level advisory lock the node holds on its LISTEN
   * connection (see liveness-lock.ts), once it held it; NULL for a node that
   * never did (an older version, or one that could not take it). While the
   * row exists and nobody holds that lock, the node's process is gone: the
   * server ended its backend when its sockets closed.
   */
  lockKey: bigint("lock_key", { mode: "bigint" }),
});

/**
 * `@socket.io/postgres-adapter`'s attachments table (same columns), for
 * non-logged cluster messages that are binary or larger than the NOTIFY limit.
 */
export const attachments = pgTable("socket_io_attachments", {
  id: bigserial("id", { mode: "number" }).primaryKey(),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
  payload: bytea("payload").notNull(),
});

/** One row per maintenance task (pruning), for operators and for `status`. */
export const maintenance = pgTable("maintenance", {
  task: text("task").primaryKey(),
  lastStartedAt: timestamp("last_started_at", { withTimezone: true }),
  lastFinishedAt: timestamp("last_finished_at", { withTimezone: true }),
  lastResult: text("last_result"),
});

/**
 * Events emitted from outside the Socket.IO nodes (`createEmitter`, the SQL
 * function `emit`), waiting to be moved into the log. A row is written in the
 * caller's transaction, so it exists if and only if that transaction commits,
 * and it takes no lock anyone else waits for: an open transaction stalls
 * nobody. Once committed, a node serving the namespace (or the emitter's next
 * direct emit) deletes it and appends it to the log in one transaction, under
 * the namespace's row lock, in `id` order (see docs/design.md, "Emitting from
 * outside the nodes").
 */
export const stagedEvents = pgTable(
  "staged_events",
  {
    /** Program order: rows of one transaction, and of one emitter, are moved in this order. */
    id: bigserial("id", { mode: "number" }).primaryKey(),
    /** The namespace's name (its row may not exist yet: a dynamic namespace no node started). */
    namespace: text("namespace").notNull(),
    /** msgpack of [data, rooms, except], as `log_entries.payload` (from createEmitter: binary kept). */
    payload: bytea("payload"),
    /** [[event, ...args], rooms, except] as JSON (from the SQL function); encoded to msgpack when moved. */
    packet: jsonb("packet"),
    /** When the row was written (not when its transaction committed); rows past retention are pruned unmoved. */
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().default(sql`clock_timestamp()`),
  },
  (t) => [
    index("staged_events_namespace_id_idx").on(t.namespace, t.id),
    check("staged_events_one_payload", sql`(${t.payload} IS NULL) <> (${t.packet} IS NULL)`),
  ],
);

/**
 * Announcements of expired sessions (`session-expired`): the pruning pass
 * inserts one row per session it deletes as expired, in the same statement as
 * the delete, and NOTIFYs the log channel. Every node reads the rows after its
 * own cursor in `id` order, on the NOTIFY and after its listener reconnected,
 * so each is delivered once per node even when a NOTIFY was missed. `id` is
 * dense (the previous maximum plus one): only the pass holding the schema's
 * prune lock inserts, so a reader that finds a hole knows rows were pruned
 * before it read them. Kept for an hour (the newest row always).
 */
export const expiredSessions = pgTable("expired_sessions", {
  id: bigint("id", { mode: "number" }).primaryKey(),
  /** The namespace's name (its row may be pruned later). */
  namespace: text("namespace").notNull(),
  /** The public socket id: never the pid nor its hash. */
  sid: text("sid").notNull(),
  expiredAt: timestamp("expired_at", { withTimezone: true }).notNull().defaultNow(),
});
