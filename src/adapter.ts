/**
 * The Socket.IO adapter of one namespace on one node.
 *
 * Non-logged traffic goes through `ClusterAdapterWithHeartbeat` and the
 * cluster bus exactly as with `@socket.io/postgres-adapter`. Logged broadcasts
 * (EVENT packets without ack, not volatile, not local, with recovery on) are
 * not delivered when emitted: they are appended to the log, and every node,
 * this one included, delivers them when its sequencer reaches their offset.
 * Sessions record the cursor at which each room was joined, so that a restore
 * replays exactly what the socket would have received live.
 */
import type { Namespace } from "socket.io";
import {
  Adapter,
  ClusterAdapterWithHeartbeat,
  MessageType,
  type BroadcastOptions,
  type ClusterMessage,
  type ClusterResponse,
  type Offset,
  type PrivateSessionId,
  type Room,
  type ServerId,
  type Session,
  type SocketId,
} from "socket.io-adapter";
import { Batcher, BatcherFullError, BatcherTakenError } from "./batcher.js";
import {
  decodeBatchFromNotify,
  decodePacket,
  decodeSession,
  encodeBatchForNotify,
  encodePacket,
  encodeSession,
  formatOffset,
  parseOffset,
  type LogEntry,
  type LoggedPacket,
} from "./codec.js";
import { debug } from "./debug.js";
import { asError, isMissingSchemaError, isTransientDatabaseError } from "./errors.js";
import { MixedCluster } from "./mixed-cluster.js";
import type { NamespaceMember, NodeContext } from "./node-context.js";
import { OutageMonitor } from "./outage.js";
import { isAddressedTo, planReplay, refuseRange, type Membership } from "./replay.js";
import { Sequencer } from "./sequencer.js";
import { hashPid } from "./session-store.js";
import { SocketLedger, UNSTARTED } from "./socket-ledger.js";
import type { SessionRecord } from "./sql/session-queries.js";

/** Socket.IO treats a falsy restore result as "not restored"; its type says Session. */
const NOT_RESTORED = null as unknown as Session;

/** Payload of the adapter's "session-restored" event. */
export interface RestoredEvent {
  sid: SocketId;
  /** Packets sent to the client as missed (from the restore's read). */
  replayed: number;
}

/** Cancellation of a restore whose caller stopped waiting. */
interface RestoreAttempt {
  abandoned: boolean;
}

type RestoreOutcome = { session: Session & { missedPackets: unknown[][] } } | { refused: string };

/** Payload of the adapter's "restore-refused" event. */
export interface RefusedEvent {
  /** Why, for humans (never the pid). */
  reason: string;
}

/** EVENT in socket.io-parser's PacketType. */
const EVENT = 2;

interface Packet {
  type: number;
  data: unknown[];
  id?: number;
  nsp?: string;
}

interface QueuedEntry {
  packet: LoggedPacket;
  payload: Buffer;
}

/** A restored socket whose replay is completed when it joins its rooms (see `addAll`). */
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

interface RecoverySettings {
  maxDisconnectionDuration: number;
}

export class PostgresRecoveryAdapter extends ClusterAdapterWithHeartbeat implements NamespaceMember {
  readonly nspName: string;
  private readonly recovery: RecoverySettings | undefined;
  private readonly sequencer: Sequencer | undefined;
  private readonly writer: Batcher<QueuedEntry, number> | undefined;
  /** Decides when failing log writes turn into outage mode (see unloggedDeliveryAfterMs). */
  private readonly outage: OutageMonitor | undefined;
  /** Events delivered unlogged since the current outage started. */
  private unloggedPackets = 0;
  private namespaceId: number | undefined;
  /** Batches this adapter appended (see LogQueries.append: retries are idempotent). */
  private batchNumber = 0;
  private readonly ledger = new SocketLedger();
  private readonly stitches = new Map<SocketId, Stitch>();
  private readonly ready: Promise<void>;
  private closing: Promise<void> | undefined;
  /** Resolves `closeTimeoutMs` after close() started: nothing waits for `ready` past it. */
  private readonly closeDeadline: Promise<void>;
  private startCloseTimer: () => void = () => undefined;
  private gaveUp = false;
  /** Whether the initial heartbeat went out (see init()). */
  private announced = false;
  /** Logged broadcasts for the peers that do not read our log (see mixed-cluster.ts). */
  readonly mixedCluster: MixedCluster;

