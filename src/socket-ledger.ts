/**
 * What a node remembers about each of its sockets for recovery, in one
 * namespace: the cursor at which it joined each room, its floor (the lowest
 * offset its client may present), and the offset of the last entry written to
 * it. A session is a snapshot of this at the disconnect.
 */
import type { Room, SocketId } from "socket.io-adapter";
import type { LeftRoom } from "./codec.js";

/** A cursor not known yet (the namespace is still starting): replaced by `settle()`. */
export const UNSTARTED = -1;

export interface SessionSnapshot {
  /** Every room with its join cursor; always includes the socket's own room. */
  rooms: Array<readonly [Room, number]>;
  /** Rooms left since the floor, with their join and leave cursors. */
  left: LeftRoom[];
  floor: number;
  /** Offset of the last entry written to the socket: its client processed at most that far. */
  lastDelivered: number;
}

export class SocketLedger {
  private readonly joins = new Map<SocketId, Map<Room, number>>();
  private readonly floors = new Map<SocketId, number>();
  private readonly lastDelivered = new Map<SocketId, number>();
  /** Rooms each socket left (a restore must know what they delivered, or kept from it, before). */
  private readonly left = new Map<SocketId, LeftRoom[]>();

  /** Whether the socket's session has begun (fresh or resumed) on this node. */
  has(id: SocketId): boolean {
    return this.floors.has(id);
  }

  /** A new session: its floor is the cursor now, which the priming event also sends. */
  begin(id: SocketId, cursor: number): void {
    this.floors.set(id, cursor);
    this.lastDelivered.set(id, cursor);
  }

  /**
   * A restored session: the floor is the offset its client presented, the
   * last delivered offset the end of its replay so far, and its
   * rooms keep the join cursors of the session, not "now": if this connection
   * drops before the client processed the replay, the next restore must
   * replay it again.
   */
  resume(id: SocketId, floor: number, joinedAt: ReadonlyMap<Room, number>, lastReplayed: number, left: readonly LeftRoom[] = []): void {
    this.floors.set(id, floor);
    this.joins.set(id, new Map(joinedAt));
    this.left.set(id, [...left]);
    this.lastDelivered.set(id, lastReplayed);
  }

  /** Rooms joined now; a room already joined keeps its first cursor. */
  join(id: SocketId, rooms: Iterable<Room>, cursor: number): void {
    let joined = this.joins.get(id);
    if (!joined) this.joins.set(id, (joined = new Map()));
    for (const room of rooms) if (!joined.has(room)) joined.set(room, cursor);
  }

  /** The socket's rooms with their join cursors, live (changes with every join and leave). */
  rooms(id: SocketId): ReadonlyMap<Room, number> | undefined {
    return this.joins.get(id);
  }

  /** The socket left `room` at `cursor`: entries up to it were delivered to it through that room. */
  leave(id: SocketId, room: Room, cursor: number): void {
    const joins = this.joins.get(id);
    const at = joins?.get(room);
    if (at === undefined) return;
    joins!.delete(room);
    if (cursor <= at) return; // nothing was delivered while it was in the room
    let left = this.left.get(id);
    if (!left) this.left.set(id, (left = []));
    left.push([room, at, cursor]);
  }

  /** Rooms the socket left, live (see `rooms`). */
  leftRooms(id: SocketId): readonly LeftRoom[] | undefined {
    return this.left.get(id);
  }

  delivered(id: SocketId, offset: number): void {
    this.lastDelivered.set(id, offset);
  }

  forget(id: SocketId): void {
    this.joins.delete(id);
    this.floors.delete(id);
    this.lastDelivered.delete(id);
    this.left.delete(id);
  }

  /**
   * The namespace started at `head`: unknown cursors become it. Returns the
   * sockets whose session began before (connected before the cursor was known).
   */
  settle(head: number): SocketId[] {
    for (const rooms of this.joins.values()) {
      for (const [room, at] of rooms) if (at === UNSTARTED) rooms.set(room, head);
    }
    const unprimed: SocketId[] = [];
    for (const [id, floor] of this.floors) {
      if (floor === UNSTARTED) {
        this.begin(id, head);
        unprimed.push(id);
      }
    }
    return unprimed;
  }

  /** The session to store at the disconnect; undefined when the socket's session never began. */
  snapshot(id: SocketId, rooms: readonly Room[], cursor: number): SessionSnapshot | undefined {
    const floor = this.floors.get(id);
    if (floor === undefined || floor === UNSTARTED) return undefined;
    const joined = this.joins.get(id);
    // An unknown join cursor counts as "now": never replays more than the socket could have had.
    const stored = rooms.map((room) => [room, joined?.get(room) ?? cursor] as const);
    // Socket.IO always puts a restored socket back in its own room; it is where `socket.emit()` goes.
    if (!rooms.includes(id)) stored.push([id, joined?.get(id) ?? floor]);
    // Only leaves after the floor matter: a restore never replays anything at or before it.
    const left = (this.left.get(id) ?? []).filter(([, , leftAt]) => leftAt > floor);
    return { rooms: stored, left, floor, lastDelivered: this.lastDelivered.get(id) ?? floor };
  }
}
