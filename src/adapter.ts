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
import { atMost, installConnectGate, type ConnectGated } from "./connect-gate.js";
import { decodeBatchFromNotify, decodePacket, formatOffset, type LogEntry, type LoggedPacket } from "./codec.js";
import { debug } from "./debug.js";
import { asError, isMissingSchemaError } from "./errors.js";
import { LogWriter, type LogWriterHost } from "./log-writer.js";
import { MixedCluster } from "./mixed-cluster.js";
import type { NamespaceMember, NodeContext } from "./node-context.js";
import { encodeOptions, isOrderedOperation, orderedOperation, type OperationMessage } from "./operation-messages.js";
import { normalizeEventData, prepareLoggedPacket } from "./payload.js";
import { orderDisconnect, ProgramOrder } from "./program-order.js";
import { DisconnectSessions } from "./disconnect-sessions.js";
import { FailoverGuard } from "./failover-guard.js";
import { Restorer, type RestorerHost } from "./restorer.js";
import { Sequencer } from "./sequencer.js";
import { moveStaged } from "./staged-events.js";
import { StagedMover } from "./staged-mover.js";
import { SessionDurability, type DurabilityHost } from "./session-durability.js";
import { SocketLedger, UNSTARTED } from "./socket-ledger.js";

export type { OutageEndedEvent, OutageStartedEvent } from "./log-writer.js";
export type { RefusedEvent, RestoredEvent } from "./restorer.js";

/** Socket.IO treats a falsy restore result as "not restored"; its type says Session. */
const NOT_RESTORED = null as unknown as Session;

/** EVENT in socket.io-parser's PacketType. */
const EVENT = 2;

interface Packet {
  type: number;
  data: unknown[];
  id?: number;
  nsp?: string;
}

interface RecoverySettings {
  maxDisconnectionDuration: number;
}

export class PostgresRecoveryAdapter extends ClusterAdapterWithHeartbeat implements NamespaceMember, ConnectGated {
  readonly nspName: string;
  private readonly recovery: RecoverySettings | undefined;
  private readonly sequencer: Sequencer | undefined;
  private readonly writer: LogWriter | undefined;
  private readonly restorer: Restorer | undefined;
  /** Offsets the database lost or skipped after a failover (failover-guard.ts). */
  private readonly guard: FailoverGuard | undefined;
  /** Skeletons of this namespace's sockets, for restores after a crash. */
  private readonly durability: SessionDurability | undefined;
  /** Moves events staged outside the nodes (createEmitter, the SQL function) into the log. */
  private readonly staged: StagedMover | undefined;
  /** Room and disconnect operations after the events emitted before them (see program-order.ts). */
  private readonly order: ProgramOrder | undefined;
  private namespaceId: number | undefined;
  private readonly ledger = new SocketLedger();
  /** Sessions written at the disconnect, after the operations queued before it (disconnect-sessions.ts). */
  private readonly disconnects: DisconnectSessions | undefined;
  private readonly ready: Promise<void>;
  /** `ready` has settled (see started()). */
  private readySettled = false;
  private closing: Promise<void> | undefined;
  /** Resolves `closeTimeoutMs` after close() started: nothing waits for `ready` past it. */
  private readonly closeDeadline: Promise<void>;
  private startCloseTimer: () => void = () => undefined;
  private gaveUp = false;
  /** Whether the initial heartbeat went out (see init()). */
  private announced = false;
  /** Logged broadcasts for the peers that do not read our log (see mixed-cluster.ts). */
  readonly mixedCluster: MixedCluster;
  /** Stops this namespace's gauges being read at scrapes (see metrics.ts). */
  private unwatchMetrics: () => void = () => undefined;

