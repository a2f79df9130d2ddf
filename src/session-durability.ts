/**
 * Crash safety: durable session skeletons, written lazily.
 *
 * For each connected socket with recovery, the `sessions` table holds what a
 * restore needs should its node die without a word (SIGKILL, OOM, host loss):
 * pid hash, sid, floor, rooms with their join cursors, `socket.data`, and the
 * node that serves it (`state = 'connected'`). Skeletons are written in
 * batches, one statement per batch for every namespace of the node (group
 * commit), coalesced per socket: a socket marked again while queued is
 * written once, with its state at the time of the write. They are written at
 * connect, on room changes, and when `socket.data` changed, which is checked
 * every `checkpointIntervalMs` (it is mutated in place, with no hook). Never a
 * write per event, never a query on the connection path.
 *
 * Exactness after a crash (docs/design.md, "Crash safety"): a room change
 * makes a socket *pending* until a skeleton that contains it commits. Meanwhile every logged entry for that socket is
 * held back, in order, and sent when the change is durable. So the client
 * never receives an entry its durable membership does not account for: a
 * change lost in a crash is rolled back as if the crash came first.
 *
 * The log follows durable room changes too: an entry this node accepts for the
 * log after a room change of one of its sockets is appended only once that
 * change is settled (`membershipEpoch`, `roomChangesDurable`): a crash that
 * rolls the change back then also finds nothing logged after it (a marker
 * the application emitted after acknowledging a leave, say).
 *
 * Fencing: every write carries the generation the node holds the session in.
 * A write refused because the row belongs to another node or generation
 * means the session was restored elsewhere (this node was declared dead):
 * the socket is disconnected here.
 */
import type { Room, SocketId } from "socket.io-adapter";
import { decodeSession, encodeSession, type LeftRoom } from "./codec.js";
import { asError } from "./errors.js";
import { hashPid, nextVersion } from "./session-store.js";
import type { SessionQueries, SessionRecord } from "./sql/session-queries.js";

/** What a skeleton records of a socket, from the adapter's ledger. */
export interface SkeletonState {
  readonly namespaceId: number;
  readonly rooms: ReadonlyArray<readonly [Room, number]>;
  /** Rooms left since the floor, with their join and leave cursors. */
  readonly left: readonly LeftRoom[];
  readonly floor: number;
  readonly data: unknown;
}

export interface DurabilityHost {
  /** The socket's current skeleton, or undefined when the namespace has not started yet. */
  skeletonOf(id: SocketId): SkeletonState | undefined;
  /** Sends an entry that was held back for `id` (its offset is the last element of `data`). */
  release(id: SocketId, data: unknown[], offset: number): void;
  /** Closes a local socket whose session was restored elsewhere. */
  disconnect(id: SocketId): void;
  /** `data` as a client would decode it if it were sent (JSON semantics, binary kept); throws like Socket.IO would. */
  normalize(data: unknown): unknown;
  reportError(err: Error): void;
}

/** How a restore handed a socket over, so its skeleton continues the right generation. */
interface Expected {
  readonly pidHash: Buffer;
  readonly generation: number;
  /** Whether a row a crash-restore could use already holds this socket's membership. */
  readonly durable: boolean;
  /** That row is this socket's skeleton as restored (the take left it so), with this `socket.data`. */
  readonly skeleton: { readonly data: unknown } | undefined;
  readonly at: number;
}

/** One socket's durability, owned by its namespace's `SessionDurability`. */
export class TrackedSocket {
  /** Bumped by every change to write. */
  changeSeq = 0;
  /** `changeSeq` of the last room change. */
  membershipSeq = 0;
  /** `changeSeq` of the last committed skeleton. */
  durableSeq = 0;
  /** A restorable row with this generation holds (an earlier state of) this socket. */
  durable: boolean;
  /** msgpack of `socket.data` as last written. */
  lastData: Buffer | undefined;
  /** Entries held back while a room change is not durable, in offset order. */
  readonly held: Array<{ data: unknown[]; offset: number }> = [];
  /** Left the namespace without a session: the skeleton is to be deleted. */
  gone = false;
  /** In the node's write queue. */
  queued = false;
  /** `socket.data` could not be stored, said once. */
  reportedData = false;
  /**
   * No write for this socket will make its room changes durable any more, and
   * none is needed: its row was taken elsewhere, its session at the disconnect
   * (or its removal) settled, or the node closed. Its changes no longer hold the log.
   */
  settled = false;

