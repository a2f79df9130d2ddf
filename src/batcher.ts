/**
 * Group commit: items queue while a write is in flight and go out together in
 * the next one. One write at a time per batcher, so batches commit in the
 * order items were added; a failed batch is retried before anything queued
 * after it.
 *
 * Each item gets a promise for its own result. `close()` refuses new items and
 * resolves once everything already queued is written (or has failed for good),
 * or at its deadline, whichever comes first: a write that never settles (a
 * half-open connection) cannot hold it up.
 */
import { settledBy } from "./deadline.js";
import { debug } from "./debug.js";

export interface BatcherOptions<T, R> {
  /**
   * Writes one batch; returns one result per item, in order. `attempt` counts
   * from 1; a retry gets the same items again (and can tell it is one).
   */
  write(items: T[], attempt: number): Promise<R[]>;
  /** Most items in one write. */
  maxBatchSize: number;
  /**
   * Most total `sizeOf` in one write; a write always takes at least one item,
   * whatever its size. Unset: batches are bounded by `maxBatchSize` only.
   */
  maxBatchBytes?: number;
  sizeOf?(item: T): number;
  /** Most items queued (not yet written); `add()` past it rejects. */
  maxPending: number;
  /** Whether a failed write may be tried again (e.g. the database is unreachable). */
  isRetryable(err: unknown): boolean;
  /** Delay before the attempt after `attempt` failures (1, 2, …). */
  retryDelayMs(attempt: number): number;
  /** Attempts after which a retryable failure fails the batch; Infinity retries until close. */
  maxAttempts: number;
  /** Told about every failed attempt. */
  onError(err: Error): void;
}

interface Queued<T, R> {
  /** Order of arrival (see flush()). */
  seq: number;
  item: T;
  resolve(result: R): void;
  reject(err: Error): void;
}

export class BatcherClosedError extends Error {
  override name = "BatcherClosedError";
}

/** The rejection of an item that `take()` removed: its taker handles it. */
export class BatcherTakenError extends Error {
  override name = "BatcherTakenError";
}

export class BatcherFullError extends Error {
  override name = "BatcherFullError";
}

export class Batcher<T, R> {
  private queue: Array<Queued<T, R>> = [];
  private inFlight: Promise<void> | undefined;
  private scheduled = false;
  private closed = false;
  private closeDeadline = Infinity;
  /** Set at the close deadline: nothing is written or retried any more. */
  private abandoned = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private wakeRetry: (() => void) | undefined;
  private added = 0;

  constructor(private readonly opts: BatcherOptions<T, R>) {}

  /** Items queued or being written. */
  get pending(): number {
    return this.queue.length;
  }

  add(item: T): Promise<R> {
    if (this.closed) {
      return Promise.reject(new BatcherClosedError("socket.io-postgres-recovery: the adapter is closed"));
    }
    if (this.queue.length >= this.opts.maxPending) {
      return Promise.reject(
        new BatcherFullError(
          `socket.io-postgres-recovery: ${this.queue.length} writes are already waiting for the database; refusing more`,
        ),
      );
    }
    return new Promise<R>((resolve, reject) => {
      this.queue.push({ seq: ++this.added, item, resolve, reject });
      this.schedule();
    });
  }

  /** Removes queued items that match (not those already being written); returns them. */
  take(match: (item: T) => boolean): T[] {
    const taken: T[] = [];
    const writing = this.writing;
    this.queue = this.queue.filter((q) => {
      if (writing.has(q) || !match(q.item)) return true;
      taken.push(q.item);
      q.reject(new BatcherTakenError("taken back before it was written"));
      return false;
    });
    return taken;
  }

  /** Whether an item matching is currently being written (not just queued). */
  isWriting(match: (item: T) => boolean): boolean {
    for (const q of this.writing) if (match(q.item)) return true;
    return false;
  }

  /**
   * Resolves when everything queued so far has been written or has failed.
   * What is added meanwhile is not waited for: a steady stream of new items
   * cannot keep a caller waiting.
   */
  async flush(): Promise<void> {
    const last = this.added;
    while ((this.queue[0]?.seq ?? Infinity) <= last) {
      this.wakeRetry?.();
      if (!this.inFlight) this.run();
      await this.inFlight;
    }
  }

  /**
   * Refuses new items and writes what is queued, for `timeoutMs` from the
   * first call at the most: failed writes are retried until then, and then
   * what is still unwritten fails (`BatcherClosedError`), the batch being
   * written included. That write is not awaited any longer; it may still
   * complete (its outcome is then ignored).
   */
  async close(timeoutMs: number): Promise<void> {
    if (!this.closed) this.closeDeadline = Date.now() + timeoutMs;
    this.closed = true;
    if (await settledBy(this.flush(), this.closeDeadline)) return;
    this.abandon();
  }

  /** The close deadline passed: fails every item not written yet and stops retrying. */
  private abandon(): void {
    this.abandoned = true;
    const left = this.queue.splice(0);
    this.writing = new Set();
    this.wakeRetry?.();
    const err = new BatcherClosedError("socket.io-postgres-recovery: not written before the close deadline (the write may still commit)");
    for (const q of left) q.reject(err);
  }

  private writing = new Set<Queued<T, R>>();

  private schedule(): void {
    if (this.scheduled || this.inFlight) return;
    this.scheduled = true;
    // A microtask later, so that a synchronous burst of adds goes out as one batch.
    queueMicrotask(() => {
      this.scheduled = false;
      if (!this.inFlight) this.run();
    });
  }

  private run(): void {
    if (this.inFlight || this.queue.length === 0) return;
    this.inFlight = this.writeLoop().finally(() => {
      this.inFlight = undefined;
      if (this.queue.length > 0) this.schedule();
    });
  }

  /** How many queued items the next write takes. */
  private batchLength(): number {
    const { maxBatchSize, maxBatchBytes, sizeOf } = this.opts;
    const n = Math.min(this.queue.length, maxBatchSize);
    if (maxBatchBytes === undefined || sizeOf === undefined) return n;
    let bytes = sizeOf(this.queue[0]!.item);
    let taken = 1;
    while (taken < n) {
      bytes += sizeOf(this.queue[taken]!.item);
      if (bytes > maxBatchBytes) break;
      taken++;
    }
    return taken;
  }

  private async writeLoop(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue.slice(0, this.batchLength());
      this.writing = new Set(batch);
      let attempt = 0;
      for (;;) {
        attempt++;
        try {
          const results = await this.opts.write(batch.map((q) => q.item), attempt);
          this.queue.splice(0, batch.length);
          this.writing = new Set();
          batch.forEach((q, i) => q.resolve(results[i] as R));
          break;
        } catch (caught) {
          const err = caught instanceof Error ? caught : new Error(String(caught));
          this.opts.onError(err);
          const delay = this.opts.retryDelayMs(attempt);
          // Once closing, only until the close deadline: close() must end even while the database is away.
          const retry =
            this.opts.isRetryable(caught) &&
            attempt < this.opts.maxAttempts &&
            (!this.closed || Date.now() + delay < this.closeDeadline);
          if (!retry) {
            this.queue.splice(0, batch.length);
            this.writing = new Set();
            batch.forEach((q) => q.reject(err));
            break;
          }
          debug("write failed (attempt %d), retrying in %d ms: %s", attempt, delay, err.message);
          await new Promise<void>((resolve) => {
            this.wakeRetry = resolve;
            this.retryTimer = setTimeout(resolve, delay);
            this.retryTimer.unref();
          });
          this.wakeRetry = undefined;
          if (this.abandoned) return;
        }
      }
    }
  }
}
