/**
 * The most recently delivered entries of one namespace, consecutive by
 * offset, in a fixed-size ring. Serves restores on this node without a query,
 * and the entries delivered between a restore's read and the moment the
 * socket joins its rooms.
 *
 * Bounded in entries and in bytes: the newest entries are kept while their
 * total stays within `maxBytes` (the newest one always). The adapter passes
 * `maxReplayBytes`: a restore needing more is refused anyway, so holding more
 * would only cost memory (entries may be large, and clients may make them so).
 */
import type { LogEntry } from "./codec.js";

export class RecentEntries {
  private readonly slots: Array<LogEntry | undefined>;
  /** Offset of the oldest entry held, and how many are held. */
  private first = 0;
  private size = 0;
  /** Total `bytes` of the entries held. */
  private bytes = 0;

  constructor(
    private readonly capacity: number,
    private readonly maxBytes = Infinity,
  ) {
    this.slots = new Array<LogEntry | undefined>(capacity);
  }

  push(entry: LogEntry): void {
    if (this.capacity === 0) return;
    if (this.size > 0 && entry.offset !== this.first + this.size) this.clear();
    if (this.size === 0) this.first = entry.offset;
    if (this.size === this.capacity) this.evictOldest(); // its slot is the one the new entry takes
    this.slots[entry.offset % this.capacity] = entry;
    this.size++;
    this.bytes += entry.bytes;
    while (this.bytes > this.maxBytes && this.size > 1) this.evictOldest();
  }

  clear(): void {
    this.size = 0;
    this.bytes = 0;
    this.slots.fill(undefined);
  }

  private evictOldest(): void {
    const slot = this.first % this.capacity;
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
      const entry = this.slots[offset % this.capacity];
      if (!entry || entry.offset !== offset) return undefined;
      out.push(entry);
    }
    return out;
  }
}
