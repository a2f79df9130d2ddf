/**
 * Emitting into the log from outside the Socket.IO servers: an HTTP API, a
 * job worker, a cron task (`createEmitter`).
 *
 * Two ways in, one log:
 * - `emit()` appends directly, group-committed like a node's writes: one
 *   transaction per batch that locks the namespace's row, first moves what is
 *   staged for the namespace (so an event this emitter staged in a committed
 *   transaction stays before its later direct emits), then appends the batch.
 *   It resolves once the events are committed to the log. Retries after a
 *   lost answer are idempotent (the emitter is a log writer with its own
 *   `log_writers` row).
 * - `withClient(client).emit()` stages the event in the caller's open
 *   transaction (`staged_events`): it exists if and only if that transaction
 *   commits, and it holds no lock anyone waits for. The nodes move it into
 *   the log after the commit (see staged-mover.ts).
 *
 * The arguments are normalised as the servers do (payload.ts): what a client
 * decodes, JSON semantics with binary kept.
 */
import { randomUUID } from "node:crypto";
import type { Pool, PoolClient } from "pg";
import { Batcher } from "./batcher.js";
import { inlineForNotify } from "./codec.js";
import { resolveEmitterOptions, type EmitterOptions, type ResolvedEmitterOptions } from "./emitter-options.js";
import { isTransientDatabaseError } from "./errors.js";
import { OptionsError } from "./options.js";
import { normalizeWithParser, preparePacket, type PreparedPacket } from "./payload.js";
import { entryRoomKeys } from "./room-keys.js";
import { LogQueries } from "./sql/log-queries.js";
import { beginLockingTransaction, StagingQueries, timedClient } from "./sql/staging-queries.js";
import { moveStagedLocked } from "./staged-events.js";
import { guardCheckedOut } from "./sql/guard-client.js";

export type { EmitterOptions } from "./emitter-options.js";

/** Event names Socket.IO refuses to emit (socket.io's RESERVED_EVENTS). */
const RESERVED_EVENTS = new Set(["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"]);

/** Longest namespace name (bytes): the staged rows' index, and the NOTIFY payload that carries it. */
const MAX_NAMESPACE_BYTES = 1000;

/** What a client of the pg driver exposes that the emitter uses inside the caller's transaction. */
type TransactionClient = Pick<PoolClient, "query">;

/** Errors the emitter throws for bad input (a TypeError, like Socket.IO's own refusals). */
export class EmitterError extends TypeError {
  override name = "EmitterError";
}

/** State shared by every operator derived from one `createEmitter()` call. */
class EmitterCore {
  readonly staging: StagingQueries;
  /** This emitter's writer id prefix in `log_writers` (one writer per namespace). */
  private readonly uid = `emitter:${randomUUID()}`;
  private readonly writers = new Map<string, Batcher<PreparedPacket, void>>();
  private readonly batchNumbers = new Map<string, number>();
  private closed = false;

  constructor(
    readonly pool: Pool,
    readonly opts: ResolvedEmitterOptions,
  ) {
    this.staging = new StagingQueries(opts.schema);
  }

  /** The event as stored in the log (normalised, msgpack), refused when it cannot be sent or is too big. */
  prepare(nsp: string, event: unknown, args: unknown[], rooms: string[], except: string[]): PreparedPacket {
    if (typeof event !== "string") throw new EmitterError(`socket.io-postgres-recovery: an event name must be a string; got ${typeof event}`);
    if (RESERVED_EVENTS.has(event)) throw new EmitterError(`socket.io-postgres-recovery: "${event}" is a reserved event name`);
    if (typeof args[args.length - 1] === "function") {
      throw new EmitterError("socket.io-postgres-recovery: the emitter does not support acknowledgements (the last argument is a function)");
    }
    let prepared;
    try {
      prepared = preparePacket(normalizeWithParser(this.opts.parser, [event, ...args]), rooms, except);
    } catch (err) {
      throw new EmitterError(`socket.io-postgres-recovery: cannot emit "${event}" to "${nsp}": its arguments do not serialize`, { cause: err });
    }
    if (prepared.payload.length > this.opts.maxEntryBytes) {
      throw new EmitterError(
        `socket.io-postgres-recovery: cannot emit "${event}" to "${nsp}": ${prepared.payload.length} bytes exceed maxEntryBytes (${this.opts.maxEntryBytes})`,
      );
    }
    return prepared;
  }

