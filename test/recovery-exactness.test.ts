/**
 * Exactness under random schedules (property, seeded): clients join and
 * leave rooms, drop and come back on either node, while both nodes emit to
 * rooms, to everyone and with except-rooms, some of it while restored
 * sockets wait in slow middlewares. The history checker (helpers/history.ts)
 * then requires of every client: nothing lost, nothing twice, one order, and
 * nothing it would not have received live (before it joined a room, after
 * it left, to an except-room); every reconnection recovered.
 *
 * Runs are bounded (numRuns, steps) and seeded: a failure prints the seed
 * and the shrunk schedule; replay it with FC_SEED=<seed>.
 */
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { Cluster, dropConnection, moveTo, recoveryFields, waitFor } from "./helpers/cluster.js";
import { History, logOffsets, type ClientHandle } from "./helpers/history.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("recovery_exactness");

const SEED = process.env.FC_SEED !== undefined ? Number(process.env.FC_SEED) : 20261203;
const ROOMS = ["a", "b", "c"] as const;
const CLIENTS = 4;

type Step =
  | { kind: "emit"; node: number; rooms: string[]; except: string[] }
  | { kind: "join" | "leave"; client: number; room: string; thenDrop: number | undefined; emitFirst: boolean }
  | { kind: "drop"; client: number; node: number }
  | { kind: "pause"; ms: number };

const room = fc.constantFrom(...ROOMS);
const step: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant("emit" as const),
      node: fc.nat(1),
      rooms: fc.uniqueArray(room, { minLength: 1, maxLength: 2 }),
      except: fc.uniqueArray(room, { maxLength: 1 }),
    }),
  },
  {
    // Half of them drop at once: a restore then covers what went to the room just before (or after) the change.
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constantFrom("join" as const, "leave" as const),
      client: fc.nat(CLIENTS - 1),
      room,
      thenDrop: fc.option(fc.nat(1), { nil: undefined }),
      // The client's node emits to the room just before the change: a leave then waits for that
      // event (program order), and with thenDrop the connection drops before it applied.
      emitFirst: fc.boolean(),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("drop" as const), client: fc.nat(CLIENTS - 1), node: fc.nat(1) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("pause" as const), ms: fc.integer({ min: 0, max: 30 }) }) },
);

/**
 * Joins or leaves `room` without moving the client's offset, so that a later
 * restore's range still covers what was sent to the room around it (the
 * History's own join sends the client a marker, which would put all of that
 * behind its offset). The membership change is bounded by two entries of
 * the client's node: a witness there received `before` (so the node's
 * cursor was past it when it changed the rooms), and `after` was emitted
 * once the change was acknowledged (to a room nobody is in). `emitFirst`:
 * the node emits to the room between the two, just before the change.
 */
async function changeRoom(
  history: History,
  cluster: Cluster,
  witnesses: Map<string, ClientHandle>,
  client: ClientHandle,
  kind: "join" | "leave",
  room: string,
  emitFirst: boolean,
): Promise<void> {
  const uri = (client.socket.io as unknown as { uri: string }).uri;
  const node = cluster.nodes.find((n) => uri.startsWith(n.url))!;
  const witness = witnesses.get(node.url)!;
  const before = history.emit(node.io, { rooms: ["witness"] }, `${client.label}-before`);
  await waitFor(() => witness.track.received.some((r) => r.id === before.id), { message: "the witness marker" });
  if (emitFirst) history.emit(node.io, { rooms: [room] }, node.name);
  await client.socket.timeout(3000).emitWithAck(kind, room);
  const after = history.emit(node.io, { rooms: ["nobody"] }, `${client.label}-after`);
  const track = client.track;
  if (kind === "join") {
    track.memberships.push({ room, from: [{ id: before.id }, { id: after.id }] });
  } else {
    const m = [...track.memberships].reverse().find((x) => x.room === room && x.to === undefined);
    if (!m) throw new Error(`${client.label} is not recorded in ${room}`);
    m.to = [{ id: before.id }, { id: after.id }];
  }
}

