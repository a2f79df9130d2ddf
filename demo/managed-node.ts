/**
 * The supervisor's handle on one demo node process (node.ts): spawn it, learn
 * its port, stop it gracefully (SIGTERM: the node's `io.close()` flushes its
 * sessions) or by force, and restart it on the same port so its tabs, which
 * keep reconnecting to that port, come back to it.
 */
import { spawn, type ChildProcess } from "node:child_process";
import path from "node:path";
import { isNodeReport, type NodeReport, type SupervisorMessage } from "./node-protocol.js";

const PROJECT_ROOT = path.resolve(import.meta.dirname, "..");
const NODE_SCRIPT = path.join(import.meta.dirname, "node.ts");
/** A graceful stop that takes longer than this is turned into SIGKILL. */
const STOP_TIMEOUT_MS = 15_000;
/** Kept from the node's stderr to explain a failed start. */
const STDERR_TAIL_LINES = 20;

export type NodeState = "starting" | "up" | "restarting" | "stopping" | "down";

export interface ManagedNodeOptions {
  name: string;
  /** Resolves once the database answers; the node loads its modules meanwhile. */
  databaseUrl: () => Promise<string>;
  /** Port to listen on; 0 for any free one. */
  port: number;
  /** On the first start only: take any free port when `port` is in use. */
  portFallback: boolean;
  /** Origins of the page, allowed by the node's CORS settings. */
  pageOrigins: string[];
  /** Every report of the node (restores, refusals, socket counts, errors). */
  onReport: (node: ManagedNode, report: NodeReport) => void;
  /** The node exited while nobody asked it to. */
  onUnexpectedExit: (node: ManagedNode, code: number | null, signal: NodeJS.Signals | null) => void;
}

export class ManagedNode {
  state: NodeState = "down";
  port: number;
  pid: number | undefined;
  /** Sockets connected to it, as it last reported. */
  sockets = 0;
  restarts = 0;
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private stderrTail: string[] = [];

  constructor(private readonly options: ManagedNodeOptions) {
    this.port = options.port;
  }

  get name(): string {
    return this.options.name;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Spawns the process; resolves once it listens, rejects when it fails first. */
  start(): Promise<void> {
    const fallback = this.options.portFallback && this.restarts === 0;
    this.state = "starting";
    this.sockets = 0;
    this.stderrTail = [];
    const child = spawn(process.execPath, ["--import", "tsx", NODE_SCRIPT], {
      cwd: PROJECT_ROOT,
      env: {
        ...process.env,
        // Sent over IPC when the node asks for it (see "waiting").
        DATABASE_URL: "",
        NODE_NAME: this.name,
        PORT: String(this.port),
        PORT_FALLBACK: fallback ? "1" : "0",
        PAGE_ORIGINS: this.options.pageOrigins.join(","),
      },
      stdio: ["ignore", "inherit", "pipe", "ipc"],
    });
    this.child = child;
    this.pid = child.pid;
    child.stderr?.setEncoding("utf8");
    child.stderr?.on("data", (chunk: string) => {
      process.stderr.write(chunk);
      this.stderrTail.push(...chunk.split("\n").filter(Boolean));
      this.stderrTail.splice(0, Math.max(this.stderrTail.length - STDERR_TAIL_LINES, 0));
    });
    this.exited = new Promise((resolve) => child.once("exit", () => resolve()));

    return new Promise<void>((resolve, reject) => {
      let settled = false;
      child.on("message", (message: unknown) => {
        if (!isNodeReport(message)) return;
        if (message.type === "waiting") {
          this.options.databaseUrl().then(
            (url) => {
              if (child.connected) child.send({ type: "database", url } satisfies SupervisorMessage);
            },
            () => child.kill("SIGTERM"),
          );
        } else if (message.type === "ready" && !settled) {
          settled = true;
          this.port = message.port;
          this.state = "up";
          resolve();
        } else if (message.type === "failed" && !settled) {
          settled = true;
          reject(new Error(`${this.name} failed to start: ${message.message}`));
        }
        this.options.onReport(this, message);
      });
      child.once("exit", (code, signal) => {
        const wasRunning = this.state === "up" || this.state === "starting";
        this.state = this.state === "restarting" ? "restarting" : "down";
        this.pid = undefined;
        this.sockets = 0;
        if (!settled) {
          settled = true;
          reject(new Error(`${this.name} exited before listening (code ${code}, signal ${signal}): ${this.stderrTail.join(" | ")}`));
        } else if (wasRunning) {
          this.options.onUnexpectedExit(this, code, signal);
        }
      });
    });
  }

  /**
   * SIGTERM and wait for the exit (SIGKILL after STOP_TIMEOUT_MS);
   * `force`: SIGKILL right away. Safe to call when it is already down.
   */
  async stop({ force = false } = {}): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    if (this.state !== "restarting") this.state = "stopping";
    if (force) {
      child.kill("SIGKILL");
    } else {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
      await this.exited;
      clearTimeout(timer);
    }
    await this.exited;
  }

  /** Graceful stop, then a new process on the same port. */
  async restart(): Promise<void> {
    if (this.state === "restarting" || this.state === "stopping") return;
    this.state = "restarting";
    this.restarts++;
    await this.stop();
    await this.start();
  }
}