  /** Appends directly (group commit per namespace); resolves once committed. */
  direct(nsp: string, prepared: PreparedPacket): Promise<void> {
    if (this.closed) return Promise.reject(new Error("socket.io-postgres-recovery: the emitter is closed"));
    let writer = this.writers.get(nsp);
    if (!writer) {
      writer = new Batcher<PreparedPacket, void>({
        write: (items, attempt) => this.append(nsp, items, attempt),
        maxBatchSize: this.opts.maxBatchSize,
        maxBatchBytes: 64 * 1024 * 1024,
        sizeOf: (item) => item.payload.length,
        maxPending: this.opts.maxPendingWrites,
        // Retried while the database is away (idempotent: see append); other errors reach the caller.
        isRetryable: (err) => isTransientDatabaseError(err),
        retryDelayMs: (attempt) => Math.min(50 * 2 ** attempt, 1000),
        maxAttempts: 10,
        onError: () => undefined, // the caller's promise rejects with the error
      });
      this.writers.set(nsp, writer);
    }
    return writer.add(prepared);
  }

  /** Stages in the caller's transaction, after this emitter's direct emits queued before (program order). */
  async staged(client: TransactionClient, nsp: string, payload: Buffer): Promise<void> {
    await this.writers.get(nsp)?.flush();
    await this.staging.stage(client, nsp, [payload]);
  }

  async close(timeoutMs: number): Promise<void> {
    this.closed = true;
    await Promise.all([...this.writers.values()].map((w) => w.close(timeoutMs)));
  }

  /**
   * One batch in one transaction: lock the namespace's row (creating it for a
   * namespace no node started yet), move what is staged for it, append the
   * batch as this emitter's log writer (see LogQueries.append: a retry after
   * a lost answer finds its batch recorded), commit.
   */
  private async append(nsp: string, items: PreparedPacket[], attempt: number): Promise<void[]> {
    const payloads = items.map((item) => item.payload);
    const writerId = `${this.uid}:${nsp}`;
    const batch = attempt === 1 ? (this.batchNumbers.get(nsp) ?? 0) + 1 : this.batchNumbers.get(nsp)!;
    this.batchNumbers.set(nsp, batch);
    const client = await this.pool.connect();
    const unguard = guardCheckedOut(client);
    const db = timedClient(client, this.opts.queryTimeoutMs);
    let failure: Error | undefined;
    try {
      await beginLockingTransaction(db);
      let id = await this.staging.lockNamespace(db, nsp);
      if (id === undefined) {
        await this.staging.ensureNamespace(db, nsp);
        id = await this.staging.lockNamespace(db, nsp);
        if (id === undefined) throw new Error(`socket.io-postgres-recovery: cannot create the row of namespace "${nsp}"`);
      }
      const settings = {
        limit: this.opts.maxBatchSize,
        maxEntryBytes: this.opts.maxEntryBytes,
        logChannel: this.opts.logChannel,
        payloadThreshold: this.opts.payloadThreshold,
      };
      // Everything staged and committed before this batch goes first (one emitter's program order).
      for (;;) {
        const moved = await moveStagedLocked(db, this.staging, { id, name: nsp }, settings);
        if (moved.taken < settings.limit) break;
      }
      const log = new LogQueries(db, this.opts.schema, { preparedStatements: this.opts.preparedStatements });
      const roomKeys = items.map((item) => entryRoomKeys(item.packet.rooms));
      await log.append(id, writerId, batch, payloads, this.opts.logChannel, inlineForNotify(payloads, this.opts.payloadThreshold), roomKeys);
      await db.query("COMMIT");
      return payloads.map(() => undefined);
    } catch (err) {
      failure = err instanceof Error ? err : new Error(String(err));
      throw failure;
    } finally {
      // A failed client may be inside a transaction: discarded, the server rolls it back.
      const lost = unguard();
      client.release(failure ?? lost);
    }
  }
}

/**
 * Emits events into the log from any process, to be delivered and recovered
 * like any node's broadcast. Immutable: `of`, `to`, `except` and
 * `withClient` return new operators.
 */
