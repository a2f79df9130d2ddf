/**
 * The most recently delivered entries of one namespace, consecutive by
 * offset, in a fixed-size ring. Serves restores on this node without a query
 * (only that: stitching a replay to live delivery does not use it, see stitch.ts).
 *
 * Bounded in entries and in bytes: the newest entries are kept while their
 * total stays within `maxBytes` (the newest one always). The adapter passes
 * `maxReplayBytes`: a restore needing more is refused anyway, so holding more
 * would only cost memory (entries may be large, and clients may make them so).
 *
 * Its slots grow on demand (doubling, up to `capacity`) and shrink back when
 * it is cleared: a node may have thousands of dynamic namespaces, most of
 * them quiet, and 10,000 preallocated slots are about 80 KB each.
 */
import type { LogEntry } from "./codec.js";

/** Slots of an empty ring; it doubles from there as entries come. */
const INITIAL_SLOTS = 16;

export class RecentEntries {
  /** Entry of offset o is at `o % slots.length`; the length is at most `capacity`. */
  private slots: Array<LogEntry | undefined>;
  /** Offset of the oldest entry held, and how many are held. */
  private first = 0;
  private size = 0;
  /** Total `bytes` of the entries held. */
  private bytes = 0;

  constructor(
    private readonly capacity: number,
    private readonly maxBytes = Infinity,
  ) {
    this.slots = new Array<LogEntry | undefined>(Math.min(capacity, INITIAL_SLOTS)).fill(undefined);
  }

  /** Slots allocated now (memory: one pointer each); at most `capacity`. */
  get allocatedSlots(): number {
    return this.slots.length;
  }

  push(entry: LogEntry): void {
    if (this.capacity === 0) return;
    if (this.size > 0 && entry.offset !== this.first + this.size) this.clear();
    if (this.size === 0) this.first = entry.offset;
    if (this.size === this.slots.length) {
      if (this.slots.length < this.capacity) this.grow();
      else this.evictOldest(); // its slot is the one the new entry takes
    }
    this.slots[entry.offset % this.slots.length] = entry;
    this.size++;
    this.bytes += entry.bytes;
    while (this.bytes > this.maxBytes && this.size > 1) this.evictOldest();
  }

  clear(): void {
    this.size = 0;
    this.bytes = 0;
    this.slots = new Array<LogEntry | undefined>(Math.min(this.capacity, INITIAL_SLOTS)).fill(undefined);
  }

  /** Doubles the slots (up to `capacity`), placing each held entry at its new index. */
  private grow(): void {
    const slots = new Array<LogEntry | undefined>(Math.min(this.capacity, this.slots.length * 2)).fill(undefined);
    for (let offset = this.first; offset < this.first + this.size; offset++) {
      slots[offset % slots.length] = this.slots[offset % this.slots.length];
    }
    this.slots = slots;
  }

  private evictOldest(): void {
    const slot = this.first % this.slots.length;
    this.bytes -= this.slots[slot]?.bytes ?? 0;
    this.slots[slot] = undefined;
    this.first++;
    this.size--;
  }

  /** Entries in (after, upTo], or undefined when some of them are not held. */
  range(after: number, upTo: number): LogEntry[] | undefined {
    if (upTo <= after) return [];
    const last = this.first + this.size - 1;
    if (this.size === 0 || after + 1 < this.first || upTo > last) return undefined;
    const out: LogEntry[] = [];
    for (let offset = after + 1; offset <= upTo; offset++) {
      const entry = this.slots[offset % this.slots.length];
      if (!entry || entry.offset !== offset) return undefined;
      out.push(entry);
    }
    return out;
  }
}