  constructor(
    nsp: Namespace,
    private readonly ctx: NodeContext,
  ) {
    super(nsp, { heartbeatInterval: ctx.opts.heartbeatInterval, heartbeatTimeout: ctx.opts.heartbeatTimeout });
    this.nspName = nsp.name;
    const csr = serverInternals(nsp).opts.connectionStateRecovery;
    this.mixedCluster = new MixedCluster({
      uid: this.uid,
      nsp: nsp.name,
      logSchema: csr ? ctx.opts.schema : undefined,
      heartbeatTimeout: ctx.opts.heartbeatTimeout,
      publish: (message) => ctx.bus.publish(message),
      isLocalSocket: (room) => nsp.sockets.has(room),
    });
    if (csr) {
      this.recovery = { maxDisconnectionDuration: csr.maxDisconnectionDuration ?? 2 * 60 * 1000 };
      this.sequencer = new Sequencer({
        gapFillDelayMs: ctx.opts.gapFillDelayMs,
        recentEntries: ctx.opts.recentEntries,
        // A restore over maxReplayBytes is refused, so the ring never needs more (see recent-entries.ts).
        recentBytes: ctx.opts.maxReplayBytes,
        readBatchSize: 5000,
        deliver: (entry) => this.deliver(entry),
        read: async (after, upTo, limit) => {
          const id = this.namespaceId;
          if (id === undefined) return [];
          return (await this.ctx.log.range(id, after, upTo, limit)).entries;
        },
        onError: (err) => this.ctx.reportError(err),
      });
      this.writer = new Batcher<QueuedEntry, number>({
        write: (items, attempt) => this.appendToLog(items, attempt),
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
          this.ctx.reportError(new Error(`socket.io-postgres-recovery: appending to the log of "${this.nspName}" failed`, { cause: err })),
      });
      this.outage = new OutageMonitor({
        afterMs: ctx.opts.unloggedDeliveryAfterMs,
        onStarted: (failingForMs) => this.startOutage(failingForMs),
        onEnded: () => this.endOutage(),
      });
    }
    ctx.add(this);
    this.closeDeadline = new Promise<void>((resolve) => {
      this.startCloseTimer = () => {
        setTimeout(() => {
          this.gaveUp = true;
          resolve();
        }, ctx.opts.closeTimeoutMs).unref();
      };
    });
    this.ready = this.start();
  }

  /** Identifies this adapter's log writes across retries. */
  private get writerId(): string {
    return `${this.uid}:${this.nspName}`;
  }

  /** This node's id in the cluster (protected upstream; the node context drops our own messages with it). */
  serverUid(): ServerId {
    return this.uid;
  }

  private get namespace(): Namespace {
    return this.nsp as Namespace;
  }

  retentionMs(): number | undefined {
    if (!this.recovery) return undefined;
    const margin = this.ctx.opts.retentionMarginMs ?? this.defaultRetentionMarginMs();
    return this.recovery.maxDisconnectionDuration + margin;
  }

  /** Time a dead connection can go unnoticed, plus slack for clocks and batching. */
  private defaultRetentionMarginMs(): number {
    const server = serverInternals(this.namespace);
    const pingInterval = server.engine?.opts?.pingInterval ?? server.opts.pingInterval ?? 25_000;
    const pingTimeout = server.engine?.opts?.pingTimeout ?? server.opts.pingTimeout ?? 20_000;
    return pingInterval + pingTimeout + 5_000;
  }

  // ---- startup -------------------------------------------------------------

  /**
   * Socket.IO calls this when the namespace is created; upstream sends the
   * initial heartbeat here, which asks the other nodes to answer. Sent before
   * this node listens, their answers would be missed and `serverCount()` would
   * be 1 until the next heartbeats: `start()` sends it once listening.
   */
  override init(): void {}