export class Emitter {
  /** @internal */
  constructor(
    private readonly core: EmitterCore,
    private readonly nsp: string,
    private readonly rooms: readonly string[] = [],
    private readonly exceptRooms: readonly string[] = [],
    private readonly client: TransactionClient | undefined = undefined,
  ) {}

  /** The same emitter for namespace `nsp` (a leading "/" is added when missing, as upstream's emitter does). */
  of(nsp: string): Emitter {
    if (typeof nsp !== "string") throw new EmitterError(`socket.io-postgres-recovery: of() takes a namespace name; got ${typeof nsp}`);
    const name = nsp.startsWith("/") ? nsp : `/${nsp}`;
    if (name.includes("\0") || Buffer.byteLength(name) > MAX_NAMESPACE_BYTES) {
      throw new EmitterError(`socket.io-postgres-recovery: a namespace name must have no NUL and at most ${MAX_NAMESPACE_BYTES} bytes`);
    }
    return new Emitter(this.core, name, [], [], this.client);
  }

  /** Targets a room (or rooms); several calls add up, as with Socket.IO. */
  to(room: string | readonly string[]): Emitter {
    return new Emitter(this.core, this.nsp, union(this.rooms, checkRooms(room, "to")), this.exceptRooms, this.client);
  }

  /** Alias of `to`, as in Socket.IO. */
  in(room: string | readonly string[]): Emitter {
    return this.to(room);
  }

  /** Excludes the sockets in a room (or rooms). */
  except(room: string | readonly string[]): Emitter {
    return new Emitter(this.core, this.nsp, this.rooms, union(this.exceptRooms, checkRooms(room, "except")), this.client);
  }

  /**
   * Emits inside the caller's transaction on `client` (a pg client on which
   * BEGIN was issued): the event is logged, delivered and recoverable if and
   * only if that transaction commits. Without an open transaction each emit
   * commits on its own (it is then delivered once a node moves it).
   */
  withClient(client: TransactionClient): Emitter {
    if (!client || typeof client.query !== "function") {
      throw new EmitterError("socket.io-postgres-recovery: withClient() takes a pg client (pool.connect()'s, or a pg.Client)");
    }
    return new Emitter(this.core, this.nsp, this.rooms, this.exceptRooms, client);
  }

  /**
   * Emits `event` with `args` to the namespace's matching sockets. Without
   * `withClient`, resolves once the event is committed to the log; with it,
   * once it is staged in the caller's transaction. Rejects on arguments
   * Socket.IO cannot send, reserved event names, acknowledgements, events
   * over `maxEntryBytes`, and database errors.
   */
  async emit(event: string, ...args: unknown[]): Promise<void> {
    const prepared = this.core.prepare(this.nsp, event, args, [...this.rooms], [...this.exceptRooms]);
    if (this.client) await this.core.staged(this.client, this.nsp, prepared.payload);
    else await this.core.direct(this.nsp, prepared);
  }

  /** Writes what is queued (for `timeoutMs` at the most) and refuses new direct emits. The pool stays yours. */
  close(timeoutMs = 10_000): Promise<void> {
    return this.core.close(timeoutMs);
  }
}

function checkRooms(room: unknown, method: string): string[] {
  const rooms = Array.isArray(room) ? (room as unknown[]) : [room];
  for (const r of rooms) {
    if (typeof r !== "string" || r.includes("\0")) {
      throw new EmitterError(`socket.io-postgres-recovery: ${method}() takes room names (strings without NUL); got ${typeof r}`);
    }
  }
  return rooms as string[];
}

function union(a: readonly string[], b: readonly string[]): string[] {
  return [...new Set([...a, ...b])];
}

/**
 * Returns an emitter writing into the log of `pool`'s database (the schema
 * migrated for the nodes). Works with no Socket.IO node running: direct
 * emits are logged at once, staged ones wait for a node.
 *
 * @param pool - a `pg.Pool`; the emitter borrows a connection per batch and never ends it.
 * @param options - see {@link EmitterOptions}; validated now.
 */
export function createEmitter(pool: Pool, options?: EmitterOptions): Emitter {
  if (!pool || typeof pool.query !== "function" || typeof pool.connect !== "function") {
    throw new OptionsError("socket.io-postgres-recovery: createEmitter(pool, options) needs a pg.Pool as its first argument");
  }
  return new Emitter(new EmitterCore(pool, resolveEmitterOptions(options)), "/");
}
