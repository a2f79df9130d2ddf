/**
 * Runs a vendored peer suite (test/peer/) against one target: sets mocha's
 * globals, a test database, then imports the suite unchanged. One target per
 * test file: the suites register their describe blocks when imported.
 */
import "./mocha-shim.js";
import net from "node:net";
import { afterAll, beforeAll, describe } from "vitest";
import { createTestDatabase, type TestDatabase } from "../helpers/database.js";
import { configurePeerTarget, endPeerPools, type PeerTarget } from "./target.js";

/** Imported by URL so that the type checker does not walk into the vendored sources (theirs, not type-checked here). */
async function importVendored(path: string): Promise<Record<string, unknown>> {
  return (await import(new URL(path, import.meta.url).href)) as Record<string, unknown>;
}

function useDatabase(label: string): () => string {
  let db: TestDatabase | undefined;
  beforeAll(async () => {
    db = await createTestDatabase(label, { migrated: true });
    // For the forked primaries of the node:cluster test.
    process.env.PEER_DATABASE_URL = db.url;
  });
  afterAll(async () => {
    await endPeerPools();
    await db?.drop();
  });
  return () => {
    if (!db) throw new Error("database not created yet");
    return db.url;
  };
}

/** `@socket.io/postgres-adapter`'s test/index.ts (and test/node-cluster.ts, with `nodeCluster`). */
export async function runPostgresAdapterSuite(target: PeerTarget, { nodeCluster = false } = {}): Promise<void> {
  configurePeerTarget({ target, databaseUrl: useDatabase(`peer_pg_${target.replace("-", "_")}`) });
  process.env.PEER_TARGET = target;
  await importVendored("./postgres-adapter/index.ts");
  if (nodeCluster) {
    // The fixture is a .ts file forked by the suite: the children need the same loader.
    if (!process.execArgv.includes("tsx")) process.execArgv.push("--import", "tsx");
    await importVendored("./postgres-adapter/node-cluster.ts");
  }
}

/** `@socket.io/redis-streams-adapter`'s connection-state-recovery suite, on one client kind. */
export async function runRedisStreamsRecoverySuite(target: PeerTarget, adapterOptions: Record<string, unknown> = {}): Promise<void> {
  const { peerRedisClient } = await import("./target.js");
  configurePeerTarget({ target, databaseUrl: useDatabase(`peer_csr_${target.replace("-", "_")}`) });
  const { csrTestSuite } = (await importVendored("./redis-streams-adapter/connection-state-recovery.ts")) as {
    csrTestSuite: (init: () => Promise<unknown>, opts: Record<string, unknown>) => void;
  };
  const redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
  if (target === "redis-streams" && !(await reachable(new URL(redisUrl)))) {
    // The comparison needs a Redis; without one it is skipped, visibly.
    describe.skip(`against ${target} (no Redis at ${redisUrl})`, () => csrTestSuite(peerRedisClient, adapterOptions));
    return;
  }
  describe(`against ${target}`, () => csrTestSuite(peerRedisClient, adapterOptions));
}

function reachable(url: URL): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: url.hostname, port: Number(url.port || 6379) });
    socket.setTimeout(1000);
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
    socket.once("timeout", () => done(false));
  });
}
