/**
 * The real demo (`demo/start.mjs`, what `npm start` runs) as a child process,
 * for the page test: started against a given database on free ports, stopped
 * like a terminal's Ctrl-C would (SIGINT), its output kept for diagnostics.
 */
import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";

const PROJECT_ROOT = path.resolve(import.meta.dirname, "..", "..");

export interface DemoProcess {
  /** The page, e.g. `http://127.0.0.1:41234`. */
  readonly url: string;
  /** Everything it printed so far (stdout and stderr). */
  output(): string;
  /** Pids of the node processes it printed (every start and restart). */
  nodePids(): number[];
  /** SIGINT, then waits for the exit; resolves with the exit code. Idempotent. */
  stop(): Promise<number | null>;
}

export async function startDemo(databaseUrl: string, { nodes = 2, timeoutMs = 60_000 } = {}): Promise<DemoProcess> {
  const child: ChildProcess = spawn(process.execPath, [path.join(PROJECT_ROOT, "demo", "start.mjs")], {
    cwd: PROJECT_ROOT,
    env: { ...process.env, DATABASE_URL: databaseUrl, DEMO_PORT: "0", DEMO_NODES: String(nodes) },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout!.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => (output += chunk));
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  let stopping: Promise<number | null> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGINT");
      return exited;
    })());

  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`the demo did not print its URL within ${timeoutMs} ms`)), timeoutMs);
    const onData = () => {
      const match = /^open (http:\/\/\S+)/m.exec(output);
      if (match) {
        clearTimeout(timer);
        child.stdout!.off("data", onData);
        resolve(match[1]!);
      }
    };
    const fail = (err: Error) => {
      clearTimeout(timer);
      void stop().then(() => reject(new Error(`${err.message}; it printed:\n${output}`)));
    };
    child.stdout!.on("data", onData);
    void exited.then((code) => fail(new Error(`the demo exited with code ${code} before printing its URL`)));
  });

  return {
    url,
    output: () => output,
    nodePids: () => [...output.matchAll(/^ {2}node-\d+ +\S+ +pid (\d+)/gm)].map((m) => Number(m[1])),
    stop,
  };
}

/** True while a process with this pid exists. */
export function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === "EPERM";
  }
}
