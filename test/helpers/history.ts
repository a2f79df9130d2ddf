/**
 * History checker: records what was emitted (per namespace, rooms, except,
 * source) and what every client received, then checks the recovery
 * guarantees for every client:
 *
 * - no loss: every logged emission addressed to the client (by its room
 *   membership at that offset) within its session chain was received;
 * - no duplicates: no emission received twice in one session chain;
 * - one order: offsets strictly increasing in a chain, and every id carries the
 *   same offset for every client;
 * - exactness: nothing received that was not addressed to it (emitted before
 *   it connected, to a room before it joined, to an except room);
 * - per source order: one node's emissions to a namespace get increasing
 *   offsets in emission order.
 *
 * A *track* is one chain of sessions of one client socket: it starts at a
 * fresh (not recovered) connection, whose start offset is the prime event's
 * offset, and continues through every reconnection that reports
 * `recovered === true`. A reconnection that is not recovered ends the track
 * (only what was received up to its last offset is checked) and starts a new
 * one. The client's last track is "live" unless closed: it must have received
 * everything addressed to it.
 *
 * Emitted payloads are `[{ id, ...extra }, offset]`; ids look like
 * `ev:<source>.<tag>:<n>` (the tag is random per History: the log table
 * outlives a test). An emission's offset is learned from any client that
 * received it, or from the log table (`logOffsets`) for those nobody received.
 *
 * Unlogged deliveries (a node in outage mode delivers to its own sockets,
 * never logs the packet, and appends its cursor like a prime event, or
 * nothing) are checked apart, with `{ unlogged: true, lookup }` and
 * `unloggedViolations()`: a reception is unlogged when its id is not in the
 * log (or it carries no offset). Each is delivered at most once per client,
 * only to clients connected to the emitting node at that moment, never
 * received as a logged packet (so never replayed), and its cursor never goes
 * back.
 */
import { randomBytes } from "node:crypto";
import type pg from "pg";
import type { Server } from "socket.io";
import type { ClientSocket } from "./cluster.js";
import { PRIME_EVENT, waitFor } from "./cluster.js";

export const EVENT = "ev";

export interface Target {
  /** Namespace name, default "/". */
  nsp?: string;
  /** Rooms (a socket id is a room); empty or absent: the whole namespace. */
  rooms?: readonly string[];
  except?: readonly string[];
}

export interface Emission {
  readonly id: string;
  readonly nsp: string;
  readonly rooms: readonly string[];
  readonly except: readonly string[];
  /** Who emitted it (node name), for per-source order. */
  readonly source: string;
  /** Position in the source's emission sequence. */
  readonly seq: number;
}

export interface Reception {
  readonly event: string;
  readonly id: string | undefined;
  readonly offset: number | undefined;
  readonly rawOffset: unknown;
  readonly prime: boolean;
  readonly args: readonly unknown[];
  /** The URL the client was connected to when it received this (set at each connection). */
  readonly via: string;
}

type ReceptionTest = (r: Reception) => boolean;
const NEVER: ReceptionTest = () => false;

/** An offset, the offset of an emission (a marker) by id, or the track's start. */
type Bound = number | { id: string } | "start";

interface Membership {
  room: string;
  /** Joined after `from[0]` and at or before `from[1]`. */
  from: [Bound, Bound];
  /** Left after `to[0]` and at or before `to[1]`; undefined: still a member. */
  to?: [Bound, Bound];
}

export interface Track {
  readonly client: string;
  readonly nsp: string;
  sid: string;
  /** Offset of the prime event of its first session. */
  start: number | undefined;
  /** Successful recoveries inside this track. */
  recoveries: number;
  readonly received: Reception[];
  readonly memberships: Membership[];
  /** Set when a non-recovered reconnection or close ended it. */
  ended: boolean;
}

/** The offset as an integer (`o<n>`), or undefined. */
export function parseOffset(value: unknown): number | undefined {
  if (typeof value !== "string") return undefined;
  const m = /^o(0|[1-9][0-9]{0,15})$/.exec(value);
  return m ? Number(m[1]) : undefined;
}

type Tri = 0 | 1 | 2; // no, maybe, yes
const and = (a: Tri, b: Tri): Tri => (a < b ? a : b);
const or = (a: Tri, b: Tri): Tri => (a > b ? a : b);
const not = (a: Tri): Tri => (2 - a) as Tri;

