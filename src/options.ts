/**
 * Public options of `createAdapter()` and how they are resolved.
 *
 * Glossary (used throughout the code and docs):
 * - **session**: what a disconnected socket leaves behind so it can come back:
 *   its `sid`, rooms (with the offset at which it joined each), `socket.data`,
 *   and the range of offsets it may present.
 * - **pid**: the private session id Socket.IO hands the client; the key to a
 *   session. Only its sha256 is stored.
 * - **sid**: the public `socket.id`, kept across a restore.
 * - **offset**: the position of a log entry in its namespace's log: dense
 *   integers in commit order, sent to clients as the string `o<n>`.
 * - **log entry**: one logged broadcast (an EVENT packet without ack, not
 *   volatile, not local) with its rooms and except-rooms.
 * - **cursor**: per node and namespace, the offset of the last entry this node
 *   delivered to its sockets. Every node delivers strictly in offset order.
 * - **restore**: turning a pid and an offset back into a socket with its id,
 *   rooms, data and every entry it missed.
 * - **retention**: how long log entries are kept: the server's
 *   `maxDisconnectionDuration` plus `retentionMarginMs`.
 * - **prune**: deleting expired sessions and entries past retention.
 */
import type { ClientConfig } from "pg";
import type { AttachmentsTableSpec } from "./attachments-table.js";
import { debug } from "./debug.js";
import type { MetricsRegistry } from "./metrics.js";

/** Upstream's default `tableName`, also the table the migrations create in `schema`. */
const DEFAULT_ATTACHMENTS_TABLE = "socket_io_attachments";

/** Options shared with `@socket.io/postgres-adapter` (same names, defaults and meaning). */
export interface UpstreamCompatibleOptions {
  /**
   * Prefix of the NOTIFY channels; non-logged cluster traffic of namespace
   * `nsp` uses the channel `${channelPrefix}#${nsp}` like upstream.
   * @default "socket.io"
   */
  channelPrefix?: string;
  /**
   * Table for cluster messages that are binary or larger than
   * `payloadThreshold`. As with `@socket.io/postgres-adapter` and
   * `@socket.io/postgres-emitter`, a bare name is found through the pool's
   * `search_path` (usually `public`), so every node of a mixed cluster uses
   * the same table; `schema.table` names one explicitly. The default name,
   * when the search path has no such table, is the one the migrations create
   * in `schema`. A missing table is reported to `errorHandler` at start.
   * Folded to lower case, as Postgres folds upstream's unquoted name.
   * @default "socket_io_attachments"
   */
  tableName?: string;
  /**
   * Size in bytes above which a message goes through a table instead of the
   * NOTIFY payload (Postgres caps payloads just under 8000 bytes).
   * @default 8000
   */
  payloadThreshold?: number;
  /**
   * Age in milliseconds after which rows of the attachments table are deleted.
   * @default 30000
   */
  cleanupInterval?: number;
  /**
   * Milliseconds between two heartbeats of this node (used for `serverCount()`
   * and for knowing how many answers `fetchSockets()` waits for).
   * @default 5000
   */
  heartbeatInterval?: number;
  /**
   * Milliseconds without a heartbeat after which another node counts as gone.
   * @default 10000
   */
  heartbeatTimeout?: number;
  /**
   * Receives every error that happens in the background (a failed write, a
   * lost listener connection, a refused restore because the database did not
   * answer). Without it, errors go to the `socket.io-postgres-recovery` debug
   * channel. It must not throw. State changes worth an operator's attention
   * (outage started/ended, listener lost/replaced, pruning refused/resumed,
   * node declared dead/revived) arrive as an `OperatorNotice`, whose `event`
   * holds a typed record (docs/events-and-traces.md).
   * @default undefined
   */
  errorHandler?: (err: Error) => void;
}

