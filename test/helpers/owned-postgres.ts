/**
 * An embedded Postgres owned by one test file, so the test can stop and start
 * it (a Postgres restart) without touching the server the rest of the run uses.
 *
 *   const pg = await startOwnedPostgres();
 *   const url = await pg.createMigratedDatabase("faults");
 *   await pg.restart(); ...; await pg.destroy();
 *
 * Its data directory survives `stop()`/`start()` (a restart keeps the tables),
 * and is removed by `destroy()`. Always embedded, whatever DATABASE_URL says.
 */
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir, userInfo } from "node:os";
import path from "node:path";
import pg from "pg";
import { migrate } from "../../src/migrate.js";
import { importEmbeddedPostgres } from "../../tools/embedded-postgres.js";
import { adminQuery, databaseUrl } from "./admin.js";
import { freePort } from "../../tools/free-port.js";

export interface OwnedPostgres {
  readonly port: number;
  /** The server's data directory (copy it while stopped to put an older state back later). */
  readonly dataDir: string;
  /** Superuser connection string to the maintenance database. */
  readonly adminUrl: string;
  /** Whether the server process runs. */
  readonly running: boolean;
  /** Creates a database migrated into schema `socket_io`; returns its URL. */
  createMigratedDatabase(label: string): Promise<string>;
  /** Fast shutdown (SIGINT): every connection is closed by the server. */
  stop(): Promise<void>;
  start(): Promise<void>;
  restart(): Promise<void>;
  /** Stops the server and removes its data directory. Idempotent. */
  destroy(): Promise<void>;
}

/** Durability off (nothing here must survive a crash of the machine), room for several pools. */
const SETTINGS = { fsync: "off", synchronous_commit: "off", full_page_writes: "off", max_connections: "200" };
const PASSWORD = "password";

export async function startOwnedPostgres(): Promise<OwnedPostgres> {
  const EmbeddedPostgres = await importEmbeddedPostgres();
  const dir = await mkdtemp(path.join(tmpdir(), "sio-pg-faults-"));
  // Postgres refuses to run as root; embedded-postgres then runs it as the OS user `postgres`.
  const asRoot = userInfo().uid === 0;
  if (asRoot) await chmod(dir, 0o755);
  const log: string[] = [];
  const port = await freePort();
  const dataDir = path.join(dir, "data");
  const server = new EmbeddedPostgres({
    databaseDir: dataDir,
    port,
    user: "postgres",
    password: PASSWORD,
    authMethod: "scram-sha-256",
    persistent: true,
    createPostgresUser: asRoot,
    initdbFlags: ["--encoding=UTF8", "--locale=C", "--no-sync"],
    postgresFlags: [
      "-c", "listen_addresses=127.0.0.1",
      "-c", "unix_socket_directories=",
      ...Object.entries(SETTINGS).flatMap(([k, v]) => ["-c", `${k}=${v}`]),
    ],
    onLog: (message) => {
      log.push(message);
      if (log.length > 200) log.shift();
    },
    onError: (error) => log.push(String(error)),
  });
  let running = false;
  const start = async () => {
    try {
      await server.start();
    } catch (err) {
      // start() rejects without a reason when the server exits during start-up.
      throw new Error(`owned Postgres did not start; its output:\n${log.slice(-30).join("")}`, { cause: err });
    }
    running = true;
  };
  const stop = async () => {
    await server.stop();
    running = false;
  };
  try {
    await server.initialise();
    await start();
  } catch (err) {
    await server.stop().catch(() => {});
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  const adminUrl = `postgres://postgres:${PASSWORD}@127.0.0.1:${port}/postgres`;
  let destroyed: Promise<void> | undefined;
  return {
    port,
    dataDir,
    adminUrl,
    get running() {
      return running;
    },
    async createMigratedDatabase(label) {
      const name = `f_${label.toLowerCase().replace(/[^a-z0-9_]+/g, "_").slice(0, 40)}`;
      await adminQuery(adminUrl, `CREATE DATABASE ${pg.escapeIdentifier(name)}`);
      const url = databaseUrl(adminUrl, name);
      const pool = new pg.Pool({ connectionString: url, max: 1 });
      try {
        await migrate(pool, { schema: "socket_io" });
      } finally {
        await pool.end();
      }
      return url;
    },
    stop,
    start,
    async restart() {
      await stop();
      await start();
    },
    destroy() {
      destroyed ??= (async () => {
        try {
          await stop();
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      })();
      return destroyed;
    },
  };
}

