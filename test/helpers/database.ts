/**
 * A fresh database per test file (or per test), on the server global setup chose.
 *
 *   const db = await createTestDatabase("migrate", { migrated: true });
 *   const pool = new pg.Pool({ connectionString: db.url });
 *   ...
 *   await pool.end(); await db.drop();
 *
 * `migrated: true` clones the run's template (already migrated into schema
 * `socket_io`), which is much faster than migrating each database.
 */
import { randomBytes } from "node:crypto";
import pg from "pg";
import { inject } from "vitest";
import { databaseUrl, dropDatabase, withAdminClient } from "./admin.js";

export interface TestDatabase {
  /** Connection string of the new database (superuser). */
  readonly url: string;
  readonly name: string;
  /** Disconnects everyone from the database and drops it; safe to call twice. */
  drop(): Promise<void>;
}

export interface CreateTestDatabaseOptions {
  /** Clone the migrated template (schema `socket_io` ready) instead of creating an empty database. */
  migrated?: boolean;
}

/** Superuser connection string of the run's server (its maintenance database). */
export function adminUrl(): string {
  return inject("adminDatabaseUrl");
}

const CLONE_LOCK = "socket.io-postgres-recovery:test:clone-template";
const CLONE_ATTEMPTS = 50;

export async function createTestDatabase(label: string, options: CreateTestDatabaseOptions = {}): Promise<TestDatabase> {
  const admin = adminUrl();
  const safeLabel = label.toLowerCase().replace(/[^a-z0-9_]+/g, "_").slice(0, 40);
  const name = `t_${safeLabel}_${randomBytes(4).toString("hex")}`;
  const quoted = pg.escapeIdentifier(name);

  if (options.migrated) {
    const template = pg.escapeIdentifier(inject("templateDatabase"));
    await withAdminClient(admin, async (client) => {
      // Serialize clones across workers (and concurrent runs on one server), and retry while
      // the template still shows a connection (Postgres refuses to copy a database in use).
      await client.query("SELECT pg_advisory_lock(hashtext($1))", [CLONE_LOCK]);
      for (let attempt = 1; ; attempt++) {
        try {
          await client.query(`CREATE DATABASE ${quoted} TEMPLATE ${template}`);
          return;
        } catch (err) {
          const inUse = typeof err === "object" && err !== null && "code" in err && err.code === "55006";
          if (!inUse || attempt >= CLONE_ATTEMPTS) throw err;
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      }
    }); // ending the client releases the advisory lock
  } else {
    await withAdminClient(admin, (client) => client.query(`CREATE DATABASE ${quoted}`));
  }

  let dropped: Promise<void> | undefined;
  return {
    url: databaseUrl(admin, name),
    name,
    drop: () => (dropped ??= dropDatabase(admin, name)),
  };
}
