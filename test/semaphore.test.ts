/** The per-node bound on concurrent restore reads (no database: the semaphore alone). */
import { describe, expect, it } from "vitest";
import { Semaphore } from "../src/semaphore.js";

function deferred(): { promise: Promise<void>; resolve(): void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

describe("Semaphore", () => {
  it("runs at most `permits` tasks at once, the others in arrival order", async () => {
    const semaphore = new Semaphore(2, "test");
    const gates = [deferred(), deferred(), deferred(), deferred()];
    const started: number[] = [];
    const far = Date.now() + 60_000;
    const runs = gates.map((gate, i) =>
      semaphore.run(far, async () => {
        started.push(i);
        await gate.promise;
        return i;
      }),
    );
    await Promise.resolve();
    expect(started).toEqual([0, 1]);
    expect(semaphore.usage).toEqual({ held: 2, waiting: 2 });
    gates[1]!.resolve();
    await runs[1];
    await Promise.resolve();
    expect(started).toEqual([0, 1, 2]);
    for (const gate of gates) gate.resolve();
    expect(await Promise.all(runs)).toEqual([0, 1, 2, 3]);
    expect(semaphore.usage).toEqual({ held: 0, waiting: 0 });
  });

  it("refuses a task whose deadline passes while it waits, without running it, and frees a failed task's permit", async () => {
    const semaphore = new Semaphore(1, "maxConcurrentRestoreReads");
    const gate = deferred();
    const holder = semaphore.run(Date.now() + 60_000, () => gate.promise);
    let ran = false;
    await expect(
      semaphore.run(Date.now() + 50, async () => {
        ran = true;
      }),
    ).rejects.toThrow(/maxConcurrentRestoreReads/);
    expect(ran).toBe(false);
    expect(semaphore.usage).toEqual({ held: 1, waiting: 0 });
    gate.resolve();
    await holder;
    await expect(semaphore.run(Date.now() + 60_000, () => Promise.reject(new Error("read failed")))).rejects.toThrow("read failed");
    expect(semaphore.usage).toEqual({ held: 0, waiting: 0 });
  });
});
