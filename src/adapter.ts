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
import { decodeBatchFromNotify, decodePacket, encodeSession, formatOffset, type LogEntry, type LoggedPacket } from "./codec.js";
import { debug } from "./debug.js";
import { asError, isMissingSchemaError } from "./errors.js";
import { LogWriter, type LogWriterHost } from "./log-writer.js";
import type { NamespaceMember, NodeContext } from "./node-context.js";
import { Restorer, type RestorerHost } from "./restorer.js";
import { Sequencer } from "./sequencer.js";
import { hashPid } from "./session-store.js";
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

export class PostgresRecoveryAdapter extends ClusterAdapterWithHeartbeat implements NamespaceMember {
  readonly nspName: string;
  private readonly recovery: RecoverySettings | undefined;
  private readonly sequencer: Sequencer | undefined;
  private readonly writer: LogWriter | undefined;
  private readonly restorer: Restorer | undefined;
  private namespaceId: number | undefined;
  private readonly ledger = new SocketLedger();
  private readonly ready: Promise<void>;
  private closing: Promise<void> | undefined;
  /** Resolves `closeTimeoutMs` after close() started: nothing waits for `ready` past it. */
  private readonly closeDeadline: Promise<void>;
  private startCloseTimer: () => void = () => undefined;
  private gaveUp = false;
  /** Whether the initial heartbeat went out (see init()). */
  private announced = false;

  constructor(
    nsp: Namespace,
    private readonly ctx: NodeContext,
  ) {
    super(nsp, { heartbeatInterval: ctx.opts.heartbeatInterval, heartbeatTimeout: ctx.opts.heartbeatTimeout });
    this.nspName = nsp.name;
    const csr = serverInternals(nsp).opts.connectionStateRecovery;
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
      this.writer = new LogWriter(this.logWriterHost(), ctx, this.sequencer);
      this.restorer = new Restorer(this.restorerHost(), ctx, this.sequencer, this.ledger, this.recovery.maxDisconnectionDuration);
      // Emitted right after a socket's CONNECT packet is written, before the "connection" handlers run.
      nsp.on("connect", (socket) => this.restorer?.onConnect(socket.id));
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

  override broadcast(packet: Packet, opts: BroadcastOptions): Promise<void> {
    if (!this.writer || !isLogged(packet, opts)) return super.broadcast(packet, opts);
    return this.writer.submit({ data: packet.data, rooms: [...opts.rooms], except: [...(opts.except ?? [])] });
  }

  /** Resolves when the namespace started, or when closing gave up waiting for it. */
  private started(): Promise<void> {
    return Promise.race([this.ready, this.closeDeadline]);
  }

  private logWriterHost(): LogWriterHost {
    return {
      nspName: this.nspName,
      writerId: this.writerId,
      namespaceId: () => this.namespaceId,
      started: () => this.started(),
      closing: () => this.closing !== undefined,
      deliverUnlogged: (packet) => this.deliverUnlogged(packet),
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
      sendTo: (id, data) => this.sendToSocket(id, data),
      dropConnection: (id) => {
        const pending = (this.nsp as unknown as NamespaceInternals)._preConnectSockets?.get(id);
        (pending ?? this.namespace.sockets.get(id))?.conn.close();
      },
      emit: (event: string, payload: unknown) => this.emit(event, payload),
    };
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
    this.restorer?.onDelivered(entry);
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
    return this.ctx.bus.publish(message).then(() => "");
  }

  protected override doPublishResponse(_requesterUid: ServerId, response: ClusterResponse): Promise<void> {
    return this.ctx.bus.publish(response);
  }

  onClusterMessage(message: ClusterMessage | ClusterResponse): void {
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
    this.restorer?.onJoin(id);
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
    this.ledger.leave(id, room, this.sequencer?.cursor ?? UNSTARTED);
    super.del(id, room);
  }

  override delAll(id: SocketId): void {
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
    const cursor = this.sequencer?.cursor;
    const snapshot = cursor === undefined ? undefined : this.ledger.snapshot(session.sid, session.rooms, cursor);
    if (!this.recovery || !snapshot || this.namespaceId === undefined) {
      debug("not persisting session of %s: namespace not started or socket unknown", session.sid);
      return;
    }
    let payload: Buffer;
    try {
      payload = encodeSession({ rooms: snapshot.rooms, left: snapshot.left, data: session.data });
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

  override restoreSession(pid: PrivateSessionId, offset: string): Promise<Session> {
    return this.restorer?.restoreSession(pid, offset) ?? Promise.resolve(NOT_RESTORED);
  }

  // ---- lifecycle -----------------------------------------------------------

  /** Writes what is queued (log entries of this namespace, sessions), then leaves the cluster. */
  override close(): Promise<void> {
    this.closing ??= (async () => {
      this.startCloseTimer();
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

function isLogged(packet: Packet, opts: BroadcastOptions): boolean {
  return packet.type === EVENT && packet.id === undefined && !opts.flags?.volatile && !opts.flags?.local;
}