  private async start(): Promise<void> {
    if (this.nspName.includes("\0")) {
      // A dynamic namespace's name is client input; Postgres text cannot hold NUL, so this
      // namespace can never be stored nor listened to. Say so once instead of retrying forever.
      this.ctx.reportError(new Error(`socket.io-postgres-recovery: namespace ${JSON.stringify(this.nspName.slice(0, 100))} contains a NUL byte; it gets no cluster traffic, no log and no recovery`));
      return;
    }
    // Goes on while closing (what was queued before close() still gets written), until the close deadline.
    for (let attempt = 1; !this.gaveUp; attempt++) {
      try {
        await this.ctx.listener.listen(this.ctx.bus.channelOf(this.nspName));
        if (!this.announced && !this.closing) {
          this.announced = true;
          super.init();
        }
        if (this.sequencer) {
          // The log channel is listened to before the head is read, so nothing committed after it is missed.
          await this.ctx.listener.listen(this.ctx.opts.logChannel);
          const { id, head } = await this.ctx.log.namespace(this.nspName, this.retentionMs());
          await this.ctx.log.registerWriter(this.writerId, id);
          if (this.gaveUp) return;
          this.namespaceId = id;
          this.ctx.bindNamespaceId(id, this);
          // Sockets that connected or joined rooms before the cursor was known start at the head.
          for (const id of this.ledger.settle(head)) this.prime(id, head);
          this.sequencer.start(head);
          // A NOTIFY that arrived before the namespace id was known was dropped: read the table once.
          this.sequencer.catchUp();
        }
        debug("namespace %s ready", this.nspName);
        return;
      } catch (err) {
        const hint = isMissingSchemaError(err)
          ? ` (schema "${this.ctx.opts.schema}" is not migrated: run \`socket.io-postgres-recovery migrate\` or call migrate(pool))`
          : "";
        this.ctx.reportError(
          new Error(`socket.io-postgres-recovery: starting namespace "${this.nspName}" failed${hint}; retrying`, { cause: err }),
        );
        await new Promise((resolve) => setTimeout(resolve, Math.min(100 * 2 ** attempt, 5000)).unref());
      }
    }
  }

  // ---- writing and delivering the log --------------------------------------

  override async broadcast(packet: Packet, opts: BroadcastOptions): Promise<void> {
    if (!this.writer || !isLogged(packet, opts)) return super.broadcast(packet, opts);
    let queued: QueuedEntry;
    try {
      const logged: LoggedPacket = { data: packet.data, rooms: [...opts.rooms], except: [...(opts.except ?? [])] };
      queued = { packet: logged, payload: encodePacket(logged) };
    } catch (err) {
      this.ctx.reportError(new Error(`socket.io-postgres-recovery: cannot log an event of "${this.nspName}": its arguments do not serialize`, { cause: err }));
      return;
    }
    if (queued.payload.length > this.ctx.opts.maxEntryBytes) {
      // Refused, not delivered unlogged: a client recovering past it would miss it without knowing.
      this.ctx.reportError(
        new Error(
          `socket.io-postgres-recovery: an event of "${this.nspName}" was not logged nor delivered: ${queued.payload.length} bytes exceed maxEntryBytes (${this.ctx.opts.maxEntryBytes})`,
        ),
      );
      return;
    }
    this.mixedCluster.relay(opts, () => decodePacket(0, queued.payload).data);
    if (this.outage?.inOutage) {
      this.deliverUnlogged(queued.packet);
      return;
    }
    try {
      await this.writer.add(queued);
    } catch (err) {
      if (err instanceof BatcherTakenError) return; // taken back by startOutage(), which delivered it
      if (err instanceof BatcherFullError && !this.closing) {
        this.deliverUnlogged(queued.packet);
        this.ctx.reportError(new Error(`socket.io-postgres-recovery: an event of "${this.nspName}" was delivered to this node's sockets only, unlogged`, { cause: err }));
        return;
      }
      this.ctx.reportError(new Error(`socket.io-postgres-recovery: an event of "${this.nspName}" was not logged nor delivered`, { cause: err }));
    }
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
    this.emit("outage-started", { failingForMs });
    this.ctx.reportError(
      new Error(
        `socket.io-postgres-recovery: the log of "${this.nspName}" has been unwritable for ${failingForMs} ms; ` +
          "delivering new events to this node's sockets only, unlogged, until a write succeeds",
      ),
    );
    for (const item of this.writer?.take(() => true) ?? []) this.deliverUnlogged(item.packet);
  }

