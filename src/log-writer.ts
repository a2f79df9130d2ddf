/**
 * Writing one namespace's logged broadcasts on one node: group commit into
 * the log (one statement, one transaction, one NOTIFY per batch), idempotent
 * retries, and outage mode when the log stays unwritable.
 *
 * An accepted event is never dropped while the node runs: a failed batch is
 * retried until it commits, whatever the error. Errors that pass on their own
 * (the database away, a failover, a timeout) are retried fast; the others
 * (a revoked grant, a prepared statement clashing on a pooled connection,
 * which the pool then discards) more slowly, each failure reported. Meanwhile
 * outage mode delivers around the batch, and its retry is the probe that
 * ends outage mode (see outage.ts). Only `close()` gives up on a batch, at its
 * deadline.
 *
 * Nothing is delivered here when it is written: a committed batch is offered
 * to the namespace's sequencer, which delivers it when its cursor reaches it
 * (see sequencer.ts). Only outage mode delivers directly, unlogged, through
 * `deliverUnlogged`.
 */
import { Batcher, BatcherFullError, BatcherTakenError } from "./batcher.js";
import { inlineForNotify, type LoggedPacket } from "./codec.js";
import { debug } from "./debug.js";
import { isTransientDatabaseError } from "./errors.js";
import type { NodeContext } from "./node-context.js";
import { operatorNotice } from "./operator-events.js";
import { OutageMonitor } from "./outage.js";
import { entryRoomKeys } from "./room-keys.js";
import type { PreparedPacket } from "./payload.js";
import type { Sequencer } from "./sequencer.js";
import { SPAN_NAMES, traced } from "./tracing.js";

/** Payload of the adapter's "outage-started" event. */
export interface OutageStartedEvent {
  failingForMs: number;
  /** The latest failed attempt's error; undefined when the write hangs rather than fails. */
  lastError: Error | undefined;
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
  /**
   * An event accepted for the log (prepared, within maxEntryBytes), before it
   * is queued: the adapter relays it to nodes that do not read the log (see
   * mixed-cluster.ts), in program order with its other cluster messages.
   */
  accepted(packet: LoggedPacket): void;
  /**
   * The number of the last room change of this namespace on this node (0
   * without crash safety); taken when an event is accepted.
   */
  membershipEpoch(): number;
  /**
   * Resolves once the room changes up to `epoch` are durable (or settled, see
   * SessionDurability.roomChangesDurable); undefined when they already are.
   */
  roomChangesDurable(epoch: number): Promise<void> | undefined;
  /**
   * This node's append was the first into another database incarnation: the
   * head jumped over (after, through] (see log-gaps.ts).
   */
  jumped(after: number, through: number): void;
  emit(event: "outage-started", payload: OutageStartedEvent): void;
  emit(event: "outage-ended", payload: OutageEndedEvent): void;
}

/** Longest wait between two attempts of a batch after a transient error. */
const TRANSIENT_RETRY_CAP_MS = 500;
/** Longest wait between two attempts after any other error (a grant revoked, ...). */
const OTHER_RETRY_CAP_MS = 2000;

/**
 * `submitted`: the packet as `submit()` got it (the host knows it by identity, see `committed`).
 * `epoch`: the last room change made on this node before it was accepted (see `appendOnce`).
 */
