/**
 * A real PgBouncer (the system's binary: Debian's `pgbouncer` package) in
 * transaction mode, in front of the run's Postgres, for one test.
 *
 *   const bouncer = await startPgbouncer(db.url);   // own ini, own port
 *   new pg.Pool({ connectionString: bouncer.urlOf(db.name) });
 *   await bouncer.stop();
 *
 * Clients authenticate to PgBouncer without a password (auth_type trust, on
 * 127.0.0.1 only); PgBouncer logs in to Postgres with the run's credentials.
 */
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import pg from "pg";

/** The pgbouncer binary, or undefined (Debian installs it in /usr/sbin, often not on a user's PATH). */
export function pgbouncerBinary(): string | undefined {
  for (const dir of [...(process.env.PATH ?? "").split(":"), "/usr/sbin", "/usr/local/sbin"]) {
    if (dir && existsSync(path.join(dir, "pgbouncer"))) return path.join(dir, "pgbouncer");
  }
  return undefined;
}

export interface Pgbouncer {
  readonly port: number;
  /** Connection string through PgBouncer to `database` (no password: trust). */
  urlOf(database: string): string;
  /** Runs a statement on PgBouncer's admin console (SHOW POOLS, SHOW STATS, …). */
  admin<T extends pg.QueryResultRow>(sql: string): Promise<T[]>;
  /** Stops PgBouncer (SIGINT: at once, closing every connection) and removes its folder. */
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** `value` for PgBouncer's connection strings: quoted, with ' and \ escaped. */
function quoted(value: string): string {
  return `'${value.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

export async function startPgbouncer(targetUrl: string, { poolSize = 4 }: { poolSize?: number } = {}): Promise<Pgbouncer> {
  const binary = pgbouncerBinary();
  if (!binary) throw new Error("pgbouncer is not installed");
  const target = new URL(targetUrl);
  const user = decodeURIComponent(target.username || "postgres");
  const password = decodeURIComponent(target.password);
  const port = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), "pgbouncer-test-"));
  // PgBouncer refuses to run as root: as root it switches to the user postgres, which must read its folder.
  const asRoot = process.getuid?.() === 0;
  const server = [`host=${quoted(target.hostname)}`, `port=${target.port || 5432}`, `user=${quoted(user)}`];
  if (password) server.push(`password=${quoted(password)}`);
  writeFileSync(path.join(dir, "userlist.txt"), `"${user}" ""\n`);
  writeFileSync(
    path.join(dir, "pgbouncer.ini"),
    [
      "[databases]",
      `* = ${server.join(" ")}`,
      "[pgbouncer]",
      "listen_addr = 127.0.0.1",
      `listen_port = ${port}`,
      "unix_socket_dir =",
      "auth_type = trust",
      `auth_file = ${path.join(dir, "userlist.txt")}`,
      `admin_users = ${user}`,
      "pool_mode = transaction",
      `default_pool_size = ${poolSize}`,
      "max_client_conn = 200",
      // pg sends no such parameters by default, but a client may.
      "ignore_startup_parameters = extra_float_digits,options",
      asRoot ? "user = postgres" : "",
      "",
    ].join("\n"),
  );
  if (asRoot) {
    const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim());
    const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim());
    for (const file of [dir, path.join(dir, "userlist.txt"), path.join(dir, "pgbouncer.ini")]) chownSync(file, uid, gid);
    chmodSync(dir, 0o700);
  }
  const child: ChildProcess = spawn(binary, [path.join(dir, "pgbouncer.ini")], { stdio: ["ignore", "pipe", "pipe"] });
  const output: string[] = [];
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => output.push(chunk));
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => output.push(chunk));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));

  const urlOf = (database: string) => `postgres://${encodeURIComponent(user)}@127.0.0.1:${port}/${encodeURIComponent(database)}`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGINT");
      const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };

  // Ready once it answers on its admin console.
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`pgbouncer exited at start: ${output.join("")}`);
    }
    const probe = new pg.Client({ connectionString: urlOf("pgbouncer"), connectionTimeoutMillis: 1000 });
    probe.on("error", () => {});
    try {
      await probe.connect();
      await probe.query("SHOW VERSION");
      break;
    } catch (err) {
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`pgbouncer did not answer within 10 s: ${String(err)}; ${output.join("")}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    } finally {
      await probe.end().catch(() => {});
    }
  }

  return {
    port,
    urlOf,
    async admin<T extends pg.QueryResultRow>(sql: string) {
      // The admin console speaks the simple query protocol only: no parameters.
      const client = new pg.Client({ connectionString: urlOf("pgbouncer") });
      client.on("error", () => {});
      await client.connect();
      try {
        return (await client.query<T>(sql)).rows;
      } finally {
        await client.end().catch(() => {});
      }
    },
    stop,
  };
}
