/** Batches bounded in bytes as well as in items (no database: the batcher alone). */
import { describe, expect, it } from "vitest";
import { Batcher } from "../src/batcher.js";

describe("Batcher maxBatchBytes", () => {
  it("stops a batch before it exceeds maxBatchBytes, but always takes one item", async () => {
    const batches: number[][] = [];
    const batcher = new Batcher<number, number>({
      write: async (items) => {
        batches.push(items);
        return items;
      },
      maxBatchSize: 3,
      maxBatchBytes: 100,
      sizeOf: (n) => n,
      maxPending: 100,
      isRetryable: () => false,
      retryDelayMs: () => 0,
      maxAttempts: 1,
      onError: () => undefined,
    });
    const sizes = [60, 60, 30, 200, 10, 10, 10, 10];
    const results = await Promise.all(sizes.map((n) => batcher.add(n)));
    expect(results).toEqual(sizes);
    expect(batches).toEqual([[60], [60, 30], [200], [10, 10, 10], [10]]);
    await batcher.close(0);
  });
});
