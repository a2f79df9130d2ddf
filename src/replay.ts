/**
 * Which log entries a restored socket gets: exactly those it would have
 * received live. A socket receives an entry when, at the moment its node
 * delivered it, the socket was in one of the entry's rooms (or, for an entry
 * to everyone, in the namespace) and in none of its except-rooms. Each room
 * of a session carries the cursor at which it was joined: entries after that
 * cursor were delivered while the socket was in the room.
 */
import type { LogEntry } from "./codec.js";

export interface Membership {
  /** Room → offset of the node's cursor when the socket joined it. */
  readonly joinedAt: ReadonlyMap<string, number>;
  /** Cursor when the socket entered the namespace (for entries to everyone). */
  readonly memberSince: number;
}

export function isAddressedTo(entry: LogEntry, member: Membership): boolean {
  for (const room of entry.except) {
    const at = member.joinedAt.get(room);
    if (at !== undefined && at < entry.offset) return false;
  }
  if (entry.rooms.length === 0) return member.memberSince < entry.offset;
  for (const room of entry.rooms) {
    const at = member.joinedAt.get(room);
    if (at !== undefined && at < entry.offset) return true;
  }
  return false;
}
