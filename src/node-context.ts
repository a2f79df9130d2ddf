/**
 * What the namespaces of one `createAdapter()` call share on a node: the
 * LISTEN connection, the cluster bus, the session writer and the pruner.
 * Created with the first namespace, closed with the last one. Never ends the
 * caller's pool.
 */
import type { Pool } from "pg";
import type { ClusterMessage, ClusterResponse } from "socket.io-adapter";
import { AttachmentsTable } from "./attachments-table.js";
import { ClusterBus } from "./cluster-bus.js";
import { settledBy } from "./deadline.js";
import { debug } from "./debug.js";
import { asError } from "./errors.js";
import { directConnectionConfig, openSessionConnection } from "./direct-connection.js";
import { HeartbeatTicker } from "./heartbeat-ticker.js";
import { Listener } from "./listener.js";
import { LivenessLock } from "./liveness-lock.js";
import { NO_METRICS, type RecoveryMetrics } from "./metrics.js";
import { NodeLiveness } from "./node-liveness.js";
import type { ResolvedOptions } from "./options.js";
import { NAMESPACE_ACTIVITY_INTERVAL_MS, PRUNER_APPLICATION_NAME, Pruner, type PruneReport } from "./pruner.js";
import { Semaphore } from "./semaphore.js";
import { ExpiryFeed } from "./session-expiry.js";
import { SkeletonWriter } from "./session-durability.js";
import { SessionStore } from "./session-store.js";
import { checkTablesAtStart } from "./startup-check.js";
import { boundedQueries } from "./sql/bounded-queries.js";
import { LivenessQueries } from "./sql/liveness-queries.js";
import { ExpiryQueries } from "./sql/expiry-queries.js";
import { LogQueries } from "./sql/log-queries.js";
import { PruneQueries } from "./sql/prune-queries.js";
import { SessionQueries } from "./sql/session-queries.js";
import { StagingQueries } from "./sql/staging-queries.js";

/** What the context needs from each namespace's adapter. */
export interface NamespaceMember {
  readonly nspName: string;
  serverUid(): string;
  /** Retention this namespace needs (undefined without recovery). */
  retentionMs(): number | undefined;
  onClusterMessage(message: ClusterMessage | ClusterResponse): void;
  /** `jumpedFrom`: the head jumped from there to `from - 1` (a gap, see log-gaps.ts). */
  onLogNotification(from: number, count: number, inline: string, jumpedFrom?: number): void;
  onListenerReconnected(): void;
  /** The LISTEN connection failed: the database may be another incarnation when it is back. */
  onListenerLost(): void;
  /** An emitter or the SQL function staged events of this namespace (see staged-mover.ts). */
  onStagedEvents(): void;
  /** This node was declared dead and registered again: drop the sockets restored elsewhere. */
  onRevived(): Promise<void>;
  /** The database incarnation this namespace last reconciled with ("*": nothing to tell; see failover-guard.ts). */
  reconciledIncarnation(): string | undefined;
  /** The pruning pass deleted this namespace's session `sid` as expired (see session-expiry.ts). */
  onSessionExpired(sid: string): void;
}

/** How long a node's registration waits for the listener's first attempt at the liveness lock. */
const LOCK_FIRST_ATTEMPT_MS = 5000;

