/**
 * How log entries, sessions and offsets look at rest and on the wire.
 *
 * Payloads are msgpack so that Buffers and typed arrays anywhere in an event's
 * arguments or in `socket.data` come back byte-exact (JSON would turn them
 * into objects). An event's arguments arrive here already normalised to what
 * a client decodes (see payload.ts); `socket.data` is stored as it is.
 * `undefined` object properties are dropped, as JSON would drop them.
 */
import { Decoder, Encoder } from "@msgpack/msgpack";

const encoder = new Encoder({ ignoreUndefined: true });
const decoder = new Decoder();

/** One logged broadcast as the log stores it (the offset lives in its own column). */
export interface LoggedPacket {
  /** `packet.data` without the offset: [eventName, ...args]. */
  readonly data: unknown[];
  readonly rooms: readonly string[];
  readonly except: readonly string[];
}

/** A log entry with its offset, as delivery and replay handle it. */
export interface LogEntry extends LoggedPacket {
  readonly offset: number;
  /** Size of the stored payload, for replay limits. */
  readonly bytes: number;
}

export function encodePacket(packet: LoggedPacket): Buffer {
  const bytes = encoder.encode([packet.data, packet.rooms, packet.except]);
  return decodable(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
}

const PROTO_KEY = Buffer.from("__proto__");

/**
 * Throws when msgpack would refuse to decode `encoded`. Its decoder refuses a
 * map key `__proto__`, and `JSON.parse` (hence Socket.IO's parser, with what
 * clients send) makes such own keys. Stored anyway, an entry could never be
 * read back: every node reading it would stall on it, and a session holding
 * it would never restore. Only encodings containing those bytes are decoded
 * to check, so the usual cost is one byte search.
 */
function decodable(encoded: Buffer): Buffer {
  if (encoded.includes(PROTO_KEY)) decoder.decode(encoded);
  return encoded;
}

export function decodePacket(offset: number, payload: Uint8Array): LogEntry {
  return { offset, bytes: payload.byteLength, ...decodeLoggedPacket(payload, `log entry ${offset}`) };
}

/**
 * The packet as stored. The emitting node delivers this too, not the packet it
 * encoded, so that its clients get what every other node and every replay
 * sends, whatever msgpack changes (a lone surrogate in a long string becomes
 * U+FFFD: its encoder goes through TextEncoder).
 */
export function decodeLoggedPacket(payload: Uint8Array, what = "a log entry"): LoggedPacket {
  const decoded = decoder.decode(payload);
  if (!Array.isArray(decoded) || decoded.length !== 3 || !Array.isArray(decoded[0])) {
    throw new Error(`socket.io-postgres-recovery: ${what} is not a packet this version understands`);
  }
  return {
    data: decoded[0] as unknown[],
    rooms: decoded[1] as string[],
    except: decoded[2] as string[],
  };
}

/** A batch of entries for a NOTIFY payload (text only, hence base64). */
export function encodeBatchForNotify(packets: readonly Buffer[]): string {
  const bytes = encoder.encode(packets);
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("base64");
}

/** The batch inside an append's NOTIFY when it fits under `payloadThreshold` (receivers then skip a read), else "". */
export function inlineForNotify(payloads: readonly Buffer[], payloadThreshold: number): string {
  let bytes = 16;
  for (const p of payloads) bytes += p.length + 5;
  if (Math.ceil(bytes / 3) * 4 + 40 > payloadThreshold) return "";
  const inline = encodeBatchForNotify(payloads);
  return inline.length + 40 > payloadThreshold ? "" : inline;
}

export function decodeBatchFromNotify(base64: string): Uint8Array[] {
  const decoded = decoder.decode(Buffer.from(base64, "base64"));
  if (!Array.isArray(decoded) || !decoded.every((p) => p instanceof Uint8Array)) {
    throw new Error("socket.io-postgres-recovery: malformed log notification");
  }
  return decoded as Uint8Array[];
}

/** What a session keeps besides its columns. */
export interface StoredSessionPayload {
  /** Each room with the offset of this node's cursor when the socket joined it. */
  readonly rooms: ReadonlyArray<readonly [room: string, joinedAt: number]>;
  /** Rooms the socket was in and left since its floor, each with the cursors of the join and of the leave. */
  readonly left?: ReadonlyArray<LeftRoom>;
  readonly data: unknown;
}

export type LeftRoom = readonly [room: string, joinedAt: number, leftAt: number];

export function encodeSession(payload: StoredSessionPayload): Buffer {
  const left = payload.left ?? [];
  const bytes = encoder.encode(left.length > 0 ? { r: payload.rooms, l: left, d: payload.data } : { r: payload.rooms, d: payload.data });
  return decodable(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
}

/** Bytes of `value` encoded as payloads encode it (what `socket.data` weighs in a session). */
export function encodedByteLength(value: unknown): number {
  return encoder.encode(value).byteLength;
}

export function decodeSession(payload: Uint8Array): StoredSessionPayload {
  const decoded = decoder.decode(payload) as { r?: unknown; l?: unknown; d?: unknown } | null;
  if (!decoded || !Array.isArray(decoded.r) || (decoded.l !== undefined && !Array.isArray(decoded.l))) {
    throw new Error("socket.io-postgres-recovery: malformed stored session");
  }
  return { rooms: decoded.r as Array<[string, number]>, left: (decoded.l ?? []) as LeftRoom[], data: decoded.d };
}

/**
 * Offsets travel as `o<n>`. The prefix keeps a stray string argument (the
 * client takes the last string argument of *any* event as its offset, volatile
 * or local ones included) from passing for a position in the log.
 */
export function formatOffset(offset: number): string {
  return `o${offset}`;
}

const OFFSET = /^o(0|[1-9][0-9]{0,15})$/;

/** The offset as an integer, or undefined when it is not one we could have issued. */
export function parseOffset(value: unknown): number | undefined {
  if (typeof value !== "string") return undefined;
  const match = OFFSET.exec(value);
  if (!match) return undefined;
  const n = Number(match[1]);
  return Number.isSafeInteger(n) ? n : undefined;
}
