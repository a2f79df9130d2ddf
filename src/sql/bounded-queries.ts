/**
 * Every statement the adapter runs on the caller's pool gets a bound:
 * pg's per-query `query_timeout` (`queryTimeoutMs`). Without one, a statement
 * sent into a half-open connection waits forever: the batch whose commit is
 * in doubt is never retried, the namespace's log stalls behind it on this
 * node, and `io.close()` has something it can never flush.
 *
 * pg's timeout is client-side: the statement fails with "Query read timeout"
 * and the pool discards that connection (it was released with an error), so
 * the retry runs on another one. On a healthy but slow server the statement
 * may still complete; the writes are idempotent (see LogQueries.append), and
 * a retry waits for the first attempt's row locks.
 *
 * The pool is the caller's: its settings are left alone. When the caller set
 * a shorter `query_timeout` on it, that one applies.
 */
import type { Pool, QueryConfig, QueryResult, QueryResultRow } from "pg";

/** What the query modules need of a pool: one statement at a time, promise style. */
export interface Queryable {
  query<R extends QueryResultRow = QueryResultRow>(text: string, values?: unknown[]): Promise<QueryResult<R>>;
  query<R extends QueryResultRow = QueryResultRow>(config: QueryConfig): Promise<QueryResult<R>>;
}

/** pg reads `query_timeout` from the query's config too; its types only know it on the client's. */
type TimedQueryConfig = QueryConfig & { query_timeout?: number };

/**
 * `pool` with `timeoutMs` on every query; undefined: the pool as it is (its
 * own `query_timeout`, if any, applies).
 */
export function boundedQueries(pool: Pool, timeoutMs: number | undefined): Queryable {
  const own = (pool.options as { query_timeout?: unknown }).query_timeout;
  const poolTimeout = typeof own === "number" && own > 0 ? own : Infinity;
  if (timeoutMs === undefined || poolTimeout <= timeoutMs) return pool;
  return {
    query<R extends QueryResultRow>(textOrConfig: string | QueryConfig, values?: unknown[]): Promise<QueryResult<R>> {
      const config: TimedQueryConfig =
        typeof textOrConfig === "string" ? { text: textOrConfig, values } : { ...textOrConfig };
      config.query_timeout = timeoutMs;
      return pool.query<R>(config);
    },
  };
}