export class NodeContext {
  readonly log: LogQueries;
  /** Events staged by emitters and the SQL function, moved into the log by this node. */
  readonly staging: StagingQueries;
  readonly sessions: SessionStore;
  /** Skeletons of connected sockets, for restores after this node crashes. */
  readonly skeletons: SkeletonWriter;
  readonly liveness: NodeLiveness;
  readonly listener: Listener;
  readonly bus: ClusterBus;
  /** The attachments table the bus and the pruner use (shared with upstream's nodes). */
  readonly attachments: AttachmentsTable;
  /** Restores reading the table at once, over all namespaces of this node. */
  readonly restoreReads: Semaphore;
  /** The cluster heartbeats of all this node's namespaces, on one timer (batched NOTIFYs). */
  readonly heartbeats: HeartbeatTicker;
  private readonly pruner: Pruner;
  /** Announcements of expired sessions, read once each (`session-expired`). */
  private readonly expiry: ExpiryFeed;
  private readonly members = new Map<string, NamespaceMember>();
  /** Cluster ids of this node's adapters: messages from them are our own. */
  private readonly ownUids = new Set<string>();
  private readonly byNamespaceId = new Map<number, NamespaceMember>();
  /** Marks this node's namespaces active, so pruning never deletes their rows (see `touchNamespaces`). */
  private readonly activityTimer: NodeJS.Timeout;
  private closing: Promise<void> | undefined;

  constructor(
    readonly pool: Pool,
    readonly opts: ResolvedOptions,
    /** Where the modules report what happens (see metrics.ts); no-ops without the `metrics` option. */
    readonly metrics: RecoveryMetrics = NO_METRICS,
  ) {
    const report = (err: Error) => this.reportError(err);
    // Every statement of ours gets a bound; the pool itself is left as the caller made it.
    const db = boundedQueries(pool, opts.queryTimeoutMs === false ? undefined : opts.queryTimeoutMs);
    this.log = new LogQueries(db, opts.schema, { preparedStatements: opts.preparedStatements });
    this.staging = new StagingQueries(opts.schema);
    this.restoreReads = new Semaphore(opts.maxConcurrentRestoreReads, "maxConcurrentRestoreReads");
    this.heartbeats = new HeartbeatTicker(opts.heartbeatInterval);
    // Session writes announce themselves on the log channel (payload "s|…"), which every node listens to.
    const sessionQueries = new SessionQueries(db, opts.schema, opts.logChannel);
    // Held on the LISTEN connection; only a node that writes skeletons needs it (liveness-lock.ts).
    const lock = opts.crashSafety ? new LivenessLock(sessionQueries.nodeId, report) : undefined;
    this.liveness = new NodeLiveness(new LivenessQueries(db, opts.schema), {
      nodeId: sessionQueries.nodeId,
      intervalMs: opts.nodeHeartbeatIntervalMs,
      deadAfterMs: opts.nodeDeadAfterMs,
      // Bounded: a listener that cannot connect must not keep skeletons (and the heartbeat) from starting.
      lockTried: () => lock?.firstAttemptDone(LOCK_FIRST_ATTEMPT_MS) ?? Promise.resolve(),
      lockKey: () => lock?.publishedKey,
      onRevived: async () => {
        for (const member of this.members.values()) await member.onRevived();
      },
      reconciled: () => this.reconciledIncarnation(),
      onError: report,
    });
    this.skeletons = new SkeletonWriter(sessionQueries, {
      maxBatchSize: opts.maxBatchSize,
      ready: () => this.liveness.ready(),
      onError: report,
    });
    this.sessions = new SessionStore(sessionQueries, {
      maxBatchSize: opts.maxBatchSize,
      maxPending: opts.maxPendingWrites,
      onError: report,
      written: (count) => metrics.sessionsWritten(count),
      // Registered lazily (a node with no socket writes nothing): the first take starts it, and
      // takes as a fence until the row exists (its restored socket then gets a first write).
      takeAsSkeleton: () => {
        if (!opts.crashSafety) return false;
        if (this.liveness.isRegistered) return true;
        void this.liveness.start();
        return false;
      },
    });
    this.attachments = new AttachmentsTable(db, opts.attachmentsTable, report);
    this.bus = new ClusterBus(db, {
      channelPrefix: opts.channelPrefix,
      payloadThreshold: opts.payloadThreshold,
      attachmentsTable: this.attachments,
      isFromSelf: (uid) => uid !== undefined && this.ownUids.has(uid),
      dispatch: (message) => this.members.get(message.nsp)?.onClusterMessage(message),
      onError: report,
    });
    this.listener = new Listener({
      // LISTEN needs a session of its own on Postgres itself, never a pooler's transaction.
      connection: directConnectionConfig(pool, opts.directConnection),
      checkIntervalMs: opts.listenerCheckIntervalMs,
      onNotification: (channel, payload) => this.onNotification(channel, payload),
      onReconnected: () => {
        // Its lock was missing meanwhile: a take may have declared this node dead; learn it now.
        this.liveness.beatNow();
        metrics.listenerReconnected();
        for (const member of this.members.values()) member.onListenerReconnected();
        this.expiry.onReconnected();
      },
      onLost: () => {
        for (const member of this.members.values()) member.onListenerLost();
      },
      onError: report,
      resource: lock,
    });
    this.pruner = new Pruner(
      // The pass holds a session advisory lock across its short transactions: a direct session.
      // It names the attachments table as resolved through the pool's search_path (the direct
      // connection's may differ), so a pass waits for that lookup (a failed one is reported by it).
      async () => {
        await this.attachments.name().catch(() => undefined);
        return openSessionConnection(pool, opts.directConnection, PRUNER_APPLICATION_NAME);
      },
      new PruneQueries(opts.schema, () => this.attachments.current, opts.logChannel),
      {
        retentionMs: () => {
          let longest: number | undefined;
          for (const m of this.members.values()) {
            const r = m.retentionMs();
            if (r !== undefined) longest = Math.max(longest ?? 0, r);
          }
          return longest;
        },
        attachmentsMaxAgeMs: opts.cleanupInterval,
        batchSize: opts.pruneBatchSize,
        pruned: (report) => metrics.pruned(report),
      },
      report,
    );
    this.expiry = new ExpiryFeed(new ExpiryQueries(db, opts.schema), {
      active: () => [...this.members.values()].some((m) => m.retentionMs() !== undefined),
      deliver: (namespace, sid) => this.members.get(namespace)?.onSessionExpired(sid),
      pollIntervalMs: opts.pruneIntervalMs,
      onError: report,
    });
    checkTablesAtStart(db, opts.schema, this.attachments, report);
    this.listener.start();
    void this.listener.listen(opts.logChannel);
    this.pruner.start(opts.pruneIntervalMs);
    const activityMs = Math.min(opts.pruneIntervalMs, NAMESPACE_ACTIVITY_INTERVAL_MS);
    this.activityTimer = setInterval(() => {
      this.log.touchNamespaces([...this.byNamespaceId.keys()], activityMs / 2).catch((err: unknown) => {
        report(new Error("socket.io-postgres-recovery: marking this node's namespaces active failed; retrying next interval", { cause: err }));
      });
    }, activityMs);
    this.activityTimer.unref();
  }

