/**
 * `npm start`: the demo. Runs supervisor.ts in its own process group and
 * relays stop requests to it.
 *
 * Why a separate group: Ctrl-C in a terminal signals every process of the
 * foreground group. Postgres would take SIGINT as "fast shutdown" and the
 * nodes would stop on their own, so the nodes' last session writes would
 * find no database. Detached, the supervisor gets exactly the requests
 * relayed here and stops the nodes before Postgres.
 *
 * One Ctrl-C often arrives more than once within milliseconds (from the
 * terminal, and forwarded again by npm), so signals closer than
 * DUPLICATE_WINDOW_MS count as one; a later one forces.
 *
 * Plain JavaScript on purpose: it starts without a TypeScript loader, so the
 * supervisor (which needs one) is spawned a moment sooner.
 */
import { spawn } from "node:child_process";
import path from "node:path";

const DUPLICATE_WINDOW_MS = 500;
const SUPERVISOR = path.join(import.meta.dirname, "supervisor.ts");

const supervisor = spawn(process.execPath, ["--import", "tsx", SUPERVISOR], {
  cwd: path.resolve(import.meta.dirname, ".."),
  detached: true,
  // The IPC channel tells the supervisor when this process is gone, even killed.
  stdio: ["ignore", "inherit", "inherit", "ipc"],
  // "ready in" counts from here.
  env: { ...process.env, DEMO_LAUNCHED_AT: String(Math.round(Date.now() - process.uptime() * 1000)) },
});

let lastRelayed = 0;
function relay() {
  const now = Date.now();
  if (now - lastRelayed < DUPLICATE_WINDOW_MS) return;
  lastRelayed = now;
  supervisor.kill("SIGTERM");
}
process.on("SIGINT", relay);
process.on("SIGTERM", relay);

supervisor.on("exit", (code, signal) => process.exit(code ?? (signal ? 1 : 0)));
