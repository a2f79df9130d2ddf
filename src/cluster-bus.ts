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
import type { ClusterMessage, ClusterResponse } from "socket.io-adapter";
import { hasBinary } from "@socket.io/postgres-adapter/dist/util.js";
import { Batcher } from "./batcher.js";
import { debug } from "./debug.js";
import type { AttachmentsTable } from "./attachments-table.js";
import type { Queryable } from "./sql/bounded-queries.js";

/** Postgres' longest identifier, hence longest NOTIFY channel name (NAMEDATALEN - 1). */
const MAX_CHANNEL_BYTES = 63;

/** A message as it travels (upstream adds nothing more than the attachment id). */
type WireMessage = (ClusterMessage | ClusterResponse) & { attachmentId?: string };

export interface ClusterBusOptions {
  channelPrefix: string;
  payloadThreshold: number;
  attachmentsTable: AttachmentsTable;
  /** Whether a message was sent by one of this node's adapters (it is then dropped). */
  isFromSelf(uid: string | undefined): boolean;
  dispatch(message: ClusterMessage | ClusterResponse): void;
  onError(err: Error): void;
}

export class ClusterBus {
  private readonly outbox: Batcher<ClusterMessage | ClusterResponse, void>;

  constructor(
    private readonly pool: Queryable,
    private readonly opts: ClusterBusOptions,
  ) {
    this.outbox = new Batcher({
      write: (messages) => this.sendBatch(messages),
      maxBatchSize: 200,
      maxPending: 100_000,
      isRetryable: () => false,
      retryDelayMs: () => 0,
      maxAttempts: 1,
      onError: (err) => opts.onError(new Error("socket.io-postgres-recovery: publishing cluster messages failed", { cause: err })),
    });
  }

  channelOf(nsp: string): string {
    return `${this.opts.channelPrefix}#${nsp}`;
  }

  /** Whether a NOTIFY channel is one of this bus' channels. */
  owns(channel: string): boolean {
    return channel.startsWith(`${this.opts.channelPrefix}#`);
  }

  /**
   * Publishes; the promise settles when Postgres has the message. Messages go
   * out in the order they were published: they queue while a write is in
   * flight and the queue goes out as one statement (its NOTIFYs are delivered
   * in that order), so a node's broadcasts reach the other nodes in order.
   * A failed write is reported and not retried, as upstream does.
   */
  publish(message: ClusterMessage | ClusterResponse): Promise<void> {
    // A namespace name is client input with dynamic namespaces. A channel Postgres refuses would
    // fail the whole statement, and with it every message batched with this one (other
    // namespaces' heartbeats, fetchSockets, serverSideEmit): refuse it alone, before batching.
    const refusal = this.channelProblem(message.nsp);
    if (refusal) return Promise.reject(refusal);
    return this.outbox.add(message);
  }

  /** Namespaces already reported as unusable on the bus (reported once each). */
  private readonly unusable = new Set<string>();

  /** Why the namespace's channel cannot carry a NOTIFY (over 63 bytes, or a NUL), else undefined. */
  private channelProblem(nsp: string): Error | undefined {
    const channel = this.channelOf(nsp);
    if (Buffer.byteLength(channel) <= MAX_CHANNEL_BYTES && !channel.includes("\0")) return undefined;
    const err = new Error(
      `socket.io-postgres-recovery: namespace ${JSON.stringify(nsp.slice(0, 100))} cannot be a NOTIFY channel ("${this.opts.channelPrefix}#" and the name must fit in ${MAX_CHANNEL_BYTES} bytes without NUL); its cluster messages (heartbeats, fetchSockets, serverSideEmit, acks) are not sent`,
    );
    if (!this.unusable.has(nsp)) {
      if (this.unusable.size < 1000) this.unusable.add(nsp);
      this.opts.onError(err);
    }
    return err;
  }

  /** Resolves once every message published so far has been written (or has failed). */
  idle(): Promise<void> {
    return this.outbox.flush();
  }

