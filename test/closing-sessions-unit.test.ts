/**
 * Which closing sessions an operation reaches, and what it does to them
 * (closing-sessions.ts): the in-memory adapter's rule for rooms and
 * except-rooms, and the socket ledger's for leave cursors. Pure logic: the
 * end-to-end cases are in closing-sessions.test.ts.
 */
import { MessageType } from "socket.io-adapter";
import { describe, expect, it } from "vitest";
import { ClosingSessions } from "../src/closing-sessions.js";

function sessions(): ClosingSessions {
  const closing = new ClosingSessions();
  // s1 in a and b since 10, left c at 8 (joined 5); s2 in b only, since 20.
  closing.open("s1", "p1", { rooms: [["s1", 1], ["a", 10], ["b", 10]], left: [["c", 5, 8]], floor: 1, lastDelivered: 30 }, 31, { n: 1 });
  closing.open("s2", "p2", { rooms: [["s2", 2], ["b", 20]], left: [], floor: 2, lastDelivered: 30 }, 31, undefined);
  return closing;
}

const op = (type: MessageType, rooms: string[], except: string[], targets: string[]) => ({
  type,
  data: { opts: { rooms, except, flags: {} }, rooms: targets },
});

describe("closing sessions", () => {
  it("a leave records the room as left at the cursor where it applied, and only once", () => {
    const closing = sessions();
    expect(closing.leave("s1", "a", 40)).toBe(true);
    expect(closing.leave("s1", "a", 41)).toBe(false);
    expect(closing.leave("nobody", "a", 40)).toBe(false);
    const s1 = closing.get("s1")!;
    expect([...s1.rooms.keys()]).toEqual(["s1", "b"]);
    expect(s1.left).toEqual([["c", 5, 8], ["a", 10, 40]]);
  });

  it("a leave at or before the join cursor leaves nothing to replay through the room", () => {
    const closing = sessions();
    expect(closing.leave("s2", "b", 20)).toBe(true);
    expect(closing.get("s2")!.left).toEqual([]);
  });

  it("socketsLeave reaches the sessions in one of its rooms and in none of its except-rooms", () => {
    const closing = sessions();
    const changed = closing.applyOperation(op(MessageType.SOCKETS_LEAVE, ["b"], ["a"], ["b"]), 50);
    expect(changed.map((s) => s.sid)).toEqual(["s2"]);
    expect(closing.get("s1")!.rooms.has("b")).toBe(true);
    expect(closing.get("s2")!.left).toEqual([["b", 20, 50]]);
  });

  it("an operation without rooms reaches every session; one by socket id reaches that socket", () => {
    const closing = sessions();
    expect(closing.applyOperation(op(MessageType.SOCKETS_JOIN, [], [], ["d"]), 60).map((s) => s.sid)).toEqual(["s1", "s2"]);
    expect(closing.get("s2")!.rooms.get("d")).toBe(60);
    expect(closing.applyOperation(op(MessageType.SOCKETS_JOIN, ["s2"], [], ["e"]), 61).map((s) => s.sid)).toEqual(["s2"]);
    // Joining a room it is in keeps its first join cursor, and is no change.
    expect(closing.applyOperation(op(MessageType.SOCKETS_JOIN, ["s2"], [], ["d"]), 62)).toEqual([]);
    expect(closing.get("s2")!.rooms.get("d")).toBe(60);
  });

  it("disconnectSockets and socket.disconnect() drop the sessions they reach; a dropped session is changed no more", () => {
    const closing = sessions();
    closing.applyOperation({ type: MessageType.DISCONNECT_SOCKETS, data: { opts: { rooms: ["a"], except: [] } } }, 70);
    expect(closing.get("s1")!.dropped).toBe(true);
    expect(closing.get("s2")!.dropped).toBe(false);
    closing.drop("s2");
    expect(closing.get("s2")!.dropped).toBe(true);
    expect(closing.applyOperation(op(MessageType.SOCKETS_LEAVE, [], [], ["b"]), 71)).toEqual([]);
    expect(closing.take("s1")?.rooms.has("b")).toBe(true);
    expect(closing.has("s1")).toBe(false);
  });
});
