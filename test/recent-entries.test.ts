/** The in-memory ring of delivered entries, bounded in entries and in bytes (no database: the ring alone). */
import { describe, expect, it } from "vitest";
import type { LogEntry } from "../src/codec.js";
import { RecentEntries } from "../src/recent-entries.js";

function entry(offset: number, bytes: number): LogEntry {
  return { offset, bytes, data: ["ev"], rooms: [], except: [] };
}

const offsets = (entries: LogEntry[] | undefined) => entries?.map((e) => e.offset);

describe("RecentEntries", () => {
  it("keeps the newest entries within maxBytes, and always the newest one", () => {
    const ring = new RecentEntries(100, 1000);
    for (let offset = 1; offset <= 10; offset++) ring.push(entry(offset, 300));
    // 3 entries = 900 bytes fit; a fourth would make 1200.
    expect(offsets(ring.range(7, 10))).toEqual([8, 9, 10]);
    expect(ring.range(6, 10)).toBeUndefined();
    ring.push(entry(11, 5000)); // alone over the budget: kept, the others go
    expect(offsets(ring.range(10, 11))).toEqual([11]);
    expect(ring.range(9, 11)).toBeUndefined();
    ring.push(entry(12, 10));
    expect(offsets(ring.range(11, 12))).toEqual([12]);
  });

  it("keeps at most `capacity` entries, whatever their size", () => {
    const ring = new RecentEntries(3);
    for (let offset = 1; offset <= 5; offset++) ring.push(entry(offset, 1));
    expect(offsets(ring.range(2, 5))).toEqual([3, 4, 5]);
    expect(ring.range(1, 5)).toBeUndefined();
    // A gap (entries skipped) starts over.
    ring.push(entry(8, 1));
    expect(ring.range(4, 8)).toBeUndefined();
    expect(offsets(ring.range(7, 8))).toEqual([8]);
  });

  it("counts bytes right across wrap-around and clear", () => {
    const ring = new RecentEntries(4, 100);
    for (let offset = 1; offset <= 40; offset++) ring.push(entry(offset, 25));
    expect(offsets(ring.range(36, 40))).toEqual([37, 38, 39, 40]);
    ring.push(entry(50, 25)); // gap: cleared, so nothing held before counts
    for (let offset = 51; offset <= 53; offset++) ring.push(entry(offset, 25));
    expect(offsets(ring.range(49, 53))).toEqual([50, 51, 52, 53]);
  });

  it("allocates slots on demand: an empty ring holds a few, a full one `capacity`", () => {
    const ring = new RecentEntries(10_000);
    // Preallocated, 5,000 quiet dynamic namespaces cost 10,000 slots each (about 400 MB).
    expect(ring.allocatedSlots).toBeLessThanOrEqual(16);
    for (let offset = 1; offset <= 100; offset++) ring.push(entry(offset, 1));
    expect(ring.allocatedSlots).toBeLessThanOrEqual(128);
    expect(offsets(ring.range(0, 100))).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    for (let offset = 101; offset <= 25_000; offset++) ring.push(entry(offset, 1));
    expect(ring.allocatedSlots).toBe(10_000);
    expect(offsets(ring.range(15_000, 25_000))?.length).toBe(10_000);
    expect(ring.range(14_999, 25_000)).toBeUndefined();
    ring.push(entry(30_000, 1)); // a gap clears the ring, and gives its memory back
    expect(ring.allocatedSlots).toBeLessThanOrEqual(16);
    expect(offsets(ring.range(29_999, 30_000))).toEqual([30_000]);
  });

  it("keeps every entry in place while it grows, whatever offset it starts at", () => {
    for (const start of [1, 7, 15, 16, 17, 1023, 99_999]) {
      const ring = new RecentEntries(1000);
      for (let offset = start; offset < start + 1500; offset++) {
        ring.push(entry(offset, 1));
        const held = Math.min(offset - start + 1, 1000);
        expect(offsets(ring.range(offset - held, offset))?.length).toBe(held);
      }
    }
  });
});
