/** Which offsets a replay needs (pure: `firstMissing` / `planReplay` of replay.ts, and the gap rules of log-gaps.ts). */
import { describe, expect, it } from "vitest";
import type { LogEntry } from "../src/codec.js";
import { coveredThrough, LogGaps, type LogGap } from "../src/log-gaps.js";
import { firstMissing, planReplay, refuseRange } from "../src/replay.js";

const entry = (offset: number, rooms: string[] = ["r"]): LogEntry => ({ offset, bytes: 1, data: ["ev", offset], rooms, except: [] });
const entries = (...offsets: number[]) => offsets.map((o) => entry(o));
const limits = { maxReplayEntries: 10_000, maxReplayBytes: 1 << 20 };

describe("firstMissing", () => {
  it("needs nothing when the range is complete", () => {
    expect(firstMissing(entries(3, 4, 5, 6), 2, 6, { lastDelivered: 3, cursor: 5 })).toBeUndefined();
  });

  it("needs what was written to the socket: (offset, lastDelivered]", () => {
    expect(firstMissing(entries(4, 5, 6), 2, 6, { lastDelivered: 4, cursor: 4 })).toBe(3);
  });

  it("does not need (lastDelivered, cursor]: delivered while connected, not addressed to the socket", () => {
    expect(firstMissing(entries(3, 7, 8), 2, 8, { lastDelivered: 3, cursor: 6 })).toBeUndefined();
    expect(firstMissing(entries(7, 8), 2, 8, { lastDelivered: 2, cursor: 6 })).toBeUndefined();
  });

  it("needs everything after the cursor at the disconnect, up to the replay's end", () => {
    expect(firstMissing(entries(3, 8), 2, 8, { lastDelivered: 3, cursor: 6 })).toBe(7);
    expect(firstMissing(entries(3, 7), 2, 8, { lastDelivered: 3, cursor: 6 })).toBe(8);
  });

  it("after a crash (no session end known) needs all of (offset, upTo]", () => {
    expect(firstMissing(entries(3, 5), 2, 5, undefined)).toBe(4);
    expect(firstMissing(entries(3, 4, 5), 2, 5, undefined)).toBeUndefined();
    expect(firstMissing([], 5, 5, undefined)).toBeUndefined();
  });
});

describe("planReplay", () => {
  it("refuses instead of replaying less when an entry after the disconnect is gone", () => {
    const member = { joinedAt: new Map([["r", 0]]), memberSince: 0 };
    const plan = planReplay(entries(3, 4, 6), 2, 6, { lastDelivered: 3, cursor: 3 }, member, limits);
    expect(plan.refused).toMatch(/entry 5/);
  });

  it("replays the addressed entries of a complete range", () => {
    const member = { joinedAt: new Map([["r", 0]]), memberSince: 0 };
    const plan = planReplay([entry(3), entry(4, ["other"]), entry(5)], 2, 5, { lastDelivered: 3, cursor: 4 }, member, limits);
    expect(plan.refused).toBeUndefined();
    if (plan.refused === undefined) expect(plan.entries.map((e) => e.offset)).toEqual([3, 5]);
  });
});

describe("recorded gaps (offsets the head jumped over: they hold nothing)", () => {
  it("firstMissing steps over a gap, and still finds what is missing around it", () => {
    const gap = [[4, 1000]] as const;
    expect(firstMissing(entries(3, 4, 1001, 1002), 2, 1002, undefined, gap)).toBeUndefined();
    expect(firstMissing(entries(3, 1001), 2, 1002, undefined, gap)).toBe(4);
    expect(firstMissing(entries(3, 4, 1002), 2, 1002, undefined, gap)).toBe(1001);
    // A gap inside the window known not to be addressed, and one right after it.
    expect(firstMissing(entries(3, 1001), 2, 1001, { lastDelivered: 3, cursor: 4 }, gap)).toBeUndefined();
  });

  it("refuseRange counts entries, not the offsets of gaps", () => {
    expect(refuseRange(2, 1_000_005, limits, [[4, 1_000_000]])).toBeUndefined();
    expect(refuseRange(2, 1_000_005, limits)).toMatch(/exceed maxReplayEntries/);
  });
});

describe("LogGaps.refusal", () => {
  const gaps = (list: Array<Partial<LogGap> & { after: number; through: number }>) => {
    const g = new LogGaps();
    g.set(list.map((x) => ({ lost: false, ageMs: 60_000, ...x })));
    return g;
  };

  it("refuses an offset inside any gap, lost or not", () => {
    expect(gaps([{ after: 10, through: 100 }]).refusal(50, 200, true)).toMatch(/^offset 50 lies in \(10, 100\]/);
    expect(gaps([{ after: 10, through: 100, lost: true }]).refusal(99, 200, true)).toMatch(/^offset 99 lies in/);
    // Its ends are where cursors stand around it (and primed clients' offsets): not lost offsets.
    expect(gaps([{ after: 10, through: 100, lost: true }]).refusal(100, 200, true)).toBeUndefined();
  });

  it("refuses a replay across a lost gap, steps over a settled one, and refuses across an unsettled one", () => {
    expect(gaps([{ after: 10, through: 100, lost: true }]).refusal(5, 200, true)).toMatch(/would cross \(10, 100\], entries the database lost/);
    expect(gaps([{ after: 10, through: 100 }]).refusal(5, 200, true)).toBeUndefined();
    // Unsettled: some live node has not yet told the database what it delivered.
    expect(gaps([{ after: 10, through: 100 }]).refusal(5, 200, false)).toMatch(/has not yet said/);
    // At its end or past it, a gap does not matter.
    expect(gaps([{ after: 10, through: 100, lost: true }]).refusal(100 + 1, 200, true)).toBeUndefined();
    expect(gaps([{ after: 10, through: 100, lost: true }]).refusal(2, 10, true)).toBeUndefined();
  });

  it("clips holes to the replay's range", () => {
    expect(gaps([{ after: 10, through: 100 }]).holes(50, 60)).toEqual([[50, 60]]);
    expect(coveredThrough(gaps([{ after: 10, through: 100 }, { after: 100, through: 150 }]).all, 20, 150)).toBe(150);
    expect(coveredThrough(gaps([{ after: 10, through: 100 }]).all, 20, 101)).toBeUndefined();
  });
});
