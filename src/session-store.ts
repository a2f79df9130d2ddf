/**
 * Sessions are written lazily and read once.
 *
 * (What is written while the socket is connected, for crashes, is the
 * skeleton: see session-durability.ts.) A disconnect queues the session; queued
 * sessions go out in batches (one statement each). A restore takes the session
 * from this node's queue when it has not been written yet, waits for it when
 * it is being written, and otherwise deletes it from the table, looking again
 * when a write announces it, for a short while, because the client may have
 * reconnected (to another node) faster than its old node wrote the session. Takes are batched too: a storm
 * of reconnections (a node redeployed) costs one DELETE per batch, not one per
 * client.
 */
import { createHash } from "node:crypto";
import { Batcher, BatcherFullError } from "./batcher.js";
import { asError, isTransientDatabaseError } from "./errors.js";
import { writtenKey, type SessionKey, type SessionQueries, type SessionRecord, type TakenSession, type TakeOutcome } from "./sql/session-queries.js";

export function hashPid(pid: string): Buffer {
  return createHash("sha256").update(pid).digest();
}

let lastVersion = 0;

/**
 * The version of this process' next session write. Within one generation only
 * one node writes a session, so a counter per process orders its writes: a
 * retried or late write never overwrites a newer one.
 */
export function nextVersion(): number {
  return ++lastVersion;
}

export interface SessionStoreOptions {
  maxBatchSize: number;
  maxPending: number;
  onError(err: Error): void;
  /** Sessions written by one statement (for metrics). */
  written?(count: number): void;
  /**
   * Whether a take may leave the row as the restored socket's skeleton (this
   * node writes skeletons and its liveness row exists), sparing its first write.
   */
  takeAsSkeleton?(): boolean;
}

/** A session waiting to be written, with the moment it expires (its lifetime runs from the disconnect). */
interface QueuedSession {
  readonly record: SessionRecord;
  readonly expiresAt: number;
}

export class SessionStore {
  private readonly writes: Batcher<QueuedSession, void>;
  /** Takes waiting for a session write to be announced (see take()). */
  private readonly waiting = new Set<{ readonly key: string; wake(): void }>();
  /** Each queued session's write, by key: a restore waits for its own session's write, nothing else. */
  private readonly written = new Map<string, Promise<void>>();
  private readonly takes: Batcher<SessionKey, TakeOutcome>;

  constructor(
    private readonly queries: SessionQueries,
    private readonly opts: SessionStoreOptions,
  ) {
    this.writes = new Batcher<QueuedSession, void>({
      write: async (queued) => {
        // Written late (the database was away), a session keeps the expiry it had at the disconnect;
        // one already past it is dropped: it could only be refused as expired.
        const now = Date.now();
        const records = queued
          .filter((q) => q.expiresAt > now)
          .map((q) => ({ ...q.record, ttlMs: q.expiresAt - now }));
        if (records.length > 0) {
          await this.queries.insert(records);
          opts.written?.(records.length);
        }
        return queued.map(() => undefined);
      },
      maxBatchSize: opts.maxBatchSize,
      maxPending: opts.maxPending,
      isRetryable: isTransientDatabaseError,
      retryDelayMs: (attempt) => Math.min(50 * 2 ** attempt, 2000),
      // Until the database returns, however long it is away (bounded by maxPending and by
      // expiry, see write); close() stops retrying at its deadline.
      maxAttempts: Infinity,
      onError: (err) =>
        opts.onError(new Error("socket.io-postgres-recovery: writing sessions failed", { cause: err })),
    });
    this.takes = new Batcher<SessionKey, TakeOutcome>({
      write: (keys) => this.queries.takeOrWait(keys, opts.takeAsSkeleton?.() ?? false),
      maxBatchSize: opts.maxBatchSize,
      maxPending: opts.maxPending,
      // Not retried here: the restore fails closed and the client starts afresh.
      isRetryable: () => false,
      retryDelayMs: () => 0,
      maxAttempts: 1,
      onError: () => undefined, // the restore reports it
    });
  }

  /**
   * Queues a session; a failure is reported to the error handler (the session
   * is then not restorable). Resolves once the write settled (committed, or
   * given up); never rejects.
   */
  persist(record: SessionRecord): Promise<void> {
    const key = keyOf(record.pidHash, record.namespaceId);
    // Newer than every write made for this session so far (skeletons, an earlier attempt).
    const versioned = { ...record, version: nextVersion() };
    const write = this.writes.add({ record: versioned, expiresAt: Date.now() + record.ttlMs }).catch((err: unknown) => {
      // A failed write was reported by the batcher's onError, and a closed store refuses by design:
      // the session is then not restorable, which fails closed. A full queue is said here.
      if (err instanceof BatcherFullError) {
        this.opts.onError(new Error(`socket.io-postgres-recovery: the session of ${record.sid} was not stored (session queue full: maxPendingWrites)`, { cause: err }));
      }
    });
    this.written.set(key, write);
    void write.finally(() => {
      if (this.written.get(key) === write) this.written.delete(key);
    });
    return write;
  }

