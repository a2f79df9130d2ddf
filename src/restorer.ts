/**
 * Restoring sessions in one namespace on one node, in four steps:
 *
 * 1. take the stored session (single use, cluster-wide);
 * 2. check the client's offset against it;
 * 3. plan the replay of what the client missed, up to this node's cursor;
 * 4. stitch that replay to live delivery (stitch.ts): what the node delivers
 *    until the socket is connected is captured for it and sent with the
 *    replay, at its connection, right before the CONNECT packet.
 *
 * A refusal in steps 1–3 consumes the session (it was presented with an offset it
 * cannot honour); a failure (an error, the restore timing out) puts it back,
 * and so does Socket.IO discarding the restored socket before it connects.
 *
 * Every refusal resolves to "not restored" (fail closed) and is announced as
 * a "restore-refused" event; an infrastructure failure is also reported.
 */
import type { PrivateSessionId, Room, Session, SocketId } from "socket.io-adapter";
import { decodeSession, parseOffset, type LogEntry } from "./codec.js";
import { debug } from "./debug.js";
import { asError } from "./errors.js";
import type { NodeContext } from "./node-context.js";
import type { FailoverGuard } from "./failover-guard.js";
import type { Hole } from "./log-gaps.js";
import { lastRoomChange, neededIntervals, planReplay, refuseRange, type Membership, type SessionEnd } from "./replay.js";
import { memberRoomKeys } from "./room-keys.js";
import type { Sequencer } from "./sequencer.js";
import { hashPid } from "./session-store.js";
import type { SocketLedger } from "./socket-ledger.js";
import type { DeadBy, SessionRecord, TakenSession } from "./sql/session-queries.js";
import { Stitcher, type PendingRestore } from "./stitch.js";
import { SPAN_NAMES, traced, type TraceSpan } from "./tracing.js";

/** Socket.IO treats a falsy restore result as "not restored"; its type says Session. */
const NOT_RESTORED = null as unknown as Session;

/** Payload of the adapter's "session-restored" event. */
export interface RestoredEvent {
  sid: SocketId;
  /** Missed packets the restore's read found for the client (more may follow: see stitch.ts). */
  replayed: number;
  /** Where the replay came from: this node's recent entries ("memory") or `log_entries` ("table"). */
  source: "memory" | "table";
  /**
   * Log entries the restore looked at to find them: from memory, the whole
   * range; from the table, only the candidates it fetched (entries that may
   * be addressed to the socket: see LogQueries.replayRead).
   */
  read: number;
  /**
   * Restored from the skeleton of a node that died without writing the
   * session: how that node was found dead ("lock": its process is gone,
   * "heartbeat": its heartbeat is older than its nodeDeadAfterMs,
   * "declared": an earlier restore found it dead, "gone": its row is gone).
   */
  deadBy?: DeadBy;
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
  /** Sends one packet's data to one connected local socket. */
  sendTo(id: SocketId, data: unknown[]): void;
  /** Closes the connection of a local socket that is not connected yet (recoverable for its client). */
  dropConnection(id: SocketId): void;
  /**
   * The session of `sid` was taken in `generation` and its socket connects
   * next; `durable`: a row a crash-restore could use still holds its rooms;
   * `skeleton`: that row is already its skeleton, with this `socket.data`
   * (the take left it so), so it needs no first write.
   */
  taken(sid: SocketId, pid: PrivateSessionId, generation: number, durable: boolean, skeleton: { readonly data: unknown } | undefined): void;
  emit(event: "session-restored", payload: RestoredEvent): void;
  emit(event: "restore-refused", payload: RefusedEvent): void;
}

/** Cancellation of a restore whose caller stopped waiting. */
interface RestoreAttempt {
  abandoned: boolean;
}

/** `source`: where the replay came from, the ring of recent entries or the table. */
type RestoreOutcome = { session: Session; replayed: number; read: number; source: "memory" | "table"; deadBy?: DeadBy } | { refused: string };

export class Restorer {
  private readonly stitcher: Stitcher;

  constructor(
    private readonly host: RestorerHost,
    private readonly ctx: NodeContext,
    private readonly sequencer: Sequencer,
    ledger: SocketLedger,
    /** Lifetime of a stored session (`maxDisconnectionDuration`). */
    private readonly sessionTtlMs: number,
    /** What the database lost or skipped (log-gaps.ts). */
    private readonly guard: FailoverGuard,
  ) {
    this.stitcher = new Stitcher(
      {
        isConnected: (id) => host.isConnected(id),
        sendTo: (id, data) => host.sendTo(id, data),
        dropConnection: (id) => host.dropConnection(id),
        putBack: (record) => this.putBack(record),
      },
      ledger,
      ctx.opts,
    );
  }

