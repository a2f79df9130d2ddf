/**
 * Writing one namespace's logged broadcasts on one node: group commit into
 * the log (one statement, one transaction, one NOTIFY per batch), idempotent
 * retries, and outage mode when the log stays unwritable.
 *
 * Nothing is delivered here when it is written: a committed batch is offered
 * to the namespace's sequencer, which delivers it when its cursor reaches it
 * (see sequencer.ts). Only outage mode delivers directly, unlogged, through
 * `deliverUnlogged`.
 */
import { Batcher, BatcherFullError, BatcherTakenError } from "./batcher.js";
import { encodeBatchForNotify, type LoggedPacket } from "./codec.js";
import { debug } from "./debug.js";
import { isTransientDatabaseError } from "./errors.js";
import type { NodeContext } from "./node-context.js";
import { OutageMonitor } from "./outage.js";
import type { PreparedPacket } from "./payload.js";
import type { Sequencer } from "./sequencer.js";

/** Payload of the adapter's "outage-started" event. */
export interface OutageStartedEvent {
  failingForMs: number;
}

/** Payload of the adapter's "outage-ended" event. */
export interface OutageEndedEvent {
  unloggedPackets: number;
}

export interface LogWriterHost {
  readonly nspName: string;
  /** Identifies this writer's batches across retries (see LogQueries.append). */
  readonly writerId: string;
  /** The namespace's id once it started; undefined before (or if it never does). */
  namespaceId(): number | undefined;
  /** Resolves when the namespace started, or when closing gave up waiting for it. */
  started(): Promise<void>;
  /** Whether the adapter is closing (a full queue then is not worth an unlogged delivery). */
  closing(): boolean;
  /**
   * The event as every node and replay delivers it, and its bytes for the log
   * (see payload.ts). Throws when its arguments cannot be sent.
   */
  prepare(packet: LoggedPacket): PreparedPacket;
  /** Sends to this node's sockets only, without an offset in the log. */
  deliverUnlogged(packet: LoggedPacket): void;
  /** Packets as submitted, committed at offsets `from`, `from + 1`, …; called before the sequencer gets them. */
  committed(packets: readonly LoggedPacket[], from: number): void;
  emit(event: "outage-started", payload: OutageStartedEvent): void;
  emit(event: "outage-ended", payload: OutageEndedEvent): void;
}

/** `submitted`: the packet as `submit()` got it (the host knows it by identity, see `committed`). */
type QueuedEntry = PreparedPacket & { submitted: LoggedPacket };

export class LogWriter {
  private readonly batcher: Batcher<QueuedEntry, number>;
  /** Decides when failing log writes turn into outage mode (see unloggedDeliveryAfterMs). */
  private readonly outage: OutageMonitor;
  /** Events delivered unlogged since the current outage started. */
  private unloggedPackets = 0;
  /** Batches this writer appended (see LogQueries.append: retries are idempotent). */
  private batchNumber = 0;

  constructor(
    private readonly host: LogWriterHost,
    private readonly ctx: NodeContext,
    private readonly sequencer: Sequencer,
  ) {
    this.batcher = new Batcher<QueuedEntry, number>({
      write: (items, attempt) => this.append(items, attempt),
      maxBatchSize: ctx.opts.maxBatchSize,
      // Keeps one append statement far below Postgres' 1 GB per value (the payloads travel as one bytea[]).
      maxBatchBytes: 64 * 1024 * 1024,
      sizeOf: (item) => item.payload.length,
      maxPending: ctx.opts.maxPendingWrites,
      isRetryable: isTransientDatabaseError,
      // Capped low: connected clients wait for these retries, and the outage decision
      // (unloggedDeliveryAfterMs) should not be made by the backoff.
      retryDelayMs: (attempt) => Math.min(50 * 2 ** attempt, 500),
      maxAttempts: Infinity,
      onError: (err) =>
        this.ctx.reportError(new Error(`socket.io-postgres-recovery: appending to the log of "${host.nspName}" failed`, { cause: err })),
    });
    this.outage = new OutageMonitor({
      afterMs: ctx.opts.unloggedDeliveryAfterMs,
      onStarted: (failingForMs) => this.startOutage(failingForMs),
      onEnded: () => this.endOutage(),
    });
  }

  /** Whether new events are delivered unlogged (and restores on this node refused). */
  get inOutage(): boolean {
    return this.outage.inOutage;
  }

