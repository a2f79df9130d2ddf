/**
 * In-order delivery of one namespace's log on one node.
 *
 * Entries reach a node from three places, in any order: its own writes (when
 * they commit), NOTIFY payloads, and reads of the table. The sequencer holds
 * what is ahead of its cursor and delivers strictly in offset order, the
 * node's own entries included, so every client on every node sees one order.
 * An offset that does not arrive within `gapFillDelayMs` is read from the
 * table: every offset up to `knownHead` is committed, so a read finds it, or
 * it was pruned (the node was behind by more than the retention).
 *
 * Delivery is synchronous (one loop, no awaits, no promise resolved per
 * entry), so nothing can interleave between two deliveries.
 *
 * Bounded: what waits ahead of the cursor is at most `maxBufferedEntries`
 * offsets past it and `maxBufferedBytes` of payload. Beyond that an entry is
 * dropped, not lost: its offset is committed (`knownHead` says so), so it is
 * read from the table once delivery has made room. Reads fetch only what is
 * not held (after the end of the run held from the cursor), so a catch-up
 * reads each row once.
 */
import type { LogEntry } from "./codec.js";
import { asError } from "./errors.js";
import { RecentEntries } from "./recent-entries.js";

/**
 * Longest a drain delivers before yielding to the event loop. A 1000-entry
 * batch delivered at once to hundreds of sockets is hundreds of thousands of
 * socket writes in a single tick: seconds during which nothing else runs
 * (restores, acks, the database's answers), and a large memory peak. The rest
 * follows on the next turn; the cursor always names what was delivered, so
 * restores and priming stay exact in between. By time, not by count: a count
 * small enough for many sockets made catching up with few sockets crawl.
 */
const DELIVERY_SLICE_MS = 10;
/** How many entries between two looks at the clock. */
const CLOCK_EVERY = 16;

export interface SequencerOptions {
  gapFillDelayMs: number;
  /** Size of the in-memory ring of delivered entries. */
  recentEntries: number;
  /** Most bytes the ring holds (it keeps the newest entries within it, at least one). */
  recentBytes?: number;
  /** Entries read per table read. */
  readBatchSize: number;
  /**
   * Most offsets held ahead of the cursor: an entry more than this past the
   * cursor is dropped (and read from the table later).
   */
  maxBufferedEntries: number;
  /**
   * Most payload bytes held ahead of the cursor, plus the entry that crosses
   * it (the entry right after the cursor is always taken).
   */
  maxBufferedBytes: number;
  /** Sends one entry to this node's sockets. Must not throw (errors are reported if it does). */
  deliver(entry: LogEntry): void;
  /**
   * While true, nothing more is delivered (entries wait in `ahead`); whoever
   * holds it calls `offer([])` when it ends. See program-order.ts.
   */
  paused?(): boolean;
  /**
   * Committed entries in (after, upTo], oldest first, at most `limit`; upTo
   * undefined: to the newest. At most `maxBytes` of payload, except that the
   * row crossing it is included (so a read always returns a row when one exists).
   */
  read(after: number, upTo: number | undefined, limit: number, maxBytes: number): Promise<LogEntry[]>;
  /**
   * The table holds nothing in (after, end]: whether recorded gaps (jumps of
   * the head after the database changed, see log-gaps.ts) cover it. Resolves
   * to the offset the gaps cover through (>= end when they cover it all),
   * or undefined. `known` is the highest offset this node knows committed:
   * evidence of entries the database lost. Without it, a hole is pruned.
   */
  explainHole?(after: number, end: number, known: number): Promise<number | undefined>;
  onError(err: Error): void;
}

interface Waiter {
  target: number;
  resolve(): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

export class Sequencer {
  private _cursor: number | undefined;
  /** Highest offset known to be committed. */
  private knownHeadValue = 0;
  private readonly ahead = new Map<number, LogEntry>();
  /** Recorded gaps (after, through] ahead of the cursor: no entry is there, delivery steps over them. */
  private skips: Array<readonly [number, number]> = [];
  /** Total `bytes` of the entries in `ahead`. */
  private aheadTotal = 0;
  /**
   * Every offset in (cursor, heldHint] was in `ahead` when last looked at.
   * Entries leave `ahead` only by delivery (which moves the cursor past them)
   * or by skipping pruned ones, so the hint stays true; it makes finding the
   * end of the held run amortized O(1).
   */
  private heldHint = 0;
  /** Entries were dropped for the bounds since `ahead` was last empty (reported once per episode). */
  private overflowing = false;
  private readonly recent: RecentEntries;
  /** A continuation of drain() is scheduled (see DELIVERY_SLICE_MS). */
  private sliceScheduled = false;
  /** A read was asked for while slices were pending: it runs once they are delivered. */
  private readAfterSlices = false;
  private waiters: Waiter[] = [];
  private gapTimer: NodeJS.Timeout | undefined;
  private reading: Promise<void> | undefined;
  /** Set while a read to the newest entry is wanted (catch-up, or a waiter beyond knownHead). */
  private readToEnd = false;
  private closed = false;

