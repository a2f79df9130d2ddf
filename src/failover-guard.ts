/**
 * One namespace's defence, on one node, against a database that lost
 * commits (a failover under asynchronous replication, an older copy of the
 * data put back): it keeps the namespace's recorded gaps (log-gaps.ts), gives
 * the database this node's evidence of what it lost, and holds restores
 * back until it has.
 *
 * Evidence is this node's cursor: every offset up to it was committed and
 * delivered here. After its LISTEN connection failed (which every restart or
 * failover of Postgres does), the node reconciles with the database once the
 * connection is back (`LogQueries.reconcile`): a head below the cursor, or a
 * new incarnation, makes the head jump, and a gap the cursor lies inside is
 * marked lost. Until then its restores wait: this node's ring may hold
 * entries the database lost, and another node's gap may not be known here.
 */
import { debug } from "./debug.js";
import { coveredThrough, LogGaps } from "./log-gaps.js";
import type { GapsRead, LogGap, LogQueries } from "./sql/log-queries.js";

export interface FailoverGuardHost {
  readonly nspName: string;
  namespaceId(): number | undefined;
  /** This node's delivery cursor (undefined before the namespace started). */
  cursor(): number | undefined;
  /** This namespace reconciled after a failure of the listener: the node's heartbeat may report it now. */
  reconciled(): void;
  /** Tells delivery that (after, through] holds nothing (Sequencer.skip). */
  skip(after: number, through: number): void;
  reportError(err: Error): void;
}

const RETRY_MS = 250;
const SETTLE_POLL_MS = 100;

export class FailoverGuard {
  readonly gaps = new LogGaps();
  /** Resolved once this node reconciled with the database since its LISTEN connection last failed. */
  private reconciled: Promise<void> = Promise.resolve();
  private markReconciled: (() => void) | undefined;
  /** The loop reconciling through the pool after a failure of the listener (see `listenerLost`). */
  private retrying: Promise<void> | undefined;
  /** A look at the nodes' reconciliation under way (see `settled`). */
  private settling: Promise<number> | undefined;
  /** A reconciliation a restore started (see `ready`). */
  private reconcilingNow: Promise<void> | undefined;
  /**
   * The database incarnation this namespace last reconciled with (or started
   * under) on this node, since its LISTEN connection last failed; undefined
   * while it has not. Reported by the node's heartbeat (see `reconciledIncarnation` in schema.ts).
   */
  private incarnation: string | undefined;
  /** Failures of the LISTEN connection so far (a reconciliation counts only if none came meanwhile). */
  private losses = 0;
  /** Lost gaps already reported, by their start. */
  private readonly reported = new Set<number>();
  private closed = false;

  constructor(
    private readonly host: FailoverGuardHost,
    private readonly log: LogQueries,
  ) {}

  /** The namespace started: what is recorded so far. */
  async started(namespaceId: number): Promise<void> {
    const losses = this.losses;
    const read = await this.log.gapsOf(namespaceId);
    this.learn(read.gaps);
    // Started under this incarnation: it has delivered nothing under an earlier one.
    if (losses === this.losses && !this.markReconciled) this.incarnation = read.incarnation;
  }

  /** Whether restores wait for a reconciliation (the listener failed since the last one). */
  private waiting(): boolean {
    return this.markReconciled !== undefined;
  }

  /** See `incarnation`; "*" before the namespace started (nothing delivered, nothing to tell). */
  get reconciledIncarnation(): string | undefined {
    if (this.host.namespaceId() === undefined && !this.markReconciled) return "*";
    return this.incarnation;
  }

  /**
   * The LISTEN connection failed: the database may be another one when it
   * answers again. Restores wait for the reconciliation, which is tried
   * through the pool every 250 ms from now on (the listener's own
   * reconnection backs off up to 2 s, and every node's reconciliation is
   * what settles a gap, see `settled`).
   */
  listenerLost(): void {
    this.losses++;
    this.incarnation = undefined;
    if (!this.markReconciled) this.reconciled = new Promise((resolve) => (this.markReconciled = resolve));
    this.retrying ??= (async () => {
      while (!this.closed && this.waiting()) {
        try {
          await this.reconcileAfterLoss();
        } catch {
          // The database is not back yet; the listener's reconnection reports its own failures.
        }
        if (this.waiting()) await new Promise((resolve) => setTimeout(resolve, RETRY_MS).unref());
      }
    })().finally(() => {
      this.retrying = undefined;
    });
  }

  /**
   * The LISTEN connection is back: tell the database what this node
   * delivered (again: it may be another database than the one a
   * reconciliation through the pool reached meanwhile), until that succeeds.
   */
  async listenerBack(): Promise<void> {
    while (!this.closed) {
      try {
        await this.reconcileAfterLoss();
        return;
      } catch (err) {
        this.host.reportError(
          new Error(`socket.io-postgres-recovery: checking the log of "${this.host.nspName}" against the database after a reconnection failed; retrying`, { cause: err }),
        );
        await new Promise((resolve) => setTimeout(resolve, RETRY_MS).unref());
      }
    }
  }

