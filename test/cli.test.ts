/** The CLI as users run it: a real child process, real exit codes and output. */
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { knownMigrations } from "../src/migrate.js";
import { createTestDatabase, type TestDatabase } from "./helpers/database.js";

const root = fileURLToPath(new URL("..", import.meta.url));

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], env: Record<string, string | undefined> = {}): Promise<Run> {
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

/** A failure is one line on stderr, nothing on stdout. */
function expectOneLineFailure(run: Run, code: number, pattern: RegExp): void {
  expect(run.code).toBe(code);
  expect(run.stdout).toBe("");
  expect(run.stderr.endsWith("\n")).toBe(true);
  expect(run.stderr.trimEnd().split("\n")).toHaveLength(1);
  expect(run.stderr).toMatch(/^socket\.io-postgres-recovery: (usage )?error: /);
  expect(run.stderr).toMatch(pattern);
}

const tags = knownMigrations().map((m) => m.tag);
let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase("cli");
});
afterAll(async () => {
  await db?.drop();
});

describe("migrate", () => {
  it("migrates, then reports the schema up to date (exit 0, one line each)", async () => {
    const first = await cli(["migrate", "--database-url", db.url, "--schema", "cli_schema"]);
    expect(first).toMatchObject({ code: 0, stderr: "" });
    expect(first.stdout).toMatch(new RegExp(`^migrated schema "cli_schema" on .*: applied ${tags.join(", ")} \\(0 applied earlier\\)\\n$`));

    const second = await cli(["migrate", "--schema", "cli_schema"], { DATABASE_URL: db.url });
    expect(second).toMatchObject({ code: 0, stderr: "" });
    expect(second.stdout).toMatch(/^schema "cli_schema" on .* is up to date \(\d+ migration\(s\) applied earlier\)\n$/);

    const pool = new pg.Pool({ connectionString: db.url, max: 1 });
    try {
      const { rows } = await pool.query("SELECT count(*)::int AS n FROM cli_schema.__drizzle_migrations");
      expect(rows).toEqual([{ n: tags.length }]);
    } finally {
      await pool.end();
    }
  });

  it("fails in one line when nothing listens at the address", async () => {
    const run = await cli(["migrate", "--database-url", "postgres://postgres@127.0.0.1:1/postgres"]);
    expectOneLineFailure(run, 1, /cannot connect to Postgres at 127\.0\.0\.1:1\/postgres: connection refused/);
  });

  it("fails in one line when the credentials are refused", async () => {
    const url = new URL(db.url);
    url.username = "no_such_role";
    url.password = "wrong";
    const run = await cli(["migrate", "--database-url", url.toString()]);
    expectOneLineFailure(run, 1, /refused the credentials: .*"no_such_role"/);
    expect(run.stderr).not.toContain("wrong"); // no password in messages
  });

  it("refuses an invalid schema name before connecting", async () => {
    const run = await cli(["migrate", "--database-url", "postgres://postgres@127.0.0.1:1/postgres", "--schema", "bad-name"]);
    expectOneLineFailure(run, 2, /invalid --schema "bad-name"/);
  });

  it("asks for a database when there is no --database-url nor DATABASE_URL", async () => {
    expectOneLineFailure(await cli(["migrate"]), 2, /pass --database-url URL or set DATABASE_URL/);
    expectOneLineFailure(await cli(["migrate"], { DATABASE_URL: "" }), 2, /pass --database-url URL or set DATABASE_URL/);
  });
});

describe("command line", () => {
  it("prints help with exit 0, globally and per command", async () => {
    for (const args of [["--help"], ["-h"]]) {
      const run = await cli(args);
      expect(run).toMatchObject({ code: 0, stderr: "" });
      expect(run.stdout).toMatch(/^Usage: socket\.io-postgres-recovery <command>/);
      expect(run.stdout).toContain("migrate");
    }
    const run = await cli(["migrate", "--help"]);
    expect(run).toMatchObject({ code: 0, stderr: "" });
    expect(run.stdout).toMatch(/^Usage: socket\.io-postgres-recovery migrate/);
    expect(run.stdout).toContain("--database-url");
  });

  it("rejects unknown commands, unknown flags and stray arguments in one line (exit 2)", async () => {
    const [command, flag, positional, missingValue, scheme] = await Promise.all([
      cli(["frobnicate"]),
      cli(["migrate", "--frob"]),
      cli(["migrate", "extra"]),
      cli(["migrate", "--schema"]),
      cli(["migrate", "--database-url", "http://x/y"]),
    ]);
    expectOneLineFailure(command!, 2, /unknown command "frobnicate"/);
    expectOneLineFailure(flag!, 2, /unknown option --frob for "migrate"/);
    expectOneLineFailure(positional!, 2, /unexpected argument "extra"/);
    expectOneLineFailure(missingValue!, 2, /--schema/);
    expectOneLineFailure(scheme!, 2, /must start with postgres:\/\//);
  });
});
