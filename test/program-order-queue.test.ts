/**
 * The program-order queue on its own (src/program-order.ts): pure logic, no
 * database. The cursor is a variable the test moves, as the sequencer would.
 */
import { describe, expect, it } from "vitest";
import type { LoggedPacket } from "../src/codec.js";
import { ProgramOrder } from "../src/program-order.js";
import { waitFor } from "./helpers/cluster.js";

function rig(maxWaitMs: number | false = false) {
  let cursor: number | undefined = 0;
  const errors: Error[] = [];
  let resumed = 0;
  const order = new ProgramOrder({
    cursor: () => cursor,
    maxWaitMs,
    resumeDelivery: () => resumed++,
    onError: (err) => errors.push(err),
  });
  /** Submitted events, resolved by the test (committed, or settled otherwise). */
  const submitted: Array<{ packet: LoggedPacket; settle(): void }> = [];
  const emit = (name: string) => {
    const packet: LoggedPacket = { data: [name], rooms: [], except: [] };
    void order.event(packet, (p) => new Promise<void>((resolve) => submitted.push({ packet: p, settle: resolve })));
    return packet;
  };
  const deliverUpTo = (offset: number) => {
    while ((cursor ?? 0) < offset) {
      cursor = (cursor ?? 0) + 1;
      order.delivered();
    }
  };
  return { order, emit, submitted, deliverUpTo, errors, setCursor: (c: number | undefined) => (cursor = c), resumed: () => resumed };
}

describe("ProgramOrder", () => {
  it("applies an operation at once when nothing is pending, even before the namespace started", () => {
    const { order, setCursor } = rig();
    setCursor(undefined);
    const applied: string[] = [];
    void order.local(() => void applied.push("op"), false);
    expect(applied).toEqual(["op"]);
    expect(order.idle).toBe(true);
  });

  it("applies an operation right after the delivery of the last event issued before it", async () => {
    const { order, emit, deliverUpTo } = rig();
    const applied: string[] = [];
    const e1 = emit("e1");
    const done = order.local(() => void applied.push("op"), false);
    const e2 = emit("e2"); // issued after the operation: same batch
    expect(order.holdsDelivery).toBe(true);
    order.committed([e1, e2], 10);
    expect(order.holdsDelivery).toBe(false);
    deliverUpTo(9);
    expect(applied).toEqual([]);
    deliverUpTo(10);
    expect(applied).toEqual(["op"]); // before 11 (e2) is delivered
    await done;
  });

  it("keeps two operations in the order they were issued", () => {
    const { order, emit, deliverUpTo } = rig();
    const applied: string[] = [];
    const e1 = emit("e1");
    void order.local(() => void applied.push("op1"), false);
    void order.local(() => void applied.push("op2"), false); // nothing between: same point
    const e2 = emit("e2");
    void order.local(() => void applied.push("op3"), false);
    order.committed([e1, e2], 1);
    deliverUpTo(1);
    expect(applied).toEqual(["op1", "op2"]);
    deliverUpTo(2);
    expect(applied).toEqual(["op1", "op2", "op3"]);
  });

  it("does not wait for an event that settled without a commit (unlogged or refused)", async () => {
    const { order, emit, submitted } = rig();
    const applied: string[] = [];
    emit("unlogged");
    void order.local(() => void applied.push("op"), false);
    expect(applied).toEqual([]);
    submitted[0]!.settle();
    await waitFor(() => applied.length === 1);
    expect(order.holdsDelivery).toBe(false);
  });

  it("holds the events issued after a published operation until its publication settles", async () => {
    const { order, emit, submitted } = rig();
    let publish: () => void = () => undefined;
    const publication = new Promise<void>((resolve) => (publish = resolve));
    void order.local(() => publication, true);
    emit("after");
    expect(submitted).toHaveLength(0);
    publish();
    await waitFor(() => submitted.length === 1);
  });

  it("applies a remote operation when the cursor reaches its offset", () => {
    const { order, deliverUpTo } = rig();
    const applied: string[] = [];
    void order.remote(3, () => void applied.push("remote"));
    deliverUpTo(2);
    expect(applied).toEqual([]);
    deliverUpTo(3);
    expect(applied).toEqual(["remote"]);
  });

  it("does not queue what an operation does while it applies", () => {
    const { order, emit } = rig();
    emit("pending");
    let inside: boolean | undefined;
    void order.local(() => void (inside = order.applying), false);
    order.close(); // forces it
    expect(inside).toBe(true);
    expect(order.applying).toBe(false);
  });

  it("applies an operation that waited maxWaitMs, and says so", async () => {
    const { order, emit, errors, resumed } = rig(50);
    emit("never-settles");
    const applied: string[] = [];
    void order.local(() => void applied.push("op"), false);
    expect(order.holdsDelivery).toBe(true);
    await waitFor(() => applied.length === 1, { timeout: 2000 });
    expect(order.holdsDelivery).toBe(false);
    expect(resumed()).toBeGreaterThan(0);
    expect(errors[0]?.message).toMatch(/waited 50 ms/);
  });
});