  /** Restores between their read and their socket's connection. */
  get pendingRestores(): number {
    return this.stitcher.size;
  }

  /**
   * Every refusal is announced as a "restore-refused" event on the adapter
   * (`io.of(nsp).adapter.on("restore-refused", ({ reason }) => …)`), for
   * dashboards and logs; the client just gets a new session.
   */
  private refused(reason: string, startedAt: number, span?: TraceSpan): Session {
    debug("restore refused: %s", reason);
    this.ctx.metrics.refused(this.host.nspName, reason, (performance.now() - startedAt) / 1000);
    span?.set({ "socketio.recovery.outcome": "refused", "socketio.recovery.refusal_reason": reason });
    this.host.emit("restore-refused", { reason });
    return NOT_RESTORED;
  }

  /** Traced (see tracing.ts): outcome, replay size and source as attributes. */
  restoreSession(pid: PrivateSessionId, offset: string): Promise<Session> {
    return traced(SPAN_NAMES.restore, { "socketio.namespace": this.host.nspName }, (span) => this.restoreTraced(pid, offset, span));
  }

  private async restoreTraced(pid: PrivateSessionId, offset: string, span: TraceSpan): Promise<Session> {
    const startedAt = performance.now();
    if (this.host.closing()) return this.refused("this node is closing", startedAt, span);
    if (this.host.inOutage()) return this.refused("this node cannot write to the database (outage mode)", startedAt, span);
    const parsed = parseOffset(offset);
    if (parsed === undefined || typeof pid !== "string" || pid.length === 0 || pid.length > 256) {
      return this.refused("malformed pid or offset", startedAt, span);
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
      if ("refused" in outcome) return this.refused(outcome.refused, startedAt, span);
      debug("restoring %s with %d missed packets%s", outcome.session.sid, outcome.replayed, outcome.deadBy ? ` (its node found dead by ${outcome.deadBy})` : "");
      this.ctx.metrics.restored(this.host.nspName, (performance.now() - startedAt) / 1000, outcome.replayed);
      span.set({
        "socketio.recovery.outcome": "recovered",
        "socketio.recovery.replay_size": outcome.replayed,
        "socketio.recovery.replay_source": outcome.source,
        "socketio.recovery.replay_read": outcome.read,
      });
      this.host.emit("session-restored", {
        sid: outcome.session.sid,
        replayed: outcome.replayed,
        source: outcome.source,
        read: outcome.read,
        ...(outcome.deadBy ? { deadBy: outcome.deadBy } : {}),
      });
      return outcome.session;
    } catch (err) {
      // The restore may go on in the background: from now on it must leave no trace (see restore()).
      attempt.abandoned = true;
      this.ctx.reportError(new Error(`socket.io-postgres-recovery: a restore in "${this.host.nspName}" failed; the client gets a new session`, { cause: asError(err) }));
      span.fail(err);
      return this.refused(`failed: ${asError(err).message}`, startedAt, span);
    } finally {
      clearTimeout(timer);
      restoring.catch(() => undefined);
    }
  }

  /** Entries this node delivers, before they reach its sockets: pending restores capture theirs. */
  onDelivered(entry: LogEntry): void {
    this.stitcher.onDelivered(entry);
  }

  /** A socket joins rooms (`addAll`), before the ledger records it. */
  onJoin(id: SocketId): void {
    this.stitcher.onJoin(id);
  }

  /** A socket leaves the namespace (`delAll`). */
  onLeave(id: SocketId): void {
    this.stitcher.onLeave(id);
  }

