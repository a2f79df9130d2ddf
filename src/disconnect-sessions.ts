/**
 * The session a socket leaves at its disconnect: a snapshot of the socket's
 * ledger (socket-ledger.ts), written through the session store, fenced by
 * the generation its skeleton holds (session-durability.ts).
 *
 * Written at once, unless room or disconnect operations wait in the program
 * order at the close: those issued before it change the session first, as
 * they would have changed the socket (closing-sessions.ts); an operation
 * queued after them writes it.
 */
import type { PrivateSessionId, Room, SocketId } from "socket.io-adapter";
import { ClosingSessions, type OperationLike } from "./closing-sessions.js";
import { encodeSession } from "./codec.js";
import type { ProgramOrder } from "./program-order.js";
import type { SessionDurability, SkeletonState } from "./session-durability.js";
import { hashPid, type SessionStore } from "./session-store.js";
import { UNSTARTED, type SessionSnapshot, type SocketLedger } from "./socket-ledger.js";

export interface DisconnectSessionsHost {
  /** The namespace's cursor; undefined until it started. */
  cursor(): number | undefined;
  namespaceId(): number | undefined;
  reportError(err: Error): void;
}

/** What Socket.IO hands `persistSession` when a socket's transport closes. */
export interface ClosedSocket {
  readonly sid: SocketId;
  readonly pid: PrivateSessionId;
  readonly rooms: Room[];
  readonly data: unknown;
}

type StoredSession = SessionSnapshot & { readonly cursorOffset: number; readonly data: unknown };

export class DisconnectSessions {
  private readonly closing = new ClosingSessions();

  constructor(
    private readonly host: DisconnectSessionsHost,
    private readonly ledger: SocketLedger,
    private readonly store: SessionStore,
    private readonly durability: SessionDurability | undefined,
    private readonly order: ProgramOrder,
    /** Socket.IO's `maxDisconnectionDuration`. */
    private readonly ttlMs: number,
  ) {}

  /** Whether `sid`'s session waits for operations queued before its close (its skeleton stays). */
  isClosing(sid: SocketId): boolean {
    return this.closing.has(sid);
  }

  /**
   * Stores the session of a socket whose transport closed. False when there
   * is none to store (the namespace has not started, the socket never began
   * a session here).
   */
  persist(socket: ClosedSocket): boolean {
    const cursor = this.host.cursor();
    const snapshot = cursor === undefined ? undefined : this.ledger.snapshot(socket.sid, socket.rooms, cursor);
    if (!snapshot || cursor === undefined || this.host.namespaceId() === undefined) return false;
    // Entries held back for a room change that never became durable were not written to the socket.
    const firstHeld = this.durability?.firstHeld(socket.sid);
    const cursorOffset = firstHeld === undefined ? cursor : Math.max(snapshot.lastDelivered, firstHeld - 1);
    if (this.order.operationsQueued) {
      // An operation queued before this close may still change the session (a leave that waits for
      // program order, say): it is written once they have applied, by an operation after them.
      this.closing.open(socket.sid, socket.pid, snapshot, cursorOffset, socket.data);
      this.durability?.closed(socket.sid);
      void this.order.local(() => this.writeClosing(socket.sid), false);
      return true;
    }
    this.write(socket.sid, socket.pid, { ...snapshot, cursorOffset, data: socket.data });
    return true;
  }

  /** A `socket.leave(room)` applied at `cursor`. False when the socket is not closing (it is live). */
  leave(sid: SocketId, room: Room, cursor: number): boolean {
    if (!this.closing.leave(sid, room, cursor)) return false;
    // As a socket's room change: the events after it wait for its skeleton (crash safety).
    this.durability?.changed(sid, undefined, true);
    return true;
  }

  /** A `socket.disconnect()` of a socket whose transport closed while it waited. */
  dropped(sid: SocketId): void {
    this.closing.drop(sid);
  }

  /** A room or disconnect operation applied here at `cursor`: it reaches the closing sessions it matches too. */
  applied(operation: OperationLike, cursor: number | undefined): void {
    for (const session of this.closing.applyOperation(operation, cursor ?? UNSTARTED)) {
      this.durability?.changed(session.sid, undefined, true);
    }
  }

  /** The skeleton of a closing session: its state at the close, as operations changed it since. */
  skeletonOf(sid: SocketId): Omit<SkeletonState, "namespaceId"> | undefined {
    const session = this.closing.get(sid);
    if (!session) return undefined;
    return { rooms: [...session.rooms], left: session.left, floor: session.floor, data: session.data };
  }

  /** The operations queued before the socket's transport closed have applied: its session goes out now. */
  private writeClosing(sid: SocketId): void {
    const session = this.closing.take(sid);
    if (!session) return;
    if (session.dropped) {
      // Disconnected by the application before the close: no session, as with Socket.IO's own order.
      this.durability?.left(sid);
      return;
    }
    this.write(sid, session.pid, { ...session, rooms: [...session.rooms] });
  }

  /** Writes a session; from then on its socket is no longer tracked as connected. */
  private write(sid: SocketId, pid: PrivateSessionId, session: StoredSession): void {
    const namespaceId = this.host.namespaceId();
    const fence = this.durability?.disconnected(sid);
    if (namespaceId === undefined) {
      // Not reached: a session is kept only once its namespace started (persist()).
      fence?.written(Promise.resolve());
      return;
    }
    let payload: Buffer;
    try {
      payload = encodeSession({ rooms: session.rooms, left: session.left, data: session.data });
    } catch (err) {
      this.host.reportError(new Error(`socket.io-postgres-recovery: socket.data of ${sid} does not serialize; its session is not stored`, { cause: err }));
      fence?.written(Promise.resolve());
      return;
    }
    const written = this.store.persist({
      pidHash: hashPid(pid),
      namespaceId,
      sid,
      floorOffset: session.floor,
      lastOffset: session.lastDelivered,
      cursorOffset: session.cursorOffset,
      nodeId: this.store.nodeId,
      generation: fence?.generation ?? 0,
      payload,
      ttlMs: this.ttlMs,
    });
    fence?.written(written);
  }
}