  constructor(
    readonly owner: SessionDurability,
    readonly id: SocketId,
    readonly pidHash: Buffer,
    readonly generation: number,
    durable: boolean,
  ) {
    this.durable = durable;
  }

  /**
   * A room change not yet in a committed skeleton. Also before the first
   * skeleton commits: a write already under way (taken before the change)
   * would otherwise make durable a membership the client saw contradicted.
   */
  get pending(): boolean {
    return this.membershipSeq > this.durableSeq;
  }
}

/** A room change in the order it was made, until it is durable or its socket settled. */
interface RoomChange {
  readonly socket: TrackedSocket;
  /** `membershipSeq` of the change. */
  readonly seq: number;
  /** Its number in the namespace (see `membershipEpoch`). */
  readonly epoch: number;
}

/** A write or a removal of one skeleton, built when its batch is written. */
type SkeletonWrite =
  | { readonly socket: TrackedSocket; readonly seq: number; readonly record: SessionRecord; readonly data: Buffer }
  | { readonly socket: TrackedSocket; readonly remove: true };

export interface SkeletonWriterOptions {
  maxBatchSize: number;
  /** Resolves once this node's liveness row exists (a skeleton must never name a node without one). */
  ready(): Promise<void>;
  onError(err: Error): void;
}

/**
 * The node-wide queue of skeletons to write: one write at a time, each
 * taking whatever was marked meanwhile (group commit), retried until the
 * database answers or the node closes.
 */
export class SkeletonWriter {
  private readonly queue = new Set<TrackedSocket>();
  private writing: Promise<void> | undefined;
  private closed = false;

  constructor(
    private readonly queries: SessionQueries,
    private readonly opts: SkeletonWriterOptions,
  ) {}

  get nodeId(): string {
    return this.queries.nodeId;
  }

  mark(socket: TrackedSocket): void {
    if (this.closed || socket.queued) return;
    socket.queued = true;
    this.queue.add(socket);
    this.writing ??= this.drain().finally(() => {
      this.writing = undefined;
      if (this.queue.size > 0 && !this.closed) this.writing ??= this.drain();
    });
  }

  /** Of `sockets`, those whose rows another node or generation holds now. */
  lost(sockets: readonly TrackedSocket[]): Promise<Buffer[]> {
    return this.queries.lost(sockets.map((s) => ({ pidHash: s.pidHash, generation: s.generation })));
  }

  private async drain(): Promise<void> {
    await this.opts.ready();
    for (let failures = 0; this.queue.size > 0 && !this.closed; ) {
      const batch = [...this.queue].slice(0, this.opts.maxBatchSize);
      const writes: SkeletonWrite[] = [];
      for (const socket of batch) {
        // Unqueued as its state is taken: a change from now on queues it for the next batch.
        socket.queued = false;
        this.queue.delete(socket);
        // Nothing to write now (namespace not started): the next checkpoint marks it again.
        const write = socket.owner.snapshot(socket, this.nodeId);
        if (write) writes.push(write);
      }
      try {
        await this.write(writes);
        failures = 0;
      } catch (err) {
        for (const write of writes) this.mark(write.socket);
        // Once per failure streak: retried every ≤ 2 s until the database answers.
        if (failures++ === 0) {
          this.opts.onError(new Error("socket.io-postgres-recovery: writing session skeletons failed; retrying", { cause: asError(err) }));
        }
        await new Promise((resolve) => setTimeout(resolve, Math.min(50 * 2 ** failures, 2000)).unref());
      }
    }
  }

  private async write(writes: readonly SkeletonWrite[]): Promise<void> {
    const upserts = writes.filter((w): w is Extract<SkeletonWrite, { record: SessionRecord }> => "record" in w);
    const removals = writes.filter((w) => !("record" in w));
    if (upserts.length > 0) {
      const outcomes = await this.queries.write(upserts.map((w) => w.record));
      upserts.forEach((w, i) => {
        const outcome = outcomes[i]!;
        if (outcome.written) w.socket.owner.committed(w.socket, w.seq, w.data);
        else if (!outcome.owned) w.socket.owner.taken(w.socket);
      });
    }
    if (removals.length > 0) {
      await this.queries.remove(removals.map((w) => ({ pidHash: w.socket.pidHash, nodeId: this.nodeId, generation: w.socket.generation })));
      for (const w of removals) w.socket.owner.removed(w.socket);
    }
  }