  /**
   * Logs one broadcast; resolves once it is committed (or delivered unlogged,
   * or refused and reported). Never rejects: Socket.IO does not await it.
   */
  async submit(packet: LoggedPacket): Promise<void> {
    const { nspName } = this.host;
    let queued: QueuedEntry;
    try {
      // Normalised once, here, to what a client decodes (JSON semantics, binary kept).
      queued = { ...this.host.prepare(packet), submitted: packet };
    } catch (err) {
      this.ctx.reportError(new Error(`socket.io-postgres-recovery: cannot log an event of "${nspName}": its arguments do not serialize`, { cause: err }));
      return;
    }
    if (queued.payload.length > this.ctx.opts.maxEntryBytes) {
      // Refused, not delivered unlogged: a client recovering past it would miss it without knowing.
      this.ctx.reportError(
        new Error(
          `socket.io-postgres-recovery: an event of "${nspName}" was not logged nor delivered: ${queued.payload.length} bytes exceed maxEntryBytes (${this.ctx.opts.maxEntryBytes})`,
        ),
      );
      return;
    }
    if (this.outage.inOutage) {
      this.deliverUnlogged(queued.packet);
      return;
    }
    try {
      await this.batcher.add(queued);
    } catch (err) {
      if (err instanceof BatcherTakenError) return; // taken back by startOutage(), which delivered it
      if (err instanceof BatcherFullError && !this.host.closing()) {
        this.deliverUnlogged(queued.packet);
        this.ctx.reportError(new Error(`socket.io-postgres-recovery: an event of "${nspName}" was delivered to this node's sockets only, unlogged`, { cause: err }));
        return;
      }
      this.ctx.reportError(new Error(`socket.io-postgres-recovery: an event of "${nspName}" was not logged nor delivered`, { cause: err }));
    }
  }

  /** Writes what is queued, within `timeoutMs`; refuses new events from now on. */
  async close(timeoutMs: number): Promise<void> {
    this.outage.stop();
    await this.batcher.close(timeoutMs);
  }

  // ---- outage mode -----------------------------------------------------------

  /**
   * The log has been unwritable for `unloggedDeliveryAfterMs`: rather than keep
   * this node's clients waiting, deliver what is queued (except the batch in
   * flight, whose commit is in doubt: it is retried and delivered from the log)
   * and every new event to this node's sockets, unlogged.
   */
  private startOutage(failingForMs: number): void {
    this.unloggedPackets = 0;
    this.host.emit("outage-started", { failingForMs });
    this.ctx.reportError(
      new Error(
        `socket.io-postgres-recovery: the log of "${this.host.nspName}" has been unwritable for ${failingForMs} ms; ` +
          "delivering new events to this node's sockets only, unlogged, until a write succeeds",
      ),
    );
    for (const item of this.batcher.take(() => true)) this.deliverUnlogged(item.packet);
  }

  private endOutage(): void {
    debug("outage of %s ended: %d events delivered unlogged", this.host.nspName, this.unloggedPackets);
    this.host.emit("outage-ended", { unloggedPackets: this.unloggedPackets });
  }

  private deliverUnlogged(packet: LoggedPacket): void {
    this.host.deliverUnlogged(packet);
    this.unloggedPackets++;
  }

  // ---- the append -------------------------------------------------------------

  private async append(items: QueuedEntry[], attempt: number): Promise<number[]> {
    this.outage.writeStarted();
    await this.host.started();
    const id = this.host.namespaceId();
    if (id === undefined) throw new Error("socket.io-postgres-recovery: the adapter closed before it started");
    const { writerId } = this.host;
    if (attempt === 1) {
      this.batchNumber++;
    } else {
      // Waits for an earlier attempt that may still be running on the server, so the append sees its outcome.
      await this.ctx.log.registerWriter(writerId, id);
    }
    const payloads = items.map((item) => item.payload);
    const { from, appliedBefore } = await this.ctx.log.append(
      id,
      writerId,
      this.batchNumber,
      payloads,
      this.ctx.opts.logChannel,
      this.inlinePayload(payloads),
    );
    this.outage.writeSucceeded();
    if (appliedBefore) debug("batch %d of %s had been committed by an earlier attempt", this.batchNumber, writerId);
    // Operations waiting for these events learn their offsets before any of them can be delivered.
    this.host.committed(items.map((item) => item.submitted), from);
    // Offered to the sequencer as a whole, in this same tick: delivered when the cursor reaches them.
    this.sequencer.offer(items.map((item, i) => ({ offset: from + i, bytes: item.payload.length, ...item.packet })));
    return items.map((_, i) => from + i);
  }

  /** The batch inside the NOTIFY when it fits (receivers then skip a read), else "". */
  private inlinePayload(payloads: Buffer[]): string {
    let bytes = 16;
    for (const p of payloads) bytes += p.length + 5;
    if (Math.ceil(bytes / 3) * 4 + 40 > this.ctx.opts.payloadThreshold) return "";
    const inline = encodeBatchForNotify(payloads);
    return inline.length + 40 > this.ctx.opts.payloadThreshold ? "" : inline;
  }
}
