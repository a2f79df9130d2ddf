/**
 * The history checker itself (test/helpers/history.ts), on scripted
 * receptions: it must report loss, duplicates, disorder and inexact replays,
 * and accept correct histories, or the cluster tests built on it prove nothing.
 */
import { EventEmitter } from "node:events";
import { describe, expect, it } from "vitest";
import { PRIME_EVENT, type ClientSocket } from "./helpers/cluster.js";
import { History, type Emission } from "./helpers/history.js";

/** Just what History.watch uses of a socket.io-client socket. */
class FakeSocket extends EventEmitter {
  readonly nsp = "/";
  /** The manager's URL: where the client is connected (unlogged deliveries are checked against it). */
  readonly io = { uri: "http://127.0.0.1:1001/" };
  id: string | undefined;
  recovered = false;
  connected = false;
  private readonly anyListeners: Array<(event: string, ...args: unknown[]) => void> = [];

  onAny(fn: (event: string, ...args: unknown[]) => void): this {
    this.anyListeners.push(fn);
    return this;
  }

  /** A (re)connection; `replay` is delivered before "connect", as socket.io-client does. */
  open(id: string, recovered: boolean, replay: Array<[string, ...unknown[]]> = []): void {
    this.id = id;
    this.recovered = recovered;
    this.connected = true;
    for (const [event, ...args] of replay) this.receive(event, ...args);
    this.emit("connect");
  }

  close(): void {
    this.connected = false;
    this.emit("disconnect", "transport close");
  }

  receive(event: string, ...args: unknown[]): void {
    for (const fn of this.anyListeners) fn(event, ...args);
  }

  prime(offset: number): void {
    this.receive(PRIME_EVENT, `o${offset}`);
  }

  ev(e: Emission, offset: number): void {
    this.receive("ev", { id: e.id }, `o${offset}`);
  }
}

function setup() {
  const history = new History({ idTag: "" });
  const socket = new FakeSocket();
  const client = history.watch(socket as unknown as ClientSocket, "c", ["a"]);
  return { history, socket, client };
}

