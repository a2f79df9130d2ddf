import { Command } from "commander";
import { migrate } from "../migrate.js";
import { EXIT_CODES_HELP, connectionFrom, withConnectionOptions, withPool, type CliContext, type ConnectionFlags } from "./common.js";

export function migrateCommand(ctx: CliContext): Command {
  return withConnectionOptions(
    new Command("migrate")
      .summary("create the schema if needed and apply the migrations it lacks")
      .description(
        `Creates the schema if needed and applies the migrations it lacks, under an
advisory lock: safe to run from several machines at once and to run again.
Refuses a schema migrated by a newer version of this package.`,
      ),
  )
    .addHelpText("after", `\n${EXIT_CODES_HELP}`)
    .action(async (flags: ConnectionFlags) => {
      const connection = connectionFrom(flags, ctx.env);
      const result = await withPool(connection, (pool) => migrate(pool, { schema: connection.schema }));
      const where = `schema "${result.schema}" on ${connection.target}`;
      ctx.write(
        result.applied.length === 0
          ? `${where} is up to date (${result.alreadyApplied.length} migration(s) applied earlier)\n`
          : `migrated ${where}: applied ${result.applied.join(", ")} (${result.alreadyApplied.length} applied earlier)\n`,
      );
    });
}
