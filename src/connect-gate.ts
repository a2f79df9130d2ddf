/**
 * Holds a socket's CONNECT until its namespace knows its cursor.
 *
 * A socket that connects before the namespace read its head has no join
 * position: it could only be settled later, at the head the namespace reads
 * then, and that head may already hold entries committed after the client
 * had its CONNECT (another node emitting to it at once). Those entries are at
 * or below the cursor the sequencer starts from: never delivered, never
 * replayed. Held until the cursor is known, every entry committed after the
 * CONNECT is above it, so it is delivered live.
 *
 * The hold is a namespace middleware (`nsp.use`), installed when the adapter
 * is created: Socket.IO runs middlewares after the socket is created and
 * before `_doConnect` sends the CONNECT. Restored sockets that skip the
 * middlewares (`skipMiddlewares`) went through `restoreSession`, which waits
 * for the namespace to start on its own.
 */
import type { Namespace, Socket } from "socket.io";

/** What the gate asks the namespace's adapter (looked up at each connection: `io.adapter()` can replace it). */
export interface ConnectGated {
  /** Resolves when a new socket may get its CONNECT. */
  admit(): Promise<void>;
}

const gated = new WeakSet<Namespace>();

function isGated(adapter: unknown): adapter is ConnectGated {
  return typeof adapter === "object" && adapter !== null && typeof (adapter as Partial<ConnectGated>).admit === "function";
}

/** Installs the gate on `nsp` once (a replaced adapter keeps the namespace's middleware). */
export function installConnectGate(nsp: Namespace): void {
  if (gated.has(nsp)) return;
  gated.add(nsp);
  nsp.use((socket: Socket, next: (err?: Error) => void) => {
    const adapter: unknown = socket.nsp.adapter;
    if (!isGated(adapter)) {
      next();
      return;
    }
    adapter.admit().then(
      () => next(),
      (err: unknown) => next(err instanceof Error ? err : new Error(String(err))),
    );
  });
}

/** Resolves when `started` does, or after `waitMs` (never, when false), whichever comes first. */
export function atMost(started: Promise<void>, waitMs: number | false): Promise<void> {
  if (waitMs === false) return started;
  let timer: NodeJS.Timeout | undefined;
  const giveUp = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, waitMs);
    timer.unref();
  });
  return Promise.race([started, giveUp]).finally(() => clearTimeout(timer));
}
