/**
 * The bench's receipt accounting (bench/receipts.ts): a harness that reports
 * 0 lost because it counts wrong is worse than none, so each count is shown
 * to move when the thing it counts happens. Pure logic: no database.
 */
import { describe, expect, it } from "vitest";
import { ClientLedger, compareOffsets, percentile } from "../bench/receipts.js";

function feed(ledger: ClientLedger, receipts: Array<[source: number, seq: number, offset?: string]>, epoch = 1): void {
  for (const [s, q, offset] of receipts) ledger.record({ e: epoch, s, q }, offset, 0);
}

describe("bench receipt accounting", () => {
  it("counts nothing wrong when every expected event arrives once, in order", () => {
    const ledger = new ClientLedger("ours");
    ledger.arm(1, { 0: 3, 1: 2 });
    feed(ledger, [[0, 1, "o1"], [1, 1, "o2"], [0, 2, "o3"], [1, 2, "o4"], [0, 3, "o5"]]);
    expect(ledger.summary()).toMatchObject({ received: 5, expected: 5, lost: 0, duplicated: 0, reordered: 0, regressions: 0 });
    expect(ledger.distinctExpected).toBe(5);
  });

  it("counts a missing event as lost, and splits it on the seq boundary", () => {
    const ledger = new ClientLedger(undefined);
    ledger.arm(1, { 0: 4 });
    feed(ledger, [[0, 1], [0, 2], [0, 4]]);
    expect(ledger.summary(2)).toMatchObject({ lost: 1, lostUpTo: 0, lostAfter: 1 });
    expect(ledger.summary()).toMatchObject({ lost: 1, lostUpTo: 1 });
  });

  it("counts a second copy as duplicated and an older seq as reordered", () => {
    const ledger = new ClientLedger(undefined);
    ledger.arm(1, { 0: 3 });
    feed(ledger, [[0, 2], [0, 1], [0, 2], [0, 3]]);
    expect(ledger.summary()).toMatchObject({ lost: 0, duplicated: 1, reordered: 1, duplicatedUpTo: 1 });
  });

  it("counts offsets going backwards, for our offsets and Redis stream ids", () => {
    const ours = new ClientLedger("ours");
    ours.arm(1, { 0: 3 });
    feed(ours, [[0, 1, "o9"], [0, 2, "o10"], [0, 3, "o8"]]);
    expect(ours.summary().regressions).toBe(1);
    expect(compareOffsets("redis", "1700000000000-2", "1700000000000-10")).toBe(-1);
    expect(compareOffsets("redis", "1700000000001-0", "1700000000000-10")).toBe(1);
    expect(compareOffsets(undefined, "a", "b")).toBeUndefined();
  });

  it("ignores other epochs and tells delivery orders apart", () => {
    const a = new ClientLedger(undefined);
    const b = new ClientLedger(undefined);
    a.arm(2, { 0: 1, 1: 1 });
    b.arm(2, { 0: 1, 1: 1 });
    feed(a, [[0, 1], [1, 1]], 2);
    feed(b, [[1, 1], [0, 1]], 2);
    feed(a, [[0, 7]], 1); // an earlier phase's straggler
    expect(a.summary().received).toBe(2);
    expect(a.summary().orderHash).not.toBe(b.summary().orderHash);
  });

  it("takes nearest-rank percentiles", () => {
    const sorted = Array.from({ length: 100 }, (_, i) => i + 1);
    expect([percentile(sorted, 50), percentile(sorted, 99), percentile(sorted, 100)]).toEqual([50, 99, 100]);
    expect(percentile([], 50)).toBeUndefined();
  });
});
