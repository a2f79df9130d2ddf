/**
 * The command line of `socket.io-postgres-recovery <command> [options]`, on
 * commander. Each command lives in its own module beside this one.
 *
 * The contract, kept by `main` whatever the parser says: exit 0 on success,
 * 1 when the operation failed, 2 when the command line is wrong; a failure is
 * one line on stderr (`socket.io-postgres-recovery: error: …` or
 * `… usage error: …`) and never a stack trace.
 */
import { readFileSync } from "node:fs";
import { Command, CommanderError } from "commander";
import { EXIT_CODES_HELP, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, PROGRAM, UsageError, oneLine, type CliContext } from "./common.js";
import { inspectCommand } from "./inspect-command.js";
import { migrateCommand } from "./migrate-command.js";
import { pruneCommand } from "./prune-command.js";
import { statusCommand } from "./status-command.js";

function version(): string {
  // package.json sits one level above both src/ and dist/, so two above src/cli/ and dist/cli/.
  const pkg = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version?: unknown };
  return String(pkg.version);
}

export interface CliStreams {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown };
}

function buildProgram(ctx: CliContext, streams: CliStreams, current: { command?: string }): Command {
  const program = new Command(PROGRAM)
    .description("Operate the Postgres tables of socket.io-postgres-recovery: migrate, status, prune, inspect.")
    .version(version(), "-v, --version", "print the version")
    .helpOption("-h, --help", "show help; `<command> --help` shows a command's options")
    .helpCommand("help [command]", "show help for a command")
    .showSuggestionAfterError(true)
    .exitOverride()
    .configureOutput({
      writeOut: (text) => streams.stdout.write(text),
      writeErr: (text) => streams.stderr.write(text),
      // main() prints parse errors itself, on one line.
      outputError: () => {},
    })
    .addHelpText(
      "after",
      `\nThe database comes from --database-url or the DATABASE_URL environment variable.\n\n${EXIT_CODES_HELP}`,
    )
    .hook("preSubcommand", (_program, sub) => {
      current.command = sub.name();
    });
  for (const make of [migrateCommand, statusCommand, pruneCommand, inspectCommand]) {
    program.addCommand(make(ctx).copyInheritedSettings(program).helpOption("-h, --help", "show this help"));
  }
  return program;
}

/** Commander's "error: unknown option '--x'" as one line that says where to look. */
function usageLine(err: CommanderError, command: string | undefined): string {
  const message = oneLine(err.message.replace(/^error: /, ""));
  return `${message} (see ${PROGRAM}${command === undefined ? "" : ` ${command}`} --help)`;
}

/** A Socket.IO socket id: 20 base64url characters (engine.io's base64id), so it may begin with "-". */
const SOCKET_ID = /^[A-Za-z0-9_-]{20}$/;

/**
 * `inspect <socket-id>` with an id that begins with "-" (one in 64 of them):
 * commander would read it as an unknown option. Such an id, wherever it
 * stands, is moved behind "--", where it can only be the operand. No option
 * of `inspect` takes a value of that shape (schemas cannot begin with "-",
 * namespaces begin with "/", URLs with a scheme).
 */
export function protectSocketIds(argv: readonly string[]): string[] {
  if (argv[0] !== "inspect" || argv.includes("--")) return [...argv];
  const at = argv.findIndex((arg, i) => i > 0 && arg.startsWith("-") && SOCKET_ID.test(arg));
  if (at < 0) return [...argv];
  return [...argv.slice(0, at), ...argv.slice(at + 1), "--", argv[at]!];
}

/** Runs the CLI on `argv` (without node and the script); resolves to the exit code. */
export async function main(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
  streams: CliStreams = { stdout: process.stdout, stderr: process.stderr },
): Promise<number> {
  const current: { command?: string } = {};
  const ctx: CliContext = { env, write: (text) => streams.stdout.write(text) };
  const fail = (kind: "error" | "usage error", message: string, code: number) => {
    streams.stderr.write(`${PROGRAM}: ${kind}: ${oneLine(message)}\n`);
    return code;
  };
  try {
    await buildProgram(ctx, streams, current).parseAsync(protectSocketIds(argv), { from: "user" });
    return EXIT_OK;
  } catch (err) {
    if (err instanceof CommanderError) {
      switch (err.code) {
        case "commander.helpDisplayed":
        case "commander.version":
          return EXIT_OK;
        case "commander.help":
          // Help asked for (`help`) is a success; help shown because no command was given is a usage error.
          return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
        default:
          return fail("usage error", usageLine(err, current.command), EXIT_USAGE);
      }
    }
    if (err instanceof UsageError) return fail("usage error", err.message, EXIT_USAGE);
    return fail("error", err instanceof Error ? err.message : String(err), EXIT_FAILURE);
  }
}
