/**
 * `inspect <socket-id>` against sessions a real cluster stored: it shows what
 * the row holds (namespace, rooms with join offsets, offsets, expiry, size of
 * `socket.data`) and never the private id, its hash, nor the data itself.
 */
import { createHash } from "node:crypto";
import { Decoder, Encoder } from "@msgpack/msgpack";
import { describe, expect, it } from "vitest";
import type { StoredSessionInfo } from "../src/inspect.js";
import { knownMigrations } from "../src/migrate.js";
import {
  closedPort,
  expectOneLineFailure,
  expectSuccess,
  freshSchema,
  migratePartially,
  runCli,
  runCliInProcess,
  sql,
  urlWithPort,
} from "./helpers/cli.js";
import { Cluster, goOffline, join, recoveryFields, waitFor, waitForHead, waitForSession } from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("cli_inspect");

const SECRET = "secret-value-6f1d";
const DATA = { token: SECRET, scores: [1, 2, 3], nested: { deep: true } };

interface Stored {
  sid: string;
  pid: string;
  schema: string;
}

/** A socket joined "lobby" at connection and "late" after 3 entries, set its data, and went away. */
async function storedSession(): Promise<Stored> {
  const schema = await freshSchema(db.url, "inspect");
  const cluster = await Cluster.start({
    databaseUrl: db.url,
    nodes: 2,
    adapter: { schema, pruneIntervalMs: 86_400_000 },
  });
  const pool = cluster.node(0).pool;
  const client = await cluster.connect(0, { rooms: ["lobby"] });
  for (let i = 0; i < 3; i++) cluster.node(1).io.emit("ev", { n: i });
  await waitForHead(pool, 3, "/", schema);
  await join(client, "late");
  await client.timeout(3000).emitWithAck("set-data", DATA);
  // The session's last offset is what was written to the socket: the 3 entries may still be held
  // back for its room changes (crash safety) until their skeleton commits, slow under load.
  await waitFor(() => recoveryFields(client)._lastOffset === "o3", { message: () => `the 3 entries (last offset ${recoveryFields(client)._lastOffset})` });
  const sid = client.id!;
  const pid = recoveryFields(client)._pid!;
  expect(pid).toBeTruthy();
  goOffline(client);
  await waitForSession(pool, sid, schema);
  return { sid, pid, schema };
}

/** The row as stored, decoded here with msgpack directly. */
async function storedRow(schema: string, sid: string) {
  const [row] = await sql<{ floor_offset: string; last_offset: string; payload: Buffer; expires_at: Date; disconnected_at: Date }>(
    db.url,
    `SELECT floor_offset::text, last_offset::text, payload, expires_at, disconnected_at FROM ${schema}.sessions WHERE sid = $1`,
    [sid],
  );
  const decoded = new Decoder().decode(row!.payload) as { r: Array<[string, number]>; d: unknown };
  return { ...row!, rooms: decoded.r, data: decoded.d };
}

/** Neither the pid, nor its sha256 in any usual spelling, nor the data's content. */
function expectNoSecrets(text: string, pid: string): void {
  const hash = createHash("sha256").update(pid).digest();
  for (const secret of [pid, hash.toString("hex"), hash.toString("base64"), hash.toString("base64url"), `\\\\x${hash.toString("hex")}`, SECRET]) {
    expect(text).not.toContain(secret);
  }
  expect(text).not.toMatch(/pid/i);
}

