/**
 * Stitching a restore's replay to live delivery, in one namespace on one node.
 *
 * A restore reads what its client missed up to this node's cursor at one
 * moment (`upTo`). Socket.IO delivers nothing to the restored socket until
 * it is connected: broadcasts only reach the namespace's `sockets`, which it
 * enters after its middlewares. So from `upTo` on, every entry this node
 * delivers and that is addressed to the socket (by the restored membership,
 * plus the rooms its middlewares join) is appended to the restore's own
 * list. When the socket connects (Socket.IO joins it to its own room right
 * before writing the CONNECT packet), the replay and that list are sent, in
 * the same tick, just before the CONNECT packet, as Socket.IO sends missed
 * packets; from then on it receives live. Nothing falls between the two and
 * nothing depends on how much the node delivered meanwhile (the ring of
 * recent entries only saves a query).
 *
 * Nothing is sent while the middlewares run (Socket.IO would send
 * `missedPackets` from the socket's constructor): socket.io-client buffers
 * the packets that arrive before CONNECT, does not move its offset for them,
 * and keeps them across a reconnection. A restored socket discarded during
 * its middlewares (the connection dropped) would leave its client with a
 * replay it processes twice: from that buffer, then from the next restore.
 * Sent with the CONNECT packet, in one flush, the replay reaches the client
 * with it; if the connection drops before, Socket.IO discards the socket and
 * the taken session goes back as it was (the client processed none of it).
 *
 * A pending restore ends when the socket connects, when it leaves the
 * namespace (`delAll`: discarded by Socket.IO), or when Socket.IO did not
 * take it at all; never on a timer. What it holds is bounded by the replay
 * limits: past them its connection is closed, and the client restores again
 * (or is refused, fail closed).
 */
import type { SocketId } from "socket.io-adapter";
import { formatOffset, type LogEntry } from "./codec.js";
import { debug } from "./debug.js";
import { isAddressedTo, type Membership, type ReplayLimits } from "./replay.js";
import type { SocketLedger } from "./socket-ledger.js";
import type { SessionRecord } from "./sql/session-queries.js";

export interface StitchHost {
  /** Whether the socket is connected (in the namespace's sockets, past its middlewares). */
  isConnected(id: SocketId): boolean;
  /** Sends one packet's data to one connected local socket. */
  sendTo(id: SocketId, data: unknown[]): void;
  /** Closes the connection of a socket that is not connected yet (the client reconnects and restores again). */
  dropConnection(id: SocketId): void;
  /** Puts a taken session back: the socket never reached its client. */
  putBack(record: SessionRecord): void;
}

/** One restore between its read and its socket's connection. */
export interface PendingRestore {
  readonly sid: SocketId;
  /** The session as it was taken, to put back if the socket never connects. */
  readonly taken: SessionRecord;
  /** The offset the client presented: the restored session's floor. */
  readonly floor: number;
  /** Entries up to this offset are the replay's; later ones are captured. */
  readonly upTo: number;
  /** Whether more was delivered to it than the replay limits allow: it cannot complete. */
  readonly overflowed: boolean;
}

interface Pending extends PendingRestore {
  /** Rooms with join cursors: the session's, then the ledger's live ones once Socket.IO joined them. */
  membership: Membership;
  replay: LogEntry[];
  captured: LogEntry[];
  /** Entries and bytes held (replay and captured), against the replay limits. */
  count: number;
  bytes: number;
  overflowed: boolean;
  /** reading: the restore is still reading; handed: returned to Socket.IO; joined: Socket.IO created the socket. */
  state: "reading" | "handed" | "joined";
}

export class Stitcher {
  private readonly pending = new Map<SocketId, Pending>();

  constructor(
    private readonly host: StitchHost,
    private readonly ledger: SocketLedger,
    private readonly limits: ReplayLimits,
  ) {}

  /** Restores between their read and their connection (for tests and debugging). */
  get size(): number {
    return this.pending.size;
  }

  /**
   * A restore is about to read its replay of `(floor, upTo]`, `upTo` being
   * the cursor now: from now on, what this node delivers to `membership` is
   * captured for it.
   */
  open(taken: SessionRecord, floor: number, membership: Membership, upTo: number): PendingRestore {
    const pending: Pending = {
      sid: taken.sid,
      taken,
      floor,
      upTo,
      membership,
      replay: [],
      captured: [],
      count: 0,
      bytes: 0,
      overflowed: false,
      state: "reading",
    };
    this.pending.set(taken.sid, pending);
    return pending;
  }

