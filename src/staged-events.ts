/**
 * Moving committed staged events into the log (see sql/staging-queries.ts).
 * Shared by the nodes (which move what they are notified of) and the
 * emitter (whose direct emits move what is staged before them, so that one
 * emitter's events stay in program order).
 */
import type { Pool } from "pg";
import { decodeLoggedPacket, encodePacket, inlineForNotify, type LogEntry, type LoggedPacket } from "./codec.js";
import type { Queryable } from "./sql/bounded-queries.js";
import { beginLockingTransaction, timedClient, type StagedRow, type StagingQueries } from "./sql/staging-queries.js";
import { entryRoomKeys } from "./room-keys.js";
import { guardCheckedOut } from "./sql/guard-client.js";

/** What one move did, under the namespace's lock, in the caller's transaction. */
export interface MovedBatch {
  /** The entries appended, in offset order (empty when nothing was staged). */
  readonly entries: LogEntry[];
  /** Rows taken: when it equals the limit, more may be waiting. */
  readonly taken: number;
  /** Rows that could not be logged (deleted all the same, each with the reason). */
  readonly refused: Error[];
}

export interface MoveSettings {
  readonly limit: number;
  readonly maxEntryBytes: number;
  readonly logChannel: string;
  readonly payloadThreshold: number;
}

/**
 * Takes the namespace's committed staged rows (at most `limit`, oldest first)
 * and appends them to its log, inside the caller's transaction, which must
 * already hold the namespace's row lock (`StagingQueries.lockNamespace`).
 */
export async function moveStagedLocked(
  db: Queryable,
  staging: StagingQueries,
  namespace: { id: number; name: string },
  settings: MoveSettings,
): Promise<MovedBatch> {
  const rows = await staging.take(db, namespace.name, settings.limit);
  const accepted: Array<{ packet: LoggedPacket; payload: Buffer }> = [];
  const refused: Error[] = [];
  for (const row of rows) {
    try {
      const entry = loggable(row);
      if (entry.payload.length > settings.maxEntryBytes) {
        throw new Error(`${entry.payload.length} bytes exceed maxEntryBytes (${settings.maxEntryBytes})`);
      }
      accepted.push(entry);
    } catch (err) {
      refused.push(
        new Error(`socket.io-postgres-recovery: staged event ${row.id} of "${namespace.name}" was not logged nor delivered`, { cause: err }),
      );
    }
  }
  if (accepted.length === 0) return { entries: [], taken: rows.length, refused };
  const payloads = accepted.map((e) => e.payload);
  const roomKeys = accepted.map((e) => entryRoomKeys(e.packet.rooms));
  const from = await staging.append(db, namespace.id, payloads, settings.logChannel, inlineForNotify(payloads, settings.payloadThreshold), roomKeys);
  return {
    entries: accepted.map((e, i) => ({ offset: from + i, bytes: e.payload.length, ...e.packet })),
    taken: rows.length,
    refused,
  };
}

/**
 * One move as its own transaction on a connection of `pool`: lock, take,
 * append, commit. Nothing happens when the namespace has no row. A failure
 * rolls back (the rows stay staged) and rejects; the connection is then
 * discarded, as its state is unknown.
 */
export async function moveStaged(
  pool: Pool,
  staging: StagingQueries,
  name: string,
  settings: MoveSettings & { queryTimeoutMs: number | undefined },
): Promise<MovedBatch & { namespaceId: number | undefined }> {
  const client = await pool.connect();
  const unguard = guardCheckedOut(client);
  const db = timedClient(client, settings.queryTimeoutMs);
  let failure: unknown;
  try {
    // Most notifications find nothing (another node moved it first): a look costs less than a transaction.
    if (!(await staging.hasStaged(db, name))) return { entries: [], taken: 0, refused: [], namespaceId: undefined };
    await beginLockingTransaction(db);
    const id = await staging.lockNamespace(db, name);
    if (id === undefined) {
      await db.query("ROLLBACK");
      return { entries: [], taken: 0, refused: [], namespaceId: undefined };
    }
    const moved = await moveStagedLocked(db, staging, { id, name }, settings);
    await db.query("COMMIT");
    return { ...moved, namespaceId: id };
  } catch (err) {
    failure = err;
    throw err;
  } finally {
    const lost = unguard();
    client.release(failure === undefined ? lost : failure instanceof Error ? failure : new Error(String(failure)));
  }
}

/** The row as a log payload and the packet every node delivers; throws what makes it unloggable. */
function loggable(row: StagedRow): { packet: LoggedPacket; payload: Buffer } {
  if (row.payload !== null) {
    // Written by createEmitter, already normalised and encoded; decoded to check it and for local delivery.
    return { packet: decodeLoggedPacket(row.payload, "a staged event"), payload: row.payload };
  }
  const packet = row.packet;
  if (
    !Array.isArray(packet) ||
    packet.length !== 3 ||
    !Array.isArray(packet[0]) ||
    typeof packet[0][0] !== "string" ||
    !isStringArray(packet[1]) ||
    !isStringArray(packet[2])
  ) {
    throw new Error("its packet is not [[event, ...args], rooms, except_rooms]");
  }
  // JSON from jsonb is what a client decodes already (no binary, no toJSON): stored as it is.
  const logged: LoggedPacket = { data: packet[0] as unknown[], rooms: packet[1], except: packet[2] };
  return { packet: logged, payload: encodePacket(logged) };
}

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === "string");
}