describe("history checker", () => {
  it("accepts a correct history across a recovery", () => {
    const { history, socket } = setup();
    const toAll = history.record({}, "n1");
    const toA = history.record({ rooms: ["a"] }, "n1");
    const toB = history.record({ rooms: ["b"] }, "n1");
    const toAll2 = history.record({ rooms: ["a"], except: ["b"] }, "n1");
    socket.open("sid1", false);
    socket.prime(10);
    socket.ev(toAll, 11);
    socket.close();
    socket.open("sid1", true, [["ev", { id: toA.id }, "o12"]]);
    socket.ev(toAll2, 14);
    const lookup = new Map([[toB.id, { nsp: "/", offset: 13 }]]);
    expect(history.violations({ lookup })).toEqual([]);
  });

  it("reports a loss, and an emission nobody received that is not in the log", () => {
    const { history, socket } = setup();
    const e1 = history.record({ rooms: ["a"] }, "n1");
    const e2 = history.record({ rooms: ["a"] }, "n1");
    const e3 = history.record({ rooms: ["a"] }, "n1");
    socket.open("sid1", false);
    socket.prime(0);
    socket.ev(e1, 1);
    socket.ev(e3, 3);
    const v = history.violations({ lookup: new Map([[e2.id, { nsp: "/", offset: 2 }]]) });
    expect(v).toHaveLength(1);
    expect(v[0]).toMatch(/^loss: .* did not receive ev:n1:2 o2/);
    expect(history.violations()).toEqual([expect.stringMatching(/^unresolved: ev:n1:2/)]);
  });

  it("reports a packet replayed twice across recoveries", () => {
    const { history, socket } = setup();
    const e1 = history.record({}, "n1");
    socket.open("sid1", false);
    socket.prime(0);
    socket.ev(e1, 1);
    socket.close();
    socket.open("sid1", true, [["ev", { id: e1.id }, "o1"]]);
    expect(history.violations()).toEqual([
      expect.stringMatching(/^duplicate: /),
      expect.stringMatching(/^order: .* o1 after o1/),
    ]);
  });

  it("reports offsets out of order and ids seen with two offsets", () => {
    const { history, socket } = setup();
    const e1 = history.record({}, "n1");
    const e2 = history.record({}, "n2");
    socket.open("sid1", false);
    socket.prime(0);
    socket.ev(e2, 2);
    socket.ev(e1, 1);
    const other = new FakeSocket();
    history.watch(other as unknown as ClientSocket, "d");
    other.open("sid2", false);
    other.prime(0);
    other.ev(e1, 5);
    const v = history.violations();
    expect(v).toContainEqual(expect.stringMatching(/^order: c#0 .* received ev:n1:1 o1 after o2/));
    expect(v).toContainEqual(expect.stringMatching(/^order: ev:n1:1 received with offsets 1 and 5/));
  });

  it("reports a node's emissions committed out of their emission order", () => {
    const { history, socket } = setup();
    const e1 = history.record({}, "n1");
    const e2 = history.record({}, "n1");
    socket.open("sid1", false);
    socket.prime(0);
    socket.ev(e2, 1);
    socket.ev(e1, 2);
    expect(history.violations()).toEqual([expect.stringMatching(/^source order: ev:n1:2 got offset 1 after ev:n1:1 got 2/)]);
  });

  it("reports inexact replays: before the session started, to another room, to an except room", () => {
    const { history, socket } = setup();
    const before = history.record({}, "n1");
    const toB = history.record({ rooms: ["b"] }, "n1");
    const exceptA = history.record({ except: ["a"] }, "n1");
    socket.open("sid1", false);
    socket.prime(5);
    socket.close();
    socket.open("sid1", true, [
      ["ev", { id: before.id }, "o4"],
      ["ev", { id: toB.id }, "o6"],
      ["ev", { id: exceptA.id }, "o7"],
    ]);
    const v = history.violations();
    expect(v.filter((x) => x.startsWith("exactness:")).map((x) => /ev:n1:\d+/.exec(x)![0])).toEqual([
      before.id,
      toB.id,
      exceptA.id,
    ]);
  });

  it("ends a track at a refused recovery: only the new session's packets are expected afterwards", () => {
    const { history, socket, client } = setup();
    const e1 = history.record({ rooms: ["a"] }, "n1");
    const e2 = history.record({ rooms: ["a"] }, "n1");
    const e3 = history.record({ rooms: ["a"] }, "n1");
    socket.open("sid1", false);
    socket.prime(0);
    socket.ev(e1, 1);
    socket.close();
    // Refused: e2 (o2) is lost with the old session, which is allowed; the new one starts at o2.
    socket.open("sid2", false);
    socket.prime(2);
    socket.ev(e3, 3);
    expect(client.tracks).toHaveLength(2);
    expect(history.violations({ lookup: new Map([[e2.id, { nsp: "/", offset: 2 }]]) })).toEqual([]);
    expect(history.stats().refusals).toBe(1);
  });

  it("accepts either outcome inside a join window, and requires delivery after it", () => {
    const { history, socket, client } = setup();
    const tracks = client.tracks;
    socket.open("sid1", false);
    socket.prime(0);
    // Recorded by hand like History.join would: joined after o0, at or before the marker's offset.
    const marker = history.record({ rooms: ["sid1"] }, "marker");
    const inWindow = history.record({ rooms: ["late"] }, "n1");
    const after = history.record({ rooms: ["late"] }, "n1");
    (tracks[0]!.memberships as Array<{ room: string; from: unknown[] }>).push({ room: "late", from: [0, { id: marker.id }] });
    socket.ev(inWindow, 1);
    socket.ev(marker, 2);
    expect(history.violations({ lookup: new Map([[after.id, { nsp: "/", offset: 3 }]]) })).toEqual([
      expect.stringMatching(/^loss: .* ev:n1:3 o3/),
    ]);
    socket.ev(after, 3);
    expect(history.violations()).toEqual([]);
  });

  describe("unlogged deliveries (outage mode)", () => {
    const NODE = "http://127.0.0.1:1001";
    const OTHER = "http://127.0.0.1:1002";
    const urlOf = (source: string) => (source === "n1" ? NODE : OTHER);
    /** The log holds only `logged`, at the given offsets. */
    const logWith = (entries: Array<[Emission, number]>) => new Map(entries.map(([e, o]) => [e.id, { nsp: "/", offset: o }]));

    it("accepts unlogged packets from the client's own node, carrying its cursor or nothing, between logged ones", () => {
      const { history, socket } = setup();
      const logged = history.record({}, "n1");
      const unlogged1 = history.record({ rooms: ["a"] }, "n1");
      const unlogged2 = history.record({}, "n1");
      const later = history.record({}, "n2");
      socket.open("sid1", false);
      socket.prime(10);
      socket.ev(logged, 11);
      socket.receive("ev", { id: unlogged1.id }, "o11");
      socket.receive("ev", { id: unlogged2.id });
      socket.ev(later, 12);
      const lookup = logWith([[logged, 11], [later, 12]]);
      expect(history.violations({ lookup, unlogged: true })).toEqual([]);
      expect(history.unloggedViolations(urlOf, lookup)).toEqual([]);
      // Without { unlogged: true } they are violations.
      expect(history.violations({ lookup }).length).toBeGreaterThan(0);
      const summary = history.summary([], lookup, true);
      expect(summary).toMatchObject({ logged: 2, notLogged: 2, delivered: 2, unloggedDeliveries: 2 });
    });

    it("reports an unlogged packet twice, from another node, to a room the client is not in, or that is also logged", () => {
      const { history, socket } = setup();
      const twice = history.record({}, "n1");
      const fromOther = history.record({}, "n2");
      const wrongRoom = history.record({ rooms: ["b"] }, "n1");
      const alsoLogged = history.record({}, "n1");
      socket.open("sid1", false);
      socket.prime(10);
      socket.receive("ev", { id: twice.id }, "o10");
      socket.receive("ev", { id: twice.id }, "o10");
      socket.receive("ev", { id: fromOther.id }, "o10");
      socket.receive("ev", { id: wrongRoom.id }, "o10");
      socket.receive("ev", { id: alsoLogged.id });
      const lookup = logWith([[alsoLogged, 11]]);
      const v = history.unloggedViolations(urlOf, lookup);
      expect(v.some((x) => x.startsWith("duplicate:") && x.includes(twice.id))).toBe(true);
      expect(v.some((x) => x.startsWith("unlogged:") && x.includes(fromOther.id) && x.includes("while connected to"))).toBe(true);
      expect(v.some((x) => x.startsWith("exactness:") && x.includes(wrongRoom.id))).toBe(true);
      expect(v.some((x) => x.startsWith("unlogged:") && x.includes(alsoLogged.id) && x.includes("in the log"))).toBe(true);
    });

    it("reports an unlogged packet whose cursor goes back, and a logged one at or before it", () => {
      const { history, socket } = setup();
      const a = history.record({}, "n1");
      const u = history.record({}, "n1");
      const b = history.record({}, "n2");
      socket.open("sid1", false);
      socket.prime(10);
      socket.ev(a, 12);
      socket.receive("ev", { id: u.id }, "o11");
      socket.ev(b, 12);
      const lookup = logWith([[a, 12], [b, 12]]);
      const v = history.violations({ lookup, unlogged: true, sourceOrder: false });
      expect(v.some((x) => x.startsWith("order:") && x.includes(`unlogged ${u.id}`))).toBe(true);
      expect(v.some((x) => x.startsWith("order:") && x.includes(b.id))).toBe(true);
    });
  });
});
