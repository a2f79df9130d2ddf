/**
 * Running the CLI as users do: a real child process (`node --import tsx
 * src/cli.ts`), real exit codes and output. DATABASE_URL is removed from the
 * child's environment unless the test passes one. Each run costs about a
 * second (tsx compiles on start), so most command-line checks use
 * `runCliInProcess`, and child processes prove that the exit codes and
 * streams reach the shell.
 */
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import net from "node:net";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { expect } from "vitest";
import { main } from "../../src/cli/main.js";
import { knownMigrations, migrate } from "../../src/migrate.js";

const root = fileURLToPath(new URL("../..", import.meta.url));

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runCli(args: readonly string[], env: Record<string, string | undefined> = {}): Promise<CliRun> {
  const childEnv: NodeJS.ProcessEnv = { ...process.env, ...env };
  if (!("DATABASE_URL" in env)) delete childEnv.DATABASE_URL;
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ["--import", "tsx", "src/cli.ts", ...args],
      { cwd: root, env: childEnv, timeout: 30_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : null;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/**
 * The same CLI in this process (`main()` with captured output): for the many
 * command-line checks that need no process of their own. `env` is the whole
 * environment the CLI sees.
 */
export async function runCliInProcess(args: readonly string[], env: Record<string, string | undefined> = {}): Promise<CliRun> {
  let stdout = "";
  let stderr = "";
  const code = await main(args, env, {
    stdout: { write: (text: string) => (stdout += text) },
    stderr: { write: (text: string) => (stderr += text) },
  });
  return { code, stdout, stderr };
}

/** A failure is one line on stderr, nothing on stdout, no stack trace. */
export function expectOneLineFailure(run: CliRun, code: number, pattern: RegExp): void {
  expect(run.stderr).toMatch(pattern);
  expect(run.code).toBe(code);
  expect(run.stdout).toBe("");
  expect(run.stderr.endsWith("\n")).toBe(true);
  expect(run.stderr.trimEnd().split("\n")).toHaveLength(1);
  expect(run.stderr).toMatch(code === 2 ? /^socket\.io-postgres-recovery: usage error: / : /^socket\.io-postgres-recovery: error: /);
  expect(run.stderr).not.toMatch(/\n\s+at /);
}

/** A success prints on stdout only. */
export function expectSuccess(run: CliRun): void {
  expect(run.stderr).toBe("");
  expect(run.code).toBe(0);
}

/** A loopback port nothing listens on (bound, then closed). */
export async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** `url` pointed at 127.0.0.1:`port` (same user and database). */
export function urlWithPort(url: string, port: number): string {
  const u = new URL(url);
  u.hostname = "127.0.0.1";
  u.port = String(port);
  return u.toString();
}

/**
 * Creates `schema` with only the first `count` migrations applied, as an
 * older version of the package would have left it (the SQL files and the
 * journal rows drizzle writes).
 */
export async function migratePartially(url: string, schema: string, count: number): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const quoted = pg.escapeIdentifier(schema);
    await client.query(`CREATE SCHEMA ${quoted}`);
    await client.query(`SET search_path TO ${quoted}`);
    await client.query(
      `CREATE TABLE ${quoted}."__drizzle_migrations" (id SERIAL PRIMARY KEY, hash text NOT NULL, created_at bigint)`,
    );
    for (const m of knownMigrations().slice(0, count)) {
      const sql = readFileSync(new URL(`../../migrations/${m.tag}.sql`, import.meta.url), "utf8");
      for (const statement of sql.split("--> statement-breakpoint")) await client.query(statement);
      await client.query(`INSERT INTO ${quoted}."__drizzle_migrations" (hash, created_at) VALUES ($1, $2)`, [m.hash, m.createdAt]);
    }
  } finally {
    await client.end();
  }
}

let freshSchemas = 0;

/** A newly migrated schema in the database at `url`, so that tests of one file do not see each other's rows. */
export async function freshSchema(url: string, prefix: string): Promise<string> {
  const schema = `${prefix}_${++freshSchemas}`;
  const pool = new pg.Pool({ connectionString: url, max: 1 });
  try {
    await migrate(pool, { schema });
  } finally {
    await pool.end();
  }
  return schema;
}

/** One statement on a connection of its own. */
export async function sql<R extends pg.QueryResultRow = Record<string, unknown>>(
  url: string,
  text: string,
  params: unknown[] = [],
): Promise<R[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<R>(text, params)).rows;
  } finally {
    await client.end();
  }
}
