/**
 * The run's own Postgres database (created at start, dropped at the end), so
 * that pg_stat_database deltas count only the bench's transactions, and a
 * LISTEN connection that counts NOTIFYs on given channels.
 */
import pg from "pg";

export interface RunDatabase {
  url: string;
  name: string;
  /** Committed transactions of this database so far (pg_stat_database, flushed by backends with some delay). */
  commits(): Promise<number>;
  /** Rows updated in `schema.table` so far (pg_stat_user_tables, same delay). */
  updates(schema: string, table: string): Promise<number>;
  drop(): Promise<void>;
}

async function adminQuery(baseUrl: string, sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: baseUrl });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

export async function createRunDatabase(baseUrl: string): Promise<RunDatabase> {
  const name = `bench_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`;
  await adminQuery(baseUrl, `CREATE DATABASE ${name}`);
  const url = new URL(baseUrl);
  url.pathname = `/${name}`;
  const statsPool = new pg.Pool({ connectionString: baseUrl, max: 1 });
  const tablePool = new pg.Pool({ connectionString: url.toString(), max: 1 });
  let dropped = false;
  return {
    url: url.toString(),
    name,
    async commits() {
      const { rows } = await statsPool.query<{ n: string }>(
        "SELECT xact_commit::text AS n FROM pg_stat_database WHERE datname = $1",
        [name],
      );
      return Number(rows[0]?.n ?? 0);
    },
    async updates(schema, table) {
      const { rows } = await tablePool.query<{ n: string }>(
        "SELECT n_tup_upd::text AS n FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2",
        [schema, table],
      );
      return Number(rows[0]?.n ?? 0);
    },
    async drop() {
      if (dropped) return;
      dropped = true;
      await tablePool.end().catch(() => undefined);
      await statsPool.end().catch(() => undefined);
      await adminQuery(baseUrl, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}

/** Counts NOTIFYs delivered on `channels` of database `url` until `stop()`. */
export async function countNotifies(url: string, channels: string[]): Promise<{ count(): number; stop(): Promise<void> }> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  let n = 0;
  client.on("notification", () => n++);
  for (const channel of channels) await client.query(`LISTEN "${channel.replace(/"/g, '""')}"`);
  return {
    count: () => n,
    stop: () => client.end(),
  };
}

export async function serverVersion(url: string): Promise<string> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows } = await client.query<{ v: string }>("SELECT current_setting('server_version') AS v");
    return rows[0]?.v ?? "?";
  } finally {
    await client.end();
  }
}