export interface CheckOptions {
  /** Offsets of emissions nobody received, e.g. from `logOffsets`. */
  lookup?: Map<string, { nsp: string; offset: number }>;
  /** Report emissions whose offset is unknown (default true). */
  requireResolved?: boolean;
  /** Check per-source offset order (default true). */
  sourceOrder?: boolean;
  /**
   * Packets delivered without an offset (outage mode) are not violations here
   * (check them with `unloggedViolations`), and emissions neither logged nor
   * received are not "unresolved". Default false: every packet needs an offset.
   */
  unlogged?: boolean;
}

/** Counts for a scenario's summary line. */
export interface HistorySummary {
  emitted: number;
  /** Emissions found in the log. */
  logged: number;
  /** Emissions not in the log (outage mode, or lost before logging). */
  notLogged: number;
  /** Receptions of logged packets (with an offset). */
  delivered: number;
  /** Receptions without an offset (outage mode). */
  unloggedDeliveries: number;
  lost: number;
  duplicated: number;
  reordered: number;
  /** Other violations (exactness, unknown, unresolved, prime...). */
  other: number;
  reconnections: number;
  recovered: number;
}

export interface ClientHandle {
  readonly label: string;
  readonly socket: ClientSocket;
  readonly tracks: Track[];
  /** The current track. */
  readonly track: Track;
  /** Rooms joined at each fresh connection (the default handlers join `auth.rooms`). */
  readonly initialRooms: readonly string[];
  /** Reconnections and whether each recovered. */
  readonly reconnections: Array<{ recovered: boolean; sid: string }>;
  /** Last offset received in the current track. */
  lastOffset(): number | undefined;
  /** Stop recording (client closed on purpose): its track is no longer live. */
  close(): void;
}

export class History {
  readonly emissions: Emission[] = [];
  readonly clients: ClientHandle[] = [];
  private readonly byId = new Map<string, Emission>();
  private readonly seqBySource = new Map<string, number>();
  private counter = 0;

  /** Makes ids unique across histories sharing one database (the log outlives a test). */
  private readonly tag: string;

  constructor(
    readonly options: {
      /** The adapter's prime event name, or false when off. */
      primeEvent?: string | false;
      /** Events the clients may receive that are not checked. */
      ignoreEvents?: readonly string[];
      /** Appended to the source in ids (`ev:<source>.<tag>:<n>`); default random, "" for none. */
      idTag?: string;
    } = {},
  ) {
    this.tag = options.idTag ?? randomBytes(3).toString("hex");
  }

  private get primeEvent(): string | false {
    return this.options.primeEvent ?? PRIME_EVENT;
  }

  /** A new emission id. */
  newId(source: string): string {
    return `ev:${this.tag ? `${source}.${this.tag}` : source}:${++this.counter}`;
  }

  /** Records an emission that the test performs itself. */
  record(target: Target, source: string, id = this.newId(source)): Emission {
    const seq = (this.seqBySource.get(source) ?? 0) + 1;
    this.seqBySource.set(source, seq);
    const emission: Emission = {
      id,
      nsp: target.nsp ?? "/",
      rooms: [...(target.rooms ?? [])],
      except: [...(target.except ?? [])],
      source,
      seq,
    };
    if (this.byId.has(id)) throw new Error(`emission id ${id} recorded twice`);
    this.byId.set(id, emission);
    this.emissions.push(emission);
    return emission;
  }

  /** Emits `EVENT` from `io` (a node) to `target` with payload `{ id, ...extra }`, and records it. */
  emit(io: Server, target: Target, source: string, extra: Record<string, unknown> = {}): Emission {
    const emission = this.record(target, source);
    let op = io.of(emission.nsp).to([...emission.rooms]);
    if (emission.except.length > 0) op = op.except([...emission.except]);
    op.emit(EVENT, { id: emission.id, ...extra });
    return emission;
  }

