/**
 * Gaps in a namespace's offsets, and what they mean for restores.
 *
 * A gap (after, through] is a range the head jumped over when the database
 * turned out to be another incarnation than the one that last wrote the log
 * (Postgres restarted, a replica promoted, an older copy of the data put
 * back): no entry of the current history is, or will ever be, at those
 * offsets. A failover with asynchronous replication can lose the last
 * commits; their offsets all lie inside the gap that follows, so they are
 * never handed to other events. A gap is `lost` once there is evidence that
 * entries inside it were committed and delivered: a node's cursor, or a
 * client's offset, lay inside it.
 *
 * The rules for a restore from `offset` whose replay would cover (offset, upTo]:
 * - `offset` inside a gap: refused. The client holds an entry the database
 *   lost; another event may never take its offset, and nothing can be
 *   replayed after it.
 * - a lost gap inside (offset, upTo]: refused. The client was away while
 *   entries now lost were delivered to others: it would miss them.
 * - a gap not known lost while some live node has not reconciled with the
 *   current database (`nodes.reconciled_incarnation`): refused too. That
 *   node may have delivered entries inside it and not said so yet (it does
 *   once its LISTEN connection is back).
 * - otherwise the gap holds nothing anyone delivered: the replay skips it
 *   (a plain restart of Postgres leaves such a gap).
 * See docs/design.md, "Failover: commits the database lost".
 */
import type { LogGap } from "./sql/log-queries.js";

export type { LogGap };

/** Offsets a replay may skip: (after, through] ranges that hold nothing. */
export type Hole = readonly [after: number, through: number];

export class LogGaps {
  private gaps: LogGap[] = [];

  /** Replaces what is known with a fresh read of the table. */
  set(gaps: readonly LogGap[]): void {
    this.gaps = [...gaps].sort((a, b) => a.after - b.after);
  }

  get all(): readonly LogGap[] {
    return this.gaps;
  }

  /**
   * The gap `offset` lies strictly inside, if any: an offset of an entry
   * the database lost. Not its ends: a cursor stands there before and after
   * stepping over the gap, and priming hands that cursor to clients.
   */
  containing(offset: number): LogGap | undefined {
    return this.gaps.find((g) => g.after < offset && offset < g.through);
  }

  /** Gaps that share an offset with (after, upTo]. */
  overlapping(after: number, upTo: number): LogGap[] {
    return this.gaps.filter((g) => g.after < upTo && g.through > after);
  }

  /**
   * Why a restore from `offset` replaying up to `upTo` is refused because of
   * the gaps, or undefined (the gaps of (offset, upTo] are then holes to skip).
   */
  refusal(offset: number, upTo: number, settled: boolean): string | undefined {
    const inside = this.containing(offset);
    if (inside) {
      return `offset ${offset} lies in (${inside.after}, ${inside.through}], a range of the log the database lost (a failover or an older copy of its data)`;
    }
    for (const g of this.overlapping(offset, upTo)) {
      if (g.lost) {
        return `the replay after offset ${offset} would cross (${g.after}, ${g.through}], entries the database lost (a failover or an older copy of its data)`;
      }
      if (!settled) {
        return `the replay after offset ${offset} would cross (${g.after}, ${g.through}], skipped after the database restarted or failed over; some live node has not yet said whether it delivered entries there`;
      }
    }
    return undefined;
  }

  /** The holes of (after, upTo] (gaps clipped to the range). */
  holes(after: number, upTo: number): Hole[] {
    return this.overlapping(after, upTo).map((g) => [Math.max(g.after, after), Math.min(g.through, upTo)] as const);
  }
}

/**
 * The end of the run of gaps that covers (after, end], or undefined when
 * some offset of it lies in no gap.
 */
export function coveredThrough(gaps: readonly LogGap[], after: number, end: number): number | undefined {
  let pos = after;
  while (pos < end) {
    const g = gaps.find((gap) => gap.after <= pos && pos < gap.through);
    if (!g) return undefined;
    pos = g.through;
  }
  return pos;
}

/** How many offsets of (after, upTo] the holes cover. */
export function holeSize(holes: readonly Hole[]): number {
  let total = 0;
  for (const [a, t] of holes) total += Math.max(0, t - a);
  return total;
}