  constructor(
    nsp: Namespace,
    private readonly ctx: NodeContext,
  ) {
    super(nsp, { heartbeatInterval: ctx.opts.heartbeatInterval, heartbeatTimeout: ctx.opts.heartbeatTimeout });
    this.nspName = nsp.name;
    // The node's one heartbeat timer instead of one per namespace, so that heartbeats go out batched
    // (heartbeat-ticker.ts). scheduleHeartbeat is private in socket.io-adapter's types, hence the cast.
    (this as unknown as { scheduleHeartbeat(): void }).scheduleHeartbeat = () => ctx.heartbeats.published(this);
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
        maxBufferedEntries: ctx.opts.maxBufferedEntries,
        maxBufferedBytes: ctx.opts.maxBufferedBytes,
        deliver: (entry) => this.deliver(entry),
        paused: () => this.order?.holdsDelivery ?? false,
        read: async (after, upTo, limit, maxBytes) => {
          const id = this.namespaceId;
          if (id === undefined) return [];
          return (await this.ctx.log.range(id, after, upTo, limit, maxBytes)).entries;
        },
        explainHole: (after, end, known) => this.guard?.explainHole(after, end, known) ?? Promise.resolve(undefined),
        onError: (err) => this.ctx.reportError(err),
      });
      this.guard = new FailoverGuard(
        {
          nspName: this.nspName,
          namespaceId: () => this.namespaceId,
          cursor: () => this.sequencer?.cursor,
          skip: (after, through) => this.sequencer?.skip(after, through),
          reconciled: () => this.ctx.liveness.beatSoon(),
          reportError: (err) => this.ctx.reportError(err),
        },
        ctx.log,
      );
      this.writer = new LogWriter(this.logWriterHost(), ctx, this.sequencer);
      this.restorer = new Restorer(this.restorerHost(), ctx, this.sequencer, this.ledger, this.recovery.maxDisconnectionDuration, this.guard);
      this.durability = ctx.opts.crashSafety
        ? new SessionDurability(this.durabilityHost(), ctx.skeletons, this.recovery.maxDisconnectionDuration, ctx.opts.checkpointIntervalMs)
        : undefined;
      this.staged = new StagedMover({
        nspName: this.nspName,
        limit: ctx.opts.maxBatchSize,
        move: () =>
          moveStaged(ctx.pool, ctx.staging, this.nspName, {
            limit: ctx.opts.maxBatchSize,
            maxEntryBytes: ctx.opts.maxEntryBytes,
            logChannel: ctx.opts.logChannel,
            payloadThreshold: ctx.opts.payloadThreshold,
            queryTimeoutMs: ctx.opts.queryTimeoutMs === false ? undefined : ctx.opts.queryTimeoutMs,
          }),
        moved: (entries) => {
          for (const entry of entries) this.mixedCluster.relay(entry);
          this.sequencer?.offer(entries);
        },
        reportError: (err) => ctx.reportError(err),
      });
      this.order = new ProgramOrder({
        cursor: () => this.sequencer?.cursor,
        maxWaitMs: ctx.opts.unloggedDeliveryAfterMs,
        resumeDelivery: () => this.sequencer?.offer([]),
        onError: (err) => this.ctx.reportError(err),
      });
      this.disconnects = new DisconnectSessions(
        { cursor: () => this.sequencer?.cursor, namespaceId: () => this.namespaceId, reportError: (err) => this.ctx.reportError(err) },
        this.ledger,
        ctx.sessions,
        this.durability,
        this.order,
        this.recovery.maxDisconnectionDuration,
      );
      installConnectGate(nsp);
      const { sequencer, writer } = this;
      this.unwatchMetrics = ctx.metrics.watch(nsp.name, {
        lagEntries: () => (sequencer.cursor === undefined ? undefined : Math.max(0, sequencer.head - sequencer.cursor)),
        pendingWrites: () => writer.pendingWrites,
        inOutage: () => writer.inOutage,
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
    this.ready = this.startAndMark();
  }

  private async startAndMark(): Promise<void> {
    try {
      await this.start();
    } finally {
      this.readySettled = true;
    }
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
          await this.ctx.listener.listen(this.ctx.staging.channel);
          const { id, head } = await this.ctx.log.namespace(this.nspName, this.retentionMs());
          await this.ctx.log.registerWriter(this.writerId, id);
          await this.guard?.started(id);
          if (this.gaveUp) return;
          this.namespaceId = id;
          this.ctx.bindNamespaceId(id, this);
          // Rooms joined before the cursor was known (in middlewares) count from the head. Sockets
          // that got their CONNECT before it (see admit()) may have missed entries up to the head.
          for (const id of this.ledger.settle(head)) this.dropEarlySocket(id);
          this.sequencer.start(head);
          this.order?.delivered(); // operations of other nodes that were waiting for the cursor
          // A NOTIFY that arrived before the namespace id was known was dropped: read the table once.
          this.sequencer.catchUp();
          // Events staged while no node served this namespace (or before this one listened).
          this.staged?.start();
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

  /**
   * Resolves when a new socket may get its CONNECT (see connect-gate.ts): once
   * the cursor is known, so every entry committed after the CONNECT is above
   * it. While the database does not answer, a socket waits at most
   * `unloggedDeliveryAfterMs` (the same trade as outage mode: serve rather
   * than wait); such a socket is dropped when the namespace starts.
   */
  admit(): Promise<void> {
    if (!this.sequencer || this.sequencer.cursor !== undefined) return Promise.resolve();
    return atMost(this.started(), this.ctx.opts.unloggedDeliveryAfterMs);
  }

  /**
   * A socket that got its CONNECT before the cursor was known (let in by
   * admit() while the database did not answer). Entries committed since its
   * CONNECT may be at or below the head the namespace started from: it would
   * never get them. Its connection is closed without a session, so its client
   * reconnects at once and starts afresh (`recovered === false`) rather than
   * miss them without knowing.
   */
  private dropEarlySocket(id: SocketId): void {
    this.ledger.forget(id);
    const socket = this.namespace.sockets.get(id);
    if (!socket) return;
    this.ctx.reportError(
      new Error(`socket.io-postgres-recovery: ${id} in "${this.nspName}" connected before the namespace started; closing its connection so it starts afresh`),
    );
    socket.conn.close();
  }

  // ---- writing and delivering the log --------------------------------------

  override broadcast(packet: Packet, opts: BroadcastOptions): Promise<void> {
    const writer = this.writer;
    if (!writer || !this.order || !isLogged(packet, opts)) return super.broadcast(packet, opts);
    const logged = { data: packet.data, rooms: [...opts.rooms], except: [...(opts.except ?? [])] };
    return this.order.event(logged, (p) => writer.submit(p));
  }

  /** Resolves when the namespace started, or when closing gave up waiting for it. */
  private started(): Promise<void> {
    // Once `ready` settled, the race's outcome is its outcome. Racing anyway would leave one
    // reaction on `closeDeadline`, pending until close(), per call: every append asks, and the
    // SOAK saw them pile up (~1.5 MiB of heap a minute per node, bench/workloads/soak.ts).
    if (this.readySettled) return this.ready;
    return Promise.race([this.ready, this.closeDeadline]);
  }

  private logWriterHost(): LogWriterHost {
    return {
      nspName: this.nspName,
      writerId: this.writerId,
      namespaceId: () => this.namespaceId,
      started: () => this.started(),
      closing: () => this.closing !== undefined,
      prepare: (packet) => prepareLoggedPacket(this.namespace, packet.data, [...packet.rooms], [...packet.except]),
      deliverUnlogged: (packet) => this.deliverUnlogged(packet),
      committed: (packets, from) => this.order?.committed(packets, from),
      accepted: (packet) => this.mixedCluster.relay(packet),
      membershipEpoch: () => this.durability?.membershipEpoch ?? 0,
      roomChangesDurable: (epoch) => this.durability?.roomChangesDurable(epoch),
      jumped: (after) => this.guard?.jumped(after),
      emit: (event: string, payload: unknown) => this.emit(event, payload),
    };
  }

  private restorerHost(): RestorerHost {
    return {
      nspName: this.nspName,
      namespaceId: () => this.namespaceId,
      started: () => this.started(),
      closing: () => this.closing !== undefined,
      inOutage: () => this.writer?.inOutage ?? false,
      isConnected: (id) => this.namespace.sockets.has(id),
      sendTo: (id, data) => this.sendToSocket(id, data),
      dropConnection: (id) => {
        const pending = (this.nsp as unknown as NamespaceInternals)._preConnectSockets?.get(id);
        (pending ?? this.namespace.sockets.get(id))?.conn.close();
      },
      taken: (sid, pid, generation, durable, skeleton) => this.durability?.expectRestored(sid, pid, generation, durable, skeleton),
      emit: (event: string, payload: unknown) => this.emit(event, payload),
    };
  }

  private durabilityHost(): DurabilityHost {
    return {
      skeletonOf: (id) => {
        const socket = this.namespace.sockets.get(id);
        const cursor = this.sequencer?.cursor;
        const namespaceId = this.namespaceId;
        // A socket whose transport closed while operations waited: its state at the close, as they changed it.
        const closing = socket ? undefined : this.disconnects?.skeletonOf(id);
        if (closing && namespaceId !== undefined) return { namespaceId, ...closing };
        if (!socket || cursor === undefined || namespaceId === undefined) return undefined;
        const snapshot = this.ledger.snapshot(id, [...socket.rooms], cursor);
        if (!snapshot) return undefined;
        return { namespaceId, rooms: snapshot.rooms, left: snapshot.left, floor: snapshot.floor, data: socket.data };
      },
      release: (id, data, offset) => {
        this.sendToSocket(id, data);
        this.ledger.delivered(id, offset);
      },
      disconnect: (id) => this.namespace.sockets.get(id)?.disconnect(true),
      // An EVENT's first element must be its name for the parser to decode it back.
      normalize: (data) => normalizeEventData(this.namespace, ["data", data]).data[1],
      reportError: (err) => this.ctx.reportError(err),
    };
  }

  onRevived(): Promise<void> {
    return this.durability?.revived() ?? Promise.resolve();
  }

  /**
   * Delivers an event to this node's sockets without logging it (outage mode).
   * It carries the offset this node has delivered up to, like the priming
   * event: every receiver has been sent each entry up to it, so its offset
   * moves to a true position instead of becoming the event's last string argument.
   */
  private deliverUnlogged(logged: LoggedPacket): void {
    this.sendToLocalSockets(logged, this.sequencer?.cursor);
  }

  onLogNotification(from: number, count: number, inline: string, jumpedFrom?: number): void {
    const sequencer = this.sequencer;
    if (!sequencer || !Number.isSafeInteger(from) || !Number.isSafeInteger(count) || count < 1) return;
    const to = from + count - 1;
    const cursor = sequencer.cursor;
    if (cursor !== undefined && to <= cursor) return; // e.g. this node's own batch, already delivered
    if (jumpedFrom !== undefined && Number.isSafeInteger(jumpedFrom) && jumpedFrom < from - 1) {
      // The first append into another database incarnation: nothing lies between.
      // The cursor before stepping over the gap is this node's evidence of a loss (failover-guard.ts).
      this.guard?.jumped(jumpedFrom);
      sequencer.skip(jumpedFrom, from - 1);
    }
    if (inline === "") {
      sequencer.offerRange(from, to);
      return;
    }
    const payloads = decodeBatchFromNotify(inline);
    sequencer.offer(payloads.map((payload, i) => decodePacket(from + i, payload)));
  }

  /** Emits `session-expired` (sid): the pruning pass deleted that session as expired, once per node. */
  onSessionExpired(sid: string): void {
    this.emit("session-expired", sid);
  }

  onListenerReconnected(): void {
    // The database may be another one now (a failover, a restart): tell it what this node delivered,
    // and learn the gaps before reading on (catching up across an unknown gap would overflow the buffer).
    this.staged?.request(); // commits notified while the connection was down
    const sequencer = this.sequencer;
    if (!sequencer) return;
    if (!this.guard) {
      sequencer.catchUp();
      return;
    }
    void this.guard.listenerBack().finally(() => sequencer.catchUp());
  }

  onListenerLost(): void {
    this.guard?.listenerLost();
  }

  reconciledIncarnation(): string | undefined {
    return this.guard ? this.guard.reconciledIncarnation : "*";
  }

  onStagedEvents(): void {
    this.staged?.request();
  }

  private deliver(entry: LogEntry): void {
    this.restorer?.onDelivered(entry);
    this.sendToLocalSockets(entry, entry.offset);
    // Operations that follow this entry apply now, before the next one (see program-order.ts).
    this.order?.delivered();
  }

  /**
   * The in-memory broadcast: to this node's matching sockets only (the cluster
   * has the entry already, or never gets it when unlogged), carrying `offset`
   * as the last argument, which each receiver's ledger records.
   */
  private sendToLocalSockets(packet: LoggedPacket, offset: number | undefined): void {
    const data = offset === undefined ? packet.data : [...packet.data, formatOffset(offset)];
    const opts: BroadcastOptions = { rooms: new Set<Room>(packet.rooms), except: new Set<Room>(packet.except), flags: {} };
    if (offset !== undefined && this.durability?.holding) {
      // Sockets whose room change is not durable yet get the entry once it is (session-durability.ts).
      const durability = this.durability;
      const held: SocketId[] = [];
      (this as unknown as InMemoryInternals).apply(opts, (socket) => {
        if (durability.isHeld(socket.id)) held.push(socket.id);
      });
      for (const id of held) {
        durability.hold(id, data, offset);
        opts.except!.add(id);
      }
    }
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
    const order = this.order;
    if (order && isOrderedOperation(message) && message.nsp === this.nspName) {
      // Issued after events of its node up to that offset: applies once they are delivered here.
      void order.remote(message.data.afterOffset, (cursor) => {
        this.onMessage(message);
        this.disconnects?.applied(message, cursor);
      });
      return;
    }
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

  // ---- room and disconnect operations, in program order -----------------------

  override addSockets(opts: BroadcastOptions, rooms: Room[]): Promise<void> {
    if (!this.order) return super.addSockets(opts, rooms);
    return this.operation(this.order, opts, { type: MessageType.SOCKETS_JOIN, data: { opts: encodeOptions(opts), rooms } }, () =>
      Adapter.prototype.addSockets.call(this, opts, rooms),
    );
  }

  override delSockets(opts: BroadcastOptions, rooms: Room[]): Promise<void> {
    if (!this.order) return super.delSockets(opts, rooms);
    return this.operation(this.order, opts, { type: MessageType.SOCKETS_LEAVE, data: { opts: encodeOptions(opts), rooms } }, () =>
      Adapter.prototype.delSockets.call(this, opts, rooms),
    );
  }

  override disconnectSockets(opts: BroadcastOptions, close: boolean): Promise<void> {
    if (!this.order) return super.disconnectSockets(opts, close);
    return this.operation(this.order, opts, { type: MessageType.DISCONNECT_SOCKETS, data: { opts: encodeOptions(opts), close } }, () =>
      Adapter.prototype.disconnectSockets.call(this, opts, close),
    );
  }

  /**
   * Applies an operation on this node's sockets and publishes it to the
   * cluster (unless local), once the events this node emitted before it are
   * delivered here; the other nodes apply it at the same point of the log.
   */
  private operation(order: ProgramOrder, opts: BroadcastOptions, message: OperationMessage, applyLocally: () => void): Promise<void> {
    const local = opts.flags?.local === true;
    return order.local((afterOffset) => {
      applyLocally();
      this.disconnects?.applied(message, afterOffset);
      return local ? undefined : this.publishAndReturnOffset(orderedOperation(message, afterOffset));
    }, !local);
  }

  /**
   * Whether `socket.leave()` on a connected socket must wait for the events
   * this node emitted before it. Not while an operation applies (it is in
   * order already).
   */
  private mustFollowEvents(id: SocketId): boolean {
    const order = this.order;
    return order !== undefined && !order.applying && !order.idle && this.ledger.has(id) && this.namespace.sockets.has(id);
  }

  // ---- rooms, priming --------------------------------------------------------

  /**
   * Joins apply at once, never after the events emitted before them: a join
   * that waited would make the socket miss what other nodes send to the room
   * meanwhile, after the app joined it (in its connection handler, say). The
   * price: an event this node sent to the room just before the join, still
   * on its way, reaches the socket too (live and in a replay alike).
   */
  override addAll(id: SocketId, rooms: Set<Room>): void {
    if (!this.sequencer) {
      super.addAll(id, rooms);
      return;
    }
    const cursor = this.sequencer.cursor ?? UNSTARTED;
    this.restorer?.onJoin(id);
    this.ledger.join(id, rooms, cursor);
    super.addAll(id, rooms);
    const socket = this.namespace.sockets.get(id);
    if (socket && this.order) orderDisconnect(socket, this.order, (sid) => this.disconnects?.dropped(sid));
    // Joining its own room is how every socket connects, not a room change.
    if (socket) this.durability?.changed(id, pidOf(socket), !(rooms.size === 1 && rooms.has(id)));
    if (!this.ledger.has(id)) {
      if (socket && !socket.recovered) {
        this.ledger.begin(id, cursor);
        if (cursor !== UNSTARTED) this.prime(id, cursor);
      }
    }
  }

  override del(id: SocketId, room: Room): Promise<void> | void {
    if (this.mustFollowEvents(id) && this.rooms.get(room)?.has(id)) {
      // With crash safety, events emitted after the leave wait until it applied: accepted before it,
      // they would not wait for its skeleton (see LogWriter.appendOnce), and a crash that rolls the
      // leave back would find them in the log.
      return this.order?.local(() => this.leaveNow(id, room), this.durability !== undefined);
    }
    this.leaveNow(id, room);
  }

  private leaveNow(id: SocketId, room: Room): void {
    const cursor = this.sequencer?.cursor ?? UNSTARTED;
    // The transport closed while the leave waited: it changes the session to write.
    if (this.disconnects?.leave(id, room, cursor)) return;
    this.ledger.leave(id, room, cursor);
    super.del(id, room);
    // Leaving its own room is part of leaving the namespace (delAll follows).
    if (room !== id && this.namespace.sockets.has(id)) this.durability?.changed(id, undefined, true);
  }

  override delAll(id: SocketId): void {
    // A closing session keeps its skeleton until its session is written.
    if (!this.disconnects?.isClosing(id)) this.durability?.left(id);
    this.ledger.forget(id);
    this.restorer?.onLeave(id);
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
    this.sendToSocket(id, [event, formatOffset(cursor)]);
  }

  /** The in-memory send of one packet to one local socket (through its own room). */
  private sendToSocket(id: SocketId, data: unknown[]): void {
    Adapter.prototype.broadcast.call(this, { type: EVENT, data, nsp: this.nspName }, {
      rooms: new Set<Room>([id]),
      except: new Set<Room>(),
      flags: {},
    });
  }

  // ---- sessions ------------------------------------------------------------

  override persistSession(session: { sid: SocketId; pid: PrivateSessionId; rooms: Room[]; data: unknown }): void {
    if (!this.disconnects?.persist(session)) debug("not persisting session of %s: namespace not started or socket unknown", session.sid);
  }

  /** Called by the node's heartbeat ticker (heartbeat-ticker.ts). */
  heartbeat(): void {
    this.publish({ type: MessageType.HEARTBEAT });
  }

  override restoreSession(pid: PrivateSessionId, offset: string): Promise<Session> {
    return this.restorer?.restoreSession(pid, offset) ?? Promise.resolve(NOT_RESTORED);
  }

  // ---- lifecycle -----------------------------------------------------------

  /** Writes what is queued (log entries of this namespace, sessions), then leaves the cluster. */
  override close(): Promise<void> {
    this.closing ??= (async () => {
      this.startCloseTimer();
      const { closeTimeoutMs } = this.ctx.opts;
      // One deadline for every step, the node context's included (see NodeContext.close).
      const deadline = Date.now() + closeTimeoutMs;
      try {
        await this.writer?.close(closeTimeoutMs);
      } catch (err) {
        this.ctx.reportError(asError(err));
      }
      await Promise.race([this.ctx.sessions.flush(), this.closeDeadline]);
      await this.staged?.close(deadline);
      this.gaveUp = true; // nothing left that needs the namespace to start
      this.unwatchMetrics();
      this.order?.close();
      super.close();
      this.ctx.heartbeats.forget(this); // after super.close(), whose ADAPTER_CLOSE counted as a publish
      this.sequencer?.close();
      this.guard?.close();
      this.durability?.close();
      await this.ctx.remove(this, deadline);
    })();
    return this.closing;
  }
}

/** The in-memory adapter's recipient walk (private in its types; stable since socket.io-adapter 2.0). */
interface InMemoryInternals {
  apply(opts: BroadcastOptions, callback: (socket: { id: SocketId }) => void): void;
}

/** Sockets between their creation and their connection (private in Socket.IO's types; 4.6+). */
interface NamespaceInternals {
  _preConnectSockets?: Map<SocketId, { conn: { close(): void } }>;
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

/** The private session id Socket.IO gives a socket when connection state recovery is on (private in its types). */
function pidOf(socket: unknown): string | undefined {
  const pid = (socket as { pid?: unknown }).pid;
  return typeof pid === "string" ? pid : undefined;
}

function isLogged(packet: Packet, opts: BroadcastOptions): boolean {
  return packet.type === EVENT && packet.id === undefined && !opts.flags?.volatile && !opts.flags?.local;
}



