/**
 * `setupPrimary()` for Node's `cluster` module, as `@socket.io/postgres-adapter`
 * offers it: the workers use `@socket.io/cluster-adapter` (`createAdapter()`
 * without arguments) and the primary relays their cluster messages to
 * Postgres and back, so a machine's workers and the other nodes form one
 * cluster. The workers have no connection state recovery (as upstream).
 *
 * Upstream's version is not re-exported: it LISTENs with namespace names
 * built into SQL unescaped, keeps its LISTEN connection without liveness
 * checks, resolves `tableName` on its own, and sends every worker message to
 * Postgres, the application's own `process.send()`s included. This one uses
 * this package's listener and bus (same wire format), forwards only the
 * cluster adapter's messages, and tags what it hands the workers as the
 * cluster adapter's, so the workers also take messages from standalone nodes
 * (upstream's, and ours: the logged broadcasts they relay, see
 * mixed-cluster.ts), which upstream's primary leaves to be dropped.
 */
import cluster, { type Worker } from "node:cluster";
import { randomBytes } from "node:crypto";
import type { ClientConfig, Pool } from "pg";
import { MessageType, type ClusterMessage, type ClusterResponse } from "socket.io-adapter";
import { AttachmentsTable } from "./attachments-table.js";
import { ClusterBus } from "./cluster-bus.js";
import { debug } from "./debug.js";
import { directConnectionConfig } from "./direct-connection.js";
import { Listener } from "./listener.js";
import { OptionsError, resolveOptions, type UpstreamCompatibleOptions } from "./options.js";

/** What `@socket.io/cluster-adapter` puts on its IPC messages (it ignores messages without it). */
const MESSAGE_SOURCE = "_sio_adapter";

/** A worker's message as relayed: the primary's id marks the ones it published itself. */
type RelayedMessage = (ClusterMessage | ClusterResponse) & { source?: string; nodeId?: string };

export interface PrimaryOptions extends UpstreamCompatibleOptions {
  /** Schema holding the migrated attachments table used when `tableName` is not given (see `tableName`). @default "socket_io" */
  schema?: string;
  /** Settings of the LISTEN connection when the pool goes through a pooler in transaction mode (see the adapter's `directConnection`). */
  directConnection?: ClientConfig;
}

/** What `setupPrimary()` returns. */
export interface Primary {
  /** Stops relaying and closes the LISTEN connection (the pool stays yours). */
  close(): Promise<void>;
}

/**
 * Relays the cluster messages of this primary's workers (running
 * `@socket.io/cluster-adapter`) to the other nodes through Postgres, and
 * theirs to the workers. Call it in the primary process.
 */
export function setupPrimary(pool: Pool, options: PrimaryOptions = {}): Primary {
  if (!cluster.isPrimary) {
    throw new OptionsError("socket.io-postgres-recovery: setupPrimary() must be called in the primary process of node:cluster");
  }
  const { schema, directConnection, ...upstreamOptions } = options;
  const opts = resolveOptions({
    ...upstreamOptions,
    ...(schema === undefined ? {} : { schema }),
    ...(directConnection === undefined ? {} : { directConnection }),
  });
  const report = (err: Error) => {
    try {
      opts.errorHandler(err);
    } catch (handlerError) {
      debug("errorHandler threw: %O", handlerError);
    }
  };
  const nodeId = randomBytes(8).toString("hex");
  const attachments = new AttachmentsTable(pool, opts.attachmentsTable, report);
  const toWorkers = (message: RelayedMessage, except?: Worker) => {
    for (const worker of Object.values(cluster.workers ?? {})) {
      if (worker && worker !== except && worker.isConnected()) worker.send({ ...message, source: MESSAGE_SOURCE }, () => undefined);
    }
  };
  const bus = new ClusterBus(pool, {
    channelPrefix: opts.channelPrefix,
    payloadThreshold: opts.payloadThreshold,
    attachmentsTable: attachments,
    isFromSelf: () => false,
    dispatch: (message: RelayedMessage) => {
      if (message.nodeId !== nodeId) toWorkers(message);
    },
    onError: report,
  });
  const listener = new Listener({
    connection: directConnectionConfig(pool, opts.directConnection),
    checkIntervalMs: opts.listenerCheckIntervalMs,
    onNotification: (channel, payload) => {
      if (bus.owns(channel)) bus.receive(payload, channel);
    },
    onReconnected: () => undefined,
    onError: report,
  });
  listener.start();
  attachments.name().catch(() => undefined);

  const onWorkerMessage = (worker: Worker, message: unknown) => {
    if (!isClusterAdapterMessage(message)) return;
    if (message.type === MessageType.INITIAL_HEARTBEAT) {
      // LISTEN before publishing: the other nodes answer the initial heartbeat at once.
      void listener
        .listen(bus.channelOf(message.nsp))
        .catch(report)
        .then(() => relay(worker, message));
      return;
    }
    relay(worker, message);
  };
  const relay = (worker: Worker, message: RelayedMessage) => {
    toWorkers(message, worker);
    const tagged: RelayedMessage = { ...message, nodeId };
    bus.publish(tagged).catch(() => undefined); // failures are reported by the bus
  };
  cluster.on("message", onWorkerMessage);

  // Rows older than cleanupInterval go, as upstream's primary does (our nodes' pruner does it too).
  const cleanup = setInterval(() => {
    attachments
      .name()
      .then((table) => pool.query(`DELETE FROM ${table} WHERE created_at < now() - $1 * interval '1 millisecond'`, [opts.cleanupInterval]))
      .catch(report);
  }, opts.cleanupInterval);
  cleanup.unref();

  let closing: Promise<void> | undefined;
  return {
    close() {
      closing ??= (async () => {
        cluster.off("message", onWorkerMessage);
        clearInterval(cleanup);
        await bus.idle();
        await listener.close();
      })();
      return closing;
    },
  };
}

function isClusterAdapterMessage(message: unknown): message is RelayedMessage {
  if (typeof message !== "object" || message === null) return false;
  const m = message as Partial<RelayedMessage>;
  return m.source === MESSAGE_SOURCE && typeof m.nsp === "string" && typeof m.type === "number";
}
