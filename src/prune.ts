/**
 * A pruning pass on demand, for operators (`socket.io-postgres-recovery
 * prune`). Unlike a node's scheduled pass it knows no node settings: each
 * namespace's log is pruned with the retention its nodes stored
 * (`namespaces.retention_ms`), and a namespace without one is skipped.
 */
import type pg from "pg";
import { previewPrunePass, runPrunePass, type PrunePassReport, type PrunePlan } from "./pruner.js";
import { requireMigratedSchema } from "./schema-ready.js";
import { AttachmentsTable, type AttachmentsTableSpec } from "./attachments-table.js";
import { PruneQueries } from "./sql/prune-queries.js";
import { guardCheckedOut } from "./sql/guard-client.js";

const PREFIX = "socket.io-postgres-recovery:";

export interface PruneOptions {
  /** @default "socket_io" */
  schema?: string;
  /** Count what would be removed, in one read-only transaction; delete nothing. */
  dryRun?: boolean;
  /**
   * The adapter's `tableName`, unquoted: without `schema`, found through the
   * pool's search_path as the adapter does (default: `socket_io_attachments`
   * there, else in `schema`).
   */
  attachmentsTable?: { schema?: string; table: string };
  /** Age past which attachments go (ms); the adapter's `cleanupInterval`. @default 30000 */
  attachmentsMaxAgeMs?: number;
  /** Rows per DELETE. @default 5000 */
  batchSize?: number;
  /** How long to wait for a node's pass under way (ms). @default 10000 */
  lockTimeoutMs?: number;
  /**
   * The nodes' `channelPrefix`: expired sessions are announced on their log
   * channel. With another prefix the nodes still find them, at their next
   * poll (`pruneIntervalMs`). @default "socket.io"
   */
  channelPrefix?: string;
}

export interface PruneOutcome extends PrunePassReport {
  readonly schema: string;
  readonly dryRun: boolean;
}

export async function prune(pool: pg.Pool, options: PruneOptions = {}): Promise<PruneOutcome> {
  const { schema } = await requireMigratedSchema(pool, options.schema);
  const given = options.attachmentsTable;
  const table = given?.table ?? "socket_io_attachments";
  const spec: AttachmentsTableSpec = {
    schema: given?.schema,
    table,
    fallbackSchema: given?.schema === undefined && table === "socket_io_attachments" ? schema : undefined,
  };
  const attachments = await new AttachmentsTable(pool, spec, () => undefined).name();
  const logChannel = `${options.channelPrefix ?? "socket.io"}:${schema}:log`;
  // A channel Postgres cannot take (no node could listen to it either): the nodes' poll finds the announcements.
  const queries = new PruneQueries(schema, attachments, Buffer.byteLength(logChannel) <= 63 ? logChannel : undefined);
  const plan: PrunePlan = {
    retentionMs: (namespace) => namespace.storedRetentionMs ?? undefined,
    sessions: true,
    attachmentsMaxAgeMs: options.attachmentsMaxAgeMs ?? 30_000,
    batchSize: options.batchSize ?? 5000,
  };
  const dryRun = options.dryRun === true;
  const lockTimeoutMs = options.lockTimeoutMs ?? 10_000;
  const client = await pool.connect();
  const unguard = guardCheckedOut(client);
  let broken: Error | undefined;
  try {
    if (dryRun) return { schema, dryRun, ...(await previewPrunePass(client, queries, plan)) };
    if (!(await queries.lock(client, lockTimeoutMs))) {
      throw new Error(
        `${PREFIX} another pruning pass on schema "${schema}" held the lock for ${lockTimeoutMs} ms; try again (see pg_locks for the session holding it)`,
      );
    }
    try {
      return { schema, dryRun, ...(await runPrunePass(client, queries, plan, "cli")) };
    } finally {
      await queries.unlock(client);
    }
  } catch (err) {
    // A client that failed mid-pass may hold the lock or an open transaction: destroy it.
    broken = err instanceof Error ? err : new Error(String(err));
    throw err;
  } finally {
    const lost = unguard();
    client.release(broken ?? lost);
  }
}