  /**
   * Starts recording `socket`. Call before it connects (or right after
   * creating it): the first connection starts its first track.
   */
  watch(socket: ClientSocket, label: string, initialRooms: readonly string[] = []): ClientHandle {
    const tracks: Track[] = [];
    const reconnections: Array<{ recovered: boolean; sid: string }> = [];
    let awaitingConnect = true;
    let closed = false;
    let via = "";
    const nsp = (socket as unknown as { nsp: string }).nsp;
    const onConnect = () => {
      if (!awaitingConnect || closed) return;
      awaitingConnect = false;
      via = (socket.io as unknown as { uri?: string } | undefined)?.uri ?? "";
      const current = tracks[tracks.length - 1];
      if (current) reconnections.push({ recovered: socket.recovered, sid: socket.id ?? "" });
      if (current && socket.recovered && !current.ended) {
        current.recoveries++;
        if (current.sid !== socket.id) current.sid = socket.id ?? "";
        return;
      }
      if (current) current.ended = true;
      tracks.push({
        client: label,
        nsp,
        sid: socket.id ?? "",
        start: undefined,
        recoveries: 0,
        received: [],
        memberships: initialRooms.map((room) => ({ room, from: ["start", "start"] as [Bound, Bound] })),
        ended: false,
      });
    };
    socket.on("connect", onConnect);
    socket.on("disconnect", () => {
      awaitingConnect = true;
    });
    socket.onAny((event: string, ...args: unknown[]) => {
      if (closed) return;
      // Replayed packets are emitted before the client's "connect" event.
      onConnect();
      const track = tracks[tracks.length - 1];
      if (!track) return;
      const prime = event === this.primeEvent;
      if (!prime && this.options.ignoreEvents?.includes(event)) return;
      const rawOffset = args[args.length - 1];
      const first = args[0] as { id?: unknown } | undefined;
      const id = !prime && first && typeof first === "object" && typeof first.id === "string" ? first.id : undefined;
      const offset = parseOffset(rawOffset);
      track.received.push({ event, id, offset, rawOffset, prime, args, via });
      if (prime && track.start === undefined && offset !== undefined) track.start = offset;
    });
    const handle: ClientHandle = {
      label,
      socket,
      tracks,
      initialRooms: [...initialRooms],
      reconnections,
      get track() {
        const t = tracks[tracks.length - 1];
        if (!t) throw new Error(`client ${label} never connected`);
        return t;
      },
      lastOffset() {
        const t = tracks[tracks.length - 1];
        if (!t) return undefined;
        for (let i = t.received.length - 1; i >= 0; i--) {
          const o = t.received[i]!.offset;
          if (o !== undefined) return o;
        }
        return undefined;
      },
      close() {
        closed = true;
        const t = tracks[tracks.length - 1];
        if (t) t.ended = true;
      },
    };
    this.clients.push(handle);
    return handle;
  }

  /**
   * Joins `room` through the default handlers and records the membership
   * window: after the client's last offset before the request, at or before
   * the offset of a marker the server emits to the socket after the join.
   *
   * Until that marker arrives, the change is uncertain (its upper bound is
   * unknown): the node may die with the change applied but unacknowledged,
   * or acknowledged but not durable, and a crash restore rolls back what was
   * not durable (docs/design.md, "Exactness after a crash"). A marker the
   * node that made the change emitted (its ack came on the same connection,
   * no recovery since the request) is logged only once the change is in a
   * committed skeleton (or session): receiving it at all, live or by a replay
   * after a restore, proves the change durable, and settles it. A marker
   * emitted elsewhere (the request sent again after a restore) proves nothing.
   * (Nor for a node declared dead while it runs, whose refused write lets the
   * marker go: no scenario here has one answer a room change.)
   */
  async join(client: ClientHandle, room: string, source = client.label): Promise<void> {
    const track = client.track;
    const recoveries = track.recoveries;
    const fromMin = client.lastOffset() ?? track.start ?? -1;
    const membership: Membership = { room, from: [fromMin, Number.POSITIVE_INFINITY] };
    track.memberships.push(membership);
    await client.socket.timeout(3000).emitWithAck("join", room);
    const marker = this.record({ nsp: track.nsp, rooms: [track.sid] }, `${source}-marker`);
    await client.socket.timeout(3000).emitWithAck("self-emit", { event: EVENT, args: [{ id: marker.id, marker: "join", room }] });
    const sameNode = track.recoveries === recoveries;
    await waitFor(() => track.received.some((r) => r.id === marker.id), { message: `join marker ${marker.id}` });
    if (sameNode) membership.from = [fromMin, { id: marker.id }];
  }

