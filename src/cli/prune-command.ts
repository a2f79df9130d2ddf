import { Command, InvalidArgumentError, Option } from "commander";
import { prune, type PruneOutcome } from "../prune.js";
import {
  EXIT_CODES_HELP,
  connectionFrom,
  positiveInteger,
  withConnectionOptions,
  withPool,
  type CliContext,
  type ConnectionFlags,
} from "./common.js";
import { count, formatDuration, table } from "./format.js";

interface PruneFlags extends ConnectionFlags {
  dryRun?: boolean;
  json?: boolean;
  attachmentsTable?: string;
  attachmentsMaxAge: number;
  batchSize: number;
  lockTimeout: number;
}

/** `table` or `schema.table`, like the adapter's `tableName` option. */
function attachmentsTable(value: string): string {
  // Folded to lower case like the adapter's tableName (which upstream writes unquoted).
  const folded = value.toLowerCase();
  const parts = folded.split(".");
  if (parts.length > 2 || !parts.every((p) => /^[a-z_][a-z0-9_]{0,62}$/.test(p))) {
    throw new InvalidArgumentError("expected a table name or schema.table made of Postgres identifiers.");
  }
  return folded;
}

export function renderPrune(outcome: PruneOutcome, target: string): string {
  const verb = outcome.dryRun ? "would remove" : "removed";
  const lines = [
    `${outcome.dryRun ? "dry run on" : "pruned"} schema "${outcome.schema}" on ${target}: ${verb} ` +
      `${count(outcome.logEntries, "log entry", "log entries")}, ${count(outcome.sessions, "expired session")}, ` +
      `${count(outcome.attachments, "attachment")}, ${count(outcome.writers, "idle writer")}` +
      (outcome.namespaceRows > 0 ? `, ${count(outcome.namespaceRows, "unused namespace row")}` : "") +
      (outcome.stagedEvents > 0 ? `, ${count(outcome.stagedEvents, "staged event")} never logged` : ""),
  ];
  if (outcome.namespaces.length > 0) {
    lines.push(
      table(
        ["NAMESPACE", "RETENTION", "LOG ENTRIES", "WRITERS"],
        outcome.namespaces.map((n) => [n.name, formatDuration(n.retentionMs), String(n.logEntries), String(n.writers)]),
        [1, 2, 3],
      ),
    );
  }
  if (outcome.skipped.length > 0) {
    lines.push(
      `skipped ${count(outcome.skipped.length, "namespace")} with no stored retention (no node with recovery has started them since migration 0001): ${outcome.skipped.join(", ")}`,
    );
  }
  if (outcome.dryRun) lines.push("nothing was deleted (--dry-run)");
  return `${lines.join("\n")}\n`;
}

export function pruneCommand(ctx: CliContext): Command {
  return withConnectionOptions(
    new Command("prune")
      .summary("run a pruning pass now and report what it removed (or would, with --dry-run)")
      .description(
        `Runs a pruning pass now, as the nodes do on their own every pruneIntervalMs:
log entries older than their namespace's retention, expired sessions, writers
idle for the retention plus an hour, attachments older than
--attachments-max-age. Each namespace uses the retention its nodes stored when
they started (the longest one); a namespace without one is skipped and named.
Deletes in bounded batches; waits up to --lock-timeout for a node's pass under
way. With --dry-run, counts what would go in one read-only transaction and
deletes nothing.`,
      ),
  )
    .addOption(new Option("--dry-run", "count what would be removed, delete nothing"))
    .addOption(new Option("--json", "print the report as one JSON object (for machines)"))
    .addOption(
      new Option("--attachments-table <name>", "the adapter's tableName: a bare name is found through the search_path as the adapter does, or schema.table (default: socket_io_attachments on the search_path, else in --schema)").argParser(
        attachmentsTable,
      ),
    )
    .addOption(
      new Option("--attachments-max-age <ms>", "the adapter's cleanupInterval: age past which attachments go")
        .argParser(positiveInteger)
        .default(30_000),
    )
    .addOption(new Option("--batch-size <rows>", "rows per DELETE").argParser(positiveInteger).default(5000))
    .addOption(
      new Option("--lock-timeout <ms>", "how long to wait for a pruning pass under way on a node")
        .argParser(positiveInteger)
        .default(10_000),
    )
    .addHelpText("after", `\n${EXIT_CODES_HELP}`)
    .action(async (flags: PruneFlags) => {
      const connection = connectionFrom(flags, ctx.env);
      const table = flags.attachmentsTable?.split(".");
      const outcome = await withPool(connection, (pool) =>
        prune(pool, {
          schema: connection.schema,
          dryRun: flags.dryRun === true,
          attachmentsTable:
            table === undefined ? undefined : table.length === 2 ? { schema: table[0]!, table: table[1]! } : { table: table[0]! },
          attachmentsMaxAgeMs: flags.attachmentsMaxAge,
          batchSize: flags.batchSize,
          lockTimeoutMs: flags.lockTimeout,
        }),
      );
      ctx.write(flags.json === true ? `${JSON.stringify(outcome, null, 2)}\n` : renderPrune(outcome, connection.target));
    });
}
