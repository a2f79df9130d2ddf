/**
 * What the database holds, for the page's cluster panel: per namespace its
 * head offset, retained log entries and stored sessions, and the last prune.
 */
import type pg from "pg";

export interface NamespaceStatus {
  name: string;
  head: number;
  retainedEntries: number;
  oldestOffset: number | null;
  storedSessions: number;
}

export interface DatabaseStatus {
  namespaces: NamespaceStatus[];
  lastPrune: { finishedAt: string | null; result: string | null } | null;
}

// The demo uses the default schema "socket_io".
export async function readDatabaseStatus(pool: pg.Pool): Promise<DatabaseStatus> {
  const namespaces = await pool.query<{ name: string; head: string; entries: string; oldest: string | null; sessions: string }>(
    `SELECT n.name, n.head::text AS head,
            (SELECT count(*) FROM socket_io.log_entries e WHERE e.namespace_id = n.id)::text AS entries,
            (SELECT min(e."offset") FROM socket_io.log_entries e WHERE e.namespace_id = n.id)::text AS oldest,
            (SELECT count(*) FROM socket_io.sessions s WHERE s.namespace_id = n.id)::text AS sessions
       FROM socket_io.namespaces n ORDER BY n.name`,
  );
  const prune = await pool.query<{ last_finished_at: Date | null; last_result: string | null }>(
    "SELECT last_finished_at, last_result FROM socket_io.maintenance ORDER BY last_finished_at DESC NULLS LAST LIMIT 1",
  );
  const last = prune.rows[0];
  return {
    namespaces: namespaces.rows.map((row) => ({
      name: row.name,
      head: Number(row.head),
      retainedEntries: Number(row.entries),
      oldestOffset: row.oldest === null ? null : Number(row.oldest),
      storedSessions: Number(row.sessions),
    })),
    lastPrune: last ? { finishedAt: last.last_finished_at?.toISOString() ?? null, result: last.last_result } : null,
  };
}