  /** Like `join`, for leaving. */
  async leave(client: ClientHandle, room: string, source = client.label): Promise<void> {
    const track = client.track;
    const recoveries = track.recoveries;
    const m = [...track.memberships].reverse().find((x) => x.room === room && x.to === undefined);
    if (!m) throw new Error(`${client.label} is not recorded in ${room}`);
    const toMin = client.lastOffset() ?? track.start ?? -1;
    m.to = [toMin, Number.POSITIVE_INFINITY];
    await client.socket.timeout(3000).emitWithAck("leave", room);
    const marker = this.record({ nsp: track.nsp, rooms: [track.sid] }, `${source}-marker`);
    await client.socket.timeout(3000).emitWithAck("self-emit", { event: EVENT, args: [{ id: marker.id, marker: "leave", room }] });
    const sameNode = track.recoveries === recoveries;
    await waitFor(() => track.received.some((r) => r.id === marker.id), { message: `leave marker ${marker.id}` });
    if (sameNode) m.to = [toMin, { id: marker.id }];
  }

  /** Offsets of every emission received by anyone (and conflicts). */
  /**
   * Which receptions are unlogged deliveries (outage mode): a known id that is
   * not in the log (`lookup`), or one that came without an offset string.
   */
  private unloggedTest(enabled: boolean | undefined, lookup?: CheckOptions["lookup"]): ReceptionTest {
    if (!enabled) return NEVER;
    return (r) =>
      !r.prime && r.id !== undefined && this.byId.has(r.id) && (typeof r.rawOffset !== "string" || (lookup !== undefined && !lookup.has(r.id)));
  }

  private resolveOffsets(
    lookup?: CheckOptions["lookup"],
    isUnlogged: ReceptionTest = NEVER,
  ): { offsets: Map<string, number>; conflicts: string[] } {
    const offsets = new Map<string, number>();
    const conflicts: string[] = [];
    for (const c of this.clients) {
      for (const t of c.tracks) {
        for (const r of t.received) {
          if (r.id === undefined || r.offset === undefined || isUnlogged(r)) continue;
          const known = offsets.get(r.id);
          if (known === undefined) offsets.set(r.id, r.offset);
          else if (known !== r.offset) conflicts.push(`${r.id} received with offsets ${known} and ${r.offset} (by ${c.label})`);
        }
      }
    }
    if (lookup) {
      for (const e of this.emissions) {
        const found = lookup.get(e.id);
        if (!found) continue;
        const known = offsets.get(e.id);
        if (known === undefined) offsets.set(e.id, found.offset);
        else if (known !== found.offset) conflicts.push(`${e.id} received with offset ${known}, logged at ${found.offset}`);
      }
    }
    return { offsets, conflicts };
  }

  /** Live tracks' emissions that are definitely addressed and not received yet (known offsets only). */
  missing(lookup?: CheckOptions["lookup"], unlogged = false): string[] {
    return this.violations({ lookup, requireResolved: false, sourceOrder: false, unlogged }).filter((v) => v.startsWith("loss"));
  }

  /** Every violation of the guarantees, as readable lines. */
  violations(options: CheckOptions = {}): string[] {
    const isUnlogged = this.unloggedTest(options.unlogged, options.lookup);
    const { offsets, conflicts } = this.resolveOffsets(options.lookup, isUnlogged);
    const out: string[] = conflicts.map((c) => `order: ${c}`);
    if (options.requireResolved !== false) {
      for (const e of this.emissions) {
        if (!offsets.has(e.id) && !options.unlogged) out.push(`unresolved: ${e.id} (to ${describe(e)}) was received by nobody and not found in the log`);
      }
    }
    if (options.sourceOrder !== false) {
      const last = new Map<string, { id: string; offset: number }>();
      for (const e of this.emissions) {
        const o = offsets.get(e.id);
        if (o === undefined) continue;
        const key = `${e.source}|${e.nsp}`;
        const prev = last.get(key);
        if (prev && o <= prev.offset) out.push(`source order: ${e.id} got offset ${o} after ${prev.id} got ${prev.offset}`);
        last.set(key, { id: e.id, offset: o });
      }
    }
    const byNsp = new Map<string, Array<{ e: Emission; offset: number }>>();
    for (const e of this.emissions) {
      const o = offsets.get(e.id);
      if (o === undefined) continue;
      let list = byNsp.get(e.nsp);
      if (!list) byNsp.set(e.nsp, (list = []));
      list.push({ e, offset: o });
    }
    for (const c of this.clients) {
      c.tracks.forEach((t, index) => {
        out.push(...this.checkTrack(c, t, index, byNsp.get(t.nsp) ?? [], offsets, isUnlogged));
      });
    }
    return out;
  }

