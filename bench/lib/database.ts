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
  /**
   * Write transactions our adapter committed so far: every append is batch
   * number last_batch + 1 of its writer, so the sum grows by one per append (exact, no delay).
   */
  ourAppends(): Promise<number>;
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
    async ourAppends() {
      const { rows } = await tablePool.query<{ n: string }>("SELECT coalesce(sum(last_batch), 0)::text AS n FROM socket_io.log_writers");
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
export async function countNotifies(url: string, channels: string[]): Promise<{ count(channel?: string): number; stop(): Promise<void> }> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const perChannel = new Map<string, number>();
  client.on("notification", (msg) => perChannel.set(msg.channel, (perChannel.get(msg.channel) ?? 0) + 1));
  for (const channel of channels) await client.query(`LISTEN "${channel.replace(/"/g, '""')}"`);
  return {
    count: (channel) => (channel === undefined ? [...perChannel.values()].reduce((a, b) => a + b, 0) : (perChannel.get(channel) ?? 0)),
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