  /** Refuses new marks and waits (at most `timeoutMs`) for the write under way. */
  async close(timeoutMs: number): Promise<void> {
    const writing = this.writing;
    this.closed = true;
    // Nothing queued will be written: the appends waiting for it go on (see SessionDurability.settle).
    for (const socket of this.queue) socket.owner.abandoned(socket);
    this.queue.clear();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      writing?.catch(() => undefined),
      new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs))),
    ]);
    clearTimeout(timer);
  }
}

/** The skeletons of one namespace's sockets on this node. */
export class SessionDurability {
  private readonly sockets = new Map<SocketId, TrackedSocket>();
  private readonly expected = new Map<SocketId, Expected>();
  /** Sockets with entries held back or a pending room change. */
  private readonly pendingSockets = new Set<TrackedSocket>();
  private timer: NodeJS.Timeout | undefined;
  /** Room changes made here so far (the last one's `epoch`). */
  private epoch = 0;
  /** Every room change up to this epoch is durable or settled. */
  private durableEpoch = 0;
  /** Room changes not known durable yet, in the order they were made. */
  private readonly changes: RoomChange[] = [];
  /** Appends waiting for the changes up to `epoch`, ascending. */
  private readonly waiters: Array<{ readonly epoch: number; readonly resolve: () => void }> = [];

  constructor(
    private readonly host: DurabilityHost,
    private readonly writer: SkeletonWriter,
    private readonly ttlMs: number,
    checkpointIntervalMs: number,
  ) {
    this.timer = setInterval(() => this.checkpoint(), checkpointIntervalMs);
    this.timer.unref();
  }

  /** Whether any local socket has entries held back (fast path of delivery). */
  get holding(): boolean {
    return this.pendingSockets.size > 0;
  }

  /** Whether entries for `id` are held back now. */
  isHeld(id: SocketId): boolean {
    const socket = this.sockets.get(id);
    return socket !== undefined && (socket.pending || socket.held.length > 0);
  }

  hold(id: SocketId, data: unknown[], offset: number): void {
    this.sockets.get(id)?.held.push({ data, offset });
  }

  /** Offset of the first entry held back for `id`, if any. */
  firstHeld(id: SocketId): number | undefined {
    return this.sockets.get(id)?.held[0]?.offset;
  }

  /**
   * The number of the last room change made in this namespace on this node.
   * The log writer takes it when it accepts an entry (see `roomChangesDurable`).
   */
  get membershipEpoch(): number {
    return this.epoch;
  }

  /**
   * Resolves once every room change up to `epoch` is durable (in a committed
   * skeleton) or settled otherwise (the socket's row was taken elsewhere, its
   * session at the disconnect or its removal settled, the node is closing);
   * undefined when that is already so, which is always the case without room
   * changes. An entry accepted after a change is appended only then: after a
   * crash, the restore (by the last committed skeleton) never finds in the log
   * something emitted after a change it rolls back.
   */
  roomChangesDurable(epoch: number): Promise<void> | undefined {
    if (epoch <= this.durableEpoch) return undefined;
    return new Promise<void>((resolve) => {
      // Appends go out one at a time in the order entries were accepted: epochs arrive ascending.
      this.waiters.push({ epoch, resolve });
    });
  }

  /**
   * A restore took the session of `sid` in `generation`; its socket connects
   * next. With `skeleton`, the take left the row as that socket's skeleton
   * (its restored rooms and data, this node, this generation): the socket
   * connects durable, and is written only when it changes.
   */
  expectRestored(sid: SocketId, pid: string, generation: number, durable: boolean, skeleton?: { readonly data: unknown }): void {
    this.expected.set(sid, { pidHash: hashPid(pid), generation, durable, skeleton, at: Date.now() });
  }

