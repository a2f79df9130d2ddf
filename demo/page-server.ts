/**
 * The demo page's HTTP server: the static files of demo/public, the
 * socket.io client from the installed socket.io-client package, and a small
 * JSON API for the cluster panel:
 *   GET  /api/cluster               -> whatever `cluster()` returns
 *   POST /api/nodes/<name>/restart  -> 202 (the restart goes on), 404, 409
 *   POST /api/nodes/<name>/crash    -> 202 (SIGKILLed: it writes nothing), 404, 409
 *   POST /api/emit/worker           -> 202: a worker process emits one event (createEmitter), 409
 *   POST /api/emit/rollback         -> 202: a worker process commits one event and rolls one back, 409
 */
import { readFile } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createRequire } from "node:module";
import type { AddressInfo } from "node:net";
import path from "node:path";

const PUBLIC_DIR = path.join(import.meta.dirname, "public");
const CLIENT_DIST = path.join(
  path.dirname(createRequire(import.meta.url).resolve("socket.io-client/package.json")),
  "dist",
  "socket.io.min.js",
);

/** The only files served: path -> [file, content type]. */
const FILES: Record<string, [string, string]> = {
  "/": [path.join(PUBLIC_DIR, "index.html"), "text/html; charset=utf-8"],
  "/app.js": [path.join(PUBLIC_DIR, "app.js"), "text/javascript; charset=utf-8"],
  "/style.css": [path.join(PUBLIC_DIR, "style.css"), "text/css; charset=utf-8"],
  "/socket.io.min.js": [CLIENT_DIST, "text/javascript; charset=utf-8"],
};

export interface PageApi {
  cluster(): Promise<unknown>;
  /** Starts a restart; "unknown" or "busy" when it cannot. */
  restart(name: string): "started" | "unknown" | "busy";
  /** SIGKILLs the node (a crash: it writes nothing); "unknown" or "busy" when it cannot. */
  crash(name: string): "started" | "unknown" | "busy";
  /** Starts a worker process that emits with createEmitter; "busy" before the database is up. */
  emitFromWorker(mode: "worker" | "rollback"): "started" | "busy";
}

export interface PageServer {
  readonly port: number;
  close(): Promise<void>;
}

function send(res: ServerResponse, status: number, type: string, body: string | Buffer): void {
  res.writeHead(status, { "content-type": type, "cache-control": "no-store" });
  res.end(body);
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  send(res, status, "application/json; charset=utf-8", JSON.stringify(body));
}

async function handle(req: IncomingMessage, res: ServerResponse, api: PageApi): Promise<void> {
  const url = new URL(req.url ?? "/", "http://page");
  const action = /^\/api\/nodes\/([\w-]+)\/(restart|crash)$/.exec(url.pathname);
  const emit = /^\/api\/emit\/(worker|rollback)$/.exec(url.pathname);
  if (req.method === "POST" && (action || emit)) {
    // Only the page itself acts: another site open in the browser could POST here too.
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== `http://${req.headers.host}`) {
      sendJson(res, 403, { error: "cross-origin request" });
      return;
    }
    const outcome = emit
      ? api.emitFromWorker(emit[1] as "worker" | "rollback")
      : action![2] === "crash"
        ? api.crash(action![1]!)
        : api.restart(action![1]!);
    sendJson(res, outcome === "started" ? 202 : outcome === "unknown" ? 404 : 409, { outcome });
  } else if (req.method === "GET" && url.pathname === "/api/cluster") {
    sendJson(res, 200, await api.cluster());
  } else if (req.method === "GET" && FILES[url.pathname]) {
    const [file, type] = FILES[url.pathname]!;
    send(res, 200, type, await readFile(file));
  } else {
    send(res, 404, "text/plain; charset=utf-8", "not found");
  }
}

/** Listens on 127.0.0.1:`port`, or on any free port when it is taken and `portFallback` is set. */
export async function startPageServer(port: number, portFallback: boolean, api: PageApi): Promise<PageServer> {
  const server: Server = createServer((req, res) => {
    handle(req, res, api).catch((err: unknown) => {
      if (!res.headersSent) sendJson(res, 500, { error: err instanceof Error ? err.message : String(err) });
      else res.destroy();
    });
  });
  const listen = (p: number) =>
    new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(p, "127.0.0.1", () => {
        server.off("error", reject);
        resolve();
      });
    });
  try {
    await listen(port);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "EADDRINUSE" || !portFallback) throw err;
    await listen(0);
  }
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
