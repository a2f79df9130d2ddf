/**
 * The most recently delivered entries of one namespace, consecutive by
 * offset, in a fixed-size ring. Serves restores on this node without a query,
 * and the entries delivered between a restore's read and the moment the
 * socket joins its rooms.
 */
import type { LogEntry } from "./codec.js";

export class RecentEntries {
  private readonly slots: Array<LogEntry | undefined>;
  /** Offset of the oldest entry held, and how many are held. */
  private first = 0;
  private size = 0;

  constructor(private readonly capacity: number) {
    this.slots = new Array<LogEntry | undefined>(capacity);
  }

  push(entry: LogEntry): void {
    if (this.capacity === 0) return;
    if (this.size > 0 && entry.offset !== this.first + this.size) this.clear();
    if (this.size === 0) this.first = entry.offset;
    this.slots[entry.offset % this.capacity] = entry;
    if (this.size < this.capacity) this.size++;
    else this.first++;
  }

  clear(): void {
    this.size = 0;
    this.slots.fill(undefined);
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
