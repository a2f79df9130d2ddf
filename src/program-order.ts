/**
 * Program order between one namespace's logged events and the room and
 * disconnect operations of this node (`socketsJoin`, `socketsLeave`,
 * `disconnectSockets`, and `socket.join()`, `socket.leave()`,
 * `socket.disconnect()` on a local socket).
 *
 * With the in-memory adapter, `io.to(room).emit("closing"); io.socketsLeave(room)`
 * delivers "closing" first. Here an event is delivered when the cursor reaches
 * its offset, after its commit, while an operation would apply at once: it
 * would overtake the event, and a socket that left the room or was
 * disconnected would never get it. So, in the order this node issued them:
 *
 * - an **event** is submitted to the log at once, unless an operation that goes
 *   to the cluster is still queued or being published before it (then it
 *   waits its turn: see the last point);
 * - an **operation** waits until every event submitted before it has settled
 *   (committed, or delivered unlogged, or refused) and the cursor has reached
 *   the last of their offsets. It is applied right there, synchronously, in
 *   the delivery loop just after that entry (`delivered()`), before any later
 *   entry, and two operations apply in the order they were issued;
 * - an operation that goes to the cluster is published with the cursor at
 *   which it applied here (`afterOffset`); another node applies it when its own
 *   cursor reaches that offset (`remote()`). Events issued after it are held
 *   until the publication is committed: NOTIFYs reach every listener in commit
 *   order, so the other nodes receive the operation before those events.
 *
 * Until an operation knows the offsets of the events before it, this node
 * delivers nothing (`holdsDelivery`: one append round trip, `maxWaitMs` at
 * most when the log is failing). The NOTIFY of this node's own batch can
 * arrive before the append's answer, and delivering that batch then would
 * put entries issued after the operation (same batch) before it.
 *
 * An operation waits at most `maxWaitMs` (`unloggedDeliveryAfterMs`: the log
 * is failing, the same trade as outage mode); it then applies and says so.
 */
import type { Socket } from "socket.io";
import type { LoggedPacket } from "./codec.js";
import { asError } from "./errors.js";

export interface ProgramOrderOptions {
  /** The namespace's cursor; undefined until it started. */
  cursor(): number | undefined;
  /** Longest an operation waits for what it must follow; false: no limit. */
  maxWaitMs: number | false;
  /** Delivery held by `holdsDelivery` may go on (the sequencer drains again). */
  resumeDelivery(): void;
  onError(err: Error): void;
}

/** An operation's effect; a promise it returns (its publication) holds later events until it settles. */
export type Apply = (afterOffset: number | undefined) => Promise<unknown> | void;

interface QueuedEvent {
  kind: "event";
  submit(): void;
}

interface QueuedOperation {
  kind: "operation";
  /** A local operation follows the events numbered up to this (those queued before it included). */
  ticket: number | undefined;
  /** It is published to the cluster: the events after it wait for that. */
  publishes: boolean;
  /** The offset the cursor must reach; -1 when there is nothing to follow. */
  offset: number | undefined;
  apply: Apply;
  done(): void;
  timer: NodeJS.Timeout | undefined;
  /** Waited `maxWaitMs`: applies now. */
  forced: boolean;
}

/** No logged event to follow: the operation may apply before the namespace started. */
const NOTHING = -1;

export class ProgramOrder {
  private readonly queue: Array<QueuedEvent | QueuedOperation> = [];
  /** Events in the queue (they get their numbers in queue order). */
  private queuedEvents = 0;
  /** Operations in the queue that will be published. */
  private queuedPublications = 0;
  /** Number of the last event submitted to the log. */
  private lastSubmitted = 0;
  /** Events submitted and not settled yet, by number (ascending: a Set keeps insertion order). */
  private readonly pending = new Set<number>();
  private readonly numberOf = new Map<LoggedPacket, number>();
  /** [event number, offset] of committed events, ascending; trimmed to what queued operations need. */
  private marks: Array<readonly [number, number]> = [];
  /** A publication in flight: nothing after it goes until Postgres has it. */
  private publishing = false;
  private pumping = false;
  private _applying = false;

  constructor(private readonly opts: ProgramOrderOptions) {}

  /** Whether an operation is being applied now (what it does itself is not queued again). */
  get applying(): boolean {
    return this._applying;
  }