  /** The skeleton a take left for a restore that was then refused becomes a fence (see SessionQueries.fence). */
  async fence(pidHash: Buffer, generation: number): Promise<void> {
    try {
      await this.queries.fence([{ pidHash, generation }]);
    } catch (err) {
      // Left as a skeleton of this live node: a restore of the pid waits for its deadline and is refused.
      this.opts.onError(new Error("socket.io-postgres-recovery: fencing a refused restore's session failed", { cause: asError(err) }));
    }
  }

  /** This node's id in the `nodes` table, which its session writes and takes name. */
  get nodeId(): string {
    return this.queries.nodeId;
  }

  /**
   * Takes the session of `pidHash` in `namespaceId`, at most once cluster-wide.
   * `waitMs`: how long to keep looking for a session another node may still be writing.
   * `heldUntil`: while the session is the skeleton of a socket whose node is
   * alive, it is looked for until then (that node writes the session at the
   * disconnect, or is declared dead).
   */
  async take(pidHash: Buffer, namespaceId: number, waitMs: number, heldUntil = 0): Promise<TakenSession | undefined> {
    const mine = (q: QueuedSession) => q.record.namespaceId === namespaceId && q.record.pidHash.equals(pidHash);
    const [queued] = this.writes.take(mine);
    if (queued) {
      return {
        sid: queued.record.sid,
        floorOffset: queued.record.floorOffset,
        lastOffset: queued.record.lastOffset,
        cursorOffset: queued.record.cursorOffset,
        payload: queued.record.payload,
        live: queued.expiresAt > Date.now(),
        crashed: (queued.record.state ?? "disconnected") !== "disconnected",
        generation: queued.record.generation ?? 0,
        fromQueue: true,
      };
    }
    // Being written now: wait for that write only (a stream of other sessions must not delay this one).
    if (this.writes.isWriting(mine)) await this.written.get(keyOf(pidHash, namespaceId));
    // Not on this node: in the table, or about to be written there by the node the client left.
    // Rather than poll, look again when a write announces a session with this key (see
    // SessionQueries.insert), and once more when `waitMs` is over (an announcement can be missed
    // while the listener reconnects). A pid nobody is writing costs two takes.
    const key = writtenKey(pidHash);
    const deadline = Date.now() + waitMs;
    let held = false;
    for (;;) {
      // While the skeleton's node is alive: until `heldUntil`, looking again every 100 ms too (a
      // node's death is not announced, its session at the disconnect is).
      const until = held ? Math.max(deadline, heldUntil) : deadline;
      const announced = this.announcement(key, held ? Math.min(until - Date.now(), 100) : until - Date.now());
      const outcome = await this.takes.add({ pidHash, namespaceId });
      held = outcome.held;
      if (outcome.taken || Date.now() >= (held ? Math.max(deadline, heldUntil) : deadline)) {
        announced.cancel();
        return outcome.taken;
      }
      await announced.promise;
    }
  }

  /**
   * A session write was announced (the NOTIFY of SessionQueries.insert):
   * `keys` is the part after `s|`. Wakes the takes waiting for one of them.
   */
  onWritten(keys: string): void {
    if (this.waiting.size === 0) return;
    const all = keys === "*";
    const written = all ? undefined : new Set(keys.split(","));
    for (const waiter of [...this.waiting]) {
      if (all || written!.has(waiter.key)) waiter.wake();
    }
  }

  /** Resolves when a write announces `key`, or after `ms`. */
  private announcement(key: string, ms: number): { promise: Promise<void>; cancel(): void } {
    let wake: () => void = () => undefined;
    const promise = new Promise<void>((resolve) => (wake = resolve));
    const waiter = {
      key,
      wake: () => {
        clearTimeout(timer);
        this.waiting.delete(waiter);
        wake();
      },
    };
    const timer = setTimeout(waiter.wake, Math.max(ms, 0));
    timer.unref();
    this.waiting.add(waiter);
    return { promise, cancel: waiter.wake };
  }

  flush(): Promise<void> {
    return this.writes.flush();
  }

  async close(timeoutMs: number): Promise<void> {
    for (const waiter of [...this.waiting]) waiter.wake();
    await Promise.all([this.writes.close(timeoutMs), this.takes.close(timeoutMs)]);
  }
}

function keyOf(pidHash: Buffer, namespaceId: number): string {
  return `${namespaceId}:${pidHash.toString("hex")}`;
}
