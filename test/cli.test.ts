/** The CLI as users run it: migrate, and the command line itself (help, version, usage errors). */
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { knownMigrations } from "../src/migrate.js";
import { closedPort, expectOneLineFailure, expectSuccess, runCli as cli, runCliInProcess, urlWithPort } from "./helpers/cli.js";
import { createTestDatabase, type TestDatabase } from "./helpers/database.js";

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
    const port = await closedPort();
    const run = await cli(["migrate", "--database-url", urlWithPort(db.url, port)]);
    expectOneLineFailure(run, 1, new RegExp(`cannot connect to Postgres at 127\\.0\\.0\\.1:${port}/${db.name}: connection refused`));
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
});

describe("command line", () => {
  const commands = ["migrate", "status", "prune", "inspect"];

  it("prints help with exit 0, globally and for every command", async () => {
    for (const args of [["--help"], ["-h"], ["help"]]) {
      const run = await runCliInProcess(args);
      expectSuccess(run);
      expect(run.stdout).toMatch(/^Usage: socket\.io-postgres-recovery /);
      for (const command of commands) expect(run.stdout).toContain(command);
      expect(run.stdout).toContain("Exit codes:");
    }
    for (const command of commands) {
      for (const args of [[command, "--help"], ["help", command]]) {
        const run = await runCliInProcess(args);
        expectSuccess(run);
        expect(run.stdout).toMatch(new RegExp(`^Usage: socket\\.io-postgres-recovery ${command} `));
        expect(run.stdout).toContain("--database-url");
        expect(run.stdout).toContain("--schema");
        expect(run.stdout).toContain("Exit codes:");
      }
    }
  });

  it("prints the version with exit 0", async () => {
    const run = await runCliInProcess(["--version"]);
    expectSuccess(run);
    expect(run.stdout).toMatch(/^\d+\.\d+\.\d+\n$/);
  });

  it("reaches the shell: exit codes and streams of a real process", async () => {
    const [help, usage] = await Promise.all([cli(["status", "--help"]), cli(["status", "--frob"])]);
    expectSuccess(help);
    expect(help.stdout).toMatch(/^Usage: socket\.io-postgres-recovery status /);
    expectOneLineFailure(usage, 2, /unknown option '--frob'/);
  });

  it("shows the help on stderr with exit 2 when no command is given", async () => {
    const run = await cli([]);
    expect(run.code).toBe(2);
    expect(run.stdout).toBe("");
    expect(run.stderr).toMatch(/^Usage: socket\.io-postgres-recovery /);
  });

  it("rejects unknown commands, unknown flags, stray or missing arguments in one line (exit 2)", async () => {
    const cli = runCliInProcess;
    const runs = await Promise.all([
      cli(["frobnicate"]),
      cli(["migrate", "--frob"]),
      cli(["status", "--scheme", "x"]),
      cli(["migrate", "extra"]),
      cli(["status", "extra"]),
      cli(["migrate", "--schema"]),
      cli(["migrate", "--database-url", "http://x/y"]),
      cli(["inspect"]),
      cli(["inspect", "a", "b"]),
      cli(["prune", "--batch-size", "0"]),
      cli(["prune", "--attachments-table", "a.b.c"]),
      cli(["status", "--schema", "bad-name", "--database-url", "postgres://postgres@127.0.0.1:1/postgres"]),
    ]);
    const expected: RegExp[] = [
      /unknown command 'frobnicate' \(see socket\.io-postgres-recovery --help\)/,
      /unknown option '--frob' \(see socket\.io-postgres-recovery migrate --help\)/,
      /unknown option '--scheme' \(Did you mean --schema\?\)/,
      /too many arguments for 'migrate'/,
      /too many arguments for 'status'/,
      /option '--schema <name>' argument missing/,
      /must start with postgres:\/\//,
      /missing required argument 'socket-id' \(see socket\.io-postgres-recovery inspect --help\)/,
      /too many arguments for 'inspect'/,
      /'--batch-size <rows>' argument '0' is invalid\. expected a positive integer/,
      /'--attachments-table <name>' argument 'a\.b\.c' is invalid/,
      /invalid --schema "bad-name"/,
    ];
    runs.forEach((run, i) => expectOneLineFailure(run, 2, expected[i]!));
  });

  it("asks for a database, for every command, when there is no --database-url nor DATABASE_URL", async () => {
    for (const args of [["migrate"], ["status"], ["prune"], ["inspect", "some-id"]]) {
      expectOneLineFailure(await runCliInProcess(args), 2, /pass --database-url URL or set DATABASE_URL/);
      expectOneLineFailure(await runCliInProcess(args, { DATABASE_URL: "" }), 2, /pass --database-url URL or set DATABASE_URL/);
    }
  });
});