  /**
   * Whether an operation issued now could apply at once: nothing queued, and
   * every event submitted so far delivered here.
   */
  get idle(): boolean {
    if (this.queue.length > 0 || this.publishing) return false;
    if (!this.settledThrough(this.lastSubmitted)) return false;
    const offset = this.offsetThrough(this.lastSubmitted);
    return offset === NOTHING || (this.opts.cursor() ?? NOTHING) >= offset;
  }

  /** Whether an operation (this node's or another's) waits in the queue: a socket closing now may still be its target. */
  get operationsQueued(): boolean {
    return this.queue.some((item) => item.kind === "operation");
  }

  /**
   * Whether the sequencer must not deliver now: an operation waits for events
   * of this node whose offsets are not known yet, and any entry could be one
   * of them, or one issued after the operation.
   */
  get holdsDelivery(): boolean {
    for (let i = this.queue.length - 1; i >= 0; i--) {
      const item = this.queue[i]!;
      if (item.kind !== "operation" || item.offset !== undefined || item.ticket === undefined) continue;
      // Tickets grow along the queue: the last open one settles last.
      return !item.forced && !this.settledThrough(item.ticket);
    }
    return false;
  }

  /**
   * Submits a logged event now, or, when an operation published to the
   * cluster comes before it, once that publication is committed.
   */
  event(packet: LoggedPacket, submit: (packet: LoggedPacket) => Promise<void>): Promise<void> {
    if (!this.publishing && this.queuedEvents === 0 && this.queuedPublications === 0) return this.submit(packet, submit);
    this.queuedEvents++;
    return new Promise<void>((resolve) => {
      this.queue.push({ kind: "event", submit: () => void this.submit(packet, submit).then(resolve) });
    });
  }

  /**
   * An operation of this node: applied after every event issued before it is
   * delivered here. `publishes`: events issued after it wait until it applied
   * (and its publication, if `apply` returns one, committed): an operation
   * published to the cluster, or a leave that must be in the log's order of
   * room changes (crash safety, see LogWriter.appendOnce).
   */
  local(apply: Apply, publishes: boolean): Promise<void> {
    return this.enqueue({ ticket: this.lastSubmitted + this.queuedEvents, offset: undefined, publishes, apply });
  }

  /** Another node's operation, applied when this node's cursor reaches `afterOffset`. */
  remote(afterOffset: number, apply: Apply): Promise<void> {
    return this.enqueue({ ticket: undefined, offset: afterOffset, publishes: false, apply });
  }

  /** A batch of this node's events committed at `from`, `from + 1`, … (before the sequencer gets it). */
  committed(packets: readonly LoggedPacket[], from: number): void {
    packets.forEach((packet, i) => {
      const n = this.numberOf.get(packet);
      if (n === undefined) return;
      this.numberOf.delete(packet);
      this.pending.delete(n);
      this.marks.push([n, from + i]);
    });
    this.pump();
    this.trimMarks();
    if (!this.holdsDelivery) this.opts.resumeDelivery();
  }

  /** The sequencer delivered an entry (called synchronously, in its delivery loop). */
  delivered(): void {
    this.pump();
  }

  /** Operations waiting when the adapter closes apply now (a disconnect is never dropped). */
  close(): void {
    for (const item of this.queue) if (item.kind === "operation") item.forced = true;
    this.pump();
    this.opts.resumeDelivery();
  }

  private submit(packet: LoggedPacket, submit: (packet: LoggedPacket) => Promise<void>): Promise<void> {
    const n = ++this.lastSubmitted;
    this.pending.add(n);
    this.numberOf.set(packet, n);
    // Settled without a commit (delivered unlogged, refused): nothing to wait for.
    return submit(packet).finally(() => {
      if (this.numberOf.delete(packet)) {
        this.pending.delete(n);
        this.pump();
        if (!this.holdsDelivery) this.opts.resumeDelivery();
      }
    });
  }

  private enqueue(op: Pick<QueuedOperation, "ticket" | "offset" | "publishes" | "apply">): Promise<void> {
    if (op.publishes) this.queuedPublications++;
    return new Promise<void>((resolve) => {
      this.queue.push({ kind: "operation", ...op, done: resolve, timer: undefined, forced: false });
      this.pump();
    });
  }