  constructor(private readonly opts: SequencerOptions) {
    this.recent = new RecentEntries(opts.recentEntries, opts.recentBytes);
  }

  /** Entries waiting ahead of the cursor (for status and tests). */
  get aheadCount(): number {
    return this.ahead.size;
  }

  /** Payload bytes waiting ahead of the cursor. */
  get aheadBytes(): number {
    return this.aheadTotal;
  }

  /** The highest offset known to be committed. */
  get knownHead(): number {
    return this.knownHeadValue;
  }

  /**
   * For metrics: head minus cursor is the delivery lag. Known gaps ahead of
   * the cursor (log-gaps.ts) are left out: they hold no entry to deliver.
   */
  get head(): number {
    const cursor = this._cursor ?? 0;
    return this.knownHeadValue - this.skippedBetween(cursor, this.knownHeadValue + 1);
  }

  /**
   * Started, and no read of the table under way or scheduled, nor a slice of
   * delivery: the cursor moves again only for what reaches the node (its own
   * writes, NOTIFYs), a restore's wait, or a catch-up. For tests and debugging.
   */
  get idle(): boolean {
    return this._cursor !== undefined && this.reading === undefined && this.gapTimer === undefined && !this.sliceScheduled;
  }

  /** The offset of the last delivered entry; undefined until `start()`. */
  get cursor(): number | undefined {
    return this._cursor;
  }

  /** Begins at the namespace's head: entries up to it were committed before this node listened. */
  start(head: number): void {
    if (this._cursor !== undefined) return;
    this._cursor = head;
    this.knownHeadValue = Math.max(this.knownHeadValue, head);
    this.dropAheadThrough(head);
    this.drain();
  }

  /** Entries whose data is here (own writes, NOTIFY payloads, reads). */
  offer(entries: readonly LogEntry[]): void {
    let dropped = 0;
    for (const entry of entries) {
      if (entry.offset > this.knownHeadValue) this.knownHeadValue = entry.offset;
      if (this.hold(entry) === "dropped") dropped++;
    }
    if (dropped > 0) this.reportOverflow(dropped);
    this.drain();
  }

  /**
   * Keeps an entry ahead of the cursor when it fits the bounds. Before
   * `start()` the cursor is unknown: entries are kept within the bounds
   * counted from the lowest offset that could be next (they are few: the
   * NOTIFYs of a namespace's first moments).
   */
  private hold(entry: LogEntry): "held" | "dropped" | "ignored" {
    const cursor = this._cursor;
    if (cursor !== undefined && entry.offset <= cursor) return "ignored";
    const previous = this.ahead.get(entry.offset);
    if (previous) return "ignored"; // the same committed entry again (a read after a NOTIFY)
    const next = cursor === undefined ? undefined : cursor + 1;
    if (entry.offset !== next) {
      if (cursor !== undefined && entry.offset - this.skippedBetween(cursor, entry.offset) > cursor + this.opts.maxBufferedEntries) {
        return "dropped";
      }
      if (cursor === undefined && this.ahead.size >= this.opts.maxBufferedEntries) return "dropped";
      // Like a read's byte bound, the entry that crosses the bound is kept: one always fits.
      if (this.aheadTotal >= this.opts.maxBufferedBytes) return "dropped";
    }
    this.ahead.set(entry.offset, entry);
    this.aheadTotal += entry.bytes;
    return "held";
  }

  private take(offset: number): void {
    const entry = this.ahead.get(offset);
    if (!entry) return;
    this.ahead.delete(offset);
    this.aheadTotal -= entry.bytes;
  }

  private dropAheadThrough(through: number): void {
    for (const offset of this.ahead.keys()) if (offset <= through) this.take(offset);
  }

  /** The end of the run of consecutive offsets held from the cursor on (the cursor when none). */
  private heldThrough(): number {
    const cursor = this._cursor ?? 0;
    let end = Math.max(cursor, this.heldHint);
    while (this.ahead.has(end + 1)) end++;
    this.heldHint = end;
    return end;
  }

  private reportOverflow(dropped: number): void {
    if (this.overflowing) return;
    this.overflowing = true;
    this.opts.onError(
      new Error(
        `socket.io-postgres-recovery: this node delivers slower than the log grows: ${this.ahead.size} entries ` +
          `(${this.aheadTotal} bytes) wait ahead of its cursor ${this._cursor ?? "(not started)"}, the bound ` +
          `(maxBufferedEntries ${this.opts.maxBufferedEntries}, maxBufferedBytes ${this.opts.maxBufferedBytes}); ` +
          `${dropped} entries beyond it are read from the table later (nothing is lost)`,
      ),
    );
  }