  /**
   * Gives the database this node's evidence (its cursor), learns the gaps,
   * and ends the wait of restores, unless the listener failed again meanwhile.
   */
  private async reconcileAfterLoss(): Promise<void> {
    const losses = this.losses;
    const id = this.host.namespaceId();
    const cursor = this.host.cursor();
    // A namespace not started has delivered nothing: it has nothing to tell.
    const incarnation = id !== undefined && cursor !== undefined ? (await this.reconcile(id, cursor)).incarnation : "*";
    if (losses !== this.losses) return;
    this.incarnation = incarnation;
    const mark = this.markReconciled;
    this.markReconciled = undefined;
    mark?.();
    this.host.reconciled();
  }

  /**
   * Resolves once restores may trust what this node knows: it reconciled
   * with the database since its LISTEN connection last failed. A restore
   * does not wait for the listener to be back (its reconnection backs off
   * up to 2 s): it reconciles through the pool, once for all the restores
   * waiting, since that is the database it is about to read.
   */
  async ready(): Promise<void> {
    if (!this.markReconciled) return;
    this.reconcilingNow ??= this.reconcileAfterLoss().finally(() => {
      this.reconcilingNow = undefined;
    });
    await this.reconcilingNow;
  }

  /** `known` was committed and delivered (a cursor, a client's offset): see `LogQueries.reconcile`. */
  async reconcile(namespaceId: number, known: number): Promise<GapsRead> {
    const read = await this.log.reconcile(namespaceId, known);
    debug("reconciled %s with offset %d: gaps %j", this.host.nspName, known, read.gaps);
    this.learn(read.gaps);
    return read;
  }

  /** Re-reads the recorded gaps (another node may have marked one lost). */
  async refresh(namespaceId: number): Promise<void> {
    this.learn((await this.log.gapsOf(namespaceId)).gaps);
  }

  /** For the sequencer (see SequencerOptions.explainHole). */
  async explainHole(after: number, end: number, known: number): Promise<number | undefined> {
    const id = this.host.namespaceId();
    if (id === undefined) return undefined;
    // The cursor first: inside a gap, it marks the gap lost (a higher `known` may lie past it).
    const cursor = this.host.cursor();
    if (cursor !== undefined) await this.reconcile(id, cursor);
    if (cursor === undefined || known > cursor) await this.reconcile(id, known);
    return coveredThrough(this.gaps.all, after, end);
  }

  /**
   * Whether every live node told the database what it delivered since it
   * last changed (see `LogQueries.unreconciledNodes`), waiting for that until
   * `deadline` (ms since the epoch): right after a restart the nodes are
   * still reconnecting (backoff up to 2 s, then their next heartbeat). One
   * look every 100 ms, shared by every restore of the namespace waiting.
   */
  async settled(deadline: number): Promise<boolean> {
    for (;;) {
      this.settling ??= this.log.unreconciledNodes().finally(() => {
        this.settling = undefined;
      });
      if ((await this.settling) === 0) return true;
      if (this.closed || Date.now() + SETTLE_POLL_MS >= deadline) return false;
      await new Promise((resolve) => setTimeout(resolve, SETTLE_POLL_MS).unref());
    }
  }

  /**
   * A write jumped the head from `after` (this node's append, or another
   * node's announced in its NOTIFY): a cursor past `after` is evidence of a loss.
   */
  jumped(after: number): void {
    const id = this.host.namespaceId();
    const cursor = this.host.cursor();
    if (id === undefined || cursor === undefined || cursor <= after) return;
    this.reconcile(id, cursor).catch((err: unknown) => {
      this.host.reportError(new Error(`socket.io-postgres-recovery: recording the log of "${this.host.nspName}" after a database change failed`, { cause: err }));
    });
  }

  close(): void {
    this.closed = true;
    const mark = this.markReconciled;
    this.markReconciled = undefined;
    mark?.();
  }

  private learn(gaps: readonly LogGap[]): void {
    this.gaps.set(gaps);
    for (const g of gaps) {
      this.host.skip(g.after, g.through);
      if (!g.lost || this.reported.has(g.after)) continue;
      this.reported.add(g.after);
      this.host.reportError(
        new Error(
          `socket.io-postgres-recovery: the database lost committed log entries of "${this.host.nspName}" in (${g.after}, ${g.through}] ` +
            "(a failover under asynchronous replication, or an older copy of its data); their offsets are never reused, " +
            "and restores from or across that range are refused",
        ),
      );
    }
  }
}