/** Recovery options. Durations are in milliseconds, sizes in bytes or entries as named. */
export interface RecoveryOptions {
  /**
   * Connection settings for the node's direct connections to Postgres: the
   * LISTEN connection, and the few that hold session state across
   * transactions (the pruner's advisory lock). Give it when the pool goes
   * through a pooler in transaction mode (PgBouncer `pool_mode = transaction`),
   * which cannot carry LISTEN or session state; point it at Postgres itself
   * (or at a pooler in session mode). Complete settings, as for `new
   * pg.Client()` (at least `connectionString` or `host`): nothing is taken
   * from the pool. Also set `preparedStatements: false` behind PgBouncer
   * before 1.21 (see docs/scaling.md).
   * @default the pool's settings (the pool reaches Postgres directly)
   */
  directConnection?: ClientConfig;
  /**
   * Postgres schema holding the tables and the migrations journal. Two schemas
   * in one database are two independent deployments.
   * @default "socket_io"
   */
  schema?: string;
  /**
   * Added to the server's `maxDisconnectionDuration` to get the log retention.
   * It must cover the time a dead connection goes unnoticed, or an entry sent
   * into a dead connection could be pruned before its session expires.
   * @default the server's pingInterval + pingTimeout + 5000
   */
  retentionMarginMs?: number;
  /**
   * Milliseconds between two pruning passes. One node at a time prunes
   * (advisory lock); the others skip the pass. Not the retention.
   * @default 60000
   */
  pruneIntervalMs?: number;
  /**
   * Rows deleted per statement while pruning: smaller keeps writers' waits
   * shorter, larger prunes a backlog faster.
   * @default 5000
   */
  pruneBatchSize?: number;
  /**
   * A restore that would replay more entries than this is refused (the client
   * gets a fresh session) instead of silently truncated.
   * @default 50000
   */
  maxReplayEntries?: number;
  /**
   * A restore whose replay would exceed this many bytes of stored payload is
   * refused, like `maxReplayEntries`.
   * @default 67108864 (64 MiB)
   */
  maxReplayBytes?: number;
  /**
   * Largest logged event, in bytes of its stored (msgpack) form. A broadcast
   * over it is refused: not logged and not delivered, and reported to
   * `errorHandler`. Delivering it unlogged would let a recovering client miss
   * it without knowing. Bounds the size of one row and of one write (writes
   * also stop adding entries past 64 MiB per transaction).
   * @default 16 MiB, or maxReplayBytes when that is smaller
   */
  maxEntryBytes?: number;
  /**
   * Name of the small event sent to every new session at connection, carrying
   * the node's cursor as its offset, so a client that never received an event
   * can still recover. Clients see it only through `onAny()`. `false` turns it
   * off: then clients that received no event cannot recover (Socket.IO only
   * tries with an offset).
   * @default "socket.io-postgres-recovery:offset"
   */
  primeOffsetEvent?: string | false;
  /**
   * How long a restore keeps looking for a session that another node may
   * still be writing (a client can reconnect faster than the write).
   * @default 750
   */
  sessionWaitMs?: number;
  /**
   * Upper bound on one restore (waiting for this node to catch up with the
   * client's offset, and the queries). Past it the restore is refused.
   * @default 5000
   */
  restoreTimeoutMs?: number;
  /**
   * How long delivery waits for a missing offset to arrive by NOTIFY before
   * reading it from the table.
   * @default 50
   */
  gapFillDelayMs?: number;
  /**
   * Milliseconds between two liveness checks of the LISTEN connection; a
   * check that gets no answer within this time replaces the connection.
   * @default 5000
   */
  listenerCheckIntervalMs?: number;
  /**
   * Most log entries written in one transaction (group commit).
   * @default 1000
   */
  maxBatchSize?: number;
  /**
   * Most logged broadcasts a node queues while its writes fail; past it a new
   * broadcast is delivered unlogged to this node's sockets (as in outage mode,
   * see `unloggedDeliveryAfterMs`) and reported to `errorHandler`, instead of
   * growing memory without bound.
   * @default 100000
   */
  maxPendingWrites?: number;
  /**
   * Outage mode: once writing to the log has failed continuously for this
   * long, the node stops holding events back. What is queued (except the one
   * batch whose commit is in doubt) and every new event are delivered at once
   * to this node's own matching sockets, unlogged: other nodes never get them
   * and no restore replays them. Restores on this node are refused meanwhile.
   * The first successful write ends it. `false`: events wait in the queue
   * (up to `maxPendingWrites`) until the database is back.
   *
   * The same bound caps two other waits on the database: a new connection's
   * CONNECT while its namespace has not started (past it, the socket is let
   * in and dropped, to reconnect afresh, when the namespace starts), and a
   * room or disconnect operation waiting for the events emitted before it
   * (past it, the operation applies anyway and is reported).
   * @default 2000
   */
  unloggedDeliveryAfterMs?: number | false;
  /**
   * Runs the log append (the hot path) as a named prepared statement, which
   * halves its cost. Turn it off behind a connection pooler that does not
   * keep prepared statements (PgBouncer in transaction mode before 1.21).
   * @default true
   */
  preparedStatements?: boolean;
  /**
   * Bound on each statement the adapter runs on the pool (log appends and
   * reads, session writes and takes, cluster messages), in milliseconds, as
   * pg's per-query `query_timeout`. A statement without an answer by then
   * fails and the pool discards its connection; a log append is then retried
   * on another connection (idempotently). This is what unsticks a write sent
   * into a half-open connection, which would otherwise hold the namespace's
   * log on this node until TCP gives up (often many minutes).
   * Trade-off: a healthy statement slower than this is abandoned and retried
   * (harmless, but wasted work): keep it well above your slowest healthy
   * write (large batches of large events on a slow link). The pool's own
   * `query_timeout`, when shorter, applies instead; the pool's settings are
   * never changed. Waiting for a free pooled connection is not covered (that
   * is the pool's `connectionTimeoutMillis`). `false`: no bound of ours.
   * @default 15000
   */
  queryTimeoutMs?: number | false;
  /**
   * How long `io.close()` may take, in milliseconds: writing what is queued
   * (log entries, sessions) while the database is slow or away, then
   * releasing the LISTEN connection and the background work. Every step
   * shares this one deadline, so `io.close()` returns within it (plus a few
   * milliseconds) even when a statement never answers (a half-open
   * connection, an exhausted pool). Past it, what is left is reported to
   * `errorHandler` and given up: those sessions are not restorable, those
   * events are not delivered by this node (a write already sent may still
   * commit, and is then delivered by the other nodes). Keep it below the
   * orchestrator's grace period before SIGKILL.
   * @default 10000
   */
  closeTimeoutMs?: number;
  /**
   * Recently delivered entries kept in memory per namespace: they serve
   * restores on this node without reading the table. 0 turns this off
   * (every restore reads the table); correctness never depends on it.
   * Also bounded by `maxReplayBytes`, and allocated as entries come.
   * @default maxReplayEntries (50000): every range a restore may replay. A
   * table read decodes every entry of the range, every socket's: at 10,000
   * private events/s, 200 restores after a 2 s drop read 26,000 rows each
   * and starved the node (bench G-PRIV: 11-13 % recovered with 10,000,
   * 100 % with 50,000).
   */
  recentEntries?: number;
  /**
   * Crash safety: clients of a node that dies without a word (SIGKILL, OOM,
   * host loss) recover on another node, from durable skeletons of their
   * sessions (rooms written when they change, `socket.data` checkpointed).
   * `false` saves those writes (and this node's liveness row and lock): its
   * clients then recover after a graceful shutdown or a disconnect only, as
   * with Socket.IO's own adapter. See docs/performance.md for the cost.
   * @default true
   */
  crashSafety?: boolean;
  /**
   * Crash safety: how often each connected socket's `socket.data` is compared
   * with what was last made durable, and written when it changed. Rooms are
   * written when they change; `socket.data` (mutated in place, with no hook)
   * only at this interval and at the disconnect. After a crash, a restored
   * socket's `data` is at most this old (plus one write).
   * @default 5000
   */
  checkpointIntervalMs?: number;
  /**
   * Crash safety: how often this node refreshes its heartbeat row (on the
   * database clock).
   * @default 1000
   */
  nodeHeartbeatIntervalMs?: number;
  /**
   * Crash safety: a node whose heartbeat is older than this is dead, and its
   * sockets can be restored on other nodes. Each node declares its own; a
   * restore waits for it (within `restoreTimeoutMs`). A node whose process
   * died is found sooner, as soon as Postgres ended its connection (its
   * liveness lock is released, see docs/design.md); this bound is for what
   * the lock cannot see (a lost host, a half-open network, a paused process). A node paused for
   * longer (GC, SIGSTOP) finds out at its next heartbeat and drops the
   * sockets restored elsewhere meanwhile. At least twice
   * `nodeHeartbeatIntervalMs`.
   * @default 3000
   */
  nodeDeadAfterMs?: number;
  /**
   * Most entries a node holds per namespace ahead of what it delivered (a
   * node that delivers slower than the cluster commits, or catching up).
   * Entries beyond are dropped from memory and read from the table once
   * delivery made room: never lost, but read twice. Larger: fewer re-reads
   * when a node lags; smaller: less memory per lagging namespace.
   * @default 20000
   */
  maxBufferedEntries?: number;
  /**
   * Most payload bytes a node holds per namespace ahead of what it delivered,
   * plus the one entry that crosses it; like `maxBufferedEntries`, the rest
   * is read from the table later. Also bounds each catch-up read of the
   * table by bytes.
   * @default 33554432 (32 MiB)
   */
  maxBufferedBytes?: number;
  /**
   * Most restores of a node reading the table at the same time (restores
   * served from memory do not count). Others wait their turn within
   * `restoreTimeoutMs`, past which they are refused as any slow restore.
   * Larger: a reconnection storm restores faster if the database keeps up;
   * smaller: fewer pooled connections and less memory taken by replays
   * (each read is up to `maxReplayBytes`).
   * @default 4
   */
  maxConcurrentRestoreReads?: number;
  /**
   * A prom-client `Registry` (`new Registry()`, or prom-client's default
   * `register`) to register this package's metrics in (see
   * docs/operations.md). prom-client is an optional peer dependency: install
   * it to use this. Every adapter and node given the same registry shares one
   * set of metrics, labelled by namespace. Without it nothing is registered.
   * @default undefined
   */
  metrics?: MetricsRegistry;
}