  /**
   * Offsets (after, through] hold no entry and never will (a recorded gap,
   * see log-gaps.ts): delivery steps over them when the cursor gets there.
   * Entries held inside were the database's before it lost them: dropped.
   */
  skip(after: number, through: number): void {
    if (through <= after || (this._cursor !== undefined && through <= this._cursor)) return;
    if (this.skips.some(([a, t]) => a === after && t === through)) return;
    this.skips.push([after, through]);
    this.drain();
  }

  /** Offsets of (from, to) inside known gaps: they take no room ahead of the cursor. */
  private skippedBetween(from: number, to: number): number {
    let total = 0;
    for (const [after, through] of this.skips) total += Math.max(0, Math.min(through, to - 1) - Math.max(after, from));
    return total;
  }

  /** The end of the gap the cursor stands in or at the start of, if any. */
  private skipThrough(cursor: number): number | undefined {
    if (this.skips.length === 0) return undefined;
    const found = this.skips.find(([after, through]) => after <= cursor && cursor < through);
    this.skips = this.skips.filter(([, through]) => through > cursor);
    return found?.[1];
  }

  /** A committed range whose data has to be read (a NOTIFY without payload). */
  offerRange(from: number, to: number): void {
    if (to > this.knownHeadValue) this.knownHeadValue = to;
    if (this._cursor !== undefined && to > this._cursor && !this.ahead.has(this._cursor + 1)) {
      // Nothing to wait for: the data is only in the table.
      this.readSoon(0);
    } else {
      this.drain();
    }
  }

  /** Reads everything committed after the cursor (after the listener reconnected). */
  catchUp(): void {
    this.readToEnd = true;
    this.readSoon(0);
  }

