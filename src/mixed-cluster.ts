/**
 * Clusters mixing recovery nodes with nodes that do not read the log: nodes
 * of `@socket.io/postgres-adapter` (during a rolling migration), and nodes of
 * this package with recovery off or with another `schema`.
 *
 * A logged broadcast reaches the nodes reading the same log through the log.
 * The others only listen to upstream's bus channel, so a recovery node also
 * publishes the broadcast there, in upstream's BROADCAST format, carrying a
 * marker (`recoveryLog: { schema }`) that upstream ignores (it reads only
 * `data.packet` and `data.opts`) and that tells the nodes reading that
 * schema's log to drop it: they deliver it from the log, with its offset.
 * The marker names the schema rather than the sender, so a node of another
 * deployment (another schema) sharing the channels still delivers it, and a
 * node with recovery off (no log) always does.
 *
 * The relay is sent when the broadcast is emitted, on the same ordered bus
 * as the node's other cluster messages (socketsJoin, socketsLeave,
 * disconnectSockets…), so nodes without the log apply them in program
 * order, as upstream does.
 *
 * The relay costs one more NOTIFY per logged broadcast, so it is only sent
 * while the namespace has a live peer that is not known to read our log.
 * Peers say so in their heartbeats (the same marker on INITIAL_HEARTBEAT and
 * HEARTBEAT); a peer first seen through another message, or one that sends
 * unmarked heartbeats (upstream, recovery off, another schema), needs the
 * relay. For a short while after this node announces itself it relays
 * anyway: the peers' answers to its INITIAL_HEARTBEAT are still arriving.
 * Every node answers at once (a NOTIFY round trip), so that while is
 * `ANSWER_WINDOW_MS`, not `heartbeatTimeout`: relaying for the whole 10 s
 * default doubled the NOTIFYs of every event a node emitted after its start
 * (the bench's W1 measured about 1,000 NOTIFYs per 1,000 events instead of 5).
 */
import { MessageType, type ClusterMessage, type ClusterResponse } from "socket.io-adapter";
import type { LoggedPacket } from "./codec.js";

/** Sender id of `@socket.io/postgres-emitter`, which sends and never receives. */
const EMITTER_UID = "emitter";

/**
 * How long after its INITIAL_HEARTBEAT a node relays whatever it knows of its
 * peers: their answers come back within a NOTIFY round trip. A peer whose
 * answer is later than this is relayed to from its answer on.
 */
const ANSWER_WINDOW_MS = 2000;

/** The marker's field on a cluster message. */
export const LOG_MARKER = "recoveryLog";

/** The marker: the schema of the log the sender writes and reads. */
export interface LogMarker {
  schema: string;
}

type Message = ClusterMessage | ClusterResponse;

export interface MixedClusterOptions {
  /** This adapter's uid on the bus. */
  uid: string;
  nsp: string;
  /** Schema of the log this node's namespace reads; undefined without recovery (it never relays). */
  logSchema: string | undefined;
  /** A peer silent for longer is forgotten, as upstream forgets it for `serverCount()`. */
  heartbeatTimeout: number;
  /** Publishes on the bus, in order with the adapter's other cluster messages. */
  publish(message: Message): Promise<void>;
  /** Whether a room is the id of a socket connected to this node (no other node has it). */
  isLocalSocket(room: string): boolean;
}

interface Peer {
  lastSeen: number;
  /** Whether its heartbeats say it reads our log; undefined until one arrived. */
  readsOurLog: boolean | undefined;
}

/** EVENT in socket.io-parser's PacketType (only events without ack are logged, hence relayed). */
const EVENT = 2;

export class MixedCluster {
  private readonly peers = new Map<string, Peer>();
  /** Relays unconditionally until then (set when the initial heartbeat goes out). */
  private unsureUntil = Number.POSITIVE_INFINITY;
  /** Logged broadcasts published on the bus for peers without the log (for tests and debugging). */
  relayed = 0;

  constructor(private readonly opts: MixedClusterOptions) {}

  /** Adds the marker to this node's heartbeats when it reads a log. */
  tagOutgoing<T extends Message>(message: T): T {
    const schema = this.opts.logSchema;
    if (schema === undefined) return message;
    if (message.type === MessageType.INITIAL_HEARTBEAT) {
      this.unsureUntil = Date.now() + Math.min(ANSWER_WINDOW_MS, this.opts.heartbeatTimeout);
    } else if (message.type !== MessageType.HEARTBEAT) {
      return message;
    }
    return { ...message, [LOG_MARKER]: { schema } satisfies LogMarker };
  }

  /** Learns what kind of node sent `message` (every message of the namespace goes through here). */
  observe(message: Message): void {
    const uid = message.uid;
    if (typeof uid !== "string" || uid === EMITTER_UID || uid === this.opts.uid) return;
    if (message.type === MessageType.ADAPTER_CLOSE) {
      this.peers.delete(uid);
      return;
    }
    const peer = this.peers.get(uid) ?? { lastSeen: 0, readsOurLog: undefined };
    peer.lastSeen = Date.now();
    if (message.type === MessageType.INITIAL_HEARTBEAT || message.type === MessageType.HEARTBEAT) {
      peer.readsOurLog = this.carriesOurMarker(message);
    } else if (this.carriesOurMarker(message)) {
      peer.readsOurLog = true;
    }
    this.peers.set(uid, peer);
  }

  /** Whether `message` is a relayed logged broadcast of the log this node reads (deliver it from the log instead). */
  isFromOurLog(message: Message): boolean {
    return message.type === MessageType.BROADCAST && this.carriesOurMarker(message);
  }

  /**
   * Publishes a logged broadcast for the peers that do not read our log, if
   * there are any. `packet` is the event as prepared for the log (normalised,
   * see payload.ts): what every recovery node delivers, and a snapshot taken
   * at emit time, while the bus encodes its messages later. Failures are
   * reported by the bus.
   */
  relay(packet: LoggedPacket): void {
    const schema = this.opts.logSchema;
    if (schema === undefined || this.isForLocalSocket(packet.rooms) || !this.needsRelay()) return;
    this.relayed++;
    const message = {
      uid: this.opts.uid,
      nsp: this.opts.nsp,
      type: MessageType.BROADCAST,
      data: {
        packet: { type: EVENT, data: packet.data, nsp: this.opts.nsp },
        opts: { rooms: [...packet.rooms], except: [...packet.except], flags: {} },
      },
      [LOG_MARKER]: { schema } satisfies LogMarker,
    } as ClusterMessage;
    this.opts.publish(message).catch(() => undefined);
  }

  /**
   * `socket.emit()` with recovery on goes through the adapter, addressed to the
   * socket's own room: no other node has that socket, so nothing to relay.
   */
  private isForLocalSocket(rooms: readonly string[]): boolean {
    return rooms.length === 1 && this.opts.isLocalSocket(rooms[0]!);
  }

  /** Whether a live peer may not read our log (or this node just announced itself). */
  needsRelay(): boolean {
    const now = Date.now();
    if (now < this.unsureUntil) return true;
    let needed = false;
    for (const [uid, peer] of this.peers) {
      if (now - peer.lastSeen > this.opts.heartbeatTimeout) this.peers.delete(uid);
      else if (peer.readsOurLog !== true) needed = true;
    }
    return needed;
  }

  private carriesOurMarker(message: Message): boolean {
    const marker: unknown = (message as unknown as Record<string, unknown>)[LOG_MARKER];
    return (
      typeof marker === "object" &&
      marker !== null &&
      (marker as Partial<LogMarker>).schema === this.opts.logSchema &&
      this.opts.logSchema !== undefined
    );
  }
}