  private endOutage(): void {
    debug("outage of %s ended: %d events delivered unlogged", this.nspName, this.unloggedPackets);
    this.emit("outage-ended", { unloggedPackets: this.unloggedPackets });
  }

  /**
   * Delivers an event to this node's sockets without logging it. It carries
   * the offset this node has delivered up to, like the priming event: every
   * receiver has been sent each entry up to it, so its offset moves to a true
   * position instead of becoming the event's last string argument.
   */
  private deliverUnlogged(logged: LoggedPacket): void {
    this.sendToLocalSockets(logged, this.sequencer?.cursor);
    this.unloggedPackets++;
  }

  private async appendToLog(items: QueuedEntry[], attempt: number): Promise<number[]> {
    this.outage?.writeStarted();
    await Promise.race([this.ready, this.closeDeadline]);
    const id = this.namespaceId;
    if (id === undefined || !this.sequencer) throw new Error("socket.io-postgres-recovery: the adapter closed before it started");
    if (attempt === 1) {
      this.batchNumber++;
    } else {
      // Waits for an earlier attempt that may still be running on the server, so the append sees its outcome.
      await this.ctx.log.registerWriter(this.writerId, id);
    }
    const payloads = items.map((item) => item.payload);
    const { from, appliedBefore } = await this.ctx.log.append(
      id,
      this.writerId,
      this.batchNumber,
      payloads,
      this.ctx.opts.logChannel,
      this.inlinePayload(payloads),
    );
    this.outage?.writeSucceeded();
    if (appliedBefore) debug("batch %d of %s had been committed by an earlier attempt", this.batchNumber, this.writerId);
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

  onLogNotification(from: number, count: number, inline: string): void {
    const sequencer = this.sequencer;
    if (!sequencer || !Number.isSafeInteger(from) || !Number.isSafeInteger(count) || count < 1) return;
    const to = from + count - 1;
    const cursor = sequencer.cursor;
    if (cursor !== undefined && to <= cursor) return; // e.g. this node's own batch, already delivered
    if (inline === "") {
      sequencer.offerRange(from, to);
      return;
    }
    const payloads = decodeBatchFromNotify(inline);
    sequencer.offer(payloads.map((payload, i) => decodePacket(from + i, payload)));
  }

  onListenerReconnected(): void {
    this.sequencer?.catchUp();
  }

  private deliver(entry: LogEntry): void {
    this.sendToLocalSockets(entry, entry.offset);
  }

  /**
   * The in-memory broadcast: to this node's matching sockets only (the cluster
   * has the entry already, or never gets it when unlogged), carrying `offset`
   * as the last argument, which each receiver's ledger records.
   */
  private sendToLocalSockets(packet: LoggedPacket, offset: number | undefined): void {
    const data = offset === undefined ? packet.data : [...packet.data, formatOffset(offset)];
    const opts: BroadcastOptions = { rooms: new Set<Room>(packet.rooms), except: new Set<Room>(packet.except), flags: {} };
    Adapter.prototype.broadcast.call(this, { type: EVENT, data, nsp: this.nspName }, opts);
    if (offset !== undefined) {
      (this as unknown as InMemoryInternals).apply(opts, (socket) => this.ledger.delivered(socket.id, offset));
    }
  }

  // ---- cluster messages -----------------------------------------------------

  protected override doPublish(message: ClusterMessage): Promise<Offset> {
    // Failures are reported by the bus; Socket.IO only logs the rejection to its debug output.
    return this.ctx.bus.publish(this.mixedCluster.tagOutgoing(message)).then(() => "");
  }

  protected override doPublishResponse(_requesterUid: ServerId, response: ClusterResponse): Promise<void> {
    return this.ctx.bus.publish(response);
  }

  onClusterMessage(message: ClusterMessage | ClusterResponse): void {
    this.mixedCluster.observe(message);
    if (this.mixedCluster.isFromOurLog(message)) return; // delivered from the log, with its offset
    if (
      this.recovery &&
      message.type === MessageType.BROADCAST &&
      message.data.requestId === undefined &&
      message.nsp === this.nspName
    ) {
      // A broadcast that did not go through the log (from @socket.io/postgres-emitter or a node
      // without recovery): delivered live, without an offset, since it has none in our log.
      const { opts, packet } = message.data;
      Adapter.prototype.broadcast.call(this, packet, {
        rooms: new Set(opts.rooms),
        except: new Set(opts.except),
        flags: opts.flags,
      });
      return;
    }
    this.onMessage(message as ClusterMessage);
  }

  // ---- rooms, priming --------------------------------------------------------

  override addAll(id: SocketId, rooms: Set<Room>): void {
    if (!this.sequencer) {
      super.addAll(id, rooms);
      return;
    }
    const cursor = this.sequencer.cursor ?? UNSTARTED;
    const stitch = this.stitches.get(id);
    if (stitch) this.advanceStitch(id, stitch, cursor);
    this.ledger.join(id, rooms, cursor);
    super.addAll(id, rooms);
    if (!this.ledger.has(id)) {
      const socket = this.namespace.sockets.get(id);
      if (socket && !socket.recovered) {
        this.ledger.begin(id, cursor);
        if (cursor !== UNSTARTED) this.prime(id, cursor);
      }
    }
  }

  override del(id: SocketId, room: Room): void {
    this.ledger.leave(id, room);
    super.del(id, room);
  }

  override delAll(id: SocketId): void {
    this.ledger.forget(id);
    const stitch = this.stitches.get(id);
    if (stitch) {
      clearTimeout(stitch.timer);
      this.stitches.delete(id);
      if (stitch.joined) {
        // Restored, then discarded before it connected (the connection dropped during the
        // middlewares): Socket.IO persists nothing for it, so put the taken session back.
        // The client may hold any offset up to the replay's end.
        this.ctx.sessions.persist({ ...stitch.taken, lastOffset: Math.max(stitch.taken.lastOffset, stitch.lastReplayed) });
      }
    }
    super.delAll(id);
  }

  /**
   * Gives a new session an offset at once: the node's cursor, in a small event
   * written before any entry after it. Without it, a client that received no
   * event has no offset and Socket.IO never tries to recover it; it also
   * replaces a stale offset kept from an earlier session.
   */
  private prime(id: SocketId, cursor: number): void {
    const event = this.ctx.opts.primeOffsetEvent;
    if (event === false) return;
    Adapter.prototype.broadcast.call(
      this,
      { type: EVENT, data: [event, formatOffset(cursor)], nsp: this.nspName },
      { rooms: new Set([id]), except: new Set<Room>(), flags: {} },
    );
  }

  // ---- sessions ------------------------------------------------------------

  override persistSession(session: { sid: SocketId; pid: PrivateSessionId; rooms: Room[]; data: unknown }): void {
    const cursor = this.sequencer?.cursor;
    const snapshot = cursor === undefined ? undefined : this.ledger.snapshot(session.sid, session.rooms, cursor);
    if (!this.recovery || !snapshot || this.namespaceId === undefined) {
      debug("not persisting session of %s: namespace not started or socket unknown", session.sid);
      return;
    }
    let payload: Buffer;
    try {
      payload = encodeSession({ rooms: snapshot.rooms, data: session.data });
    } catch (err) {
      this.ctx.reportError(new Error(`socket.io-postgres-recovery: socket.data of ${session.sid} does not serialize; its session is not stored`, { cause: err }));
      return;
    }
    this.ctx.sessions.persist({
      pidHash: hashPid(session.pid),
      namespaceId: this.namespaceId,
      sid: session.sid,
      floorOffset: snapshot.floor,
      lastOffset: snapshot.lastDelivered,
      payload,
      ttlMs: this.recovery.maxDisconnectionDuration,
    });
  }

  /**
   * Every refusal is announced as a "restore-refused" event on this adapter
   * (`io.of(nsp).adapter.on("restore-refused", ({ reason }) => …)`), for
   * dashboards and logs; the client just gets a new session.
   */
  private refused(reason: string): Session {
    debug("restore refused: %s", reason);
    this.emit("restore-refused", { reason } satisfies RefusedEvent);
    return NOT_RESTORED;
  }

  override async restoreSession(pid: PrivateSessionId, offset: string): Promise<Session> {
    if (!this.sequencer) return NOT_RESTORED;
    if (this.closing) return this.refused("this node is closing");
    if (this.outage?.inOutage) return this.refused("this node cannot write to the database (outage mode)");
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
      this.emit("session-restored", { sid: outcome.session.sid, replayed: outcome.session.missedPackets.length } satisfies RestoredEvent);
      return outcome.session;
    } catch (err) {
      // The restore may go on in the background: from now on it must leave no trace (see restore()).
      attempt.abandoned = true;
      this.ctx.reportError(new Error(`socket.io-postgres-recovery: a restore in "${this.nspName}" failed; the client gets a new session`, { cause: asError(err) }));
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
    await Promise.race([this.ready, this.closeDeadline]);
    const sequencer = this.sequencer;
    const namespaceId = this.namespaceId;
    if (!sequencer || namespaceId === undefined) return { refused: "namespace not started" };
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
      ttlMs: this.recovery?.maxDisconnectionDuration ?? 0,
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
        (await this.ctx.log.range(namespaceId, offset, upTo, maxReplayEntries, maxReplayBytes)).entries;
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
    // node delivers in between are added at that moment (addAll), so the replay meets live delivery.
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
   * Closes the window between the restore's read and live delivery. Socket.IO
   * joins the restored rooms in the socket's constructor, then sends
   * `missedPackets`; entries delivered since the read are appended there. The
   * socket only receives live deliveries once connected (after the
   * middlewares when they are not skipped): what was delivered meanwhile is
   * sent at that moment, just before the CONNECT packet.
   */
  private advanceStitch(id: SocketId, stitch: Stitch, cursor: number): void {
    const connected = this.namespace.sockets.has(id);
    if (stitch.joined && !connected) return; // a middleware joining rooms: wait for the connection
    const extra = cursor > stitch.upTo ? this.sequencer?.recentRange(stitch.upTo, cursor) : [];
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
        setImmediate(() => this.namespace.sockets.get(id)?.disconnect(true));
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
    for (const data of missed) {
      Adapter.prototype.broadcast.call(this, { type: EVENT, data, nsp: this.nspName }, {
        rooms: new Set<Room>([id]),
        except: new Set<Room>(),
        flags: {},
      });
    }
    this.stitches.delete(id);
    clearTimeout(stitch.timer);
  }

  // ---- lifecycle -----------------------------------------------------------

  /** Writes what is queued (log entries of this namespace, sessions), then leaves the cluster. */
  override close(): Promise<void> {
    this.closing ??= (async () => {
      this.startCloseTimer();
      this.outage?.stop();
      const { closeTimeoutMs } = this.ctx.opts;
      try {
        await this.writer?.close(closeTimeoutMs);
      } catch (err) {
        this.ctx.reportError(asError(err));
      }
      await Promise.race([this.ctx.sessions.flush(), this.closeDeadline]);
      this.gaveUp = true; // nothing left that needs the namespace to start
      super.close();
      this.sequencer?.close();
      await this.ctx.remove(this);
    })();
    return this.closing;
  }
}

/** The in-memory adapter's recipient walk (private in its types; stable since socket.io-adapter 2.0). */
interface InMemoryInternals {
  apply(opts: BroadcastOptions, callback: (socket: { id: SocketId }) => void): void;
}

/** The parts of Socket.IO's Server this adapter reads that its types keep private. */
interface ServerInternals {
  opts: {
    connectionStateRecovery?: { maxDisconnectionDuration?: number };
    pingInterval?: number;
    pingTimeout?: number;
  };
  engine?: { opts?: { pingInterval?: number; pingTimeout?: number } };
}

function serverInternals(nsp: Namespace): ServerInternals {
  return nsp.server as unknown as ServerInternals;
}

function isLogged(packet: Packet, opts: BroadcastOptions): boolean {
  return packet.type === EVENT && packet.id === undefined && !opts.flags?.volatile && !opts.flags?.local;
}



