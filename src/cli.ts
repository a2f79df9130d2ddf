#!/usr/bin/env node
/**
 * Command-line tool: `socket.io-postgres-recovery <command> [options]`.
 * Each command lives in its own module under cli/ and is listed in COMMANDS.
 * Prints one line on success (stdout) or failure (stderr); exit code 0 on
 * success, 1 when the operation failed, 2 when the command line is wrong.
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { EXIT_FAILURE, EXIT_USAGE, PROGRAM, UsageError, oneLine, type Command } from "./cli/common.js";
import { migrateCommand } from "./cli/migrate-command.js";

const COMMANDS: readonly Command[] = [migrateCommand];

const HELP_OPTION = { help: { type: "boolean", short: "h" } } as const;

function globalHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return `Usage: ${PROGRAM} <command> [options]

Commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join("\n")}

Options:
  -h, --help     Show this help; "${PROGRAM} <command> --help" shows a command's options
  -v, --version  Print the version

The database comes from --database-url or the DATABASE_URL environment variable.`;
}

function version(): string {
  // package.json sits one level above both src/ and dist/.
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { version?: unknown };
  return String(pkg.version);
}

/** parseArgs' messages, shortened to one line that names the command. */
function usageErrorFrom(err: unknown, command: string): UsageError {
  const code = typeof err === "object" && err !== null && "code" in err ? err.code : undefined;
  const message = err instanceof Error ? err.message : String(err);
  if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
    const option = /'([^']+)'/.exec(message)?.[1] ?? message;
    return new UsageError(`unknown option ${option} for "${command}" (see ${PROGRAM} ${command} --help)`);
  }
  if (code === "ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL") {
    const arg = /'([^']+)'/.exec(message)?.[1] ?? message;
    return new UsageError(`unexpected argument ${JSON.stringify(arg)} for "${command}" (see ${PROGRAM} ${command} --help)`);
  }
  return new UsageError(`${message.split(". ")[0]} (see ${PROGRAM} ${command} --help)`);
}

export async function main(argv: readonly string[], env: NodeJS.ProcessEnv): Promise<number> {
  const [first, ...rest] = argv;
  try {
    if (first === undefined) {
      process.stderr.write(`${globalHelp()}\n`);
      return EXIT_USAGE;
    }
    if (first === "-h" || first === "--help" || first === "help") {
      process.stdout.write(`${globalHelp()}\n`);
      return 0;
    }
    if (first === "-v" || first === "--version") {
      process.stdout.write(`${version()}\n`);
      return 0;
    }
    const command = COMMANDS.find((c) => c.name === first);
    if (command === undefined) {
      const known = COMMANDS.map((c) => c.name).join(", ");
      throw new UsageError(
        first.startsWith("-")
          ? `unknown option ${first}; options go after the command (commands: ${known})`
          : `unknown command "${first}" (commands: ${known}; see ${PROGRAM} --help)`,
      );
    }
    let values;
    try {
      ({ values } = parseArgs({
        args: [...rest],
        options: { ...command.options, ...HELP_OPTION },
        strict: true,
        allowPositionals: false,
      }));
    } catch (err) {
      throw usageErrorFrom(err, command.name);
    }
    if (values.help === true) {
      process.stdout.write(`${command.help}\n`);
      return 0;
    }
    process.stdout.write(`${oneLine(await command.run(values, env))}\n`);
    return 0;
  } catch (err) {
    const usage = err instanceof UsageError;
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`${PROGRAM}: ${usage ? "usage error" : "error"}: ${oneLine(message)}\n`);
    return usage ? EXIT_USAGE : EXIT_FAILURE;
  }
}

process.exitCode = await main(process.argv.slice(2), process.env);