  private pump(): void {
    if (this.pumping) return; // an operation applying now: the loop below goes on after it
    this.pumping = true;
    try {
      while (!this.publishing) {
        const head = this.queue[0];
        if (!head) break;
        if (head.kind === "event") {
          this.queue.shift();
          this.queuedEvents--;
          head.submit();
          continue;
        }
        if (!this.ready(head)) {
          this.armTimer(head);
          break;
        }
        this.queue.shift();
        if (head.publishes) this.queuedPublications--;
        clearTimeout(head.timer);
        this.apply(head);
      }
    } finally {
      this.pumping = false;
    }
  }

  private ready(op: QueuedOperation): boolean {
    if (op.forced) return true;
    if (op.offset === undefined && op.ticket !== undefined) {
      // At the head: every event issued before it has been submitted.
      if (!this.settledThrough(op.ticket)) return false;
      op.offset = this.offsetThrough(op.ticket);
    }
    if (op.offset === undefined || op.offset === NOTHING) return true;
    const cursor = this.opts.cursor();
    return cursor !== undefined && cursor >= op.offset;
  }

  private apply(op: QueuedOperation): void {
    const cursor = this.opts.cursor();
    const afterOffset = cursor ?? (op.offset !== undefined && op.offset !== NOTHING ? op.offset : undefined);
    let publication: Promise<unknown> | void = undefined;
    this._applying = true;
    try {
      publication = op.apply(afterOffset);
    } catch (err) {
      this.opts.onError(asError(err));
    } finally {
      this._applying = false;
    }
    if (!publication) {
      op.done();
      return;
    }
    this.publishing = true;
    publication
      .catch((err: unknown) => this.opts.onError(asError(err)))
      .finally(() => {
        this.publishing = false;
        op.done();
        this.pump();
      });
  }

  private armTimer(op: QueuedOperation): void {
    const { maxWaitMs } = this.opts;
    if (maxWaitMs === false || op.timer) return;
    op.timer = setTimeout(() => {
      op.forced = true;
      this.opts.onError(
        new Error(
          `socket.io-postgres-recovery: a room or disconnect operation waited ${maxWaitMs} ms for the events emitted before it; applying it now`,
        ),
      );
      this.pump();
      if (!this.holdsDelivery) this.opts.resumeDelivery();
    }, maxWaitMs);
    op.timer.unref();
  }

  /** Whether every event up to number `n` has settled. */
  private settledThrough(n: number): boolean {
    const oldest = this.pending.values().next();
    return oldest.done === true || oldest.value > n;
  }

  /** Offset of the last committed event numbered `n` or lower; NOTHING when none is known. */
  private offsetThrough(n: number): number {
    for (let i = this.marks.length - 1; i >= 0; i--) {
      const [number, offset] = this.marks[i]!;
      if (number <= n) return offset;
    }
    return NOTHING;
  }

  /** Keeps the marks a queued operation may still ask for (from the lowest open ticket on), and the last one. */
  private trimMarks(): void {
    let lowest: number | undefined;
    for (const item of this.queue) {
      if (item.kind === "operation" && item.offset === undefined && item.ticket !== undefined) {
        lowest = Math.min(lowest ?? item.ticket, item.ticket);
      }
    }
    let keepFrom = this.marks.length - 1;
    if (lowest !== undefined) {
      while (keepFrom > 0 && this.marks[keepFrom]![0] > lowest) keepFrom--;
    }
    if (keepFrom > 0) this.marks = this.marks.slice(keepFrom);
  }
}

const orderedSockets = new WeakSet<Socket>();

/**
 * `socket.disconnect()` is local and synchronous in Socket.IO: it does not go
 * through the adapter. To keep it after the events emitted before it, a
 * connected socket's `disconnect` goes through `order`: when something is
 * pending, it takes effect (and `socket.connected` turns false) once those
 * events are delivered. Otherwise, and inside an operation
 * (`disconnectSockets`), it is Socket.IO's own, at once. `closedBefore`: the
 * transport closed while it waited (see closing-sessions.ts).
 */
export function orderDisconnect(socket: Socket, order: ProgramOrder, closedBefore: (id: string) => void): void {
  if (orderedSockets.has(socket)) return;
  orderedSockets.add(socket);
  const disconnect = socket.disconnect.bind(socket);
  socket.disconnect = (close?: boolean) => {
    if (!socket.connected || order.applying || order.idle) return disconnect(close);
    void order.local(() => {
      if (socket.connected) disconnect(close);
      else closedBefore(socket.id);
    }, false);
    return socket;
  };
}
