/**
 * Every child process of a bench run is started here and registered, so that
 * all of them die with the run: on normal exit, on failure, on Ctrl-C.
 */
import { fork, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";

const children = new Set<ChildProcess>();

function killAll(): void {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  }
}

process.on("exit", killAll);
// `on`, not `once`: Ctrl-C reaches this process twice (directly and relayed by the tsx CLI), and
// without a listener left tsx's own handler would exit before the run's database is dropped.
let aborting = false;
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(signal, () => {
    killAll();
    if (aborting) return;
    aborting = true;
    // Let run.ts' own handler (dropping the database) run; it exits the process.
    if (!process.emit("bench-abort" as never)) process.exit(130);
  });
}

export interface StartOptions {
  env?: Record<string, string>;
  /** Extra node flags, e.g. ["--cpu-prof", "--cpu-prof-dir=…"]. */
  nodeFlags?: string[];
  /** Name used in the lines the child writes on stderr. */
  label: string;
}

/** Forks `bench/<script>` under tsx with an IPC channel; resolves once it says "ready". */
export async function startChild(script: string, opts: StartOptions): Promise<ChildProcess> {
  const path = fileURLToPath(new URL(`../${script}`, import.meta.url));
  const child = fork(path, [], {
    execArgv: ["--import", "tsx", ...(opts.nodeFlags ?? [])],
    env: { ...process.env, ...opts.env },
    stdio: ["ignore", "inherit", "pipe", "ipc"],
  });
  children.add(child);
  // Sending to a child that just died (Ctrl-C reaches the whole process group) must not crash the run.
  child.on("error", (err) => process.stderr.write(`[${opts.label}] ${err.message}\n`));
  child.once("exit", () => children.delete(child));
  child.stderr?.setEncoding("utf8");
  child.stderr?.on("data", (text: string) => {
    for (const line of text.split("\n")) if (line.trim()) process.stderr.write(`[${opts.label}] ${line}\n`);
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${opts.label} not ready within 60 s`)), 60_000);
    child.on("message", (msg: unknown) => {
      if ((msg as { event?: string }).event === "ready") {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${opts.label} exited with ${code} before being ready`));
    });
  });
  return child;
}

/** Ends a child: SIGTERM, then SIGKILL after `graceMs`. */
export async function stopChild(child: ChildProcess, graceMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
  await exited;
  clearTimeout(timer);
}
