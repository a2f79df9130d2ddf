/**
 * Presenting sessions to a cluster, for the tests of refused recoveries
 * (recovery-refusals, hostile-handshake, security):
 *
 * - `prepare`: a client with a room and data, taken offline, its session written;
 * - `attempt`: a new client presenting a pid and an offset (the fields
 *   socket.io-client sends), or `present` for any handshake `auth` at all;
 * - `expectFresh`: the attempt got a new session, nothing of the old one;
 * - `expectHealthy`: the cluster still serves and recovers a normal client.
 */
import { expect } from "vitest";
import {
  Cluster,
  comeBack,
  connected,
  goOffline,
  logHead,
  recordEvents,
  recoveryFields,
  serverNoticed,
  waitFor,
  waitForSession,
  whoami,
  type ClientSocket,
  type WhoAmI,
} from "./cluster.js";

export interface Prepared {
  socket: ClientSocket;
  sid: string;
  pid: string;
  offset: string;
}

export interface Attempt {
  socket: ClientSocket;
  recovered: boolean;
  who: WhoAmI;
}

/** A client with rooms and data, taken offline; its session is written. */
export async function prepare(cluster: Cluster, nsp = "/", node = 0): Promise<Prepared> {
  const socket = await cluster.connect(node, { nsp, rooms: ["secret-room"] });
  await socket.timeout(3000).emitWithAck("set-data", { secret: "s3cr3t" });
  const sid = socket.id!;
  const { _pid: pid, _lastOffset: offset } = recoveryFields(socket);
  expect(pid).toBeTypeOf("string");
  expect(offset).toMatch(/^o\d+$/);
  goOffline(socket);
  await serverNoticed(cluster.node(node), sid, nsp);
  await waitForSession(cluster.node(node).pool, sid);
  return { socket, sid, pid: pid!, offset: offset! };
}

/** A raw client presenting `pid` and `offset` (anything, even a number) on its first connection. */
export async function attempt(cluster: Cluster, node: number, pid: string, offset: unknown, nsp = "/"): Promise<Attempt> {
  const socket = cluster.client(node, { nsp, autoConnect: false });
  const fields = recoveryFields(socket);
  fields._pid = pid;
  fields._lastOffset = offset as string;
  socket.connect();
  await connected(socket, 8000);
  const who = await whoami(socket);
  return { socket, recovered: socket.recovered, who };
}

/**
 * A client whose CONNECT packet carries exactly `auth` (JSON-encoded by the
 * parser). socket.io-client sends `{ pid, offset, ...auth }` when it holds a
 * pid, so `auth: { pid, offset }` presents any JSON value as either, where
 * the client's own fields could not (it sends no pid when `_pid` is falsy).
 */
export async function present(cluster: Cluster, node: number, auth: Record<string, unknown>, nsp = "/"): Promise<Attempt> {
  const socket = cluster.client(node, { nsp, auth, reconnectionDelay: 50 });
  await connected(socket, 8000);
  const who = await whoami(socket);
  return { socket, recovered: socket.recovered, who };
}

/** A refused attempt got a fresh session: nothing of the old one. */
export function expectFresh(result: Attempt, old: Prepared): void {
  expect(result.recovered).toBe(false);
  expect(result.who.recovered).toBe(false);
  expect(result.socket.id).not.toBe(old.sid);
  expect(result.who.id).not.toBe(old.sid);
  expect(result.who.rooms).toEqual([result.who.id]);
  expect(result.who.data).toEqual({});
  expect(recoveryFields(result.socket)._pid).not.toBe(old.pid);
}

/** The cluster still serves: a new client connects, receives, and recovers across nodes. */
export async function expectHealthy(cluster: Cluster): Promise<void> {
  const socket = await cluster.connect(1, { rooms: ["health"] });
  const got = recordEvents(socket);
  const sid = socket.id!;
  goOffline(socket);
  await serverNoticed(cluster.node(1), sid);
  const head = await logHead(cluster.node(0).pool);
  cluster.node(0).io.to("health").emit("ev", { n: "health" });
  await waitFor(async () => (await logHead(cluster.node(0).pool)) > head);
  expect(await comeBack(socket, cluster.node(0))).toBe(true);
  await waitFor(() => got.length === 1);
  expect(got[0]!.args[0]).toEqual({ n: "health" });
  cluster.closeClient(socket);
}