  get closed(): boolean {
    return this.closing !== undefined;
  }

  add(member: NamespaceMember): void {
    this.members.set(member.nspName, member);
    this.ownUids.add(member.serverUid());
    // The first namespace with recovery starts the feed at the newest announcement, once LISTEN is in place.
    if (member.retentionMs() !== undefined) void this.listener.ready().then(() => this.expiry.start());
  }

  bindNamespaceId(id: number, member: NamespaceMember): void {
    this.byNamespaceId.set(id, member);
  }

  /**
   * Removes a namespace; the last one out closes the shared resources, by
   * `deadline` (ms since the epoch: the one its own close started, so that
   * `io.close()` as a whole keeps to `closeTimeoutMs`). A namespace removed
   * while others stay (a dynamic namespace Socket.IO closed with
   * `cleanupEmptyChildNamespaces`) gives up its channel, unless a new adapter
   * of the same name took its place meanwhile: thousands of dynamic
   * namespaces must not leave thousands of channels behind.
   */
  async remove(member: NamespaceMember, deadline = Date.now() + this.opts.closeTimeoutMs): Promise<void> {
    if (this.members.get(member.nspName) === member) {
      this.members.delete(member.nspName);
      if (this.members.size > 0) await this.listener.unlisten(this.bus.channelOf(member.nspName));
    }
    this.ownUids.delete(member.serverUid());
    for (const [id, m] of this.byNamespaceId) if (m === member) this.byNamespaceId.delete(id);
    if (this.members.size === 0) await this.close(deadline);
  }

