/**
 * SQL of `status`: read-only looks at one schema's tables. Ages and expiry
 * are computed with the database's clock (`now()`), the one pruning uses.
 * bigint columns come back as text and are converted by the caller.
 */
import type { PoolClient } from "pg";
import { qualifiedName } from "./identifiers.js";

export interface NamespaceStatusRow {
  name: string;
  head: string;
  retention_ms: string | null;
  oldest_offset: string | null;
  oldest_created_at: Date | null;
  oldest_age_ms: string | null;
  entries: string;
  entry_bytes: string;
  sessions: string;
  session_lag: string | null;
  connected: string;
  writers: string;
}

export interface NodesStatusRow {
  alive: string;
  dead: string;
}

export interface SessionsStatusRow {
  total: string;
  live: string;
  expired: string;
  bytes: string;
  earliest_expires_at: Date | null;
  latest_expires_at: Date | null;
}

export interface TableSizeRow {
  table_name: string;
  rows_estimate: string;
  total_bytes: string;
  index_bytes: string;
  /** pg_stat_user_tables.n_dead_tup: rows deleted or updated and not yet vacuumed. */
  dead_rows: string;
  /** The table's own `autovacuum_enabled` storage parameter is false. */
  autovacuum_disabled: boolean;
}

export interface VacuumSettingsRow {
  /** `autovacuum` and `track_counts` (which autovacuum needs) are both on. */
  autovacuum_on: boolean;
}

export interface MaintenanceRow {
  last_started_at: Date | null;
  last_finished_at: Date | null;
  finished_age_ms: string | null;
  last_result: string | null;
}

/** The tables a deployment's migrations create, in the order `status` lists them. */
export const STATUS_TABLES = [
  "namespaces",
  "log_entries",
  "log_writers",
  "log_gaps",
  "sessions",
  "nodes",
  // Emits staged by transactions (createEmitter), waiting for a node to move them into the log: grows while no node runs.
  "staged_events",
  "expired_sessions",
  "socket_io_attachments",
  "maintenance",
] as const;

/**
 * Sessions waiting to be restored: written at a disconnect, or a crashed
 * socket's skeleton put back. Skeletons of connected sockets (no expiry while
 * their node lives) and taken sessions (fences) are not counted.
 */
const WAITING = "'disconnected', 'orphaned'";

export class StatusQueries {
  private readonly namespaces: string;
  private readonly log: string;
  private readonly sessions: string;
  private readonly writers: string;
  private readonly maintenance: string;
  private readonly nodes: string;

  constructor(private readonly schema: string) {
    this.namespaces = qualifiedName(schema, "namespaces");
    this.log = qualifiedName(schema, "log_entries");
    this.sessions = qualifiedName(schema, "sessions");
    this.writers = qualifiedName(schema, "log_writers");
    this.maintenance = qualifiedName(schema, "maintenance");
    this.nodes = qualifiedName(schema, "nodes");
  }

  async databaseNow(client: PoolClient): Promise<Date> {
    const { rows } = await client.query<{ now: Date }>("SELECT now() AS now");
    return rows[0]!.now;
  }

  /**
   * One row per namespace. The oldest entry is found through the primary key
   * (namespace_id, offset); counting and summing read the namespace's entries.
   */
  async namespaceRows(client: PoolClient): Promise<NamespaceStatusRow[]> {
    const { rows } = await client.query<NamespaceStatusRow>(
      `SELECT n.name, n.head::text AS head, n.retention_ms::text AS retention_ms,
              oldest."offset"::text AS oldest_offset, oldest.created_at AS oldest_created_at,
              (extract(epoch FROM now() - oldest.created_at) * 1000)::bigint::text AS oldest_age_ms,
              totals.entries::text AS entries, totals.bytes::text AS entry_bytes,
              (SELECT count(*) FROM ${this.sessions} s
                WHERE s.namespace_id = n.id AND s.state IN (${WAITING}))::text AS sessions,
              (SELECT n.head - min(s.last_offset) FROM ${this.sessions} s
                WHERE s.namespace_id = n.id AND s.state IN (${WAITING}) AND s.expires_at > now())::text AS session_lag,
              (SELECT count(*) FROM ${this.sessions} s
                WHERE s.namespace_id = n.id AND s.state = 'connected')::text AS connected,
              (SELECT count(*) FROM ${this.writers} w WHERE w.namespace_id = n.id)::text AS writers
         FROM ${this.namespaces} n
         LEFT JOIN LATERAL (
           SELECT e."offset", e.created_at FROM ${this.log} e
            WHERE e.namespace_id = n.id ORDER BY e."offset" LIMIT 1
         ) oldest ON true
         CROSS JOIN LATERAL (
           SELECT count(*) AS entries, COALESCE(sum(octet_length(e.payload)), 0) AS bytes
             FROM ${this.log} e WHERE e.namespace_id = n.id
         ) totals
        ORDER BY n.name`,
    );
    return rows;
  }

