/**
 * A stored session as an operator may see it: where and what, never the
 * private id (pid) nor its hash. `socket.data` is shown by size only: it is
 * the application's, and may hold anything.
 */
import type pg from "pg";
import { decodeSession, encodedByteLength } from "./codec.js";
import { requireMigratedSchema } from "./schema-ready.js";
import { InspectQueries, type StoredSessionRow } from "./sql/inspect-queries.js";

export interface InspectOptions {
  /** @default "socket_io" */
  schema?: string;
  /** Only sessions of this namespace. */
  namespace?: string;
}

export interface SessionRoom {
  readonly room: string;
  /** The node's log cursor when the socket joined the room: entries after it are replayed to the room. */
  readonly joinedAtOffset: number;
}

export interface StoredSessionInfo {
  readonly namespace: string;
  /** The socket id (public: clients and servers see it). */
  readonly sid: string;
  readonly rooms: readonly SessionRoom[];
  /** The lowest offset the client may present. */
  readonly floorOffset: number;
  /** The delivery cursor at disconnection: the replay starts after it. */
  readonly lastOffset: number;
  readonly disconnectedAt: string;
  readonly expiresAt: string;
  /** False once past expiry: restoring it will be refused, pruning will remove it. */
  readonly live: boolean;
  /** expiresAt - now() by the database clock, negative once expired. */
  readonly expiresInMs: number;
  /** Bytes of `socket.data`, encoded as stored. */
  readonly dataBytes: number;
  /** Bytes of the whole stored payload (rooms and data). */
  readonly payloadBytes: number;
}

function toInfo(row: StoredSessionRow): StoredSessionInfo {
  const payload = decodeSession(row.payload);
  return {
    namespace: row.namespace,
    sid: row.sid,
    rooms: payload.rooms.map(([room, joinedAt]) => ({ room, joinedAtOffset: joinedAt })),
    floorOffset: Number(row.floor_offset),
    lastOffset: Number(row.last_offset),
    disconnectedAt: row.disconnected_at.toISOString(),
    expiresAt: row.expires_at.toISOString(),
    live: row.live,
    expiresInMs: Number(row.expires_in_ms),
    dataBytes: encodedByteLength(payload.data),
    payloadBytes: row.payload.byteLength,
  };
}

/**
 * The sessions stored under socket id `sid` (normally one; several only if
 * the same id was stored in several namespaces), newest first; empty when
 * there is none. Throws `SchemaNotReadyError` when the schema is not migrated.
 */
export async function inspectSessions(pool: pg.Pool, sid: string, options: InspectOptions = {}): Promise<StoredSessionInfo[]> {
  const { schema } = await requireMigratedSchema(pool, options.schema);
  const rows = await new InspectQueries(schema).sessionsBySid(pool, sid, options.namespace);
  return rows.map(toInfo);
}
