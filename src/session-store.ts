/**
 * Sessions are written lazily and read once.
 *
 * (What is written while the socket is connected, for crashes, is the
 * skeleton: see session-durability.ts.) A disconnect queues the session; queued
 * sessions go out in batches (one statement each). A restore takes the session
 * from this node's queue when it has not been written yet, waits for it when
 * it is being written, and otherwise deletes it from the table, retrying for a
 * short while because the client may have reconnected (to another node)
 * faster than its old node wrote the session. Takes are batched too: a storm
 * of reconnections (a node redeployed) costs one DELETE per batch, not one per
 * client.
 */
import { createHash } from "node:crypto";
import { Batcher } from "./batcher.js";
import { isTransientDatabaseError } from "./errors.js";
import type { SessionKey, SessionQueries, SessionRecord, TakenSession, TakeOutcome } from "./sql/session-queries.js";

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
}

/** A session waiting to be written, with the moment it expires (its lifetime runs from the disconnect). */
interface QueuedSession {
  readonly record: SessionRecord;
  readonly expiresAt: number;
}

export class SessionStore {
  private readonly writes: Batcher<QueuedSession, void>;
  private readonly takes: Batcher<SessionKey, TakeOutcome>;

  constructor(
    private readonly queries: SessionQueries,
    opts: SessionStoreOptions,
  ) {
    this.writes = new Batcher<QueuedSession, void>({
      write: async (queued) => {
        // Written late (the database was away), a session keeps the expiry it had at the disconnect;
        // one already past it is dropped: it could only be refused as expired.
        const now = Date.now();
        const records = queued
          .filter((q) => q.expiresAt > now)
          .map((q) => ({ ...q.record, ttlMs: q.expiresAt - now }));
        if (records.length > 0) await this.queries.insert(records);
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
      write: (keys) => this.queries.takeOrWait(keys),
      maxBatchSize: opts.maxBatchSize,
      maxPending: opts.maxPending,
      // Not retried here: the restore fails closed and the client starts afresh.
      isRetryable: () => false,
      retryDelayMs: () => 0,
      maxAttempts: 1,
      onError: () => undefined, // the restore reports it
    });
  }

  /** Queues a session; a failure is reported to the error handler (the session is then not restorable). */
  persist(record: SessionRecord): void {
    // Newer than every write made for this session so far (skeletons, an earlier attempt).
    const versioned = { ...record, version: nextVersion() };
    this.writes.add({ record: versioned, expiresAt: Date.now() + record.ttlMs }).catch(() => {
      // Already reported by the batcher's onError, or refused because closed/full:
      // the session is simply not restorable, which fails closed.
    });
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
    if (this.writes.isWriting(mine)) await this.writes.flush();
    const deadline = Date.now() + waitMs;
    for (let attempt = 0; ; attempt++) {
      const { taken, held } = await this.takes.add({ pidHash, namespaceId });
      if (taken) return taken;
      const left = (held ? Math.max(deadline, heldUntil) : deadline) - Date.now();
      if (left <= 0) return undefined;
      // Short steps: takes are batched, so many restores polling together still cost one
      // statement per step, and a session written meanwhile is found within ~20 ms. Past
      // `waitMs`, waiting for a live node to die goes in longer steps.
      const step = held && Date.now() > deadline ? 100 : 20;
      await new Promise((resolve) => setTimeout(resolve, Math.min(5 * 2 ** attempt, step, left)));
    }
  }

  flush(): Promise<void> {
    return this.writes.flush();
  }

  async close(timeoutMs: number): Promise<void> {
    await Promise.all([this.writes.close(timeoutMs), this.takes.close(timeoutMs)]);
  }
}
