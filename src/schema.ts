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
import {
  bigint,
  bigserial,
  customType,
  index,
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
});

/** The message log: one row per logged broadcast, addressed by (namespace, offset). */
export const logEntries = pgTable(
  "log_entries",
  {
    namespaceId: integer("namespace_id").notNull(),
    offset: bigint("offset", { mode: "number" }).notNull(),
    createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
    /** msgpack of [data, rooms, except]: see `codec.ts`. */
    payload: bytea("payload").notNull(),
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
    /** The node's delivery cursor when the socket disconnected: nothing after it reached the client. */
    lastOffset: bigint("last_offset", { mode: "number" }).notNull(),
    /** msgpack of { rooms: [room, joinedAtOffset][], data }: see `codec.ts`. */
    payload: bytea("payload").notNull(),
    disconnectedAt: timestamp("disconnected_at", { withTimezone: true }).notNull().defaultNow(),
    expiresAt: timestamp("expires_at", { withTimezone: true }).notNull(),
  },
  (t) => [
    index("sessions_expires_at_idx").on(t.expiresAt),
    index("sessions_namespace_sid_idx").on(t.namespaceId, t.sid),
  ],
);

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
