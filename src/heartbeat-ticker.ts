/**
 * One timer per node for the cluster heartbeats of all its namespaces.
 *
 * socket.io-adapter's ClusterAdapterWithHeartbeat arms a timer per namespace:
 * a namespace that published nothing for `heartbeatInterval` publishes a
 * HEARTBEAT. Those timers fire at unrelated moments, so each heartbeat went
 * out as a pg_notify statement of its own: one transaction, and one wake-up
 * of every LISTEN backend of the database. With 500 idle dynamic namespaces
 * on 2 nodes that was ~600 Postgres transactions per second (bench G-NSP),
 * about 1.2 per namespace per second.
 *
 * Here the heartbeats due are published together on one node-wide tick, so
 * the cluster bus sends them in a few statements (it batches what is
 * published in one turn of the event loop). On the wire nothing changes:
 * one HEARTBEAT per namespace, which upstream's nodes need to count ours.
 * No namespace stays silent longer than `heartbeatInterval` (its peers'
 * `heartbeatTimeout` is measured against that): the tick comes every
 * interval / TICKS_PER_INTERVAL, and a namespace silent for
 * interval - tick is due. An idle namespace thus heartbeats every
 * 0.9 interval, 10% more NOTIFYs than upstream's timers, in far fewer
 * transactions.
 */
const TICKS_PER_INTERVAL = 10;

export interface HeartbeatMember {
  /** Publishes a HEARTBEAT in the member's namespace (which calls `published` again). */
  heartbeat(): void;
}

export class HeartbeatTicker {
  /** Each member's last publish (any message), performance.now() ms. */
  private readonly lastPublish = new Map<HeartbeatMember, number>();
  /** Closed members: a message published after the close must not bring their heartbeats back. */
  private readonly forgotten = new WeakSet<HeartbeatMember>();
  private readonly tickMs: number;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly intervalMs: number) {
    this.tickMs = Math.max(1, Math.floor(intervalMs / TICKS_PER_INTERVAL));
  }

  /** The member published a message: its next heartbeat is due a full interval (less a tick) from now. */
  published(member: HeartbeatMember): void {
    if (this.forgotten.has(member)) return;
    this.lastPublish.set(member, performance.now());
    if (!this.timer) {
      this.timer = setInterval(() => this.tick(), this.tickMs);
      this.timer.unref();
    }
  }

  /** The member closed: no more heartbeats for it, whatever it publishes later. */
  forget(member: HeartbeatMember): void {
    this.forgotten.add(member);
    this.lastPublish.delete(member);
    if (this.lastPublish.size === 0) this.stop();
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private tick(): void {
    const now = performance.now();
    const dueAfter = this.intervalMs - this.tickMs;
    // heartbeat() updates the entry being visited: a Map visits each existing key once regardless.
    for (const [member, at] of this.lastPublish) if (now - at >= dueAfter) member.heartbeat();
  }
}
