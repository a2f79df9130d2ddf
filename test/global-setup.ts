/**
 * Once per `vitest run`: choose the Postgres server (see helpers/postgres-server.ts),
 * build the migrated template database that test databases are cloned from,
 * and hand both to the test files through `provide`/`inject`.
 */
import { randomBytes } from "node:crypto";
import pg from "pg";
import type { TestProject } from "vitest/node";
import { migrate } from "../src/migrate.js";
import { adminQuery, databaseUrl, dropDatabase } from "./helpers/admin.js";
import { startPostgresServer, type PostgresKind } from "./helpers/postgres-server.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** Superuser connection string of the run's server (maintenance database). */
    adminDatabaseUrl: string;
    /** Where that server came from. */
    postgresKind: PostgresKind;
    /** Database migrated into schema `socket_io`, cloned by `createTestDatabase(label, { migrated: true })`. */
    templateDatabase: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const started = Date.now();
  const server = await startPostgresServer();
  // Unique per run: two runs may share a DATABASE_URL server.
  const templateDatabase = `sio_template_${randomBytes(4).toString("hex")}`;
  try {
    await adminQuery(server.adminUrl, `CREATE DATABASE "${templateDatabase}"`);
    const pool = new pg.Pool({ connectionString: databaseUrl(server.adminUrl, templateDatabase), max: 1 });
    try {
      await migrate(pool, { schema: "socket_io" });
    } finally {
      await pool.end();
    }
  } catch (err) {
    await dropDatabase(server.adminUrl, templateDatabase).catch(() => {});
    await server.stop().catch(() => {});
    throw err;
  }
  console.log(`[global-setup] Postgres: ${server.description}; template ${templateDatabase} ready in ${Date.now() - started} ms`);

  project.provide("adminDatabaseUrl", server.adminUrl);
  project.provide("postgresKind", server.kind);
  project.provide("templateDatabase", templateDatabase);

  return async () => {
    try {
      await dropDatabase(server.adminUrl, templateDatabase);
    } finally {
      await server.stop();
    }
  };
}