  private checkTrack(
    c: ClientHandle,
    t: Track,
    index: number,
    emissions: ReadonlyArray<{ e: Emission; offset: number }>,
    offsets: Map<string, number>,
    isUnlogged: ReceptionTest,
  ): string[] {
    const out: string[] = [];
    const who = `${c.label}#${index} (sid ${t.sid}, ${t.recoveries} recoveries)`;
    const primeOn = this.primeEvent !== false;
    if (primeOn && t.start === undefined && t.received.length > 0) {
      out.push(`prime: ${who} received ${t.received[0]!.event} before any prime event`);
    }
    // Sequence: ids known, no duplicates, offsets increasing. A prime carries
    // the node's cursor (everything up to it is behind the client), so later
    // events must be strictly after it; a prime itself may repeat the last offset.
    const seen = new Set<string>();
    let last: number | undefined;
    for (const r of t.received) {
      if (r.prime) {
        if (r.offset === undefined) out.push(`prime: ${who} got a prime event with offset ${JSON.stringify(r.rawOffset)}`);
        else {
          if (last !== undefined && r.offset < last) out.push(`order: ${who} got prime o${r.offset} after o${last}`);
          last = Math.max(last ?? r.offset, r.offset);
        }
        continue;
      }
      if (r.id === undefined || !this.byId.has(r.id)) {
        out.push(`unknown: ${who} received ${r.event} ${JSON.stringify(r.args).slice(0, 120)}`);
        continue;
      }
      if (isUnlogged(r)) {
        // Outage mode: it carries this node's cursor, like a prime (or nothing); see unloggedViolations.
        if (r.offset !== undefined) {
          if (last !== undefined && r.offset < last) out.push(`order: ${who} got unlogged ${r.id} with o${r.offset} after o${last}`);
          last = Math.max(last ?? r.offset, r.offset);
        }
        continue;
      }
      if (seen.has(r.id)) out.push(`duplicate: ${who} received ${r.id} (o${r.offset}) twice`);
      seen.add(r.id);
      if (r.offset === undefined) {
        out.push(`offset: ${who} received ${r.id} with offset ${JSON.stringify(r.rawOffset)}`);
        continue;
      }
      if (last !== undefined && r.offset <= last) out.push(`order: ${who} received ${r.id} o${r.offset} after o${last}`);
      last = Math.max(last ?? r.offset, r.offset);
    }
    // Expected set.
    const end = t.ended ? (last ?? Number.NEGATIVE_INFINITY) : Number.POSITIVE_INFINITY;
    const first = t.received.find((r) => r.offset !== undefined)?.offset;
    const startMin = t.start ?? Number.NEGATIVE_INFINITY;
    const startMax = t.start ?? first ?? Number.POSITIVE_INFINITY;
    const resolve = (x: Bound, side: 0 | 1): number => {
      if (x === "start") return side === 0 ? startMin : startMax;
      if (typeof x === "number") return x;
      return offsets.get(x.id) ?? Number.POSITIVE_INFINITY;
    };
    const inNamespace = (o: number): Tri => (o > startMax ? 2 : o > startMin ? 1 : 0);
    const member = (room: string, o: number): Tri => {
      if (room === t.sid) return inNamespace(o);
      let result: Tri = 0;
      for (const m of t.memberships) {
        if (m.room !== room) continue;
        let joined: Tri = o > resolve(m.from[1], 1) ? 2 : o > resolve(m.from[0], 0) ? 1 : 0;
        if (m.to) joined = and(joined, o <= resolve(m.to[0], 0) ? 2 : o <= resolve(m.to[1], 1) ? 1 : 0);
        result = or(result, joined);
      }
      return and(result, inNamespace(o));
    };
    const addressed = (e: Emission, o: number): Tri => {
      let base: Tri;
      if (e.rooms.length === 0) base = inNamespace(o);
      else {
        base = 0;
        for (const r of e.rooms) base = or(base, member(r, o));
      }
      let excluded: Tri = 0;
      for (const r of e.except) excluded = or(excluded, member(r, o));
      return and(base, not(excluded));
    };
    const receivedIds = new Set<string>();
    for (const r of t.received) if (r.id !== undefined && r.offset !== undefined && !isUnlogged(r)) receivedIds.add(r.id);
    for (const { e, offset } of emissions) {
      const a = addressed(e, offset);
      const got = receivedIds.has(e.id);
      if (offset > end) {
        if (got) out.push(`order: ${who} received ${e.id} o${offset} beyond its end o${end}`);
        continue;
      }
      if (a === 2 && !got) {
        out.push(`loss: ${who} did not receive ${e.id} o${offset} (to ${describe(e)}; track start o${t.start}, last o${last})`);
      } else if (a === 0 && got) {
        out.push(`exactness: ${who} received ${e.id} o${offset} (to ${describe(e)}) not addressed to it (start o${t.start})`);
      }
    }
    return out;
  }

