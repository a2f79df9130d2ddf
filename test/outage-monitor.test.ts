/**
 * The outage decision alone (no database): a write that neither succeeds nor
 * fails for `afterMs` starts outage mode, a success ends it, and a timer made
 * late by a blocked event loop (a huge synchronous burst) does not count as
 * an outage by itself.
 */
import { describe, expect, it } from "vitest";
import { OutageMonitor } from "../src/outage.js";
import { waitFor } from "./helpers/cluster.js";

function monitor(afterMs: number | false) {
  const events: string[] = [];
  const m = new OutageMonitor({
    afterMs,
    onStarted: () => events.push("started"),
    onEnded: () => events.push("ended"),
  });
  return { m, events };
}

function blockFor(ms: number): void {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    // a synchronous burst: nothing else runs
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("outage monitor", () => {
  it("starts after afterMs without a successful write, and ends at the next success", async () => {
    const { m, events } = monitor(100);
    m.writeStarted();
    await waitFor(() => m.inOutage, { timeout: 5000 });
    expect(events).toEqual(["started"]);
    m.writeStarted(); // retries do not restart the clock or the mode
    m.writeSucceeded();
    expect(m.inOutage).toBe(false);
    expect(events).toEqual(["started", "ended"]);
  });

  it("does not start while writes keep succeeding", async () => {
    const { m, events } = monitor(100);
    for (let i = 0; i < 10; i++) {
      m.writeStarted();
      await sleep(30);
      m.writeSucceeded();
    }
    await sleep(200);
    expect(events).toEqual([]);
    m.stop();
  });

  it("does not take a blocked event loop for an outage when the write's answer follows", async () => {
    const { m, events } = monitor(100);
    m.writeStarted();
    blockFor(400); // the timer is now 300 ms late
    // The answer is processed in this turn's I/O, before the deferred decision.
    await sleep(0);
    m.writeSucceeded();
    await sleep(400);
    expect(events).toEqual([]);
    m.stop();
  });

  it("never starts with afterMs false", async () => {
    const { m, events } = monitor(false);
    m.writeStarted();
    await sleep(300);
    expect(events).toEqual([]);
    expect(m.inOutage).toBe(false);
  });
});