  /** Nodes by liveness as the adapters judge it (node-liveness.ts): a heartbeat within dead_after_ms, not declared dead. */
  async nodesRow(client: PoolClient): Promise<NodesStatusRow> {
    const { rows } = await client.query<NodesStatusRow>(
      `SELECT count(*) FILTER (WHERE alive)::text AS alive, count(*) FILTER (WHERE NOT alive)::text AS dead
         FROM (SELECT NOT declared_dead AND heartbeat_at > now() - dead_after_ms * interval '1 millisecond' AS alive
                 FROM ${this.nodes}) n`,
    );
    return rows[0]!;
  }

  async sessionsRow(client: PoolClient): Promise<SessionsStatusRow> {
    const { rows } = await client.query<SessionsStatusRow>(
      `SELECT count(*)::text AS total,
              count(*) FILTER (WHERE expires_at > now())::text AS live,
              count(*) FILTER (WHERE expires_at <= now())::text AS expired,
              COALESCE(sum(octet_length(payload)), 0)::text AS bytes,
              min(expires_at) AS earliest_expires_at,
              max(expires_at) AS latest_expires_at
         FROM ${this.sessions} WHERE state IN (${WAITING})`,
    );
    return rows[0]!;
  }

  /** Sizes of the deployment's tables that exist (heap + TOAST + indexes, and indexes alone). */
  async tableSizes(client: PoolClient): Promise<TableSizeRow[]> {
    const { rows } = await client.query<TableSizeRow>(
      `SELECT t.name AS table_name,
              GREATEST(c.reltuples, 0)::bigint::text AS rows_estimate,
              pg_total_relation_size(c.oid)::text AS total_bytes,
              pg_indexes_size(c.oid)::text AS index_bytes,
              COALESCE(st.n_dead_tup, 0)::text AS dead_rows,
              COALESCE('autovacuum_enabled=false' = ANY (c.reloptions), false) AS autovacuum_disabled
         FROM unnest($2::text[]) WITH ORDINALITY AS t(name, ord)
         JOIN pg_class c ON c.relname = t.name AND c.relkind IN ('r', 'p')
         JOIN pg_namespace ns ON ns.oid = c.relnamespace AND ns.nspname = $1
         LEFT JOIN pg_stat_user_tables st ON st.relid = c.oid
        ORDER BY t.ord`,
      [this.schema, [...STATUS_TABLES]],
    );
    return rows;
  }

  /** Whether the server vacuums on its own: pruning deletes rows, and only vacuum makes their space reusable. */
  async vacuumSettings(client: PoolClient): Promise<VacuumSettingsRow> {
    const { rows } = await client.query<VacuumSettingsRow>(
      `SELECT current_setting('autovacuum') = 'on' AND current_setting('track_counts') = 'on' AS autovacuum_on`,
    );
    return rows[0]!;
  }

  async lastPrune(client: PoolClient): Promise<MaintenanceRow | undefined> {
    const { rows } = await client.query<MaintenanceRow>(
      `SELECT last_started_at, last_finished_at, last_result,
              (extract(epoch FROM now() - last_finished_at) * 1000)::bigint::text AS finished_age_ms
         FROM ${this.maintenance} WHERE task = 'prune'`,
    );
    return rows[0];
  }
}
