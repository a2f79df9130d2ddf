/** Which offsets a replay needs (pure: `firstMissing` / `planReplay` of replay.ts). */
import { describe, expect, it } from "vitest";
import type { LogEntry } from "../src/codec.js";
import { firstMissing, planReplay } from "../src/replay.js";

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
