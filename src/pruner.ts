/**
 * Scheduled pruning: sessions past expiry, log entries past retention and old
 * attachments. Every node schedules it; one node per schema runs a pass at a
 * time (advisory lock), the others skip theirs. A pass still running when the
 * next is due makes that one skip too.
 */
import type { ClientBase } from "pg";
import type { SessionConnection } from "./direct-connection.js";
import { debug } from "./debug.js";
import { asError } from "./errors.js";
import { operatorNotice } from "./operator-events.js";
import type { PruneQueries } from "./sql/prune-queries.js";
import { SPAN_NAMES, traced } from "./tracing.js";

/** Postgres' application_name of a pass's own connection (with `directConnection`). */
export const PRUNER_APPLICATION_NAME = "socket.io-postgres-recovery:pruner";

export interface PruneSettings {
  /** undefined: this node has no recovery (no log, no sessions to prune). */
  retentionMs(): number | undefined;
  attachmentsMaxAgeMs: number;
  batchSize: number;
  /** A pass of this node ran (for metrics). */
  pruned?(report: PruneReport): void;
}

export interface PruneReport {
  /** False when another node held the lock and this pass did nothing. */
  ran: boolean;
  logEntries: number;
  sessions: number;
  attachments: number;
  writers: number;
  /** Rows of namespaces unused for long, deleted (see `pruneNamespace`). */
  namespaceRows: number;
}

/** A namespace as a pass sees it: `storedRetentionMs` is what its nodes wrote (null: none yet). */
export interface PrunableNamespace {
  readonly id: number;
  readonly name: string;
  readonly storedRetentionMs: number | null;
}

/** What one pass prunes, for the scheduled pass of a node and for the operator's `prune`. */
export interface PrunePlan {
  /** Log retention of a namespace; undefined leaves its log and its writers alone. */
  retentionMs(namespace: PrunableNamespace): number | undefined;
  /** Whether expired sessions go too (a node without recovery leaves them alone). */
  sessions: boolean;
  attachmentsMaxAgeMs: number;
  batchSize: number;
}

export interface NamespacePruneCounts {
  readonly name: string;
  /** The retention applied. */
  readonly retentionMs: number;
  readonly logEntries: number;
  readonly writers: number;
}

/** What a pass removed (or, dry, would remove). */
export interface PrunePassReport {
  logEntries: number;
  sessions: number;
  attachments: number;
  writers: number;
  /** Rows of namespaces unused for long: no entries, sessions nor writers left, no node marking them active. */
  namespaceRows: number;
  /** Staged events never moved into a log within the longest retention (see PruneQueries.pruneStaged). */
  stagedEvents: number;
  /** Namespaces whose log was pruned, by name. */
  namespaces: NamespacePruneCounts[];
  /** Namespaces left alone: the plan gave them no retention. */
  skipped: string[];
}

/** How long past the retention a writer's row is kept after its last batch. */
export const WRITER_IDLE_MS = 60 * 60 * 1000;

/**
 * How long past the retention a namespace's row is kept after a node last
 * marked it active. Nodes mark the namespaces they hold every
 * `NAMESPACE_ACTIVITY_INTERVAL_MS` at most (more often with a shorter
 * `pruneIntervalMs`), so a held namespace is marked a dozen times or more
 * within this margin.
 */
export const NAMESPACE_IDLE_MS = 60 * 60 * 1000;
export const NAMESPACE_ACTIVITY_INTERVAL_MS = 5 * 60 * 1000;

/**
 * How long an announcement of an expired session is kept for nodes to read:
 * they read it within moments (NOTIFY), after a listener reconnect, or at
 * their next poll (`pruneIntervalMs`); a node cut off longer misses it and
 * says so (see `session-expiry.ts`).
 */
export const EXPIRY_ANNOUNCEMENTS_KEPT_MS = 60 * 60 * 1000;

/** Each namespace with the retention the plan gives it. */
async function planned(client: ClientBase, queries: PruneQueries, plan: PrunePlan) {
  return (await queries.listNamespaces(client)).map((row) => {
    const namespace: PrunableNamespace = { id: row.id, name: row.name, storedRetentionMs: row.retentionMs };
    return { namespace, retentionMs: plan.retentionMs(namespace) };
  });
}

/**
 * How long staged events may wait for a node: the longest retention of any
 * namespace (a staged event's namespace may have no row yet). Undefined when
 * no namespace has one: nothing is known, nothing is pruned.
 */
function longestRetention(namespaces: ReadonlyArray<{ retentionMs: number | undefined }>): number | undefined {
  let longest: number | undefined;
  for (const { retentionMs } of namespaces) if (retentionMs !== undefined) longest = Math.max(longest ?? 0, retentionMs);
  return longest;
}

