import { Command, Option } from "commander";
import { collectStatus, type RecoveryStatus } from "../status.js";
import { EXIT_CODES_HELP, connectionFrom, withConnectionOptions, withPool, type CliContext, type ConnectionFlags } from "./common.js";
import { count, formatBytes, formatDuration, relative, table } from "./format.js";

interface StatusFlags extends ConnectionFlags {
  json?: boolean;
}

/** The human report: a few aligned sections, database-clock times in UTC. */
export function renderStatus(status: RecoveryStatus, target: string): string {
  const now = Date.parse(status.collectedAt);
  const lines: string[] = [];
  const applied = status.migrations.applied;
  lines.push(`schema "${status.schema}" on ${target}: up to date, ${count(applied.length, "migration")} applied (${applied.join(", ")})`);
  lines.push(`as of ${status.collectedAt} (database clock)`);
  if (status.warnings.length > 0) {
    lines.push("", "Warnings");
    for (const warning of status.warnings) lines.push(`  ! ${warning}`);
  }

  lines.push("", "Namespaces");
  if (status.namespaces.length === 0) {
    lines.push("  (none yet: no node with this schema has started a namespace)");
  } else {
    lines.push(
      table(
        ["NAME", "HEAD", "OLDEST", "OLDEST AGE", "ENTRIES", "BYTES", "RETENTION", "SESSIONS", "SESSION LAG", "CONNECTED", "WRITERS"],
        status.namespaces.map((n) => [
          n.name,
          String(n.head),
          n.oldest === null ? "-" : String(n.oldest.offset),
          n.oldest === null ? "-" : formatDuration(n.oldest.ageMs),
          String(n.entries),
          formatBytes(n.entryBytes),
          n.retentionMs === null ? "none stored" : formatDuration(n.retentionMs),
          String(n.sessions),
          n.sessionLag === null ? "-" : String(n.sessionLag),
          String(n.connectedSockets),
          String(n.writers),
        ]),
        [1, 2, 3, 4, 5, 7, 8, 9, 10],
      ),
    );
  }

  const s = status.sessions;
  lines.push("", "Sessions");
  lines.push(`  ${count(s.count, "stored session")}: ${s.live} live, ${s.expired} expired (awaiting prune); payloads ${formatBytes(s.bytes)}`);
  if (s.earliestExpiresAt !== null && s.latestExpiresAt !== null) {
    lines.push(`  expiry: earliest ${s.earliestExpiresAt} (${relative(Date.parse(s.earliestExpiresAt) - now)}), latest ${s.latestExpiresAt} (${relative(Date.parse(s.latestExpiresAt) - now)})`);
  }

  lines.push("", "Nodes");
  lines.push(`  ${status.nodes.alive} alive, ${status.nodes.dead} dead (heartbeat late or declared dead: their sockets are restorable elsewhere)`);

  lines.push("", "Tables");
  lines.push(
    table(
      // No row estimate here: pg_class.reltuples reads 0 until autovacuum first analyzes a table, which misleads.
      ["TABLE", "TOTAL", "INDEXES", "DEAD ROWS"],
      status.tables.map((t) => [t.name, formatBytes(t.totalBytes), formatBytes(t.indexBytes), String(t.deadRows)]),
      [1, 2, 3],
    ),
  );

  lines.push("", "Last prune");
  const p = status.lastPrune;
  if (p === null || p.finishedAt === null) {
    lines.push("  never (no pruning pass has finished on this schema)");
  } else {
    const ago = p.finishedAgoMs === null ? "" : ` (${formatDuration(p.finishedAgoMs)} ago)`;
    lines.push(`  finished ${p.finishedAt}${ago}: ${describePruneResult(p.result)}`);
  }
  return `${lines.join("\n")}\n`;
}

/** The recorded result is JSON of counts; anything else is shown as it is. */
function describePruneResult(result: string | null): string {
  if (result === null) return "no result recorded";
  try {
    const r = JSON.parse(result) as Record<string, unknown>;
    const n = (key: string) => (typeof r[key] === "number" ? (r[key] as number) : 0);
    const by = typeof r.source === "string" ? ` (by ${r.source})` : "";
    return `removed ${count(n("logEntries"), "log entry", "log entries")}, ${count(n("sessions"), "session")}, ${count(n("attachments"), "attachment")}, ${count(n("writers"), "writer")}${by}`;
  } catch {
    return result;
  }
}

export function statusCommand(ctx: CliContext): Command {
  return withConnectionOptions(
    new Command("status")
      .summary("show migration state, the log of each namespace, sessions, table sizes, last prune")
      .description(
        `Shows one deployment at a glance: migration state, for each namespace its
head offset, oldest retained entry and its age, entry count and bytes, stored
retention, sessions, session lag (entries the furthest-behind stored session
missed: what its restore would read), connected sockets and writers; stored
sessions and their expiry spread; nodes alive and dead;
table and index sizes and dead rows; the last pruning pass; warnings (autovacuum
off: pruned rows are then never reclaimed). Read-only, one snapshot.

Fails (exit 1) when the schema is missing, lacks migrations, or was migrated
by a newer version.`,
      ),
  )
    .addOption(new Option("--json", "print the status as one JSON object (for machines)"))
    .addHelpText("after", `\n${EXIT_CODES_HELP}`)
    .action(async (flags: StatusFlags) => {
      const connection = connectionFrom(flags, ctx.env);
      const status = await withPool(connection, (pool) => collectStatus(pool, { schema: connection.schema }));
      ctx.write(flags.json === true ? `${JSON.stringify(status, null, 2)}\n` : renderStatus(status, connection.target));
    });
}
