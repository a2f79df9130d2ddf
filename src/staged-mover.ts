/**
 * On a node, for one namespace: moves events staged by emitters and the SQL
 * function into the log once their transactions commit (see
 * staged-events.ts). Asked to when the namespace starts (rows may have waited
 * while no node served it), on every NOTIFY of the namespace on the emit
 * channel (sent at commit), and after the LISTEN connection came back (what
 * it missed meanwhile).
 *
 * Requests while a move runs coalesce into one more pass. Every node serving
 * the namespace gets the NOTIFY; the namespace's row lock lets one move at a
 * time, and the others find nothing. A failed move is retried until it
 * succeeds or the namespace closes: its rows stay staged meanwhile, nothing
 * is lost, and nothing waits for it but the rows themselves.
 */
import type { LogEntry } from "./codec.js";
import { settledBy } from "./deadline.js";
import type { MovedBatch } from "./staged-events.js";

export interface StagedMoverHost {
  readonly nspName: string;
  /** One move (a transaction); `taken` equal to `limit` means more may wait. */
  move(): Promise<MovedBatch>;
  readonly limit: number;
  /** Entries this node appended: offered to the sequencer, relayed to nodes that do not read the log. */
  moved(entries: LogEntry[]): void;
  reportError(err: Error): void;
}

const RETRY_FIRST_MS = 100;
const RETRY_CAP_MS = 2000;

export class StagedMover {
  private enabled = false;
  private closed = false;
  private running: Promise<void> | undefined;
  private again = false;

  constructor(private readonly host: StagedMoverHost) {}

  /** From now on requests run (the namespace started: its id and cursor are known). */
  start(): void {
    this.enabled = true;
    this.request();
  }

  /** Moves what is staged now; a request during a move runs one more pass after it. */
  request(): void {
    if (!this.enabled || this.closed) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.drain().finally(() => {
      this.running = undefined;
    });
  }

  /** Stops requesting; waits for a move in progress until `deadline` (ms since the epoch). */
  async close(deadline: number): Promise<void> {
    this.closed = true;
    const running = this.running;
    if (running) await settledBy(running, deadline);
  }

  private async drain(): Promise<void> {
    let failures = 0;
    do {
      this.again = false;
      let moved: MovedBatch;
      try {
        moved = await this.host.move();
      } catch (err) {
        failures++;
        this.host.reportError(
          new Error(`socket.io-postgres-recovery: moving staged events of "${this.host.nspName}" into the log failed; retrying`, { cause: err }),
        );
        if (this.closed) return;
        await new Promise((resolve) => setTimeout(resolve, Math.min(RETRY_FIRST_MS * 2 ** (failures - 1), RETRY_CAP_MS)).unref());
        this.again = true;
        continue;
      }
      failures = 0;
      for (const err of moved.refused) this.host.reportError(err);
      if (moved.entries.length > 0) this.host.moved(moved.entries);
      if (moved.taken >= this.host.limit) this.again = true;
    } while (this.again && !this.closed);
  }
}