  /** Resolves once the cursor reaches `offset`; rejects after `timeoutMs`. */
  waitFor(offset: number, timeoutMs: number): Promise<void> {
    if (this._cursor !== undefined && this._cursor >= offset) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        target: offset,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          reject(new Error(`socket.io-postgres-recovery: this node did not reach offset ${offset} within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      waiter.timer.unref();
      this.waiters.push(waiter);
      if (offset > this.knownHeadValue) {
        // We have not heard of that offset yet: it may be committed but its NOTIFY still on the way.
        this.readToEnd = true;
      }
      this.readSoon(offset > this.knownHeadValue ? 0 : this.opts.gapFillDelayMs);
    });
  }

  /** Delivered entries in (after, upTo], or undefined when the ring no longer holds all of them. */
  recentRange(after: number, upTo: number): LogEntry[] | undefined {
    return this.recent.range(after, upTo);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.gapTimer);
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      w.reject(new Error("socket.io-postgres-recovery: the adapter is closed"));
    }
    this.waiters = [];
  }

  private drain(): void {
    if (this._cursor === undefined || this.closed) return;
    let cursor = this._cursor;
    const started = performance.now();
    let delivered = 0;
    for (;;) {
      if (this.opts.paused?.()) break;
      const gapEnd = this.skipThrough(cursor);
      if (gapEnd !== undefined) {
        // Nothing to deliver there; the next entry comes after the gap.
        this.dropAheadThrough(gapEnd);
        cursor = gapEnd;
        this._cursor = cursor;
        continue;
      }
      const next = this.ahead.get(cursor + 1);
      if (!next) break;
      if (++delivered % CLOCK_EVERY === 0 && performance.now() - started > DELIVERY_SLICE_MS) {
        this.continueSoon();
        break;
      }
      this.take(next.offset);
      cursor = next.offset;
      this._cursor = cursor;
      this.recent.push(next);
      try {
        this.opts.deliver(next);
      } catch (err) {
        this.opts.onError(asError(err));
      }
    }
    if (this.waiters.length > 0) {
      const done = this.waiters.filter((w) => w.target <= cursor);
      if (done.length > 0) {
        this.waiters = this.waiters.filter((w) => w.target > cursor);
        for (const w of done) {
          clearTimeout(w.timer);
          w.resolve();
        }
      }
    }
    if (this.ahead.size === 0) this.overflowing = false;
    if (this.sliceScheduled) return; // the rest is here already: no gap to fill yet
    if (this.readAfterSlices || this.readToEnd) {
      // A read waited for the slices, or a read to the end stopped at the bounds: go on now.
      this.readAfterSlices = false;
      this.readSoon(0);
      return;
    }
    if (this.knownHeadValue > cursor || this.ahead.size > 0) {
      this.readSoon(this.opts.gapFillDelayMs);
    } else {
      clearTimeout(this.gapTimer);
      this.gapTimer = undefined;
    }
  }

  /** Delivers the next slice on the next turn of the event loop (after pending I/O). */
  private continueSoon(): void {
    if (this.sliceScheduled) return;
    this.sliceScheduled = true;
    setImmediate(() => {
      this.sliceScheduled = false;
      this.drain();
    });
  }

  private readSoon(delayMs: number): void {
    if (this.closed || this.reading) return;
    if (this.gapTimer) {
      if (delayMs > 0) return;
      clearTimeout(this.gapTimer);
    }
    this.gapTimer = setTimeout(() => {
      this.gapTimer = undefined;
      this.read();
    }, delayMs);
    this.gapTimer.unref();
  }

  private read(): void {
    if (this.closed || this.reading || this._cursor === undefined) return;
    if (this.sliceScheduled) {
      // Entries are here already, waiting for their slice: read once they are delivered, which
      // keeps what is held ahead small (a read under way goes on within the bounds meanwhile).
      this.readAfterSlices = true;
      return;
    }
    const wantsEnd = this.readToEnd;
    const behind = this.knownHeadValue > this._cursor;
    if (!wantsEnd && !behind) return;
    this.readToEnd = false;
    this.reading = this.readFromTable(wantsEnd)
      .catch((err: unknown) => {
        this.opts.onError(
          new Error("socket.io-postgres-recovery: reading missed log entries failed; will retry", { cause: err }),
        );
        if (wantsEnd) this.readToEnd = true;
        return new Promise<void>((resolve) => setTimeout(resolve, 500).unref());
      })
      .finally(() => {
        this.reading = undefined;
        if (this._cursor !== undefined && (this.readToEnd || this.knownHeadValue > this._cursor)) {
          this.readSoon(this.ahead.has(this._cursor + 1) ? 0 : this.opts.gapFillDelayMs);
        }
      });
  }

  /**
   * Reads what is committed and not held: after the end of the run held from
   * the cursor, never what is already in memory, within the bounds. Stops at
   * the bounds with `readToEnd` kept, so that delivery resumes it (drain).
   */
  private async readFromTable(toEnd: boolean): Promise<void> {
    for (;;) {
      const cursor = this._cursor;
      if (cursor === undefined || this.closed) return;
      const after = this.heldThrough();
      const upTo = toEnd ? undefined : this.knownHeadValue;
      if (upTo !== undefined && upTo <= after) return;
      const room = cursor + this.opts.maxBufferedEntries - after;
      const bytesLeft = this.opts.maxBufferedBytes - this.aheadTotal;
      if (room <= 0 || (bytesLeft <= 0 && after > cursor)) {
        // Full: delivery makes room, then goes on reading (see drain).
        if (toEnd) this.readToEnd = true;
        return;
      }
      const limit = Math.min(this.opts.readBatchSize, room);
      const maxBytes = Math.max(bytesLeft, 0);
      const entries = await this.opts.read(after, upTo, limit, maxBytes);
      if (this.closed || this._cursor === undefined) return;
      // Whether what the table lacks can be judged pruned: the read started at the cursor and
      // nothing was delivered nor arrived meanwhile. Otherwise deliver first, then look again.
      const exact = after === cursor && this._cursor === cursor && !this.ahead.has(cursor + 1);
      const first = entries[0];
      const holeEnd = first === undefined ? upTo : first.offset - 1;
      if (holeEnd !== undefined && holeEnd > after && this.opts.explainHole) {
        // A recorded gap is not a loss of this node's: step over it quietly.
        const through = await this.opts.explainHole(after, holeEnd, Math.max(this.knownHeadValue, cursor));
        if (this.closed || this._cursor === undefined) return;
        if (through !== undefined && through >= holeEnd) {
          this.skip(after, holeEnd);
          this.offer(entries);
          if (first === undefined) return;
          if (entries.length < limit && totalBytes(entries) <= maxBytes) return;
          continue;
        }
      }
      if (first === undefined) {
        if (upTo !== undefined && exact) this.skipPruned(upTo);
        return;
      }
      if (first.offset !== after + 1) {
        if (!exact) {
          this.offer(entries);
          return;
        }
        this.skipPruned(first.offset - 1);
      }
      this.offer(entries);
      // Fewer rows than asked, and not cut by the byte bound: the table has no more for now.
      if (entries.length < limit && totalBytes(entries) <= maxBytes) return;
    }
  }

  /** Committed offsets that are no longer in the table: this node was behind by more than the retention. */
  private skipPruned(through: number): void {
    const cursor = this._cursor;
    if (cursor === undefined || through <= cursor) return;
    this.opts.onError(
      new Error(
        `socket.io-postgres-recovery: log entries ${cursor + 1}..${through} were pruned before this node delivered them; skipping`,
      ),
    );
    this._cursor = through;
    this.recent.clear();
    this.dropAheadThrough(through);
    this.drain();
  }
}

function totalBytes(entries: readonly LogEntry[]): number {
  let total = 0;
  for (const entry of entries) total += entry.bytes;
  return total;
}