export type PostgresRecoveryAdapterOptions = UpstreamCompatibleOptions & RecoveryOptions;

/** Every option with a value, validated once. */
export interface ResolvedOptions {
  readonly channelPrefix: string;
  /** The attachments table as `tableName` names it (unquoted; resolved at start, see attachments-table.ts). */
  readonly attachmentsTable: AttachmentsTableSpec;
  readonly payloadThreshold: number;
  readonly cleanupInterval: number;
  readonly heartbeatInterval: number;
  readonly heartbeatTimeout: number;
  readonly errorHandler: (err: Error) => void;
  readonly schema: string;
  /** undefined: derived from the server's ping settings at run time. */
  readonly retentionMarginMs: number | undefined;
  readonly pruneIntervalMs: number;
  readonly pruneBatchSize: number;
  readonly maxReplayEntries: number;
  readonly maxReplayBytes: number;
  readonly maxEntryBytes: number;
  readonly primeOffsetEvent: string | false;
  readonly sessionWaitMs: number;
  readonly restoreTimeoutMs: number;
  readonly gapFillDelayMs: number;
  readonly listenerCheckIntervalMs: number;
  readonly maxBatchSize: number;
  readonly maxPendingWrites: number;
  readonly closeTimeoutMs: number;
  readonly recentEntries: number;
  readonly maxBufferedEntries: number;
  readonly maxBufferedBytes: number;
  readonly maxConcurrentRestoreReads: number;
  readonly unloggedDeliveryAfterMs: number | false;
  readonly queryTimeoutMs: number | false;
  readonly preparedStatements: boolean;
  readonly crashSafety: boolean;
  /** undefined: the pool's settings (see direct-connection.ts). */
  readonly directConnection: Readonly<ClientConfig> | undefined;
  readonly checkpointIntervalMs: number;
  readonly nodeHeartbeatIntervalMs: number;
  readonly nodeDeadAfterMs: number;
  /** NOTIFY channel of the message log (one per schema). */
  readonly logChannel: string;
  /** Where to register metrics; undefined: none. */
  readonly metrics: MetricsRegistry | undefined;
}