type QueuedEntry = PreparedPacket & { submitted: LoggedPacket; epoch: number };

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
      // Every failure: dropping the batch would lose accepted events, and leave outage mode
      // (if it starts) with no write to end it. Appends are idempotent, so retrying is safe.
      isRetryable: () => true,
      // Transient errors: capped low, since connected clients wait for these retries and the
      // outage decision (unloggedDeliveryAfterMs) should not be made by the backoff. Others
      // wait for someone to fix something: slower, but still bounding how long outage mode
      // outlasts the fix.
      retryDelayMs: (attempt) =>
        isTransientDatabaseError(this.outage.lastError)
          ? Math.min(50 * 2 ** attempt, TRANSIENT_RETRY_CAP_MS)
          : Math.min(100 * 2 ** attempt, OTHER_RETRY_CAP_MS),
      maxAttempts: Infinity,
      onError: (err) => {
        this.outage.writeFailed(err);
        this.ctx.reportError(new Error(`socket.io-postgres-recovery: appending to the log of "${host.nspName}" failed; retrying`, { cause: err }));
      },
    });
    this.outage = new OutageMonitor({
      afterMs: ctx.opts.unloggedDeliveryAfterMs,
      onStarted: (failingForMs, lastError) => this.startOutage(failingForMs, lastError),
      onEnded: () => this.endOutage(),
    });
  }

  /** Broadcasts accepted and not committed yet (for metrics). */
  get pendingWrites(): number {
    return this.batcher.pending;
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
      queued = { ...this.host.prepare(packet), submitted: packet, epoch: this.host.membershipEpoch() };
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
    this.host.accepted(queued.packet);
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

  /**
   * Writes what is queued, within `timeoutMs` (the batcher gives up on the
   * rest then, even on a write that never answers); refuses new events from now on.
   */
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
  private startOutage(failingForMs: number, lastError: Error | undefined): void {
    this.unloggedPackets = 0;
    this.host.emit("outage-started", { failingForMs, lastError });
    this.ctx.reportError(
      operatorNotice(
        { event: "outage-started", namespace: this.host.nspName, failingForMs, ...(lastError ? { lastError: lastError.message } : {}) },
        `the log of "${this.host.nspName}" has been unwritable for ${failingForMs} ms` +
          (lastError ? "" : " (the write hangs)") +
          "; delivering new events to this node's sockets only, unlogged, until a write succeeds",
        lastError,
      ),
    );
    for (const item of this.batcher.take(() => true)) this.deliverUnlogged(item.packet);
  }

  private endOutage(): void {
    debug("outage of %s ended: %d events delivered unlogged", this.host.nspName, this.unloggedPackets);
    this.host.emit("outage-ended", { unloggedPackets: this.unloggedPackets });
    this.ctx.reportError(
      operatorNotice(
        { event: "outage-ended", namespace: this.host.nspName, unloggedPackets: this.unloggedPackets },
        `the log of "${this.host.nspName}" is writable again; ${this.unloggedPackets} event(s) were delivered unlogged meanwhile`,
      ),
    );
  }

  private deliverUnlogged(packet: LoggedPacket): void {
    this.host.deliverUnlogged(packet);
    this.unloggedPackets++;
    this.ctx.metrics.unlogged(this.host.nspName);
  }

  // ---- the append -------------------------------------------------------------

  /** One attempt of a batch, traced (see tracing.ts). */
  private append(items: QueuedEntry[], attempt: number): Promise<number[]> {
    let bytes = 0;
    for (const item of items) bytes += item.payload.length;
    const attributes = { "socketio.namespace": this.host.nspName, "socketio.recovery.batch_size": items.length, "socketio.recovery.batch_bytes": bytes, "socketio.recovery.attempt": attempt };
    return traced(SPAN_NAMES.append, attributes, async (span) => {
      const offsets = await this.appendOnce(items, attempt);
      span.set({ "socketio.recovery.first_offset": offsets[0] ?? 0 });
      return offsets;
    });
  }

  private async appendOnce(items: QueuedEntry[], attempt: number): Promise<number[]> {
    this.outage.writeStarted();
    await this.host.started();
    // Entries accepted after a room change of this node are committed only once a skeleton holding
    // the change has (docs/design.md, "Exactness after a crash"): a crash that rolls the change back
    // must not find them in the log. Epochs grow along the queue: the last entry's covers the batch.
    // Counted as the write under way: a skeleton write that cannot commit turns into outage mode.
    const durable = this.host.roomChangesDurable(items[items.length - 1]!.epoch);
    if (durable) await durable;
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
    const appendStarted = performance.now();
    const { from, appliedBefore, jumpedFrom } = await this.ctx.log.append(
      id,
      writerId,
      this.batchNumber,
      payloads,
      this.ctx.opts.logChannel,
      inlineForNotify(payloads, this.ctx.opts.payloadThreshold),
      items.map((item) => entryRoomKeys(item.packet.rooms)),
    );
    this.outage.writeSucceeded();
    this.ctx.metrics.appended(this.host.nspName, (performance.now() - appendStarted) / 1000, items.length);
    if (appliedBefore) debug("batch %d of %s had been committed by an earlier attempt", this.batchNumber, writerId);
    if (jumpedFrom !== undefined) {
      // The first append into another database incarnation: the head jumped over (jumpedFrom, from - 1].
      // Told first: this node's cursor, before it steps over the gap, is the evidence of a loss.
      this.host.jumped(jumpedFrom, from - 1);
      this.sequencer.skip(jumpedFrom, from - 1);
    }
    // Operations waiting for these events learn their offsets before any of them can be delivered.
    this.host.committed(items.map((item) => item.submitted), from);
    // Offered to the sequencer as a whole, in this same tick: delivered when the cursor reaches them.
    this.sequencer.offer(items.map((item, i) => ({ offset: from + i, bytes: item.payload.length, ...item.packet })));
    return items.map((_, i) => from + i);
  }
}