describe("inspect", () => {
  it("shows the stored session (--json): namespace, rooms with join offsets, offsets, expiry, data size", async () => {
    const { sid, pid, schema } = await storedSession();
    const row = await storedRow(schema, sid);
    const run = await runCliInProcess(["inspect", sid, "--json", "--schema", schema], { DATABASE_URL: db.url });
    expectSuccess(run);
    expectNoSecrets(run.stdout, pid);
    const { sessions } = JSON.parse(run.stdout) as { sessions: StoredSessionInfo[] };
    expect(sessions).toHaveLength(1);
    const session = sessions[0]!;
    expect(session).toMatchObject({
      namespace: "/",
      sid,
      rooms: row.rooms.map(([room, joinedAtOffset]) => ({ room, joinedAtOffset })),
      floorOffset: Number(row.floor_offset),
      lastOffset: Number(row.last_offset),
      disconnectedAt: row.disconnected_at.toISOString(),
      expiresAt: row.expires_at.toISOString(),
      live: true,
      dataBytes: new Encoder({ ignoreUndefined: true }).encode(DATA).byteLength,
      payloadBytes: row.payload.byteLength,
    });
    expect(row.data).toEqual(DATA);
    // What the cluster did: "lobby" joined before the 3 entries, "late" after them.
    const joinedAt = new Map(session.rooms.map((r) => [r.room, r.joinedAtOffset]));
    expect(joinedAt.get("lobby")).toBe(0);
    expect(joinedAt.get("late")).toBe(3);
    expect(session.lastOffset).toBe(3);
    expect(session.expiresInMs).toBeGreaterThan(0);
    expect(session.expiresInMs).toBeLessThanOrEqual(60_000);
  });

  it("prints it for people, and flags an expired session", async () => {
    const { sid, pid, schema } = await storedSession();
    const run = await runCli(["inspect", sid, "--database-url", db.url, "--schema", schema]);
    expectSuccess(run);
    expectNoSecrets(run.stdout, pid);
    const lines = run.stdout.trimEnd().split("\n");
    expect(lines[0]).toBe(`session of socket ${sid} in namespace "/"`);
    expect(run.stdout).toMatch(/\n  floor offset {2}0\n  last offset {3}3 \(the replay starts after it\)\n/);
    expect(run.stdout).toMatch(/\n  expires {7}\S+ \(in \d+\.\d s\)\n/);
    expect(run.stdout).toMatch(/\n  data {10}\d+ B \(whole payload \d+ B\)\n/);
    expect(run.stdout).toMatch(/\n  ROOM +JOINED AT OFFSET\n/);
    expect(run.stdout).toMatch(/\n  lobby +0\n/);
    expect(run.stdout).toMatch(/\n  late +3\n/);

    await sql(db.url, `UPDATE ${schema}.sessions SET expires_at = now() - interval '5 seconds' WHERE sid = $1`, [sid]);
    const expired = await runCliInProcess(["inspect", sid, "--schema", schema], { DATABASE_URL: db.url });
    expectSuccess(expired);
    expect(expired.stdout).toMatch(/\n  expires {7}\S+ \(EXPIRED \d+\.\d s ago: a restore will be refused; the next prune removes it\)\n/);
    const json = await runCliInProcess(["inspect", sid, "--json", "--schema", schema], { DATABASE_URL: db.url });
    const [session] = (JSON.parse(json.stdout) as { sessions: StoredSessionInfo[] }).sessions;
    expect(session!.live).toBe(false);
    expect(session!.expiresInMs).toBeLessThan(0);
  });

  it("fails (exit 1) for a socket id with no stored session, or not in the namespace asked for", async () => {
    const { sid, schema } = await storedSession();
    const unknown = await runCli(["inspect", "no-such-socket-id", "--database-url", db.url, "--schema", schema]);
    expectOneLineFailure(unknown, 1, new RegExp(`no session stored for socket id "no-such-socket-id" in schema "${schema}" \\(never stored, already restored, or pruned\\)`));
    const elsewhere = await runCliInProcess(["inspect", sid, "--namespace", "/chat", "--schema", schema], { DATABASE_URL: db.url });
    expectOneLineFailure(elsewhere, 1, /no session stored for socket id "[^"]+" in namespace "\/chat"/);
    expectSuccess(await runCliInProcess(["inspect", sid, "--namespace", "/", "--schema", schema], { DATABASE_URL: db.url }));
  });
});

describe("inspect failures", () => {
  it("cannot reach the database (a closed port): exit 1", async () => {
    const port = await closedPort();
    const run = await runCliInProcess(["inspect", "some-id", "--database-url", urlWithPort(db.url, port)]);
    expectOneLineFailure(run, 1, /cannot connect to Postgres at 127\.0\.0\.1:\d+\/t_cli_inspect_\w+: connection refused/);
  });

  it("refuses a missing schema and one with pending migrations: exit 1", async () => {
    await migratePartially(db.url, "inspect_older", 1);
    const missing = await runCliInProcess(["inspect", "some-id", "--schema", "no_such_schema"], { DATABASE_URL: db.url });
    expectOneLineFailure(missing, 1, /schema "no_such_schema" does not exist/);
    const older = await runCliInProcess(["inspect", "some-id", "--schema", "inspect_older"], { DATABASE_URL: db.url });
    expectOneLineFailure(older, 1, new RegExp(`schema "inspect_older" lacks ${knownMigrations().length - 1} migration\\(s\\)`));
  });

  it("takes a socket id that begins with '-' (1 in 64 of them) as the id, not as an option", async () => {
    const id = "-a-ulf8h7FglRKEnAAAA";
    for (const argv of [["inspect", id, "--schema", "no_such_schema"], ["inspect", "--schema", "no_such_schema", id]]) {
      const run = await runCliInProcess(argv, { DATABASE_URL: db.url });
      // Past parsing (not a usage error): it fails on the missing schema.
      expectOneLineFailure(run, 1, /schema "no_such_schema" does not exist/);
    }
  });

  it("refuses an empty or absurdly long socket id: exit 2", async () => {
    for (const id of ["", "x".repeat(257)]) {
      const run = await runCliInProcess(["inspect", id], { DATABASE_URL: db.url });
      expectOneLineFailure(run, 2, /the socket id must be 1 to 256 characters/);
    }
  });
});