describe("exactness under random schedules", () => {
  it("replays exactly what each client would have received live, through joins, leaves, drops and slow middlewares (property)", { timeout: 120_000 }, async () => {
    let runs = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(step, { minLength: 30, maxLength: 60 }), fc.boolean(), async (steps, slowMiddlewares) => {
        runs++;
        const cluster = await Cluster.start({
          databaseUrl: db.url,
          nodes: 2,
          skipMiddlewares: !slowMiddlewares,
          // A small ring: replays and stitches must not depend on it.
          adapter: { recentEntries: 8 },
          setup: (node) => {
            if (slowMiddlewares) node.io.use((socket, next) => void setTimeout(next, socket.recovered ? 25 : 0));
          },
        });
        try {
          const history = new History();
          const clients: Array<{ handle: ClientHandle; rooms: Set<string> }> = [];
          for (let i = 0; i < CLIENTS; i++) {
            const initial = [ROOMS[i % ROOMS.length]!];
            const socket = cluster.client(i % 2, { rooms: initial, reconnectionDelay: 0 });
            clients.push({ handle: history.watch(socket, `x${i}`, initial), rooms: new Set(initial) });
          }
          // One witness per node, never dropped: it bounds when the others change rooms (changeRoom).
          const witnesses = new Map<string, ClientHandle>();
          for (const node of cluster.nodes) {
            const socket = cluster.client(node, { rooms: ["witness"] });
            witnesses.set(node.url, history.watch(socket, `w-${node.name}`, ["witness"]));
          }
          const ready = (c: { handle: ClientHandle }) => c.handle.socket.connected && recoveryFields(c.handle.socket)._lastOffset !== undefined;
          await waitFor(() => [...clients, ...[...witnesses.values()].map((handle) => ({ handle }))].every(ready), {
            timeout: 10_000,
            message: "clients connected and primed",
          });
          for (const s of steps) {
            if (s.kind === "emit") {
              const node = cluster.node(s.node);
              history.emit(node.io, { rooms: s.rooms, except: s.except }, node.name);
            } else if (s.kind === "join" || s.kind === "leave") {
              const c = clients[s.client]!;
              if (s.kind === "join" && c.rooms.has(s.room)) continue;
              if (s.kind === "leave" && !c.rooms.has(s.room)) continue;
              await waitFor(() => c.handle.socket.connected, { timeout: 8000, message: `${c.handle.label} connected` });
              await changeRoom(history, cluster, witnesses, c.handle, s.kind, s.room, s.emitFirst);
              if (s.kind === "join") c.rooms.add(s.room);
              else c.rooms.delete(s.room);
              if (s.thenDrop !== undefined) {
                moveTo(c.handle.socket, cluster.node(s.thenDrop));
                dropConnection(c.handle.socket);
              }
            } else if (s.kind === "drop") {
              const c = clients[s.client]!;
              if (!c.handle.socket.connected) continue;
              moveTo(c.handle.socket, cluster.node(s.node));
              dropConnection(c.handle.socket);
            } else if (s.kind === "pause") {
              await new Promise((resolve) => setTimeout(resolve, s.ms));
            }
          }
          await waitFor(() => clients.every((c) => c.handle.socket.connected), { timeout: 10_000, message: "every client back" });
          for (const node of cluster.nodes) history.emit(node.io, {}, node.name);
          const lookup = () => logOffsets(cluster.node(0).pool);
          await history.settle({ lookup, timeout: 15_000 });
          history.assertClean({ lookup: await lookup() });
          expect(history.stats().refusals).toBe(0);
        } finally {
          await cluster.close();
        }
      }),
      { numRuns: 8, seed: SEED, endOnFailure: true },
    );
    expect(runs).toBeGreaterThanOrEqual(8);
  });
});
