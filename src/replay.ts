/**
 * Which log entries a restored socket gets: exactly those it would have
 * received live. A socket receives an entry when, at the moment its node
 * delivered it, the socket was in one of the entry's rooms (or, for an entry
 * to everyone, in the namespace) and in none of its except-rooms. Each room
 * of a session carries the cursor at which it was joined: entries after that
 * cursor were delivered while the socket was in the room.
 */
import type { LeftRoom, LogEntry } from "./codec.js";

export interface Membership {
  /** Room → offset of the node's cursor when the socket joined it. */
  readonly joinedAt: ReadonlyMap<string, number>;
  /**
   * Rooms it was in and left: entries in (joinedAt, leftAt] reached it
   * through them (or were kept from it, for an except-room).
   */
  readonly left?: ReadonlyArray<LeftRoom>;
  /** Cursor when the socket entered the namespace (for entries to everyone). */
  readonly memberSince: number;
}

/** Whether the socket was in `room` when the entry at `offset` was delivered. */
function wasIn(member: Membership, room: string, offset: number): boolean {
  const at = member.joinedAt.get(room);
  if (at !== undefined && at < offset) return true;
  if (member.left) {
    for (const [r, joined, leftAt] of member.left) if (r === room && joined < offset && offset <= leftAt) return true;
  }
  return false;
}

export function isAddressedTo(entry: LogEntry, member: Membership): boolean {
  for (const room of entry.except) if (wasIn(member, room, entry.offset)) return false;
  if (entry.rooms.length === 0) return member.memberSince < entry.offset;
  for (const room of entry.rooms) if (wasIn(member, room, entry.offset)) return true;
  return false;
}

export interface ReplayLimits {
  readonly maxReplayEntries: number;
  readonly maxReplayBytes: number;
}

/** Why a replay of (offset, upTo] is refused before reading it, or undefined. */
export function refuseRange(offset: number, upTo: number, limits: ReplayLimits): string | undefined {
  if (upTo - offset > limits.maxReplayEntries) {
    return `${upTo - offset} entries to replay exceed maxReplayEntries (${limits.maxReplayEntries})`;
  }
  return undefined;
}

export type ReplayPlan =
  | { readonly refused: string }
  | { readonly refused?: undefined; readonly entries: LogEntry[]; readonly lastReplayed: number };

/**
 * The entries to replay, out of `entries` = the log's (offset, upTo] as still
 * stored (dense, in order). `lastDelivered` is the last offset written to the
 * socket before it disconnected.
 */
export function planReplay(
  entries: readonly LogEntry[],
  offset: number,
  upTo: number,
  lastDelivered: number,
  member: Membership,
  limits: ReplayLimits,
): ReplayPlan {
  const bytes = entries.reduce((sum, entry) => sum + entry.bytes, 0);
  if (bytes > limits.maxReplayBytes) {
    return { refused: `${bytes} bytes to replay exceed maxReplayBytes (${limits.maxReplayBytes})` };
  }
  // Entries written to the socket that its client had not processed, (offset, lastDelivered], must
  // all still be in the log. Offsets are dense, so a missing one means it was pruned: the
  // retention did not cover the time this dead connection went unnoticed. Older entries may be
  // gone (an idle client), but never these.
  const mustHave = Math.min(lastDelivered, upTo);
  const present = entries.filter((entry) => entry.offset <= mustHave).length;
  if (mustHave > offset && present !== mustHave - offset) {
    return { refused: `entries written to the socket after offset ${offset} were pruned (retentionMarginMs too short?)` };
  }
  const replayed = entries.filter((entry) => isAddressedTo(entry, member));
  return { entries: replayed, lastReplayed: replayed.at(-1)?.offset ?? offset };
}
