/**
 * socket.io-postgres-recovery: a Socket.IO adapter for `pg` pools with
 * durable, lossless connection state recovery. See README.md.
 */
import type { Namespace } from "socket.io";
import type { Pool } from "pg";
import { PostgresRecoveryAdapter } from "./adapter.js";
import { NO_METRICS, recoveryMetrics } from "./metrics.js";
import { NodeContext } from "./node-context.js";
import { OptionsError, resolveOptions, type PostgresRecoveryAdapterOptions } from "./options.js";
import { loadApi } from "./tracing.js";

export { PostgresRecoveryAdapter } from "./adapter.js";
export type { OutageEndedEvent, OutageStartedEvent, RefusedEvent, RestoredEvent } from "./adapter.js";
export { OptionsError } from "./options.js";
export { createEmitter, Emitter, EmitterError } from "./emitter.js";
export type { EmitterOptions } from "./emitter.js";
export type { MetricsRegistry } from "./metrics.js";
export { setupPrimary } from "./node-cluster.js";
export type { Primary, PrimaryOptions } from "./node-cluster.js";
export type { DeadBy } from "./sql/session-queries.js";
export type { PostgresRecoveryAdapterOptions, RecoveryOptions, UpstreamCompatibleOptions } from "./options.js";
export { LISTENER_APPLICATION_NAME } from "./listener.js";
export { OperatorNotice } from "./operator-events.js";
export type { OperatorEvent } from "./operator-events.js";
export { SPAN_NAMES } from "./tracing.js";
export { migrate } from "./migrate.js";
export { collectStatus, SchemaNotReadyError } from "./status.js";
export type {
  LastPruneStatus,
  MigrationsState,
  NamespaceStatus,
  NodesStatus,
  OldestEntry,
  RecoveryStatus,
  SchemaNotReadyReason,
  SessionsStatus,
  StatusOptions,
  TableStatus,
} from "./status.js";

/**
 * Returns the adapter factory to give Socket.IO (`new Server({ adapter })` or
 * `io.adapter()`). One call per server: its namespaces share one LISTEN
 * connection. The pool stays yours: closing the server never ends it.
 *
 * @param pool - a `pg.Pool`; the adapter borrows connections for short queries
 *   and opens one dedicated LISTEN connection with the pool's settings (or
 *   `directConnection`'s, when the pool goes through a pooler in transaction mode).
 * @param options - see {@link PostgresRecoveryAdapterOptions}; validated now.
 */
export function createAdapter(
  pool: Pool,
  options?: PostgresRecoveryAdapterOptions,
): (nsp: Namespace) => PostgresRecoveryAdapter {
  if (!pool || typeof pool.query !== "function" || typeof pool.connect !== "function") {
    throw new OptionsError("socket.io-postgres-recovery: createAdapter(pool, options) needs a pg.Pool as its first argument");
  }
  const opts = resolveOptions(options);
  loadApi();
  // Registered now (prom-client missing is an error of this call), shared by every node given this registry.
  const metrics = opts.metrics ? recoveryMetrics(opts.metrics) : NO_METRICS;
  let context: NodeContext | undefined;
  // A plain function, not an arrow: Socket.IO calls it with `new`, and returning an object from it is what `new` yields.
  return function postgresRecoveryAdapter(nsp: Namespace) {
    if (!context || context.closed) context = new NodeContext(pool, opts, metrics);
    return new PostgresRecoveryAdapter(nsp, context);
  };
}