  /**
   * The socket is connected and its rooms changed (or it just connected, with
   * `pid` set). The first call tracks it; every call marks it to write.
   */
  changed(id: SocketId, pid: string | undefined, membership: boolean): void {
    let socket = this.sockets.get(id);
    if (!socket) {
      if (pid === undefined) return;
      const expected = this.expected.get(id);
      this.expected.delete(id);
      socket = expected
        ? new TrackedSocket(this, id, expected.pidHash, expected.generation, expected.durable)
        : new TrackedSocket(this, id, hashPid(pid), 0, false);
      this.sockets.set(id, socket);
      if (expected?.skeleton && !membership) {
        // Connecting with its restored rooms, which its row holds already: nothing to write. Its
        // data is compared with the restored one at the next checkpoint.
        try {
          socket.lastData = encodeData(expected.skeleton.data);
          return;
        } catch {
          // Not encodable as stored (cannot happen for decoded data): written as any new socket.
        }
      }
    }
    socket.changeSeq++;
    if (membership) {
      socket.membershipSeq = socket.changeSeq;
      if (socket.pending) this.pendingSockets.add(socket);
      this.changes.push({ socket, seq: socket.membershipSeq, epoch: ++this.epoch });
    }
    this.writer.mark(socket);
  }

  /**
   * The socket disconnected and its session is written now: it is no longer
   * tracked (entries held back are dropped: the session's replay sends them).
   * Returns the generation to write the session in, and `written`, to call
   * with the session's write: until it settles, a crash would restore by the
   * skeleton, so room changes it alone makes durable still hold the log.
   */
  disconnected(id: SocketId): { generation: number; written(write: Promise<void>): void } | undefined {
    const socket = this.sockets.get(id);
    if (!socket) return undefined;
    this.forget(socket);
    return {
      generation: socket.generation,
      written: (write) => void write.finally(() => this.settle(socket)),
    };
  }

  /**
   * The socket's transport closed and its session waits for the operations
   * queued before the close (closing-sessions.ts): entries held back for it
   * are dropped (the session's replay sends them). It stays tracked, its
   * skeleton written from the closing state, until `disconnected()` or `left()`.
   */
  closed(id: SocketId): void {
    const socket = this.sockets.get(id);
    if (!socket) return;
    this.pendingSockets.delete(socket);
    socket.held.length = 0;
  }

  /** The socket left the namespace for good (no session): its skeleton is deleted. */
  left(id: SocketId): void {
    const socket = this.sockets.get(id);
    this.expected.delete(id);
    if (!socket) return;
    this.forget(socket);
    socket.gone = true;
    this.writer.mark(socket);
  }

  private forget(socket: TrackedSocket): void {
    this.sockets.delete(socket.id);
    this.pendingSockets.delete(socket);
    socket.held.length = 0;
  }

  /** What to write for `socket` now (called by the writer when its batch goes out). */
  snapshot(socket: TrackedSocket, nodeId: string): SkeletonWrite | undefined {
    if (socket.gone) return socket.durable || socket.durableSeq > 0 || socket.changeSeq > 0 ? { socket, remove: true } : undefined;
    if (!this.sockets.has(socket.id)) return undefined; // disconnected meanwhile: its session supersedes it
    const state = this.host.skeletonOf(socket.id);
    if (!state) return undefined;
    let payload: Buffer;
    let data: Buffer;
    try {
      data = encodeData(state.data);
      payload = encodeSession({ rooms: state.rooms, left: state.left, data: state.data });
    } catch {
      // msgpack refuses functions (and ignores toJSON): store it as a client would get it, as JSON would.
      try {
        const normalized = this.host.normalize(state.data);
        data = encodeData(normalized);
        payload = encodeSession({ rooms: state.rooms, left: state.left, data: normalized });
      } catch (err) {
        // The skeleton is still written (its rooms must become durable, or the socket's entries
        // would be held for good), with the last data that could be stored.
        this.unstorable(socket, err);
        data = socket.lastData ?? encodeData({});
        payload = encodeSession({ rooms: state.rooms, left: state.left, data: decodeSession(data).data });
      }
    }
    const record: SessionRecord = {
      pidHash: socket.pidHash,
      namespaceId: state.namespaceId,
      sid: socket.id,
      floorOffset: state.floor,
      lastOffset: state.floor,
      cursorOffset: state.floor,
      payload,
      ttlMs: this.ttlMs,
      state: "connected",
      nodeId,
      generation: socket.generation,
      version: nextVersion(),
    };
    return { socket, seq: socket.changeSeq, record, data };
  }

