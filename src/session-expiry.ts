/**
 * `session-expired`: every node learns, once, each session the pruning pass
 * deleted as expired, and its adapter of that namespace emits
 * `session-expired` with the sid.
 *
 * The pass records the expired sids in `expired_sessions` in the very
 * statement that deletes the sessions, with dense ids, and NOTIFYs the log
 * channel (`x|<last id>`) in the same transaction (`PruneQueries.pruneSessions`).
 * So an announcement exists exactly when its delete committed: a pass that
 * crashes mid-way announced what it deleted and nothing else. Each node reads
 * the rows after its cursor in id order, like log entries, and moves the
 * cursor past what it delivered: a NOTIFY is only a hint to read, and what a
 * listener missed while reconnecting is read after the reconnect; a read
 * also runs every `pruneIntervalMs` (announcements from an operator's `prune`
 * on another channel prefix, reads that failed). One reader per node, one
 * read at a time: nothing is delivered twice.
 *
 * A node starts at the newest id when it starts: it announces what expires
 * while it runs. A restored session is never announced: the take marks its
 * row `taken`, and such rows are deleted without an announcement.
 */
import { debug } from "./debug.js";
import { asError } from "./errors.js";
import type { ExpiryAnnouncement, ExpiryQueries } from "./sql/expiry-queries.js";

/** Rows per read; a longer backlog is read in several. */
const PAGE = 1000;

export interface ExpiryFeedOptions {
  /** Whether this node has recovery anywhere (otherwise the table may not exist: nothing is read). */
  active(): boolean;
  /** Delivers one announcement to the node's adapter of `namespace`, if it has one. */
  deliver(namespace: string, sid: string): void;
  /** How often to read without being told (ms): the node's `pruneIntervalMs`. */
  pollIntervalMs: number;
  onError(err: Error): void;
}

export class ExpiryFeed {
  /** Id of the last announcement delivered; undefined until the start read. */
  private cursor: number | undefined;
  private reading: Promise<void> | undefined;
  /** Asked to read while a read ran: read again after it. */
  private again = false;
  private failing = false;
  private stopped = false;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly queries: ExpiryQueries,
    private readonly opts: ExpiryFeedOptions,
  ) {
    this.timer = setInterval(() => this.read(), opts.pollIntervalMs);
    this.timer.unref();
  }

  /**
   * Starts at the newest announcement. Call once LISTEN on the log channel is
   * in place: what commits after the start read is then notified or read.
   */
  start(): void {
    this.read();
  }

  /** A NOTIFY `x|<id>`: announcements up to `id` are committed. */
  onNotified(payload: string): void {
    const id = Number(payload);
    if (this.cursor !== undefined && Number.isSafeInteger(id) && id <= this.cursor) return;
    this.read();
  }

  /** The listener was replaced: what it missed meanwhile is in the table. */
  onReconnected(): void {
    this.read();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    await this.reading;
  }

  private read(): void {
    if (this.stopped || !this.opts.active()) return;
    if (this.reading) {
      this.again = true;
      return;
    }
    this.reading = this.drain()
      .then(
        () => {
          if (this.failing) debug("session-expired: reading announcements works again");
          this.failing = false;
        },
        (err: unknown) => {
          // Said once per episode: the poll retries every pruneIntervalMs.
          if (!this.failing) {
            this.opts.onError(
              new Error("socket.io-postgres-recovery: reading expired sessions failed; retrying every pruneIntervalMs", { cause: asError(err) }),
            );
          }
          this.failing = true;
        },
      )
      .finally(() => {
        this.reading = undefined;
        if (this.again) {
          this.again = false;
          this.read();
        }
      });
  }

  private async drain(): Promise<void> {
    if (this.cursor === undefined) {
      this.cursor = await this.queries.last();
      debug("session-expired: starting after announcement %d", this.cursor);
      return;
    }
    for (;;) {
      const rows = await this.queries.after(this.cursor, PAGE);
      this.deliver(rows);
      if (rows.length < PAGE || this.stopped) return;
    }
  }

  private deliver(rows: readonly ExpiryAnnouncement[]): void {
    for (const row of rows) {
      const expected = (this.cursor ?? 0) + 1;
      if (row.id > expected) {
        // Ids are dense: the rows in between were pruned before this node read them.
        this.opts.onError(
          new Error(
            `socket.io-postgres-recovery: ${row.id - expected} expired-session announcement(s) were pruned before this node read them (cut off from the database for over an hour?); their session-expired events are lost on this node`,
          ),
        );
      }
      this.cursor = row.id;
      try {
        this.opts.deliver(row.namespace, row.sid);
      } catch (err) {
        this.opts.onError(new Error("socket.io-postgres-recovery: a session-expired listener threw", { cause: asError(err) }));
      }
    }
  }
}
