/**
 * Node liveness in Postgres. Each node keeps a row in `nodes` and refreshes
 * its heartbeat every `nodeHeartbeatIntervalMs` (database clock); it is dead
 * once the heartbeat is older than `nodeDeadAfterMs`, and other nodes may then
 * restore its sockets from their skeletons. A clean shutdown deletes the row.
 *
 * A node can be declared dead while it still runs (a long GC pause, a
 * partition from the database, SIGSTOP). Its next heartbeat tells it so: it
 * registers again (so nothing more is taken from it), then asks its sockets'
 * owners to drop whatever was restored elsewhere meanwhile (`onRevived`).
 *
 * A process that dies is found faster than by its heartbeat: its liveness
 * lock (liveness-lock.ts) is gone at once. The row publishes the lock's key;
 * the node registers after its first attempt to take the lock.
 */
import { asError } from "./errors.js";
import { operatorNotice } from "./operator-events.js";
import type { LivenessQueries, Reconciled } from "./sql/liveness-queries.js";

export interface NodeLivenessOptions {
  nodeId: string;
  intervalMs: number;
  deadAfterMs: number;
  /** Resolves once the liveness lock was tried (or once that waited long enough). */
  lockTried(): Promise<void>;
  /** The lock's key once it was held (published in the node's row), else undefined. */
  lockKey(): string | undefined;
  /** The node was declared dead and registered again: check what it still holds. */
  onRevived(): Promise<void>;
  /** What the heartbeat reports of this node's reconciliation with the database (see LivenessQueries.heartbeat). */
  reconciled?(): Reconciled;
  onError(err: Error): void;
}

export class NodeLiveness {
  private timer: NodeJS.Timeout | undefined;
  private registered: Promise<void> | undefined;
  private beating: Promise<void> | undefined;
  private stopped = false;
  /** A failed heartbeat was reported: the next ones are not, until one succeeds. */
  private failing = false;

  constructor(
    private readonly queries: LivenessQueries,
    private readonly opts: NodeLivenessOptions,
  ) {}

  /** Registers the row (retried until it succeeds); resolves once it exists. */
  start(): Promise<void> {
    this.registered ??= (async () => {
      // A row whose lock key nobody holds reads as dead: the key goes in only once the lock was held.
      await this.opts.lockTried();
      for (let attempt = 1; !this.stopped; attempt++) {
        try {
          await this.queries.register(this.opts.nodeId, this.opts.deadAfterMs, this.opts.lockKey());
          break;
        } catch (err) {
          if (attempt === 1) {
            this.opts.onError(new Error("socket.io-postgres-recovery: registering this node's liveness failed; retrying", { cause: asError(err) }));
          }
          await new Promise((resolve) => setTimeout(resolve, Math.min(100 * 2 ** attempt, 2000)).unref());
        }
      }
      if (this.stopped) return;
      this.timer = setInterval(() => this.beatNow(), this.opts.intervalMs);
      this.timer.unref();
    })();
    return this.registered;
  }

  /**
   * A heartbeat now (after the one under way, if any), not at the next
   * interval: the node just reconciled with the database, and restores
   * across a gap wait for every live node to report that (failover-guard.ts).
   */
  beatSoon(): void {
    if (this.stopped || this.timer === undefined) return;
    const after = this.beating ?? Promise.resolve();
    this.beating = after.then(() => this.beat()).finally(() => {
      this.beating = undefined;
    });
  }

  /** Whether the node's row exists now (registered, not stopped): a row may name it as a skeleton's node. */
  get isRegistered(): boolean {
    return this.timer !== undefined && !this.stopped;
  }

  /** Resolves once the node's row exists (skeletons must not be written before). */
  ready(): Promise<void> {
    return this.start();
  }

  /**
   * A heartbeat now (unless one is under way), e.g. once the liveness lock is
   * held again after the listener reconnected: a node declared dead
   * meanwhile learns it without waiting for its interval.
   */
  beatNow(): void {
    if (this.stopped || this.timer === undefined) return;
    this.beating ??= this.beat().finally(() => {
      this.beating = undefined;
    });
  }

  private async beat(): Promise<void> {
    try {
      const alive = await this.queries.heartbeat(this.opts.nodeId, this.opts.reconciled?.(), this.opts.lockKey());
      this.failing = false;
      if (alive || this.stopped) return;
      const { nodeId } = this.opts;
      this.opts.onError(
        operatorNotice(
          { event: "node-declared-dead", nodeId },
          `this node (${nodeId}) was declared dead by another node (its heartbeat was older than nodeDeadAfterMs, or its liveness lock was released: a pause, a partition or a lost connection); registering again and dropping the sockets restored elsewhere`,
        ),
      );
      await this.queries.register(nodeId, this.opts.deadAfterMs, this.opts.lockKey());
      await this.opts.onRevived();
      this.opts.onError(operatorNotice({ event: "node-revived", nodeId }, `this node (${nodeId}) registered again after it was declared dead`));
    } catch (err) {
      // Once per failure streak (a database outage would otherwise report it every interval).
      if (this.failing) return;
      this.failing = true;
      this.opts.onError(new Error("socket.io-postgres-recovery: node heartbeat failed (reported once until one succeeds)", { cause: asError(err) }));
    }
  }

  /** Stops the heartbeat and deletes the row (clean shutdown). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    if (!this.registered) return; // never registered: this node wrote no skeleton
    await this.registered;
    await this.beating;
    try {
      await this.queries.remove(this.opts.nodeId);
    } catch (err) {
      // The row then looks dead after nodeDeadAfterMs: skeletons left become restorable, as after a crash.
      this.opts.onError(new Error("socket.io-postgres-recovery: removing this node's liveness row failed", { cause: asError(err) }));
    }
  }
}
