/**
 * Restoring sessions in one namespace on one node: taking a stored session
 * (single use), checking the client's offset, building the replay of what it
 * missed, and stitching that replay to live delivery so that nothing falls
 * between the two.
 *
 * Every refusal resolves to "not restored" (fail closed) and is announced as
 * a "restore-refused" event; an infrastructure failure is also reported.
 */
import type { PrivateSessionId, Room, Session, SocketId } from "socket.io-adapter";
import { decodeSession, formatOffset, parseOffset, type LogEntry } from "./codec.js";
import { debug } from "./debug.js";
import { asError } from "./errors.js";
import type { NodeContext } from "./node-context.js";
import { isAddressedTo, planReplay, refuseRange, type Membership } from "./replay.js";
import type { Sequencer } from "./sequencer.js";
import { hashPid } from "./session-store.js";
import type { SocketLedger } from "./socket-ledger.js";
import type { SessionRecord } from "./sql/session-queries.js";

/** Socket.IO treats a falsy restore result as "not restored"; its type says Session. */
const NOT_RESTORED = null as unknown as Session;

/** Payload of the adapter's "session-restored" event. */
export interface RestoredEvent {
  sid: SocketId;
  /** Packets sent to the client as missed (from the restore's read). */
  replayed: number;
}

/** Payload of the adapter's "restore-refused" event. */
export interface RefusedEvent {
  /** Why, for humans (never the pid). */
  reason: string;
}

export interface RestorerHost {
  readonly nspName: string;
  /** The namespace's id once it started. */
  namespaceId(): number | undefined;
  /** Resolves when the namespace started, or when closing gave up waiting for it. */
  started(): Promise<void>;
  closing(): boolean;
  /** Whether log writes are failing (outage mode): restores are refused meanwhile. */
  inOutage(): boolean;
  /** Whether the socket is connected (in the namespace's sockets, past its middlewares). */
  isConnected(id: SocketId): boolean;
  /** Sends one packet's data to one local socket. */
  sendTo(id: SocketId, data: unknown[]): void;
  /** Closes a local socket server-side. */
  disconnect(id: SocketId): void;
  emit(event: "session-restored", payload: RestoredEvent): void;
  emit(event: "restore-refused", payload: RefusedEvent): void;
}

/** Cancellation of a restore whose caller stopped waiting. */
interface RestoreAttempt {
  abandoned: boolean;
}

type RestoreOutcome = { session: Session & { missedPackets: unknown[][] } } | { refused: string };

/** A restored socket whose replay is completed when it joins its rooms (see `onJoin`). */
interface Stitch {
  /** The session as it was taken, to put back if the socket never connects. */
  taken: SessionRecord;
  membership: Membership;
  floor: number;
  missedPackets: unknown[][];
  /** Replay covers entries up to this offset; later ones are added at join time. */
  upTo: number;
  /** Offset of the last entry the replay sends to the socket (its offset when none). */
  lastReplayed: number;
  /** Whether Socket.IO has joined the restored rooms (and taken missedPackets). */
  joined: boolean;
  /** The ring did not hold what was delivered meanwhile: the socket is disconnected once connected. */
  broken: boolean;
  timer: NodeJS.Timeout;
}

export class Restorer {
  private readonly stitches = new Map<SocketId, Stitch>();

  constructor(
    private readonly host: RestorerHost,
    private readonly ctx: NodeContext,
    private readonly sequencer: Sequencer,
    private readonly ledger: SocketLedger,
    /** Lifetime of a stored session (`maxDisconnectionDuration`). */
    private readonly sessionTtlMs: number,
  ) {}

  /**
   * Every refusal is announced as a "restore-refused" event on the adapter
   * (`io.of(nsp).adapter.on("restore-refused", ({ reason }) => …)`), for
   * dashboards and logs; the client just gets a new session.
   */
  private refused(reason: string): Session {
    debug("restore refused: %s", reason);
    this.host.emit("restore-refused", { reason });
    return NOT_RESTORED;
  }

