import { migrate } from "../migrate.js";
import { CONNECTION_HELP, CONNECTION_OPTIONS, PROGRAM, connectionFrom, withPool, type Command } from "./common.js";

export const migrateCommand: Command = {
  name: "migrate",
  summary: "Create the schema if needed and apply the migrations it lacks",
  help: `Usage: ${PROGRAM} migrate [--database-url URL] [--schema NAME]

Creates the schema if needed and applies the migrations it lacks, under an
advisory lock: safe to run from several machines at once and to run again.
Refuses a schema migrated by a newer version of this package.

Options:
${CONNECTION_HELP}
  -h, --help          Show this help`,
  options: CONNECTION_OPTIONS,
  async run(values, env) {
    const connection = connectionFrom(values, env);
    const result = await withPool(connection, (pool) => migrate(pool, { schema: connection.schema }));
    const where = `schema "${result.schema}" on ${connection.target}`;
    if (result.applied.length === 0) {
      return `${where} is up to date (${result.alreadyApplied.length} migration(s) applied earlier)`;
    }
    return `migrated ${where}: applied ${result.applied.join(", ")} (${result.alreadyApplied.length} applied earlier)`;
  },
};
