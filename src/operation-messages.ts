/**
 * Room and disconnect operations on the cluster bus (SOCKETS_JOIN,
 * SOCKETS_LEAVE, DISCONNECT_SOCKETS), in upstream's wire format plus one
 * field upstream ignores: `data.afterOffset`, the cursor of the issuing node
 * when it applied the operation. A node of this package applies it when its
 * own cursor reaches that offset (see program-order.ts); an upstream node, or
 * a message without the field (`@socket.io/postgres-emitter`), applies at once.
 */
import { MessageType, type BroadcastOptions, type ClusterMessage } from "socket.io-adapter";

type Operation = Extract<ClusterMessage, { type: MessageType.SOCKETS_JOIN | MessageType.SOCKETS_LEAVE | MessageType.DISCONNECT_SOCKETS }>;

/** An operation as the adapter publishes it (`uid` and `nsp` are added by `publishAndReturnOffset`). */
export type OperationMessage = Operation extends infer T ? (T extends unknown ? Omit<T, "uid" | "nsp"> : never) : never;

/** An operation received with the offset it follows. */
export type OrderedOperation = Operation & { data: { afterOffset: number } };

const OPERATIONS = new Set<number>([MessageType.SOCKETS_JOIN, MessageType.SOCKETS_LEAVE, MessageType.DISCONNECT_SOCKETS]);

/** Upstream's encodeOptions (not exported): sets become arrays for JSON. */
export function encodeOptions(opts: BroadcastOptions): Operation["data"]["opts"] {
  return { rooms: [...opts.rooms], except: [...(opts.except ?? [])], flags: opts.flags ?? {} };
}

/** The message with the offset it follows, when there is one. */
export function orderedOperation(message: OperationMessage, afterOffset: number | undefined): OperationMessage {
  if (afterOffset === undefined) return message;
  // A copy with one more field in `data` (the type has no room for it: upstream ignores it).
  const data: object = Object.assign({}, message.data, { afterOffset });
  return Object.assign({}, message, { data }) as typeof message;
}

export function isOrderedOperation(message: { type: number; data?: unknown }): message is OrderedOperation {
  if (!OPERATIONS.has(message.type)) return false;
  const data = message.data as { afterOffset?: unknown } | undefined;
  const after = data?.afterOffset;
  return typeof after === "number" && Number.isSafeInteger(after) && after >= 0;
}
