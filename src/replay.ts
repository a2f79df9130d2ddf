/**
 * Which log entries a restored socket gets: exactly those it would have
 * received live. A socket receives an entry when, at the moment its node
 * delivered it, the socket was in one of the entry's rooms (or, for an entry
 * to everyone, in the namespace) and in none of its except-rooms. Each room
 * of a session carries the cursor at which it was joined: entries after that
 * cursor were delivered while the socket was in the room.
 */
import type { LeftRoom, LogEntry } from "./codec.js";
import { holeSize, type Hole } from "./log-gaps.js";

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
export function refuseRange(offset: number, upTo: number, limits: ReplayLimits, holes: readonly Hole[] = []): string | undefined {
  // Offsets are dense but for recorded gaps (log-gaps.ts), which hold nothing.
  const entries = upTo - offset - holeSize(holes);
  if (entries > limits.maxReplayEntries) {
    return `${entries} entries to replay exceed maxReplayEntries (${limits.maxReplayEntries})`;
  }
  return undefined;
}

export type ReplayPlan =
  | { readonly refused: string }
  | { readonly refused?: undefined; readonly entries: LogEntry[]; readonly lastReplayed: number };

/**
 * What the node that served the socket knew when it wrote the session at the
 * disconnect. Undefined after a crash: nothing was written then.
 */
export interface SessionEnd {
  /** Offset of the last entry written to the socket: its client processed at most that far. */
  readonly lastDelivered: number;
  /**
   * That node's delivery cursor at the disconnect (>= lastDelivered). Each
   * entry in (lastDelivered, cursor] was delivered by that node while the
   * socket was connected and not written to it: it was not addressed to it.
   */
  readonly cursor: number;
}

/**
 * The cursor of the socket's last room change (join or leave, its own room
 * included): a node whose cursor is there delivers live to the session's
 * rooms what the membership says reaches the socket (see Restorer).
 */
export function lastRoomChange(member: Membership): number {
  let last = Number.NEGATIVE_INFINITY;
  for (const at of member.joinedAt.values()) last = Math.max(last, at);
  for (const [, , leftAt] of member.left ?? []) last = Math.max(last, leftAt);
  return last;
}

/**
 * The entries to replay, out of `entries` = the log's (offset, upTo] as still
 * stored (dense, in order).
 *
 * Every entry the replay may need must still be stored; a missing offset
 * (offsets are dense) means it was pruned, and the restore is refused rather
 * than replaying less. Needed are all of (offset, upTo] except the entries
 * known not to be addressed to the socket, (lastDelivered, cursor]:
 * - (offset, lastDelivered]: written to the socket, maybe not processed;
 * - (cursor, upTo]: delivered after the disconnect, while the client was
 *   away: any of them may be addressed to it. Only the node that wrote the
 *   session knows which, so a missing one cannot be judged harmless (a node
 *   with a shorter retention pruning them used to make the restore replay
 *   less under `recovered === true`).
 * After a crash (`end` undefined) nothing is known about the range: all of it
 * is needed. `holes` are recorded gaps (log-gaps.ts): no entry is there.
 *
 * `density`: when `entries` are only the candidates of a table read (the
 * entries that may be addressed to the socket), their offsets cannot prove
 * the range dense; the read counted the needed intervals instead
 * (`neededIntervals`) and `density.missing` is the first needed offset it
 * found absent, or undefined when none is.
 */
export function planReplay(
  entries: readonly LogEntry[],
  offset: number,
  upTo: number,
  end: SessionEnd | undefined,
  member: Membership,
  limits: ReplayLimits,
  holes: readonly Hole[] = [],
  density?: { readonly missing: number | undefined },
): ReplayPlan {
  const bytes = entries.reduce((sum, entry) => sum + entry.bytes, 0);
  if (bytes > limits.maxReplayBytes) {
    return { refused: `${bytes} bytes to replay exceed maxReplayBytes (${limits.maxReplayBytes})` };
  }
  const missing = density ? density.missing : firstMissing(entries, offset, upTo, end, holes);
  if (missing !== undefined) {
    return { refused: `entry ${missing}, which the replay after offset ${offset} needs, was pruned (retention too short for this session?)` };
  }
  const replayed = entries.filter((entry) => isAddressedTo(entry, member));
  return { entries: replayed, lastReplayed: replayed.at(-1)?.offset ?? offset };
}

/**
 * The offsets of (offset, upTo] that the replay needs (see `planReplay`), as
 * intervals (after, through], in order: the range without the window known
 * not to be addressed, (lastDelivered, cursor], and without the holes.
 * Every one of them must hold an entry.
 */
export function neededIntervals(
  offset: number,
  upTo: number,
  end: SessionEnd | undefined,
  holes: readonly Hole[] = [],
): Array<[after: number, through: number]> {
  let intervals: Array<[number, number]> = upTo > offset ? [[offset, upTo]] : [];
  const cut = (after: number, through: number): void => {
    const next: Array<[number, number]> = [];
    for (const [a, t] of intervals) {
      if (through <= a || after >= t) {
        next.push([a, t]);
        continue;
      }
      if (after > a) next.push([a, after]);
      if (through < t) next.push([through, t]);
    }
    intervals = next;
  };
  if (end !== undefined && end.cursor > end.lastDelivered) cut(end.lastDelivered, end.cursor);
  for (const [after, through] of holes) if (through > after) cut(after, through);
  return intervals;
}

/** The first offset in (offset, upTo] that the replay needs and `entries` lacks, or undefined. */
export function firstMissing(
  entries: readonly LogEntry[],
  offset: number,
  upTo: number,
  end: SessionEnd | undefined,
  holes: readonly Hole[] = [],
): number | undefined {
  // The first needed offset in [from, to), skipping the window known not to be addressed
  // and the holes (recorded gaps: offsets that hold nothing).
  const firstNeeded = (from: number, to: number): number | undefined => {
    let n = from;
    for (;;) {
      const before = n;
      if (end !== undefined && n > end.lastDelivered && n <= end.cursor) n = end.cursor + 1;
      for (const [after, through] of holes) if (n > after && n <= through) n = through + 1;
      if (n === before) break;
    }
    return n < to ? n : undefined;
  };
  let expected = offset + 1;
  for (const entry of entries) {
    if (entry.offset < expected || entry.offset > upTo) continue;
    const missing = firstNeeded(expected, entry.offset);
    if (missing !== undefined) return missing;
    expected = entry.offset + 1;
  }
  return firstNeeded(expected, upTo + 1);
}
