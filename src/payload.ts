/**
 * What a logged event carries: the arguments as a client decodes them.
 *
 * Socket.IO sends an event as its parser encodes it: with the default
 * socket.io-parser, JSON (`toJSON` applied, functions, `undefined` and
 * symbols left out of objects and turned into `null` in arrays, a Date as its
 * ISO string, NaN as null, a Map or Set as `{}`), with Buffers, typed arrays
 * and ArrayBuffers taken out as binary attachments. The log cannot store the
 * arguments as given (msgpack ignores `toJSON` and refuses functions), and
 * must not store them as raw fields either: a client on another node, or one
 * recovering, would then get other data than the emitting node's clients.
 *
 * So the arguments are normalised once, at emit: encoded with the server's
 * own parser encoder, as Socket.IO would encode them, and decoded back with
 * that parser's decoder, as a client would decode them. What comes out is
 * plain data (binary as Buffers), which the log stores (msgpack) and every
 * node, this one included, delivers. Using the server's parser, not a copy of its rules,
 * keeps the semantics those of the socket.io-parser version (or the custom
 * `parser`) the application runs.
 */
import type { Namespace } from "socket.io";
import { decodeLoggedPacket, encodePacket, type LoggedPacket } from "./codec.js";

/** EVENT in socket.io-parser's PacketType. */
const EVENT = 2;

/** The parts of a Socket.IO parser (`ServerOptions.parser`) used here. */
interface ParserEncoder {
  encode(packet: { type: number; nsp: string; data: unknown[] }): unknown[];
}

interface ParserDecoder {
  on(event: "decoded", listener: (packet: { data?: unknown }) => void): unknown;
  add(chunk: unknown): void;
  destroy?(): void;
}

interface ParserModule {
  Decoder: new (opts?: { maxAttachments?: number }) => ParserDecoder;
}

/** Where Socket.IO keeps its parser (`_parser` is private in its types; stable since 3.0). */
interface ServerParser {
  encoder: ParserEncoder;
  _parser: ParserModule;
}

/** A logged event ready for the log writer: what to deliver here, and the bytes to store. */
export interface PreparedPacket {
  readonly packet: LoggedPacket;
  readonly payload: Buffer;
}

/**
 * Normalises an event's `data` ([eventName, ...args]) and encodes it for the
 * log. `packet` is what this node delivers: the same value every other node
 * and every replay decodes from `payload`.
 */
export function prepareLoggedPacket(nsp: Namespace, data: readonly unknown[], rooms: string[], except: string[]): PreparedPacket {
  return preparePacket(normalizeEventData(nsp, data), rooms, except);
}

/** `prepareLoggedPacket` for data already normalised (see `normalizeWithParser`). */
export function preparePacket(
  { data: normalized, exactInMsgpack }: { data: unknown[]; exactInMsgpack: boolean },
  rooms: string[],
  except: string[],
): PreparedPacket {
  const packet: LoggedPacket = { data: normalized, rooms, except };
  const payload = encodePacket(packet);
  // Decoding the stored bytes back costs as much as encoding them: done only when they may differ.
  return { packet: exactInMsgpack ? packet : decodeLoggedPacket(payload), payload };
}

/**
 * `data` as a client of this server decodes it. `exactInMsgpack` tells whether
 * msgpack stores it unchanged: JSON values and Buffers are, except a lone
 * surrogate (JSON.stringify writes it as a `\udxxx` escape) in a string longer
 * than 50 characters, which msgpack's encoder turns into U+FFFD; and what a
 * custom parser decodes is not known. Throws what Socket.IO's own encoding
 * throws (a cycle, a BigInt), and on what a server cannot send synchronously
 * (a Blob).
 */
export function normalizeEventData(nsp: Namespace, data: readonly unknown[]): { data: unknown[]; exactInMsgpack: boolean } {
  const server = nsp.server as unknown as ServerParser;
  return normalizeWithParser({ encoder: server.encoder, Decoder: server._parser.Decoder }, data);
}

/** A Socket.IO parser's encoder and decoder: the server's, or the emitter's (`createEmitter`'s `parser`). */
export interface EventParser {
  encoder: ParserEncoder;
  Decoder: ParserModule["Decoder"];
}

/** `normalizeEventData` with a given parser (the emitter has no server). */
export function normalizeWithParser(parser: EventParser, data: readonly unknown[]): { data: unknown[]; exactInMsgpack: boolean } {
  let encoded: unknown[];
  try {
    // Namespace "/": a namespace name is not part of the data, and one holding a "," would not parse back.
    encoded = parser.encoder.encode({ type: EVENT, nsp: "/", data: [...data] });
  } catch (err) {
    // Socket.IO's encoder walks the arguments recursively: a cycle overflows the stack before JSON.stringify sees it.
    if (err instanceof RangeError) throw new Error("Socket.IO cannot encode them: a cycle, or nesting too deep", { cause: err });
    throw err;
  }
  // No attachment limit: that is the receiving client's concern, the in-memory adapter sends them all.
  const decoder = new parser.Decoder({ maxAttachments: Infinity });
  let decoded: { data?: unknown } | undefined;
  decoder.on("decoded", (packet) => {
    decoded = packet;
  });
  try {
    for (const chunk of encoded) decoder.add(typeof chunk === "string" ? chunk : copyOfBinary(chunk));
  } finally {
    decoder.destroy?.();
  }
  if (!decoded || !Array.isArray(decoded.data)) {
    throw new Error("the Socket.IO parser did not decode the event back to an array in one go");
  }
  const json = encoded[0];
  const exactInMsgpack = typeof json === "string" && !json.includes("\\ud");
  return { data: decoded.data as unknown[], exactInMsgpack };
}

/**
 * A binary attachment as a Node client receives it: a Buffer with the same
 * bytes, copied, since the application may reuse its buffer once emit()
 * returns and this node delivers only after the log write.
 */
function copyOfBinary(chunk: unknown): Buffer {
  if (chunk instanceof ArrayBuffer) return Buffer.from(new Uint8Array(chunk));
  if (ArrayBuffer.isView(chunk)) return Buffer.from(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
  const what = chunk instanceof Blob ? "a Blob (its bytes cannot be read synchronously)" : Object.prototype.toString.call(chunk);
  throw new Error(`an argument holds ${what}; logged events take Buffers, typed arrays and ArrayBuffers`);
}