  /** Runs a pruning pass now (for operators and tests); see `pruneIntervalMs`. */
  pruneNow(): Promise<PruneReport> {
    return this.pruner.pruneNow();
  }

  reportError(err: Error): void {
    try {
      this.opts.errorHandler(err);
    } catch (handlerError) {
      debug("errorHandler threw: %O", handlerError);
    }
  }

  /**
   * Every step starts, in order, whatever the time; each is awaited until
   * `deadline` at the most. One that is still running then (a statement on a
   * half-open connection, a pool with no free connection) goes on unawaited
   * and is reported: past the deadline the orchestrator would kill the node.
   */
  private close(deadline: number): Promise<void> {
    this.closing ??= (async () => {
      clearInterval(this.activityTimer);
      this.heartbeats.stop();
      const steps: Array<[string, () => Promise<unknown>]> = [
        ["writing sessions", () => this.sessions.close(Math.max(0, deadline - Date.now()))],
        ["writing skeletons", () => this.skeletons.close(Math.max(0, deadline - Date.now()))],
        // After the sessions: its row gone (or marked dead), this node's remaining skeletons are restorable at once.
        ["leaving the nodes table", () => this.liveness.stop()],
        ["the pruning pass", () => this.pruner.stop()],
        ["reading expired sessions", () => this.expiry.stop()],
        ["publishing cluster messages", () => this.bus.idle()],
        ["closing the LISTEN connection", () => this.listener.close()],
      ];
      const late: string[] = [];
      for (const [what, step] of steps) {
        try {
          if (!(await settledBy(step(), deadline))) late.push(what);
        } catch (err) {
          this.reportError(new Error(`socket.io-postgres-recovery: closing: ${what} failed`, { cause: asError(err) }));
        }
      }
      if (late.length > 0) {
        this.reportError(
          new Error(`socket.io-postgres-recovery: closing gave up waiting at closeTimeoutMs (${this.opts.closeTimeoutMs} ms) for: ${late.join(", ")}`),
        );
      }
      debug("node context closed");
    })();
    return this.closing;
  }

  /**
   * The incarnation every namespace of this node reconciled with, for the
   * heartbeat (see `nodes.reconciled_incarnation`): "*" when none has
   * anything to tell, undefined while some has not reconciled yet.
   */
  private reconciledIncarnation(): string | undefined {
    let common = "*";
    for (const member of this.members.values()) {
      const incarnation = member.reconciledIncarnation();
      if (incarnation === undefined) return undefined;
      if (incarnation === "*") continue;
      if (common !== "*" && common !== incarnation) return undefined;
      common = incarnation;
    }
    return common;
  }

  private onNotification(channel: string, payload: string): void {
    try {
      if (channel === this.opts.logChannel) {
        if (payload.startsWith("s|")) {
          this.sessions.onWritten(payload.slice(2));
          return;
        }
        if (payload.startsWith("x|")) {
          this.expiry.onNotified(payload.slice(2));
          return;
        }
        const [id, from, count, inline, jumpedFrom] = payload.split("|");
        const member = this.byNamespaceId.get(Number(id));
        member?.onLogNotification(Number(from), Number(count), inline ?? "", jumpedFrom === undefined ? undefined : Number(jumpedFrom));
      } else if (channel === this.staging.channel) {
        // The payload is the namespace's name (sent at the commit of the transaction that staged).
        this.members.get(payload)?.onStagedEvents();
      } else if (this.bus.owns(channel)) {
        this.bus.receive(payload, channel);
      }
    } catch (err) {
      this.reportError(new Error("socket.io-postgres-recovery: failed to handle a notification", { cause: asError(err) }));
    }
  }
}
