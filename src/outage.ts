/**
 * Tells when a namespace's log writes have been failing (or hanging: a frozen
 * network, an exhausted pool) long enough to stop holding events back: when
 * no write has succeeded for `afterMs` since one started, the adapter switches
 * to delivering new events to its own sockets, unlogged, rather than keeping
 * every connected client waiting for a database that is away.
 *
 * It is the one write-health state of a namespace's log on this node, fed by
 * every outcome of every append attempt: started, failed (with its error),
 * succeeded. Only a success ends an outage, and something always comes to
 * try: the log writer retries a failed batch until it commits (whatever the
 * error), so the batch whose commit is in doubt is the probe. A probe of its
 * own (`SELECT 1`) would prove less: it succeeds on a read-only standby, or
 * for a role that lost its INSERT grant.
 *
 * Only the timing lives here; what "outage mode" does is the log writer's.
 */
export interface OutageMonitorOptions {
  /** Continuous failure before outage mode; false: never (events wait in the queue). */
  afterMs: number | false;
  /** `lastError`: the latest failed attempt's error (none when the write hangs rather than fails). */
  onStarted(failingForMs: number, lastError: Error | undefined): void;
  onEnded(): void;
}

/** A timer this late means the event loop was blocked rather than the database away. */
const LATE_TIMER_MS = 200;

export class OutageMonitor {
  /** When the oldest write not yet followed by a success started. */
  private failingSince: number | undefined;
  /** When the armed timer should fire. */
  private due = 0;
  private timer: NodeJS.Timeout | undefined;
  private active = false;
  /** The latest failure since the last success. */
  private failure: Error | undefined;

  constructor(private readonly opts: OutageMonitorOptions) {}

  /** Whether new events are delivered unlogged. */
  get inOutage(): boolean {
    return this.active;
  }

  /** A log write attempt starts (a first one, or a retry). */
  writeStarted(): void {
    if (this.failingSince !== undefined || this.opts.afterMs === false) return;
    this.failingSince = Date.now();
    this.arm(this.opts.afterMs);
  }

  /** A log write attempt failed; it will be retried (see the class comment). */
  writeFailed(err: Error): void {
    this.failure = err;
  }

  /** The latest failure since the last success, if any. */
  get lastError(): Error | undefined {
    return this.failure;
  }

  /** A log write committed: the database is back (or never left). */
  writeSucceeded(): void {
    this.failure = undefined;
    if (this.failingSince === undefined) return;
    clearTimeout(this.timer);
    this.failingSince = undefined;
    if (this.active) {
      this.active = false;
      this.opts.onEnded();
    }
  }

  stop(): void {
    clearTimeout(this.timer);
  }

  private arm(delayMs: number): void {
    this.due = Date.now() + delayMs;
    this.timer = setTimeout(() => this.check(), delayMs);
    this.timer.unref();
  }

  /**
   * The timer fired; decide after the I/O that is already waiting has been
   * processed (setImmediate runs after the poll phase). A node whose event
   * loop was blocked (a huge burst) would otherwise take its own successful
   * write for an outage: the timer phase comes before the answer is read.
   */
  private check(): void {
    const late = Date.now() - this.due;
    setImmediate(() => {
      if (this.failingSince === undefined || this.active) return;
      if (late > LATE_TIMER_MS) {
        // The loop was blocked: the write's answer may be queued behind the work. Look again shortly.
        this.arm(LATE_TIMER_MS);
        return;
      }
      this.active = true;
      this.opts.onStarted(Date.now() - this.failingSince, this.failure);
    });
  }
}