  async restoreSession(pid: PrivateSessionId, offset: string): Promise<Session> {
    if (this.host.closing()) return this.refused("this node is closing");
    if (this.host.inOutage()) return this.refused("this node cannot write to the database (outage mode)");
    const parsed = parseOffset(offset);
    if (parsed === undefined || typeof pid !== "string" || pid.length === 0 || pid.length > 256) {
      return this.refused("malformed pid or offset");
    }
    const timeoutMs = this.ctx.opts.restoreTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`restore took longer than restoreTimeoutMs (${timeoutMs} ms)`)), timeoutMs);
    });
    const attempt: RestoreAttempt = { abandoned: false };
    const restoring = this.restore(pid, parsed, Date.now() + timeoutMs, attempt);
    try {
      const outcome = await Promise.race([restoring, timeout]);
      if ("refused" in outcome) return this.refused(outcome.refused);
      debug("restoring %s with %d missed packets", outcome.session.sid, outcome.session.missedPackets.length);
      this.host.emit("session-restored", { sid: outcome.session.sid, replayed: outcome.session.missedPackets.length });
      return outcome.session;
    } catch (err) {
      // The restore may go on in the background: from now on it must leave no trace (see restore()).
      attempt.abandoned = true;
      this.ctx.reportError(new Error(`socket.io-postgres-recovery: a restore in "${this.host.nspName}" failed; the client gets a new session`, { cause: asError(err) }));
      return this.refused(`failed: ${asError(err).message}`);
    } finally {
      clearTimeout(timer);
      restoring.catch(() => undefined);
    }
  }

  /**
   * Decides a restore; the caller announces the outcome. Once `attempt` is
   * abandoned (the caller timed out and gave the client a new session), it
   * must not restore anything: a session it took meanwhile is put back.
   */
  private async restore(pid: PrivateSessionId, offset: number, deadline: number, attempt: RestoreAttempt): Promise<RestoreOutcome> {
    await this.host.started();
    const sequencer = this.sequencer;
    const namespaceId = this.host.namespaceId();
    if (namespaceId === undefined) return { refused: "namespace not started" };
    const pidHash = hashPid(pid);
    const stored = await this.ctx.sessions.take(pidHash, namespaceId, this.ctx.opts.sessionWaitMs);
    if (!stored) return { refused: "unknown pid (never stored, already restored, pruned, or another namespace's)" };
    if (!stored.live) return { refused: "session expired" };
    if (offset < stored.floorOffset || offset > stored.lastOffset) {
      return { refused: `offset ${offset} outside the session's range [${stored.floorOffset}, ${stored.lastOffset}]` };
    }
    const taken: SessionRecord = {
      pidHash,
      namespaceId,
      sid: stored.sid,
      floorOffset: stored.floorOffset,
      lastOffset: stored.lastOffset,
      payload: stored.payload,
      ttlMs: this.sessionTtlMs,
    };
    let upTo: number;
    let entries: LogEntry[];
    try {
      // The client may be ahead of this node: replay starts after its offset, so wait until we are there.
      await sequencer.waitFor(offset, Math.max(deadline - Date.now(), 1));
      upTo = sequencer.cursor ?? offset;
      const tooLong = refuseRange(offset, upTo, this.ctx.opts);
      if (tooLong) return { refused: tooLong };
      // Bounded in count and bytes: a replay over either limit is refused below, so no more is read.
      const { maxReplayEntries, maxReplayBytes } = this.ctx.opts;
      entries =
        sequencer.recentRange(offset, upTo) ??
        (
          await this.ctx.restoreReads.run(deadline, () =>
            this.ctx.log.range(namespaceId, offset, upTo, maxReplayEntries, maxReplayBytes),
          )
        ).entries;
    } catch (err) {
      // Failed or timed out (whichever of the two same-deadline timers fired first): nothing was
      // restored, so the session goes back. A pid still restores at most once.
      this.ctx.sessions.persist(taken);
      throw err;
    }
    if (attempt.abandoned) {
      this.ctx.sessions.persist(taken);
      return { refused: "abandoned" };
    }
    const { rooms, data } = decodeSession(stored.payload);
    const joinedAt = new Map<Room, number>(rooms);
    const membership: Membership = { joinedAt, memberSince: joinedAt.get(stored.sid) ?? stored.floorOffset };
    const plan = planReplay(entries, offset, upTo, stored.lastOffset, membership, this.ctx.opts);
    if (plan.refused !== undefined) return { refused: plan.refused };
    const missedPackets = plan.entries.map((entry) => [...entry.data, formatOffset(entry.offset)]);
    const { lastReplayed } = plan;
    // Socket.IO joins the rooms and sends missedPackets right after this resolves; entries this
    // node delivers in between are added at that moment (onJoin), so the replay meets live delivery.
    const timer = setTimeout(() => this.stitches.delete(stored.sid), 30_000);
    timer.unref();
    this.stitches.set(stored.sid, {
      taken,
      membership,
      floor: offset,
      missedPackets,
      upTo,
      lastReplayed,
      joined: false,
      broken: false,
      timer,
    });
    return {
      session: {
        sid: stored.sid,
        pid,
        rooms: rooms.map(([room]) => room),
        data,
        missedPackets,
      },
    };
  }

  /**
   * A socket joins rooms (`addAll`) at `cursor`. For a restored socket this
   * closes the window between the restore's read and live delivery. Socket.IO
   * joins the restored rooms in the socket's constructor, then sends
   * `missedPackets`; entries delivered since the read are appended there. The
   * socket only receives live deliveries once connected (after the
   * middlewares when they are not skipped): what was delivered meanwhile is
   * sent at that moment, just before the CONNECT packet.
   */
  onJoin(id: SocketId, cursor: number): void {
    const stitch = this.stitches.get(id);
    if (!stitch) return;
    const connected = this.host.isConnected(id);
    if (stitch.joined && !connected) return; // a middleware joining rooms: wait for the connection
    const extra = cursor > stitch.upTo ? this.sequencer.recentRange(stitch.upTo, cursor) : [];
    if (!stitch.joined) {
      stitch.joined = true;
      this.ledger.resume(id, stitch.floor, stitch.membership.joinedAt, stitch.lastReplayed);
    }
    if (!extra || stitch.broken) {
      // More was delivered meanwhile than `recentEntries` holds. Make the client reconnect once
      // connected: its next restore starts from what it did process.
      stitch.broken = true;
      if (connected) {
        this.stitches.delete(id);
        clearTimeout(stitch.timer);
        this.ctx.reportError(new Error(`socket.io-postgres-recovery: the replay of ${id} outran recentEntries; disconnecting it to restore again`));
        setImmediate(() => this.host.disconnect(id));
      }
      return;
    }
    const addressed = extra.filter((entry) => isAddressedTo(entry, stitch.membership));
    const missed = addressed.map((entry) => [...entry.data, formatOffset(entry.offset)]);
    stitch.upTo = cursor;
    stitch.lastReplayed = addressed.at(-1)?.offset ?? stitch.lastReplayed;
    this.ledger.delivered(id, stitch.lastReplayed);
    if (!connected) {
      // Socket.IO is joining the rooms in the socket's constructor and sends missedPackets next.
      stitch.missedPackets.push(...missed);
      return;
    }
    for (const data of missed) this.host.sendTo(id, data);
    this.stitches.delete(id);
    clearTimeout(stitch.timer);
  }

  /** A socket leaves the namespace (`delAll`). */
  onLeave(id: SocketId): void {
    const stitch = this.stitches.get(id);
    if (!stitch) return;
    clearTimeout(stitch.timer);
    this.stitches.delete(id);
    if (stitch.joined) {
      // Restored, then discarded before it connected (the connection dropped during the
      // middlewares): Socket.IO persists nothing for it, so put the taken session back.
      // The client may hold any offset up to the replay's end.
      this.ctx.sessions.persist({ ...stitch.taken, lastOffset: Math.max(stitch.taken.lastOffset, stitch.lastReplayed) });
    }
  }
}
