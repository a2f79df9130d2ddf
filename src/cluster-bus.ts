/**
 * Non-logged cluster traffic (heartbeats, fetchSockets, serverSideEmit,
 * broadcasts with acks, volatile broadcasts) in `@socket.io/postgres-adapter`'s
 * wire format: channel `${channelPrefix}#${nsp}`, JSON payloads, and the
 * attachments table (msgpack, header `{ uid, type, attachmentId }`) for
 * binary messages or those over `payloadThreshold`. Nodes of both packages,
 * and `@socket.io/postgres-emitter`, understand each other.
 *
 * Upstream's `PubSubClient` is not reused: it builds `LISTEN "${channel}"`
 * from namespace names without escaping (a dynamic namespace name is client
 * input), holds a pooled connection with no liveness check, and every node
 * runs its own cleanup query. Here the channels go through the shared,
 * checked `Listener` and cleanup is part of the coordinated pruning.
 */
import { decode, encode } from "@msgpack/msgpack";
import type { Pool } from "pg";
import { MessageType, type ClusterMessage, type ClusterResponse } from "socket.io-adapter";
import { hasBinary } from "@socket.io/postgres-adapter/dist/util.js";
import { debug } from "./debug.js";
import { qualifiedName } from "./sql/identifiers.js";

/** A message as it travels (upstream adds nothing more than the attachment id). */
type WireMessage = (ClusterMessage | ClusterResponse) & { attachmentId?: string };

const MAY_CARRY_BINARY = new Set<number>([
  MessageType.BROADCAST,
  MessageType.BROADCAST_ACK,
  MessageType.SERVER_SIDE_EMIT,
  MessageType.SERVER_SIDE_EMIT_RESPONSE,
]);

export interface ClusterBusOptions {
  channelPrefix: string;
  payloadThreshold: number;
  attachmentsTable: { schema: string; table: string };
  /** Whether a message was sent by one of this node's adapters (it is then dropped). */
  isFromSelf(uid: string | undefined): boolean;
  dispatch(message: ClusterMessage | ClusterResponse): void;
  onError(err: Error): void;
}

export class ClusterBus {
  private readonly attachments: string;
  private readonly inFlight = new Set<Promise<void>>();

  constructor(
    private readonly pool: Pool,
    private readonly opts: ClusterBusOptions,
  ) {
    this.attachments = qualifiedName(opts.attachmentsTable.schema, opts.attachmentsTable.table);
  }

  channelOf(nsp: string): string {
    return `${this.opts.channelPrefix}#${nsp}`;
  }

  /** Whether a NOTIFY channel is one of this bus' channels. */
  owns(channel: string): boolean {
    return channel.startsWith(`${this.opts.channelPrefix}#`);
  }

  /** Publishes; the promise settles when Postgres has the message. */
  publish(message: ClusterMessage | ClusterResponse): Promise<void> {
    const sending = this.send(message);
    this.inFlight.add(sending);
    void sending.catch(() => undefined).finally(() => this.inFlight.delete(sending));
    return sending;
  }

  /** Resolves once every publish under way has settled (so close() does not cut them off). */
  async idle(): Promise<void> {
    await Promise.allSettled([...this.inFlight]);
  }

  private async send(message: ClusterMessage | ClusterResponse): Promise<void> {
    const channel = this.channelOf(message.nsp);
    if (MAY_CARRY_BINARY.has(message.type) && hasBinary(message)) {
      return this.publishWithAttachment(channel, message);
    }
    const payload = JSON.stringify(message);
    if (Buffer.byteLength(payload) > this.opts.payloadThreshold) {
      return this.publishWithAttachment(channel, message);
    }
    debug("publishing message of type %d to %s", message.type, channel);
    await this.pool.query("SELECT pg_notify($1, $2)", [channel, payload]);
  }

  private async publishWithAttachment(channel: string, message: ClusterMessage | ClusterResponse): Promise<void> {
    const { rows } = await this.pool.query<{ id: string }>(
      `INSERT INTO ${this.attachments} (payload) VALUES ($1) RETURNING id::text AS id`,
      [Buffer.from(encode(message))],
    );
    const header = { uid: message.uid, type: message.type, attachmentId: rows[0]?.id };
    await this.pool.query("SELECT pg_notify($1, $2)", [channel, JSON.stringify(header)]);
  }

  /** Handles one NOTIFY payload of a bus channel. */
  receive(payload: string): void {
    let message: WireMessage;
    try {
      message = JSON.parse(payload) as WireMessage;
    } catch (err) {
      this.opts.onError(new Error("socket.io-postgres-recovery: ignoring a malformed cluster message", { cause: err }));
      return;
    }
    if (this.opts.isFromSelf(message.uid)) return;
    if (message.attachmentId === undefined) {
      this.opts.dispatch(message);
      return;
    }
    this.pool
      .query<{ payload: Buffer }>(`SELECT payload FROM ${this.attachments} WHERE id = $1`, [message.attachmentId])
      .then(({ rows }) => {
        const row = rows[0];
        if (!row) throw new Error(`attachment ${message.attachmentId} not found (already cleaned up?)`);
        this.opts.dispatch(decode(row.payload) as ClusterMessage | ClusterResponse);
      })
      .catch((err: unknown) => {
        this.opts.onError(new Error("socket.io-postgres-recovery: could not read a cluster message attachment", { cause: err }));
      });
  }
}
