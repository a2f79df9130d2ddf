/**
 * Scheduled pruning: sessions past expiry, log entries past retention and old
 * attachments. Every node schedules it; one node per schema runs a pass at a
 * time (advisory lock), the others skip theirs. A pass still running when the
 * next is due makes that one skip too.
 */
import type { Pool } from "pg";
import { debug } from "./debug.js";
import { asError } from "./errors.js";
import type { PruneQueries } from "./sql/prune-queries.js";

export interface PruneSettings {
  /** undefined: this node has no recovery (no log, no sessions to prune). */
  retentionMs(): number | undefined;
  attachmentsMaxAgeMs: number;
  batchSize: number;
}

export interface PruneReport {
  /** False when another node held the lock and this pass did nothing. */
  ran: boolean;
  logEntries: number;
  sessions: number;
  attachments: number;
  writers: number;
}

/** How long past the retention a writer's row is kept after its last batch. */
const WRITER_IDLE_MS = 60 * 60 * 1000;

export class Pruner {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<PruneReport> | undefined;

  constructor(
    private readonly pool: Pool,
    private readonly queries: PruneQueries,
    private readonly settings: PruneSettings,
    private readonly onError: (err: Error) => void,
  ) {}

  start(intervalMs: number): void {
    this.timer = setInterval(() => {
      if (this.running) return;
      this.pruneNow().catch((err: unknown) => this.onError(asError(err)));
    }, intervalMs);
    this.timer.unref();
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
    const report: PruneReport = { ran: false, logEntries: 0, sessions: 0, attachments: 0, writers: 0 };
    const client = await this.pool.connect();
    let broken: Error | undefined;
    try {
      if (!(await this.queries.tryLock(client))) {
        debug("prune: another node holds the lock, skipping");
        return report;
      }
      try {
        const startedAt = new Date();
        report.ran = true;
        const { batchSize } = this.settings;
        const retentionMs = this.settings.retentionMs();
        if (retentionMs !== undefined) {
          for (const id of await this.queries.namespaceIds(client)) {
            let n: number;
            do {
              n = await this.queries.pruneLog(client, id, retentionMs, batchSize);
              report.logEntries += n;
            } while (n >= batchSize);
          }
          let n: number;
          do {
            n = await this.queries.pruneSessions(client, batchSize);
            report.sessions += n;
          } while (n >= batchSize);
          // A writer idle that long has no retry in flight; its row is recreated by its next batch.
          do {
            n = await this.queries.pruneWriters(client, retentionMs + WRITER_IDLE_MS, batchSize);
            report.writers += n;
          } while (n >= batchSize);
        }
        let n: number;
        do {
          n = await this.queries.pruneAttachments(client, this.settings.attachmentsMaxAgeMs, batchSize);
          report.attachments += n;
        } while (n >= batchSize);
        await this.queries.recordRun(client, startedAt, JSON.stringify(report));
        debug("prune: %j", report);
      } finally {
        await this.queries.unlock(client);
      }
      return report;
    } catch (err) {
      broken = asError(err);
      throw new Error(`socket.io-postgres-recovery: pruning failed: ${broken.message}`, { cause: err });
    } finally {
      // A connection that failed mid-pass may still hold the lock: destroy it rather than reuse it.
      client.release(broken);
    }
  }
}