  /**
   * Violations of the rules for packets delivered without an offset:
   * `urlOf(source)` is the URL of the node that emitted under that source name.
   */
  unloggedViolations(urlOf: (source: string) => string | undefined, lookup?: CheckOptions["lookup"]): string[] {
    const out: string[] = [];
    const isUnlogged = this.unloggedTest(true, lookup);
    const withOffset = new Set<string>();
    for (const c of this.clients) {
      for (const t of c.tracks) for (const r of t.received) if (r.id !== undefined && r.offset !== undefined && !isUnlogged(r)) withOffset.add(r.id);
    }
    for (const c of this.clients) {
      const seen = new Set<string>();
      c.tracks.forEach((t, index) => {
        const who = `${c.label}#${index} (sid ${t.sid})`;
        for (const r of t.received) {
          if (!isUnlogged(r)) continue;
          const id = r.id!;
          const e = this.byId.get(id);
          if (!e) {
            out.push(`unknown: ${who} received ${id} without an offset`);
            continue;
          }
          if (seen.has(id)) out.push(`duplicate: ${who} received unlogged ${id} twice`);
          seen.add(id);
          const logged = lookup?.get(id);
          if (logged) out.push(`unlogged: ${who} received ${id} without an offset, but it is in the log at o${logged.offset}`);
          if (withOffset.has(id)) out.push(`unlogged: ${id} was received unlogged by ${c.label} and logged by someone`);
          const from = urlOf(e.source);
          if (origin(from) !== origin(r.via)) out.push(`unlogged: ${who} received ${id} from ${e.source} (${from}) while connected to ${r.via}`);
          if (e.rooms.length > 0 && !e.rooms.some((room) => room === t.sid || t.memberships.some((m) => m.room === room))) {
            out.push(`exactness: ${who} received unlogged ${id} (to ${describe(e)}) not addressed to it`);
          }
        }
      });
    }
    return out;
  }

  /** Counts for a summary line; `violations` from `violations()` (and `unloggedViolations()`). */
  summary(violations: readonly string[], lookup?: CheckOptions["lookup"], unlogged = false): HistorySummary {
    const isUnlogged = this.unloggedTest(unlogged, lookup);
    const { offsets } = this.resolveOffsets(lookup, isUnlogged);
    let delivered = 0;
    let unloggedDeliveries = 0;
    let reconnections = 0;
    let recovered = 0;
    for (const c of this.clients) {
      for (const t of c.tracks) {
        for (const r of t.received) {
          if (r.prime || r.id === undefined) continue;
          if (isUnlogged(r)) unloggedDeliveries++;
          else if (r.offset !== undefined) delivered++;
        }
      }
      reconnections += c.reconnections.length;
      recovered += c.reconnections.filter((r) => r.recovered).length;
    }
    const count = (prefix: string) => violations.filter((v) => v.startsWith(prefix)).length;
    const logged = this.emissions.filter((e) => (lookup ? lookup.has(e.id) : offsets.has(e.id))).length;
    const lost = count("loss");
    const duplicated = count("duplicate");
    const reordered = count("order") + count("source order");
    return {
      emitted: this.emissions.length,
      logged,
      notLogged: this.emissions.length - logged,
      delivered,
      unloggedDeliveries,
      lost,
      duplicated,
      reordered,
      other: violations.length - lost - duplicated - reordered,
      reconnections,
      recovered,
    };
  }