  /**
   * Decides a restore; the caller announces the outcome. Once `attempt` is
   * abandoned (the caller timed out and gave the client a new session), it
   * must not restore anything: a session it took meanwhile is put back.
   */
  private async restore(pid: PrivateSessionId, offset: number, deadline: number, attempt: RestoreAttempt): Promise<RestoreOutcome> {
    await this.host.started();
    const namespaceId = this.host.namespaceId();
    if (namespaceId === undefined) return { refused: "namespace not started" };

    // 1. Take: from here on, the session is this restore's.
    const pidHash = hashPid(pid);
    // While the socket's node is alive its session is the skeleton: wait (up to the restore's
    // deadline) for that node to write the session at the disconnect, or to be declared dead.
    const stored = await this.ctx.sessions.take(pidHash, namespaceId, this.ctx.opts.sessionWaitMs, deadline - 50);
    if (!stored) return { refused: "unknown pid (never stored, already restored, pruned, or another namespace's; or its node is still alive)" };
    const taken: SessionRecord = {
      pidHash,
      namespaceId,
      sid: stored.sid,
      floorOffset: stored.floorOffset,
      lastOffset: stored.lastOffset,
      cursorOffset: stored.cursorOffset,
      payload: stored.payload,
      ttlMs: this.sessionTtlMs,
      // Put back (the restore failed after the take), a crashed skeleton stays one whose end is unknown.
      state: stored.crashed ? "orphaned" : "disconnected",
      nodeId: this.ctx.sessions.nodeId,
      generation: stored.generation,
    };
    if (attempt.abandoned) {
      this.putBack(taken);
      return { refused: "abandoned" };
    }
    const outcome = await this.restoreTaken(pid, offset, attempt, namespaceId, stored, taken, deadline);
    // Refused after the take, and not put back: the skeleton the take left (no socket will write
    // it) becomes a fence, as a take without a skeleton leaves the row.
    if ("refused" in outcome && outcome.refused !== "abandoned" && stored.skeleton) void this.ctx.sessions.fence(pidHash, stored.generation);
    return outcome;
  }

  /** Steps 2 to 4 of a restore, once its session is taken (see restore()). */
  private async restoreTaken(
    pid: PrivateSessionId,
    offset: number,
    attempt: RestoreAttempt,
    namespaceId: number,
    stored: TakenSession,
    taken: SessionRecord,
    deadline: number,
  ): Promise<RestoreOutcome> {
    // 2. Validity: refused here, the session is consumed (fail closed).
    const invalid = validity(stored, offset);
    if (invalid !== undefined) return { refused: invalid };
    let contents: ReturnType<typeof decodeSession>;
    try {
      contents = decodeSession(stored.payload);
    } catch (err) {
      return { refused: `unreadable session: ${asError(err).message}` };
    }
    const joinedAt = new Map<Room, number>(contents.rooms);
    const membership: Membership = { joinedAt, left: contents.left ?? [], memberSince: joinedAt.get(stored.sid) ?? stored.floorOffset };

    // 3. The replay plan, and 4. the stitch, opened before the read: what is delivered from `upTo` on
    // is captured for this socket. Failing here puts the session back; refusing consumes it.
    let pending: PendingRestore | undefined;
    try {
      // 3a. Offsets the database lost (log-gaps.ts). This node's own evidence is in the database first.
      await this.guard.ready();
      if (offset > this.sequencer.knownHead || this.guard.gaps.containing(offset)) {
        // Past every offset this node knows committed: the client's offset is evidence too (an offset
        // above the database's head was lost), and one inside a gap marks the gap lost.
        await this.guard.reconcile(namespaceId, offset);
      }
      const lostOffset = this.guard.gaps.refusal(offset, offset, true);
      if (lostOffset) return { refused: lostOffset };
      // The client may be ahead of this node: replay starts after its offset, so wait until we are there.
      // So may the session's room changes (the node that wrote it was ahead; a closing session's
      // operations applied after the close, closing-sessions.ts): until this node delivered up to
      // the last of them, live delivery by the restored rooms would differ from the session's
      // membership (an entry to a room left since, lost; one to a room joined later, extra).
      await this.sequencer.waitFor(Math.max(offset, lastRoomChange(membership)), Math.max(deadline - Date.now(), 1));
      let settled = true;
      if (this.guard.gaps.overlapping(offset, this.sequencer.cursor ?? offset).length > 0) {
        // Rare (the client was away while the database changed): another node may have marked the gap
        // lost since, or may not have said yet whether it delivered entries inside.
        // Leaves time for the read after it.
        settled = await this.guard.settled(deadline - Math.min(1000, this.ctx.opts.restoreTimeoutMs / 4));
        await this.guard.refresh(namespaceId);
      }
      // No await from here until the stitch opens: whatever this node delivers after `upTo` is captured.
      const upTo = this.sequencer.cursor ?? offset;
      const crossesLoss = this.guard.gaps.refusal(offset, upTo, settled);
      if (crossesLoss) return { refused: crossesLoss };
      const holes = this.guard.gaps.holes(offset, upTo);
      const tooLong = refuseRange(offset, upTo, this.ctx.opts, holes);
      if (tooLong) return { refused: tooLong };
      pending = this.stitcher.open(taken, offset, membership, upTo);
      // After a crash nothing is known of the session's end: every entry after the offset is needed.
      const end = stored.crashed ? undefined : { lastDelivered: stored.lastOffset, cursor: stored.cursorOffset };
      const recent = this.sequencer.recentRange(offset, upTo);
      const read = recent
        ? { entries: recent, density: undefined }
        : await this.ctx.restoreReads.run(deadline, () => this.readTable(namespaceId, offset, upTo, end, membership, holes));
      const plan = planReplay(read.entries, offset, upTo, end, membership, this.ctx.opts, holes, read.density);
      if (plan.refused !== undefined) return { refused: plan.refused };
      if (pending.overflowed) return { refused: "more was delivered during the restore than maxReplayEntries or maxReplayBytes allow" };
      if (attempt.abandoned) {
        this.putBack(taken);
        return { refused: "abandoned" };
      }
      // Socket.IO creates the socket in this same tick; it gets its replay when it connects (stitch.ts),
      // not from missedPackets, which Socket.IO would send before the middlewares run.
      this.stitcher.handOver(pending, plan.entries);
      pending = undefined;
      // Its skeleton continues in the generation taken. A session taken from this node's own queue
      // (never written) leaves this node's skeleton of the same generation in the table.
      // A take that left the row as this socket's skeleton spares its first write (see SessionDurability.expectRestored).
      this.host.taken(stored.sid, pid, stored.generation, stored.fromQueue === true || stored.skeleton === true, stored.skeleton === true ? { data: contents.data } : undefined);
      const session: Session = { sid: stored.sid, pid, rooms: [...joinedAt.keys()], data: contents.data, missedPackets: [] };
      return {
        session,
        replayed: plan.entries.length,
        read: read.entries.length,
        source: recent ? "memory" : "table",
        ...(stored.deadBy ? { deadBy: stored.deadBy } : {}),
      };
    } catch (err) {
      // Failed or timed out: nothing was restored, so the session goes back. A pid still restores at most once.
      this.putBack(taken);
      throw err;
    } finally {
      if (pending) this.stitcher.cancel(pending);
    }
  }

