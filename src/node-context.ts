/**
 * What the namespaces of one `createAdapter()` call share on a node: the
 * LISTEN connection, the cluster bus, the session writer and the pruner.
 * Created with the first namespace, closed with the last one. Never ends the
 * caller's pool.
 */
import type { ClientConfig, Pool } from "pg";
import type { ClusterMessage, ClusterResponse } from "socket.io-adapter";
import { ClusterBus } from "./cluster-bus.js";
import { debug } from "./debug.js";
import { asError } from "./errors.js";
import { Listener } from "./listener.js";
import type { ResolvedOptions } from "./options.js";
import { Pruner, type PruneReport } from "./pruner.js";
import { SessionStore } from "./session-store.js";
import { qualifiedName } from "./sql/identifiers.js";
import { LogQueries } from "./sql/log-queries.js";
import { PruneQueries } from "./sql/prune-queries.js";
import { SessionQueries } from "./sql/session-queries.js";

/** What the context needs from each namespace's adapter. */
export interface NamespaceMember {
  readonly nspName: string;
  serverUid(): string;
  /** Retention this namespace needs (undefined without recovery). */
  retentionMs(): number | undefined;
  onClusterMessage(message: ClusterMessage | ClusterResponse): void;
  onLogNotification(from: number, count: number, inline: string): void;
  onListenerReconnected(): void;
}

export class NodeContext {
  readonly log: LogQueries;
  readonly sessions: SessionStore;
  readonly listener: Listener;
  readonly bus: ClusterBus;
  private readonly pruner: Pruner;
  private readonly members = new Map<string, NamespaceMember>();
  /** Cluster ids of this node's adapters: messages from them are our own. */
  private readonly ownUids = new Set<string>();
  private readonly byNamespaceId = new Map<number, NamespaceMember>();
  private closing: Promise<void> | undefined;

  constructor(
    readonly pool: Pool,
    readonly opts: ResolvedOptions,
  ) {
    const report = (err: Error) => this.reportError(err);
    this.log = new LogQueries(pool, opts.schema, { preparedStatements: opts.preparedStatements });
    // Session writes announce themselves on the log channel (payload "s|…"), which every node listens to.
    this.sessions = new SessionStore(new SessionQueries(pool, opts.schema, opts.logChannel), {
      maxBatchSize: opts.maxBatchSize,
      maxPending: opts.maxPendingWrites,
      onError: report,
    });
    this.bus = new ClusterBus(pool, {
      channelPrefix: opts.channelPrefix,
      payloadThreshold: opts.payloadThreshold,
      attachmentsTable: opts.attachmentsTable,
      isFromSelf: (uid) => uid !== undefined && this.ownUids.has(uid),
      dispatch: (message) => this.members.get(message.nsp)?.onClusterMessage(message),
      onError: report,
    });
    this.listener = new Listener({
      connection: { ...(pool.options as ClientConfig) },
      checkIntervalMs: opts.listenerCheckIntervalMs,
      onNotification: (channel, payload) => this.onNotification(channel, payload),
      onReconnected: () => {
        for (const member of this.members.values()) member.onListenerReconnected();
      },
      onError: report,
    });
    this.pruner = new Pruner(
      pool,
      new PruneQueries(opts.schema, qualifiedName(opts.attachmentsTable.schema, opts.attachmentsTable.table)),
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
      },
      report,
    );
    this.listener.start();
    void this.listener.listen(opts.logChannel);
    this.pruner.start(opts.pruneIntervalMs);
  }

  get closed(): boolean {
    return this.closing !== undefined;
  }

  add(member: NamespaceMember): void {
    this.members.set(member.nspName, member);
    this.ownUids.add(member.serverUid());
  }

  bindNamespaceId(id: number, member: NamespaceMember): void {
    this.byNamespaceId.set(id, member);
  }

  /** Removes a namespace; the last one out closes the shared resources. */
  async remove(member: NamespaceMember): Promise<void> {
    if (this.members.get(member.nspName) === member) this.members.delete(member.nspName);
    this.ownUids.delete(member.serverUid());
    for (const [id, m] of this.byNamespaceId) if (m === member) this.byNamespaceId.delete(id);
    if (this.members.size === 0) await this.close();
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

  private close(): Promise<void> {
    this.closing ??= (async () => {
      await this.sessions.close(this.opts.closeTimeoutMs);
      await this.pruner.stop();
      await this.bus.idle();
      await this.listener.close();
      debug("node context closed");
    })();
    return this.closing;
  }

  private onNotification(channel: string, payload: string): void {
    try {
      if (channel === this.opts.logChannel) {
        if (payload.startsWith("s|")) {
          this.sessions.onWritten(payload.slice(2));
          return;
        }
        const [id, from, count, inline] = payload.split("|");
        const member = this.byNamespaceId.get(Number(id));
        member?.onLogNotification(Number(from), Number(count), inline ?? "");
      } else if (this.bus.owns(channel)) {
        this.bus.receive(payload);
      }
    } catch (err) {
      this.reportError(new Error("socket.io-postgres-recovery: failed to handle a notification", { cause: asError(err) }));
    }
  }
}