  /** A skeleton committed: changes up to `seq` are durable; what was held for them goes out. */
  committed(socket: TrackedSocket, seq: number, data: Buffer): void {
    socket.durableSeq = Math.max(socket.durableSeq, seq);
    socket.durable = true;
    socket.lastData = data;
    if (this.changes[0]?.socket === socket) this.advance();
    if (this.sockets.get(socket.id) !== socket) return;
    if (socket.pending) {
      // Its first skeleton committed while a later room change waits: from now on it is held.
      this.pendingSockets.add(socket);
      return;
    }
    this.pendingSockets.delete(socket);
    const held = socket.held.splice(0);
    for (const { data: packet, offset } of held) this.host.release(socket.id, packet, offset);
  }

  /** The skeleton of a socket that left for good was deleted. */
  removed(socket: TrackedSocket): void {
    this.settle(socket);
  }

  /** The writer closed before writing this socket's skeleton. */
  abandoned(socket: TrackedSocket): void {
    this.settle(socket);
  }

  /** No write will make `socket`'s changes durable any more, nor needs to: they stop holding the log. */
  private settle(socket: TrackedSocket): void {
    socket.settled = true;
    this.advance();
  }

  /** Moves `durableEpoch` past the changes now durable or settled, and lets the appends waiting for them go. */
  private advance(): void {
    let done = 0;
    while (done < this.changes.length) {
      const change = this.changes[done]!;
      if (change.socket.durableSeq < change.seq && !change.socket.settled) break;
      done++;
    }
    if (done === 0) return;
    this.changes.splice(0, done);
    this.durableEpoch = this.changes[0] ? this.changes[0].epoch - 1 : this.epoch;
    let ready = 0;
    while (ready < this.waiters.length && this.waiters[ready]!.epoch <= this.durableEpoch) ready++;
    for (const waiter of this.waiters.splice(0, ready)) waiter.resolve();
  }

  /** The row belongs to another node or generation: the session was restored elsewhere. */
  taken(socket: TrackedSocket): void {
    // Refused for good: its changes cannot become durable here (the socket is disconnected, its session lives on elsewhere).
    this.settle(socket);
    if (this.sockets.get(socket.id) !== socket) return;
    this.forget(socket);
    this.host.reportError(new Error(`socket.io-postgres-recovery: the session of ${socket.id} was restored on another node (this node was declared dead); disconnecting it here`));
    this.host.disconnect(socket.id);
  }

  /** This node was declared dead and is back: drops the sockets whose sessions were taken meanwhile. */
  async revived(): Promise<void> {
    const durable = [...this.sockets.values()].filter((s) => s.durable);
    const lost = new Set((await this.writer.lost(durable)).map((h) => h.toString("hex")));
    for (const socket of durable) if (lost.has(socket.pidHash.toString("hex"))) this.taken(socket);
  }

  /** Writes the sockets whose `socket.data` changed, or whose last write did not go through. */
  private checkpoint(): void {
    const now = Date.now();
    for (const [sid, expected] of this.expected) if (now - expected.at > 60_000) this.expected.delete(sid);
    for (const socket of this.sockets.values()) {
      if (socket.queued) continue;
      if (socket.changeSeq > socket.durableSeq) {
        this.writer.mark(socket);
        continue;
      }
      const state = this.host.skeletonOf(socket.id);
      if (!state) continue;
      let data: Buffer;
      try {
        data = encodeData(state.data);
      } catch {
        try {
          data = encodeData(this.host.normalize(state.data));
        } catch (err) {
          this.unstorable(socket, err);
          continue;
        }
      }
      if (!socket.lastData || !data.equals(socket.lastData)) {
        socket.changeSeq++;
        this.writer.mark(socket);
      }
    }
  }

  /** Says once per socket that its `socket.data` cannot be stored (its skeleton keeps the last that could). */
  private unstorable(socket: TrackedSocket, err: unknown): void {
    if (socket.reportedData) return;
    socket.reportedData = true;
    this.host.reportError(new Error(`socket.io-postgres-recovery: socket.data of ${socket.id} cannot be stored; its skeleton keeps the last one that could`, { cause: asError(err) }));
  }

  close(): void {
    clearInterval(this.timer);
    for (const socket of this.sockets.values()) socket.held.length = 0;
    this.pendingSockets.clear();
    // Nothing will be written for this namespace any more: appends still waiting go on.
    for (const change of this.changes) change.socket.settled = true;
    this.advance();
  }
}

function encodeData(data: unknown): Buffer {
  return encodeSession({ rooms: [], data });
}