  /**
   * The replay's table read: only the candidates (entries that may be
   * addressed to the socket, by the keys of every room it was in: see
   * LogQueries.replayRead), with the needed intervals counted in the same
   * snapshot to prove them dense. Bounded in count and bytes: a replay over
   * either limit is refused by planReplay, so no more is read.
   */
  private async readTable(
    namespaceId: number,
    offset: number,
    upTo: number,
    end: SessionEnd | undefined,
    membership: Membership,
    holes: readonly Hole[],
  ): Promise<{ entries: LogEntry[]; density: { missing: number | undefined } }> {
    const { maxReplayEntries, maxReplayBytes } = this.ctx.opts;
    const rooms = [...membership.joinedAt.keys(), ...(membership.left ?? []).map(([room]) => room)];
    const needed = neededIntervals(offset, upTo, end, holes);
    const read = await this.ctx.log.replayRead(namespaceId, offset, upTo, maxReplayEntries, maxReplayBytes, memberRoomKeys(rooms), needed);
    const short = needed.findIndex(([after, through], i) => (read.present[i] ?? 0) < through - after);
    if (short === -1) return { entries: read.entries, density: { missing: undefined } };
    const [after, through] = needed[short]!;
    // Which offset is gone, for the refusal's message; the interval's first if it cannot tell.
    const missing = (await this.ctx.log.firstAbsent(namespaceId, after, through)) ?? after + 1;
    return { entries: read.entries, density: { missing } };
  }

  /** A taken session that was not used goes back, as it was. */
  private putBack(record: SessionRecord): void {
    void this.ctx.sessions.persist(record);
  }
}

/** Why `offset` cannot resume `session`, or undefined. */
function validity(session: TakenSession, offset: number): string | undefined {
  if (!session.live) return "session expired";
  // After a crash, the last offset written to the socket is unknown: the client's offset may be
  // anywhere from the floor to the head (the wait for this node's cursor bounds it by what was committed).
  const upper = session.crashed ? Number.MAX_SAFE_INTEGER : session.lastOffset;
  if (offset < session.floorOffset || offset > upper) {
    return `offset ${offset} outside the session's range [${session.floorOffset}, ${session.crashed ? "head" : upper}]`;
  }
  return undefined;
}
