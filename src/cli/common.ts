/**
 * What every CLI command shares: its context, the connection options, the
 * pool, and turning any failure into one line that says what to fix.
 */
import { InvalidArgumentError, Option, type Command } from "commander";
import pg from "pg";
import { isValidIdentifier } from "../sql/identifiers.js";

export const PROGRAM = "socket.io-postgres-recovery";

/** Exit codes: 0 success, 1 the operation failed, 2 the command line is wrong. */
export const EXIT_OK = 0;
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

export const EXIT_CODES_HELP = `Exit codes:
  0  success
  1  the operation failed (database unreachable, credentials refused, schema
     missing or not migrated, ...); one line on stderr says why
  2  the command line is wrong; one line on stderr says what to fix`;

/** What a command needs from the process, passed in so that tests and embedding need no globals. */
export interface CliContext {
  readonly env: NodeJS.ProcessEnv;
  /** Writes to stdout. */
  write(text: string): void;
}

/** A wrong command line: printed on one line, exit code 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** The options of every command that connects. */
export interface ConnectionFlags {
  databaseUrl?: string;
  schema: string;
}

/** Adds `--database-url` and `--schema` to a command. */
export function withConnectionOptions(command: Command): Command {
  return command
    .addOption(
      new Option(
        "--database-url <url>",
        "Postgres connection string, postgres://user:password@host:port/database (default: the DATABASE_URL environment variable)",
      ),
    )
    .addOption(
      new Option("--schema <name>", "schema holding the tables and the migrations journal").default("socket_io"),
    );
}

/** An option value that must be a positive integer (rows, ms). */
export function positiveInteger(value: string): number {
  const n = Number(value);
  if (!/^[0-9]+$/.test(value) || !Number.isSafeInteger(n) || n < 1) {
    throw new InvalidArgumentError("expected a positive integer.");
  }
  return n;
}

export interface Connection {
  readonly url: string;
  readonly schema: string;
  /** host:port/database, without credentials, for messages. */
  readonly target: string;
}

/** Reads and checks --database-url / DATABASE_URL and --schema before anything connects. */
export function connectionFrom(flags: ConnectionFlags, env: NodeJS.ProcessEnv): Connection {
  const url = flags.databaseUrl ?? env.DATABASE_URL;
  if (url === undefined || url === "") {
    throw new UsageError("no database given: pass --database-url URL or set DATABASE_URL");
  }
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UsageError("the database URL is not a URL: expected postgres://user:password@host:port/database");
  }
  if (parsed.protocol !== "postgres:" && parsed.protocol !== "postgresql:") {
    throw new UsageError(`the database URL must start with postgres:// or postgresql://, not ${parsed.protocol}//`);
  }
  const schema = flags.schema;
  if (!isValidIdentifier(schema)) {
    throw new UsageError(
      `invalid --schema ${JSON.stringify(schema)}: use a letter or _ followed by letters, digits or _, at most 63 characters`,
    );
  }
  const host = parsed.hostname || "localhost";
  const port = parsed.port || "5432";
  const database = decodeURIComponent(parsed.pathname.replace(/^\//, "")) || "(default database)";
  return { url, schema, target: `${host}:${port}/${database}` };
}

/** A small pool for one command (ended afterwards, whatever happens). */
export async function withPool<T>(connection: Connection, fn: (pool: pg.Pool) => Promise<T>): Promise<T> {
  const pool = new pg.Pool({
    connectionString: connection.url,
    max: 2,
    connectionTimeoutMillis: 5000,
    application_name: PROGRAM,
  });
  // An idle client losing its connection must not crash the process; the next query reports it.
  pool.on("error", () => {});
  try {
    return await fn(pool);
  } catch (err) {
    throw new Error(describeFailure(err, connection), { cause: err });
  } finally {
    await pool.end().catch(() => {});
  }
}

/** The first `code` (Postgres SQLSTATE or Node system error) along the cause chain. */
function findCode(err: unknown): string | undefined {
  let current: unknown = err;
  for (let depth = 0; current instanceof Error && depth < 8; depth++) {
    if ("code" in current && typeof current.code === "string") return current.code;
    current = current instanceof AggregateError && current.errors.length > 0 ? current.errors[0] : current.cause;
  }
  return undefined;
}

function deepestMessage(err: unknown): string {
  let message = err instanceof Error ? err.message : String(err);
  let current: unknown = err;
  for (let depth = 0; current instanceof Error && depth < 8; depth++) {
    if (current.message) message = current.message;
    current = current instanceof AggregateError && current.errors.length > 0 ? current.errors[0] : current.cause;
  }
  return message;
}

/** One line saying what went wrong and, where we can tell, what to check. */
export function describeFailure(err: unknown, connection: Connection): string {
  const at = `Postgres at ${connection.target}`;
  const code = findCode(err);
  const message = err instanceof Error ? err.message : String(err);
  switch (code) {
    case "ECONNREFUSED":
      return `cannot connect to ${at}: connection refused (is the server running, and are host and port right?)`;
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return `cannot connect to ${at}: unknown host`;
    case "ETIMEDOUT":
    case "EHOSTUNREACH":
    case "ENETUNREACH":
      return `cannot connect to ${at}: ${code}`;
    case "28P01":
    case "28000":
      return `${at} refused the credentials: ${deepestMessage(err)}`;
    case "3D000":
      return `${at}: ${deepestMessage(err)}`;
  }
  if (/timeout/i.test(deepestMessage(err)) && /connect/i.test(message)) {
    return `no answer from ${at} within 5 s`;
  }
  return message.startsWith(`${PROGRAM}: `) ? message.slice(PROGRAM.length + 2) : message;
}

/** Makes any text safe to print as one line. */
export function oneLine(text: string): string {
  return text.replace(/\s*[\r\n]+\s*/g, " ").trim();
}