export class OptionsError extends TypeError {
  override name = "OptionsError";
}

const DAY_MS = 24 * 60 * 60 * 1000;

interface IntegerRule {
  min: number;
  max: number;
  unit: string;
}

const INTEGER_RULES = {
  payloadThreshold: { min: 100, max: 7999 + 1, unit: "bytes" },
  cleanupInterval: { min: 1000, max: DAY_MS, unit: "ms" },
  heartbeatInterval: { min: 100, max: DAY_MS, unit: "ms" },
  heartbeatTimeout: { min: 200, max: DAY_MS, unit: "ms" },
  retentionMarginMs: { min: 0, max: DAY_MS, unit: "ms" },
  pruneIntervalMs: { min: 100, max: DAY_MS, unit: "ms" },
  pruneBatchSize: { min: 1, max: 1_000_000, unit: "rows" },
  maxReplayEntries: { min: 1, max: 10_000_000, unit: "entries" },
  maxReplayBytes: { min: 1024, max: 2 ** 31, unit: "bytes" },
  // Above 64 MiB, one entry's hex form in the append statement nears V8's string limit.
  maxEntryBytes: { min: 1024, max: 64 * 1024 * 1024, unit: "bytes" },
  sessionWaitMs: { min: 0, max: 60_000, unit: "ms" },
  restoreTimeoutMs: { min: 100, max: 120_000, unit: "ms" },
  gapFillDelayMs: { min: 1, max: 60_000, unit: "ms" },
  listenerCheckIntervalMs: { min: 100, max: DAY_MS, unit: "ms" },
  maxBatchSize: { min: 1, max: 100_000, unit: "entries" },
  maxPendingWrites: { min: 1, max: 100_000_000, unit: "broadcasts" },
  closeTimeoutMs: { min: 0, max: 600_000, unit: "ms" },
  // Only saves restores a query: 0 turns the ring off.
  recentEntries: { min: 0, max: 10_000_000, unit: "entries" },
  checkpointIntervalMs: { min: 100, max: DAY_MS, unit: "ms" },
  nodeHeartbeatIntervalMs: { min: 50, max: 600_000, unit: "ms" },
  nodeDeadAfterMs: { min: 100, max: 3_600_000, unit: "ms" },
  maxBufferedEntries: { min: 100, max: 10_000_000, unit: "entries" },
  maxBufferedBytes: { min: 64 * 1024, max: 2 ** 31, unit: "bytes" },
  maxConcurrentRestoreReads: { min: 1, max: 1000, unit: "reads" },
} satisfies Record<string, IntegerRule>;