/** Repeats a bounded delete until it removes less than a full batch; returns the total. */
async function drain(batchSize: number, step: () => Promise<number>): Promise<number> {
  let total = 0;
  let n: number;
  do {
    n = await step();
    total += n;
  } while (n >= batchSize);
  return total;
}

/**
 * One pruning pass on `client`, which must hold the schema's prune lock.
 * Every delete is bounded and its own short transaction. Records the run in
 * the `maintenance` table (`source` says who ran it).
 */
export function runPrunePass(client: ClientBase, queries: PruneQueries, plan: PrunePlan, source: string): Promise<PrunePassReport> {
  return traced(SPAN_NAMES.prune, { "socketio.recovery.prune_source": source }, async (span) => {
    const report = await runUntracedPrunePass(client, queries, plan, source, (announced) => span.set({ "socketio.recovery.expired_announced": announced }));
    span.set({
      "socketio.recovery.deleted_log_entries": report.logEntries,
      "socketio.recovery.deleted_sessions": report.sessions,
      "socketio.recovery.deleted_attachments": report.attachments,
      "socketio.recovery.deleted_writers": report.writers,
      "socketio.recovery.deleted_namespace_rows": report.namespaceRows,
    });
    return report;
  });
}

async function runUntracedPrunePass(
  client: ClientBase,
  queries: PruneQueries,
  plan: PrunePlan,
  source: string,
  expiredAnnounced: (count: number) => void,
): Promise<PrunePassReport> {
  const startedAt = new Date();
  const { batchSize } = plan;
  const report: PrunePassReport = { logEntries: 0, sessions: 0, attachments: 0, writers: 0, namespaceRows: 0, stagedEvents: 0, namespaces: [], skipped: [] };
  // First: it needs no table of ours, so a node used as a plain drop-in for upstream (schema
  // not migrated, recovery off) still cleans the shared attachments table, as upstream's nodes do.
  // A missing attachments table (reported at start) must not stop the log's pruning: rethrown at the end.
  let attachmentsFailure: unknown;
  try {
    report.attachments = await drain(batchSize, () =>
      queries.pruneAttachments(client, plan.attachmentsMaxAgeMs, batchSize),
    );
  } catch (err) {
    attachmentsFailure = err;
  }
  const namespaces = await planned(client, queries, plan);
  for (const { namespace, retentionMs } of namespaces) {
    if (retentionMs === undefined) {
      report.skipped.push(namespace.name);
      continue;
    }
    const logEntries = await drain(batchSize, () => queries.pruneLog(client, namespace.id, retentionMs, batchSize));
    // A writer idle that long has no retry in flight; its row is recreated by its next batch.
    const writers = await drain(batchSize, () =>
      queries.pruneWriters(client, namespace.id, retentionMs + WRITER_IDLE_MS, batchSize),
    );
    // Gaps left by database restarts and failovers, once no session can need them (not reported: a few rows).
    await queries.pruneGaps(client, namespace.id, retentionMs + WRITER_IDLE_MS);
    report.namespaces.push({ name: namespace.name, retentionMs, logEntries, writers });
    report.logEntries += logEntries;
    report.writers += writers;
    // Last: only a row whose entries, sessions and writers are all gone can go.
    const removed = await queries.pruneNamespace(client, namespace.id, retentionMs + NAMESPACE_IDLE_MS);
    if (removed) report.namespaceRows++;
  }
  const stagedRetention = longestRetention(namespaces);
  if (stagedRetention !== undefined) {
    report.stagedEvents = await drain(batchSize, () => queries.pruneStaged(client, stagedRetention, batchSize));
  }
  if (plan.sessions) {
    // Each batch announces the sessions it expired, in its own transaction (see `session-expiry.ts`).
    let announced = 0;
    report.sessions = await drain(batchSize, async () => {
      const batch = await queries.pruneSessions(client, batchSize);
      announced += batch.announced;
      return batch.deleted;
    });
    expiredAnnounced(announced);
    await drain(batchSize, () => queries.pruneExpiryAnnouncements(client, EXPIRY_ANNOUNCEMENTS_KEPT_MS, batchSize));
    await queries.pruneNodes(client);
  }
  const { logEntries, sessions, attachments, writers, namespaceRows, stagedEvents } = report;
  await queries.recordRun(
    client,
    startedAt,
    JSON.stringify({ source, logEntries, sessions, attachments, writers, namespaceRows, ...(stagedEvents > 0 ? { stagedEvents } : {}) }),
  );
  if (attachmentsFailure !== undefined) throw attachmentsFailure;
  return report;
}

/**
 * What `runPrunePass` would remove now, counted in one read-only snapshot:
 * deletes nothing, records nothing, takes no lock.
 */
