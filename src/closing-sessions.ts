/**
 * Sessions of sockets whose transport closed while operations issued before
 * the close still waited for program order.
 *
 * Socket.IO stores a session when a socket's transport closes
 * (`persistSession`, with the socket's rooms at that moment), and with its
 * in-memory adapter every room or disconnect operation has applied by then.
 * Here an operation waits for the events this node issued before it
 * (program-order.ts): `socket.leave("b")` in a handler, its acknowledgement
 * sent, then the transport closes before the leave applied. A session stored
 * at the close would still hold `b`; restored, the socket would get what goes
 * to `b` after the leave its client saw acknowledged. Likewise a
 * `socketsLeave`/`socketsJoin` issued before the close (on this node or
 * another), and a `disconnectSockets`/`socket.disconnect()` issued before it,
 * after which Socket.IO stores no session at all.
 *
 * So when operations are queued at the close, the socket stays here as a
 * *closing* session: its rooms as Socket.IO gave them, with their join
 * cursors, changed by each operation queued before the close when it applies,
 * at the cursor where it applies (what the socket's ledger would have
 * recorded). Its session is written when the last of them has applied (an
 * operation of the program order queued after them); until then its
 * skeleton is written from this state (crash safety).
 */
import { MessageType, type Room, type SocketId } from "socket.io-adapter";
import type { LeftRoom } from "./codec.js";
import type { SessionSnapshot } from "./socket-ledger.js";

/** A socket whose session waits for the operations queued before its transport closed. */
export interface ClosingSession {
  readonly sid: SocketId;
  /** The private session id Socket.IO gave it. */
  readonly pid: string;
  /** Rooms with their join cursors, as they are now. */
  readonly rooms: Map<Room, number>;
  /** Rooms left since the floor, with their join and leave cursors. */
  readonly left: LeftRoom[];
  readonly floor: number;
  /** Offset of the last entry written to the socket (at the close: nothing reaches it after). */
  readonly lastDelivered: number;
  /** The session's cursor offset, as at the close (entries after it were not delivered to the socket). */
  readonly cursorOffset: number;
  readonly data: unknown;
  /** A disconnect issued before the close reached it: Socket.IO would have stored no session. */
  dropped: boolean;
}

/** An operation as it travels the cluster bus (encoded options: arrays). */
export interface OperationLike {
  readonly type: number;
  readonly data: {
    readonly opts: { readonly rooms: readonly Room[]; readonly except?: readonly Room[] };
    readonly rooms?: readonly Room[];
  };
}

export class ClosingSessions {
  private readonly sessions = new Map<SocketId, ClosingSession>();

  get size(): number {
    return this.sessions.size;
  }

  has(sid: SocketId): boolean {
    return this.sessions.has(sid);
  }

  get(sid: SocketId): ClosingSession | undefined {
    return this.sessions.get(sid);
  }

  /** The socket's transport closed with operations queued: its session, as at the close, waits here. */
  open(sid: SocketId, pid: string, snapshot: SessionSnapshot, cursorOffset: number, data: unknown): ClosingSession {
    const session: ClosingSession = {
      sid,
      pid,
      rooms: new Map(snapshot.rooms),
      left: [...snapshot.left],
      floor: snapshot.floor,
      lastDelivered: snapshot.lastDelivered,
      cursorOffset,
      data,
      dropped: false,
    };
    this.sessions.set(sid, session);
    return session;
  }

  /** The operations before the close have applied: the session is written (or dropped) now. */
  take(sid: SocketId): ClosingSession | undefined {
    const session = this.sessions.get(sid);
    this.sessions.delete(sid);
    return session;
  }

  /** A `socket.leave(room)` of the closed socket applied at `cursor`. Whether it changed its rooms. */
  leave(sid: SocketId, room: Room, cursor: number): boolean {
    const session = this.sessions.get(sid);
    if (!session) return false;
    return leaveRoom(session, room, cursor);
  }

  /** A `socket.disconnect()` of the closed socket applied. */
  drop(sid: SocketId): void {
    const session = this.sessions.get(sid);
    if (session) session.dropped = true;
  }

  /**
   * A room or disconnect operation applied here at `cursor`; it reaches the
   * closing sessions it would have reached as sockets (the in-memory
   * adapter's rule: in one of `opts.rooms`, or any when there are none, and
   * in none of `opts.except`). Returns the sessions whose rooms changed.
   */
  applyOperation(operation: OperationLike, cursor: number): ClosingSession[] {
    if (this.sessions.size === 0) return [];
    const { opts } = operation.data;
    const changed: ClosingSession[] = [];
    for (const session of this.sessions.values()) {
      if (session.dropped || !reaches(session, opts.rooms, opts.except ?? [])) continue;
      if (operation.type === MessageType.DISCONNECT_SOCKETS) {
        session.dropped = true;
        continue;
      }
      let any = false;
      for (const room of operation.data.rooms ?? []) {
        if (operation.type === MessageType.SOCKETS_JOIN) {
          if (!session.rooms.has(room)) {
            session.rooms.set(room, cursor);
            any = true;
          }
        } else if (operation.type === MessageType.SOCKETS_LEAVE) {
          any = leaveRoom(session, room, cursor) || any;
        }
      }
      if (any) changed.push(session);
    }
    return changed;
  }
}

/** The socket ledger's rule (SocketLedger.leave): a leave is recorded when the socket could have had something through the room. */
function leaveRoom(session: ClosingSession, room: Room, cursor: number): boolean {
  const at = session.rooms.get(room);
  if (at === undefined) return false;
  session.rooms.delete(room);
  if (cursor > at) session.left.push([room, at, cursor]);
  return true;
}

function reaches(session: ClosingSession, rooms: readonly Room[], except: readonly Room[]): boolean {
  if (except.some((room) => session.rooms.has(room))) return false;
  return rooms.length === 0 || rooms.some((room) => session.rooms.has(room));
}