type IntegerOption = keyof typeof INTEGER_RULES;

const KNOWN_OPTIONS = new Set<string>([
  "channelPrefix",
  "tableName",
  "errorHandler",
  "schema",
  "primeOffsetEvent",
  "unloggedDeliveryAfterMs",
  "queryTimeoutMs",
  "preparedStatements",
  "crashSafety",
  "directConnection",
  "metrics",
  ...Object.keys(INTEGER_RULES),
]);

function fail(option: string, expected: string, got: unknown): never {
  let shown: string;
  try {
    shown = typeof got === "string" ? JSON.stringify(got) : String(got);
  } catch {
    shown = typeof got;
  }
  throw new OptionsError(
    `socket.io-postgres-recovery: option "${option}" must be ${expected}; got ${shown}`,
  );
}

function integer(opts: Record<string, unknown>, name: IntegerOption, fallback: number): number;
function integer(opts: Record<string, unknown>, name: IntegerOption, fallback: undefined): number | undefined;
function integer(
  opts: Record<string, unknown>,
  name: IntegerOption,
  fallback: number | undefined,
): number | undefined {
  const value = opts[name];
  if (value === undefined) return fallback;
  const rule: IntegerRule = INTEGER_RULES[name];
  if (typeof value !== "number" || !Number.isInteger(value) || value < rule.min || value > rule.max) {
    fail(name, `an integer from ${rule.min} to ${rule.max} (${rule.unit})`, value);
  }
  return value;
}