  private async sendBatch(messages: Array<ClusterMessage | ClusterResponse>): Promise<void[]> {
    const channels: string[] = [];
    const payloads: string[] = [];
    for (const message of messages) {
      channels.push(this.channelOf(message.nsp));
      payloads.push(await this.encode(message));
    }
    debug("publishing %d cluster message(s)", messages.length);
    await this.pool.query(
      `SELECT pg_notify(m.channel, m.payload)
       FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS m(channel, payload, n) ORDER BY m.n`,
      [channels, payloads],
    );
    return messages.map(() => undefined);
  }

  /**
   * The NOTIFY payload: the JSON message, or a header pointing at an attachment
   * row. Upstream looks for binary only in broadcasts, acks and serverSideEmit;
   * here every message is checked, so that a fetchSockets response carrying
   * Buffers in `socket.data` travels as msgpack (which upstream receivers
   * decode for any message type) instead of JSON's `{ type: "Buffer", data }`.
   */
  private async encode(message: ClusterMessage | ClusterResponse): Promise<string> {
    if (!hasBinary(message)) {
      const json = JSON.stringify(message);
      if (Buffer.byteLength(json) <= this.opts.payloadThreshold) return json;
    }
    const table = await this.opts.attachmentsTable.name();
    const { rows } = await this.pool.query<{ id: string }>(
      `INSERT INTO ${table} (payload) VALUES ($1) RETURNING id::text AS id`,
      [attachmentBytes(message)],
    );
    return JSON.stringify({ uid: message.uid, type: message.type, attachmentId: rows[0]?.id });
  }

  /** Handles one NOTIFY payload of a bus channel. */
  receive(payload: string, channel: string): void {
    let message: WireMessage;
    try {
      message = JSON.parse(payload) as WireMessage;
    } catch (err) {
      this.opts.onError(new Error("socket.io-postgres-recovery: ignoring a malformed cluster message", { cause: err }));
      return;
    }
    if (this.opts.isFromSelf(message.uid)) return;
    // @socket.io/postgres-emitter (0.1.x) sends no nsp: the channel says which namespace it is for.
    const nsp = channel.slice(`${this.opts.channelPrefix}#`.length);
    if (message.attachmentId === undefined) {
      this.opts.dispatch(withNamespace(message, nsp));
      return;
    }
    const header = message;
    this.opts.attachmentsTable
      .name()
      .then((table) => this.pool.query<{ payload: Buffer }>(`SELECT payload FROM ${table} WHERE id = $1`, [header.attachmentId]))
      .then(({ rows }) => {
        const row = rows[0];
        if (!row) throw new Error(`attachment ${header.attachmentId} not found (already cleaned up, or the sender uses another table: check tableName)`);
        const full = decode(row.payload) as ClusterMessage | ClusterResponse;
        // Ids are per table: a sender writing to another table (a different tableName or
        // search_path) names a row of ours holding some other message. Never deliver that.
        if (full?.uid !== header.uid || full.type !== header.type) {
          throw new Error(
            `attachment ${header.attachmentId} from ${String(header.uid)} holds another node's message: the nodes use different attachments tables (check tableName and search_path)`,
          );
        }
        this.opts.dispatch(withNamespace(full, nsp));
      })
      .catch((err: unknown) => {
        this.opts.onError(new Error("socket.io-postgres-recovery: could not read a cluster message attachment", { cause: err }));
      });
  }
}

/** The message, with the channel's namespace when it names none. */
function withNamespace<T extends ClusterMessage | ClusterResponse>(message: T, nsp: string): T {
  return typeof message.nsp === "string" ? message : { ...message, nsp };
}

/** The msgpack attachment of a message (upstream's format). */
function attachmentBytes(message: ClusterMessage | ClusterResponse): Buffer {
  try {
    return Buffer.from(encode(message));
  } catch {
    // msgpack refuses what JSON leaves out (a function in socket.data beside a Buffer): send what
    // JSON keeps, as for a message without binary, rather than fail the message and its batch.
    return Buffer.from(encode(JSON.parse(JSON.stringify(message)) as unknown));
  }
}
