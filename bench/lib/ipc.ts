/**
 * A small request/answer protocol over Node's IPC channel (child_process.fork),
 * shared by the bench's node and client processes.
 *
 * The parent calls `call(child, cmd, args)`; the child answers through the
 * handler registered with `serve()`. Children also push unsolicited
 * `{ event, data }` messages (e.g. "first disconnect") that the parent reads
 * with `onEvent`.
 */
import type { ChildProcess } from "node:child_process";

interface Request {
  id: number;
  cmd: string;
  args: unknown;
}

interface Answer {
  id: number;
  ok: boolean;
  value?: unknown;
  error?: string;
}

interface Push {
  event: string;
  data: unknown;
}

const pending = new WeakMap<ChildProcess, Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>>();
let nextId = 1;

function table(child: ChildProcess) {
  let map = pending.get(child);
  if (!map) {
    const fresh = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
    map = fresh;
    pending.set(child, fresh);
    child.on("message", (raw: unknown) => {
      const msg = raw as Partial<Answer>;
      if (typeof msg.id !== "number") return;
      const waiter = fresh.get(msg.id);
      if (!waiter) return;
      fresh.delete(msg.id);
      if (msg.ok) waiter.resolve(msg.value);
      else waiter.reject(new Error(msg.error ?? "child failed"));
    });
    child.once("exit", (code, signal) => {
      for (const waiter of fresh.values()) waiter.reject(new Error(`child exited (${code ?? signal}) before answering`));
      fresh.clear();
    });
  }
  return map;
}

/** Sends `cmd` to `child` and resolves with its answer; rejects after `timeoutMs`. */
export function call<T = unknown>(child: ChildProcess, cmd: string, args: unknown = {}, timeoutMs = 60_000): Promise<T> {
  const map = table(child);
  const id = nextId++;
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      map.delete(id);
      reject(new Error(`no answer to "${cmd}" within ${timeoutMs} ms`));
    }, timeoutMs);
    map.set(id, {
      resolve: (v) => {
        clearTimeout(timer);
        resolve(v as T);
      },
      reject: (e) => {
        clearTimeout(timer);
        reject(e);
      },
    });
    if (!child.connected) {
      map.delete(id);
      clearTimeout(timer);
      reject(new Error(`cannot send "${cmd}": the child is gone`));
      return;
    }
    child.send({ id, cmd, args } satisfies Request, (err) => {
      if (!err) return;
      map.delete(id);
      clearTimeout(timer);
      reject(new Error(`cannot send "${cmd}": ${err.message}`));
    });
  });
}

/** Calls `fn` for every pushed `event` from `child`. */
export function onEvent(child: ChildProcess, event: string, fn: (data: unknown) => void): void {
  child.on("message", (raw: unknown) => {
    const msg = raw as Partial<Push>;
    if (msg.event === event) fn(msg.data);
  });
}

export type Handlers = Record<string, (args: never) => unknown>;

/**
 * Child side: answers requests with `handlers[cmd](args)`. The child exits as
 * soon as its parent goes away (IPC channel closed), so no process outlives a run.
 */
export function serve(handlers: Handlers): void {
  if (!process.send) throw new Error("this module runs as a forked child of bench/run.ts");
  process.on("message", (raw: unknown) => {
    const req = raw as Request;
    const handler = handlers[req.cmd] as ((args: unknown) => unknown) | undefined;
    Promise.resolve()
      .then(() => {
        if (!handler) throw new Error(`unknown command ${req.cmd}`);
        return handler(req.args);
      })
      .then(
        (value) => process.send?.({ id: req.id, ok: true, value } satisfies Answer),
        (err: unknown) =>
          process.send?.({ id: req.id, ok: false, error: err instanceof Error ? err.message : String(err) } satisfies Answer),
      );
  });
  process.on("disconnect", () => process.exit(0));
}

/** Child side: an unsolicited message to the parent. */
export function push(event: string, data: unknown = null): void {
  process.send?.({ event, data } satisfies Push);
}

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes of one machine. */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}
