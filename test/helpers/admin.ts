/**
 * Superuser operations on the run's Postgres server: each through its own
 * short-lived client, so nothing stays connected to a database being cloned or dropped.
 */
import pg from "pg";

/** Runs statements on the server's maintenance database with a fresh client. */
export async function withAdminClient<T>(adminUrl: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 10_000 });
  client.on("error", () => {}); // a dropped admin connection surfaces through the failed query
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

export async function adminQuery(adminUrl: string, sql: string): Promise<void> {
  await withAdminClient(adminUrl, (client) => client.query(sql));
}

/** The admin connection string pointed at another database of the same server. */
export function databaseUrl(adminUrl: string, database: string): string {
  const url = new URL(adminUrl);
  url.pathname = `/${encodeURIComponent(database)}`;
  return url.toString();
}

/** Drops the database, disconnecting whoever is still in it. */
export async function dropDatabase(adminUrl: string, database: string): Promise<void> {
  await adminQuery(adminUrl, `DROP DATABASE IF EXISTS ${pg.escapeIdentifier(database)} WITH (FORCE)`);
}