  /** Throws with the first violations when there are any. */
  assertClean(options: CheckOptions = {}): void {
    const v = this.violations(options);
    if (v.length > 0) {
      const shown = v.slice(0, 40).join("\n  ");
      throw new Error(`${v.length} history violation(s):\n  ${shown}${v.length > 40 ? "\n  ..." : ""}`);
    }
  }

  /** Waits (bounded) until no live track misses anything known to be addressed to it. */
  async settle(
    options: {
      timeout?: number;
      lookup?: () => Promise<CheckOptions["lookup"]>;
      /**
       * Some emissions may never be logged (outage mode): those received without an
       * offset count as resolved, and the others once nothing changed for `quietMs`.
       */
      unlogged?: { quietMs: number };
    } = {},
  ): Promise<void> {
    let missing: string[] = [];
    let unresolved = 0;
    let lastChange = { unresolved: -1, at: Date.now() };
    await waitFor(
      async () => {
        const lookup = options.lookup ? await options.lookup() : undefined;
        missing = this.missing(lookup, options.unlogged !== undefined);
        const isUnlogged = this.unloggedTest(options.unlogged !== undefined, lookup);
        const { offsets } = this.resolveOffsets(lookup, isUnlogged);
        const unloggedIds = this.idsReceived(isUnlogged);
        unresolved = this.emissions.filter((e) => !offsets.has(e.id) && !unloggedIds.has(e.id)).length;
        if (unresolved !== lastChange.unresolved) lastChange = { unresolved, at: Date.now() };
        const quiet = options.unlogged !== undefined && Date.now() - lastChange.at >= options.unlogged.quietMs;
        return missing.length === 0 && (options.lookup === undefined || unresolved === 0 || quiet);
      },
      {
        timeout: options.timeout ?? 10_000,
        interval: 50,
        message: () => `history to settle: ${missing.length} missing (${missing.slice(0, 5).join("; ")}), ${unresolved} unresolved`,
      },
    );
  }

  /** Ids of the receptions that pass `test`. */
  private idsReceived(test: ReceptionTest): Set<string> {
    const ids = new Set<string>();
    for (const c of this.clients) for (const t of c.tracks) for (const r of t.received) if (test(r)) ids.add(r.id!);
    return ids;
  }

  /** Statistics for messages. */
  stats(): { emissions: number; receptions: number; tracks: number; recoveries: number; refusals: number } {
    let receptions = 0;
    let tracks = 0;
    let recoveries = 0;
    let refusals = 0;
    for (const c of this.clients) {
      tracks += c.tracks.length;
      for (const t of c.tracks) {
        receptions += t.received.length;
        recoveries += t.recoveries;
      }
      refusals += c.reconnections.filter((r) => !r.recovered).length;
    }
    return { emissions: this.emissions.length, receptions, tracks, recoveries, refusals };
  }
}

function origin(url: string | undefined): string {
  try {
    return url === undefined ? "?" : new URL(url).origin;
  } catch {
    return url ?? "?";
  }
}

function describe(e: Emission): string {
  const rooms = e.rooms.length ? e.rooms.join(",") : "all";
  const except = e.except.length ? ` except ${e.except.join(",")}` : "";
  return `${e.nsp} ${rooms}${except} from ${e.source}`;
}

const ID_PATTERN = /ev:[A-Za-z0-9_.-]+:[0-9]+/g;

/**
 * Emission ids found in the log table, by namespace and offset. Reads the raw
 * payload bytes (ids are stored as plain UTF-8 in any msgpack or JSON encoding),
 * so it does not depend on the adapter's codec.
 */
export async function logOffsets(
  db: pg.Pool | pg.Client,
  schema = "socket_io",
): Promise<Map<string, { nsp: string; offset: number }>> {
  const q = (name: string) => `"${name.replace(/"/g, '""')}"`;
  const res = await db.query<{ name: string; offset: string; payload: Buffer }>(
    `SELECT n.name, e."offset"::text AS "offset", e.payload
       FROM ${q(schema)}.log_entries e JOIN ${q(schema)}.namespaces n ON n.id = e.namespace_id`,
  );
  const map = new Map<string, { nsp: string; offset: number }>();
  for (const row of res.rows) {
    const text = row.payload.toString("latin1");
    for (const id of text.match(ID_PATTERN) ?? []) {
      map.set(id, { nsp: row.name, offset: Number(row.offset) });
    }
  }
  return map;
}