  /** The restore did not complete (refused or failed): stop capturing. The caller decides about the session. */
  cancel(handle: PendingRestore): void {
    if (this.pending.get(handle.sid) === handle) this.pending.delete(handle.sid);
  }

  /**
   * The restore returns its session to Socket.IO, which creates the socket
   * (joining its rooms) in the same tick. If it has not by the next turn of
   * the event loop, it never will: the session goes back.
   */
  handOver(handle: PendingRestore, replay: LogEntry[]): void {
    const pending = this.pending.get(handle.sid);
    if (pending !== handle) return;
    pending.replay = replay;
    pending.count += replay.length;
    for (const entry of replay) pending.bytes += entry.bytes;
    pending.state = "handed";
    setImmediate(() => {
      if (this.pending.get(pending.sid) !== pending || pending.state !== "handed") return;
      debug("restored session of %s was not taken by Socket.IO; putting it back", pending.sid);
      this.pending.delete(pending.sid);
      this.host.putBack(pending.taken);
    });
  }

  /** Every entry this node delivers, before it goes to the connected sockets. */
  onDelivered(entry: LogEntry): void {
    if (this.pending.size === 0) return;
    for (const pending of this.pending.values()) {
      if (pending.overflowed || entry.offset <= pending.upTo || !isAddressedTo(entry, pending.membership)) continue;
      pending.captured.push(entry);
      pending.count++;
      pending.bytes += entry.bytes;
      if (pending.count > this.limits.maxReplayEntries || pending.bytes > this.limits.maxReplayBytes) this.overflow(pending);
    }
  }

  /**
   * Socket.IO joins rooms for `id`: first the restored rooms, in the socket's
   * constructor, right after the restore resolved; then any room its
   * middlewares join; then, once connected, its own room again, right before
   * the CONNECT packet: the replay goes out then. Call before the ledger
   * records the join.
   */
  onJoin(id: SocketId): void {
    const pending = this.pending.get(id);
    if (!pending || pending.state === "reading") return;
    if (pending.state === "handed") {
      pending.state = "joined";
      this.ledger.resume(id, pending.floor, pending.membership.joinedAt, pending.floor, pending.membership.left);
      // Rooms its middlewares join or leave count from now on, as they will for live delivery.
      const live = this.ledger.rooms(id);
      if (live) pending.membership = { joinedAt: live, left: this.ledger.leftRooms(id), memberSince: pending.membership.memberSince };
      if (pending.overflowed) this.host.dropConnection(id);
    }
    if (this.host.isConnected(id)) this.connected(pending);
  }

  /** The socket is connected and its CONNECT packet comes next: the replay goes first. */
  private connected(pending: Pending): void {
    const id = pending.sid;
    this.pending.delete(id);
    if (pending.overflowed) {
      // Its connection is closing already; Socket.IO stores its session (nothing sent: as taken).
      this.host.dropConnection(id);
      return;
    }
    let last: number | undefined;
    for (const entry of pending.replay) {
      this.host.sendTo(id, [...entry.data, formatOffset(entry.offset)]);
      last = entry.offset;
    }
    for (const entry of pending.captured) {
      this.host.sendTo(id, [...entry.data, formatOffset(entry.offset)]);
      last = entry.offset;
    }
    if (last !== undefined) this.ledger.delivered(id, last);
  }

  /** The socket left the namespace (`delAll`). */
  onLeave(id: SocketId): void {
    const pending = this.pending.get(id);
    if (!pending || pending.state === "reading") return;
    this.pending.delete(id);
    // Restored, then discarded before it connected (the connection dropped during the middlewares):
    // Socket.IO stores nothing for it, and its client processed nothing of this restore.
    this.host.putBack(pending.taken);
  }

  private overflow(pending: Pending): void {
    pending.overflowed = true;
    pending.captured = [];
    debug("restore of %s: more was delivered before it connected than the replay limits allow", pending.sid);
    if (pending.state === "joined") this.host.dropConnection(pending.sid);
  }
}
