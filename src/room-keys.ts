/**
 * Room keys: what `log_entries.room_keys` holds for an entry, and what a
 * restore reading the table matches them against (docs/design.md, "Reading
 * only the candidates").
 *
 * A room's key is the first 8 bytes of the MD5 of its name (as UTF-8), read as
 * a signed 64-bit integer: in SQL, `('x' || left(md5(name), 16))::bit(64)::bigint`
 * on a UTF-8 database, so an operator can look entries up by room. Keys rather
 * than names: any JS string has one (a name holding U+0000, or characters the
 * database's encoding lacks, could not be stored as text, and the append would
 * fail), and two names sharing a key only bring back one entry more, which the
 * replay filter (replay.ts) then drops: the SQL filter only has to keep every
 * entry that may be addressed to the socket, never to be exact.
 */
import { createHash } from "node:crypto";

/** Rooms repeat (a socket's own room, a chat room): their keys are kept, up to this many. */
const CACHE_LIMIT = 10_000;
const cache = new Map<string, string>();

/** The key of `room` as decimal text (int8 does not fit a JS number). */
export function roomKey(room: string): string {
  const name = String(room);
  let key = cache.get(name);
  if (key === undefined) {
    const digest = createHash("md5").update(name, "utf8").digest();
    key = digest.readBigInt64BE(0).toString();
    if (cache.size >= CACHE_LIMIT) cache.clear();
    cache.set(name, key);
  }
  return key;
}

/**
 * An entry's keys, or null when it is addressed to every socket (no rooms:
 * except-rooms only narrow it, and the replay filter applies them).
 */
export function entryRoomKeys(rooms: readonly string[]): string[] | null {
  if (rooms.length === 0) return null;
  return rooms.map(roomKey);
}

/**
 * A batch's keys as an append sends them: every key in one int8[] and, per
 * entry, where its keys start in it (1-based) and how many there are (0:
 * NULL). One flat array costs Postgres one array to parse per statement,
 * where one array literal per entry cost a fifth of a 100-entry append's
 * throughput (bench/probes/append-keys-ab.ts).
 */
export interface FlatRoomKeys {
  readonly keys: string[];
  readonly starts: number[];
  readonly counts: number[];
}

export function flattenRoomKeys(perEntry: ReadonlyArray<readonly string[] | null>): FlatRoomKeys {
  const keys: string[] = [];
  const starts: number[] = [];
  const counts: number[] = [];
  for (const entry of perEntry) {
    starts.push(keys.length + 1);
    counts.push(entry?.length ?? 0);
    if (entry) keys.push(...entry);
  }
  return { keys, starts, counts };
}

/** The keys of every room a restored socket may have received entries through (its rooms, and those it left). */
export function memberRoomKeys(rooms: Iterable<string>): string[] {
  const keys = new Set<string>();
  for (const room of rooms) keys.add(roomKey(room));
  return [...keys];
}