export async function previewPrunePass(client: ClientBase, queries: PruneQueries, plan: PrunePlan): Promise<PrunePassReport> {
  const report: PrunePassReport = { logEntries: 0, sessions: 0, attachments: 0, writers: 0, namespaceRows: 0, stagedEvents: 0, namespaces: [], skipped: [] };
  await client.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
  try {
    for (const { namespace, retentionMs } of await planned(client, queries, plan)) {
      if (retentionMs === undefined) {
        report.skipped.push(namespace.name);
        continue;
      }
      const logEntries = await queries.countLog(client, namespace.id, retentionMs);
      const writers = await queries.countWriters(client, namespace.id, retentionMs + WRITER_IDLE_MS);
      report.namespaces.push({ name: namespace.name, retentionMs, logEntries, writers });
      report.logEntries += logEntries;
      report.writers += writers;
      // What this snapshot shows unused; a real pass may find more (it deletes entries and writers first).
      if (await queries.countNamespace(client, namespace.id, retentionMs + NAMESPACE_IDLE_MS)) report.namespaceRows++;
    }
    if (plan.sessions) report.sessions = await queries.countSessions(client);
    report.attachments = await queries.countAttachments(client, plan.attachmentsMaxAgeMs);
  } finally {
    await client.query("ROLLBACK");
  }
  return report;
}

export class Pruner {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<PruneReport> | undefined;

  constructor(
    /** A session that reaches Postgres itself: the pass's lock spans its transactions. */
    private readonly connect: () => Promise<SessionConnection>,
    private readonly queries: PruneQueries,
    private readonly settings: PruneSettings,
    private readonly onError: (err: Error) => void,
  ) {}

  start(intervalMs: number): void {
    this.timer = setInterval(() => {
      if (this.running) return;
      this.pruneNow().then(
        (report) => this.passSucceeded(report),
        (err: unknown) => this.passFailed(asError(err)),
      );
    }, intervalMs);
    this.timer.unref();
  }

  /** Scheduled passes that failed in a row: the first is reported, the others go to debug. */
  private failedPasses = 0;

  private passFailed(err: Error): void {
    this.failedPasses++;
    if (this.failedPasses > 1) {
      debug("prune: pass %d in a row failed: %s", this.failedPasses, err.message);
      return;
    }
    const reason = err.cause instanceof Error ? err.cause.message : err.message;
    this.onError(operatorNotice({ event: "pruning-refused", reason }, `pruning failed: ${reason} (said once until a pass runs again)`, err));
  }

  private passSucceeded(report: PruneReport): void {
    if (!report.ran || this.failedPasses === 0) return;
    const failedPasses = this.failedPasses;
    this.failedPasses = 0;
    this.onError(operatorNotice({ event: "pruning-resumed", failedPasses }, `pruning runs again after ${failedPasses} failed pass(es)`));
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.running?.catch(() => undefined);
  }

  /** Runs one pass now (or joins the one under way). */
  pruneNow(): Promise<PruneReport> {
    this.running ??= this.pass().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async pass(): Promise<PruneReport> {
    const report: PruneReport = { ran: false, logEntries: 0, sessions: 0, attachments: 0, writers: 0, namespaceRows: 0 };
    const session = await this.connect();
    const client = session.client;
    let broken: Error | undefined;
    try {
      if (!(await this.queries.tryLock(client))) {
        debug("prune: another node holds the lock, skipping");
        return report;
      }
      try {
        // Each namespace keeps what the longest-retaining node declared (namespaces.retention_ms,
        // only ever raised), and at least this node's own retention: a node configured shorter
        // must not prune entries a session on another node still needs.
        const retentionMs = this.settings.retentionMs();
        const pass = await runPrunePass(
          client,
          this.queries,
          {
            retentionMs: (namespace) =>
              retentionMs === undefined ? undefined : Math.max(retentionMs, namespace.storedRetentionMs ?? 0),
            sessions: retentionMs !== undefined,
            attachmentsMaxAgeMs: this.settings.attachmentsMaxAgeMs,
            batchSize: this.settings.batchSize,
          },
          "adapter",
        );
        report.ran = true;
        report.logEntries = pass.logEntries;
        report.sessions = pass.sessions;
        report.attachments = pass.attachments;
        report.writers = pass.writers;
        report.namespaceRows = pass.namespaceRows;
        debug("prune: %j", report);
        this.settings.pruned?.(report);
      } finally {
        await this.queries.unlock(client);
      }
      return report;
    } catch (err) {
      broken = asError(err);
      throw new Error(`socket.io-postgres-recovery: pruning failed: ${broken.message}`, { cause: err });
    } finally {
      // A connection that failed mid-pass may still hold the lock: destroy it rather than reuse it.
      await session.release(broken);
    }
  }
}