function identifier(opts: Record<string, unknown>, name: string, fallback: string): string {
  const value = opts[name];
  if (value === undefined) return fallback;
  if (typeof value !== "string" || !/^[A-Za-z_][A-Za-z0-9_]{0,62}$/.test(value)) {
    fail(name, "a Postgres identifier: a letter or _ then letters, digits or _, at most 63 characters", value);
  }
  return value;
}

/** Validates the caller's options once and returns them complete and frozen. */
export function resolveOptions(input: PostgresRecoveryAdapterOptions | undefined): ResolvedOptions {
  if (input !== undefined && (input === null || typeof input !== "object")) {
    fail("options", "an object or undefined", input);
  }
  const opts = (input ?? {}) as Record<string, unknown>;
  for (const key of Object.keys(opts)) {
    if (!KNOWN_OPTIONS.has(key) && opts[key] !== undefined) {
      throw new OptionsError(
        `socket.io-postgres-recovery: unknown option "${key}"; known options: ${[...KNOWN_OPTIONS].join(", ")}`,
      );
    }
  }

  const schema = identifier(opts, "schema", "socket_io");

  const channelPrefix = opts.channelPrefix ?? "socket.io";
  // Channel names travel as bound parameters (pg_notify) and quoted identifiers
  // (LISTEN); the limits below keep them within Postgres' 63-byte names.
  if (typeof channelPrefix !== "string" || channelPrefix.length === 0 || /["\0]/.test(channelPrefix) || Buffer.byteLength(channelPrefix) > 40) {
    fail("channelPrefix", "a non-empty string of at most 40 bytes without double quotes or NUL", channelPrefix);
  }

  const tableName = opts.tableName ?? DEFAULT_ATTACHMENTS_TABLE;
  if (typeof tableName !== "string") fail("tableName", "a table name or schema.table", tableName);
  // Upstream writes the name into its SQL unquoted, so Postgres folds it to lower case; quoted here, it is folded first.
  const parts = tableName.toLowerCase().split(".");
  if (parts.length > 2 || !parts.every((p) => /^[a-z_][a-z0-9_]{0,62}$/.test(p))) {
    fail("tableName", "a table name or schema.table made of Postgres identifiers", tableName);
  }
  const attachmentsTable: AttachmentsTableSpec =
    parts.length === 2
      ? { schema: parts[0]!, table: parts[1]!, fallbackSchema: undefined }
      : { schema: undefined, table: parts[0]!, fallbackSchema: parts[0] === DEFAULT_ATTACHMENTS_TABLE ? schema : undefined };

  const errorHandler = opts.errorHandler;
  if (errorHandler !== undefined && typeof errorHandler !== "function") {
    fail("errorHandler", "a function (err: Error) => void", errorHandler);
  }

  const primeOffsetEvent = opts.primeOffsetEvent ?? "socket.io-postgres-recovery:offset";
  if (primeOffsetEvent !== false && (typeof primeOffsetEvent !== "string" || primeOffsetEvent.length === 0)) {
    fail("primeOffsetEvent", "a non-empty event name or false", primeOffsetEvent);
  }
  const reserved = ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"];
  if (typeof primeOffsetEvent === "string" && reserved.includes(primeOffsetEvent)) {
    fail("primeOffsetEvent", "an event name that Socket.IO does not reserve", primeOffsetEvent);
  }

  const unloggedDeliveryAfterMs = opts.unloggedDeliveryAfterMs ?? 2000;
  if (
    unloggedDeliveryAfterMs !== false &&
    (typeof unloggedDeliveryAfterMs !== "number" || !Number.isInteger(unloggedDeliveryAfterMs) || unloggedDeliveryAfterMs < 100 || unloggedDeliveryAfterMs > 600_000)
  ) {
    fail("unloggedDeliveryAfterMs", "an integer from 100 to 600000 (ms) or false", unloggedDeliveryAfterMs);
  }

  const queryTimeoutMs = opts.queryTimeoutMs ?? 15_000;
  if (
    queryTimeoutMs !== false &&
    (typeof queryTimeoutMs !== "number" || !Number.isInteger(queryTimeoutMs) || queryTimeoutMs < 100 || queryTimeoutMs > 600_000)
  ) {
    fail("queryTimeoutMs", "an integer from 100 to 600000 (ms) or false", queryTimeoutMs);
  }

  const preparedStatements = opts.preparedStatements ?? true;
  if (typeof preparedStatements !== "boolean") fail("preparedStatements", "true or false", preparedStatements);

  const crashSafety = opts.crashSafety ?? true;
  if (typeof crashSafety !== "boolean") fail("crashSafety", "true or false", crashSafety);
  const directConnection = directConnectionSettings(opts.directConnection);

  const heartbeatInterval = integer(opts, "heartbeatInterval", 5000);
  const heartbeatTimeout = integer(opts, "heartbeatTimeout", 10000);
  if (heartbeatTimeout <= heartbeatInterval) {
    fail("heartbeatTimeout", `greater than heartbeatInterval (${heartbeatInterval} ms)`, heartbeatTimeout);
  }

  const maxReplayEntries = integer(opts, "maxReplayEntries", 50_000);
  const maxReplayBytes = integer(opts, "maxReplayBytes", 64 * 1024 * 1024);
  const maxEntryBytes = integer(opts, "maxEntryBytes", Math.min(16 * 1024 * 1024, maxReplayBytes));
  if (maxEntryBytes > maxReplayBytes) {
    // Such an entry could be logged but never replayed: every restore needing it would be refused.
    fail("maxEntryBytes", `at most maxReplayBytes (${maxReplayBytes})`, maxEntryBytes);
  }

  const nodeHeartbeatIntervalMs = integer(opts, "nodeHeartbeatIntervalMs", 1000);
  const nodeDeadAfterMs = integer(opts, "nodeDeadAfterMs", Math.max(3000, 2 * nodeHeartbeatIntervalMs));
  if (nodeDeadAfterMs < 2 * nodeHeartbeatIntervalMs) {
    // One late heartbeat must not make a running node dead.
    fail("nodeDeadAfterMs", `at least twice nodeHeartbeatIntervalMs (${2 * nodeHeartbeatIntervalMs} ms)`, nodeDeadAfterMs);
  }

  const metrics = opts.metrics;
  if (metrics !== undefined && !isRegistryLike(metrics)) {
    fail("metrics", "a prom-client Registry (new Registry() or prom-client's register)", metrics);
  }

  const logChannel = `${channelPrefix}:${schema}:log`;
  if (Buffer.byteLength(logChannel) > 63) {
    fail("schema", `short enough that "${logChannel}" fits in 63 bytes (shorten it or channelPrefix)`, schema);
  }

  return Object.freeze({
    channelPrefix,
    attachmentsTable: Object.freeze(attachmentsTable),
    payloadThreshold: integer(opts, "payloadThreshold", 8000),
    cleanupInterval: integer(opts, "cleanupInterval", 30000),
    heartbeatInterval,
    heartbeatTimeout,
    errorHandler: (errorHandler as ((err: Error) => void) | undefined) ?? defaultErrorHandler,
    schema,
    retentionMarginMs: integer(opts, "retentionMarginMs", undefined),
    pruneIntervalMs: integer(opts, "pruneIntervalMs", 60_000),
    pruneBatchSize: integer(opts, "pruneBatchSize", 5000),
    maxReplayEntries,
    maxReplayBytes,
    maxEntryBytes,
    primeOffsetEvent: primeOffsetEvent as string | false,
    sessionWaitMs: integer(opts, "sessionWaitMs", 750),
    restoreTimeoutMs: integer(opts, "restoreTimeoutMs", 5000),
    gapFillDelayMs: integer(opts, "gapFillDelayMs", 50),
    listenerCheckIntervalMs: integer(opts, "listenerCheckIntervalMs", 5000),
    maxBatchSize: integer(opts, "maxBatchSize", 1000),
    maxPendingWrites: integer(opts, "maxPendingWrites", 100_000),
    closeTimeoutMs: integer(opts, "closeTimeoutMs", 10_000),
    recentEntries: integer(opts, "recentEntries", maxReplayEntries),
    maxBufferedEntries: integer(opts, "maxBufferedEntries", 20_000),
    maxBufferedBytes: integer(opts, "maxBufferedBytes", 32 * 1024 * 1024),
    maxConcurrentRestoreReads: integer(opts, "maxConcurrentRestoreReads", 4),
    unloggedDeliveryAfterMs: unloggedDeliveryAfterMs as number | false,
    queryTimeoutMs: queryTimeoutMs as number | false,
    preparedStatements,
    crashSafety,
    directConnection,
    checkpointIntervalMs: integer(opts, "checkpointIntervalMs", 5000),
    nodeHeartbeatIntervalMs,
    nodeDeadAfterMs,
    logChannel,
    metrics: metrics as MetricsRegistry | undefined,
  });
}

/**
 * Checks the settings of the direct connections where mistakes are cheap to
 * see (a wrong type would otherwise surface as a LISTEN connection failing
 * over and over in the background). Other pg settings pass through as given.
 */
function directConnectionSettings(value: unknown): Readonly<ClientConfig> | undefined {
  if (value === undefined) return undefined;
  const expected = "pg client settings: { connectionString } or { host, port, user, password, database, ... }";
  if (value === null || typeof value !== "object" || Array.isArray(value)) {
    // Never echo a string here: it is likely a connection string with a password in it.
    if (typeof value === "string") {
      throw new OptionsError(`socket.io-postgres-recovery: option "directConnection" must be ${expected}; got a string (write { connectionString: … })`);
    }
    fail("directConnection", expected, value);
  }
  const config = value as Record<string, unknown>;
  const text = (key: string) => {
    const v = config[key];
    if (v !== undefined && (typeof v !== "string" || v.length === 0)) fail(`directConnection.${key}`, "a non-empty string", v);
  };
  ["connectionString", "host", "user", "database"].forEach(text);
  if (config.connectionString === undefined && config.host === undefined) {
    // pg would fall back to PGHOST or localhost: a direct connection should say where it goes.
    throw new OptionsError(
      `socket.io-postgres-recovery: option "directConnection" must be settings naming the server: connectionString or host; got ${JSON.stringify(Object.keys(config))}`,
    );
  }
  const port = config.port;
  if (port !== undefined && (typeof port !== "number" || !Number.isInteger(port) || port < 1 || port > 65535)) {
    fail("directConnection.port", "an integer from 1 to 65535", port);
  }
  const password = config.password;
  if (password !== undefined && typeof password !== "string" && typeof password !== "function") {
    fail("directConnection.password", "a string or a function returning one", typeof password);
  }
  return Object.freeze({ ...(config as ClientConfig) });
}

/** What a prom-client Registry has (duck-typed: the package is an optional peer, not imported here). */
function isRegistryLike(value: unknown): boolean {
  if (value === null || typeof value !== "object") return false;
  const r = value as Record<string, unknown>;
  return typeof r.registerMetric === "function" && typeof r.getSingleMetric === "function" && typeof r.metrics === "function";
}

function defaultErrorHandler(err: Error): void {
  debug("background error: %O", err);
}
