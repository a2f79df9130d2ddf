/**
 * A loopback TCP proxy between the nodes and Postgres that the test controls:
 *
 * - `freeze(match)`: the matching connections stop forwarding in both
 *   directions while both sockets stay open (a half-open network: nothing is
 *   closed, nothing arrives);
 * - `refuse()` / `accept()`: every connection is reset and new ones are reset
 *   as soon as they open, until `accept()` (Postgres unreachable);
 * - `cut(match)`: resets the matching connections;
 * - `hold()` / `release()`: new connections wait, their bytes kept, until
 *   `release()` (a database that is slow to reach: TLS, another region);
 * - `stall(match)` / `unstall()`: the matching open connections stop being
 *   read, their bytes kept, until `unstall()` (a slow answer, not a dead one);
 * - `delayAnswers(match, ms)`: what Postgres sends on the matching open
 *   connections reaches the node `ms` later (latency on some connections only);
 * - `holdReplies(match)`: the matching connections stop forwarding what the
 *   server sends, while what the client sends still reaches the server (a
 *   statement runs and commits, its answer never arrives).
 *
 * It learns each connection's `application_name` from the startup packet
 * (plaintext: int32 length, int32 protocol 196608, then key\0value\0 pairs,
 * then \0), which is how the listener connection is told apart
 * (`LISTENER_APPLICATION_NAME`). Bytes are forwarded as they come; the parser
 * only reads a copy of the first ones.
 */
import net from "node:net";

export interface ProxiedConnection {
  readonly id: number;
  /** From the startup packet; "" until it is parsed or when the client sent none. */
  readonly applicationName: string;
  readonly frozen: boolean;
  /** Server → client bytes are dropped (see `holdReplies`). */
  readonly repliesHeld: boolean;
}

export interface PostgresProxy {
  readonly port: number;
  /** `url` with its port replaced by the proxy's. */
  through(url: string): string;
  /** Open connections. */
  connections(): ProxiedConnection[];
  /** Freezes the open connections that match; returns how many. */
  freeze(match: (c: ProxiedConnection) => boolean): number;
  /** Resets the open connections that match; returns how many. */
  cut(match: (c: ProxiedConnection) => boolean): number;
  /** Drops what the server sends on the open connections that match; returns how many. */
  holdReplies(match: (c: ProxiedConnection) => boolean): number;
  /** Resets every connection and every new one until `accept()`. */
  refuse(): void;
  accept(): void;
  /** New connections wait (nothing is forwarded, nothing lost) until `release()`. */
  hold(): void;
  /** Lets the held connections through, in the order they came, and new ones at once. */
  release(): void;
  /** Connections waiting in `hold()`. */
  held(): number;
  /**
   * Stops reading the matching open connections in both directions; their
   * bytes wait (nothing is lost) until `unstall()`. Returns how many.
   */
  stall(match: (c: ProxiedConnection) => boolean): number;
  unstall(): void;
  /** Postgres' bytes on the matching open connections are forwarded `ms` late (in order). Returns how many. */
  delayAnswers(match: (c: ProxiedConnection) => boolean, ms: number): number;
  close(): Promise<void>;
}

const SSL_REQUEST = 80877103;
const GSSENC_REQUEST = 80877104;
const PROTOCOL_3 = 196608;

interface Connection extends ProxiedConnection {
  applicationName: string;
  frozen: boolean;
  repliesHeld: boolean;
  stalled: boolean;
  answerDelayMs: number;
  downstream: net.Socket;
  upstream: net.Socket;
}

export async function startPostgresProxy(targetPort: number): Promise<PostgresProxy> {
  const open = new Map<number, Connection>();
  let refusing = false;
  let holding = false;
  /** Connections accepted during hold(): paused (their bytes wait in the socket) until release(). */
  const waiting: Array<{ downstream: net.Socket; forward(): void }> = [];
  let nextId = 1;

  const destroy = (c: Connection) => {
    open.delete(c.id);
    c.downstream.destroy();
    c.upstream.destroy();
  };

  const server = net.createServer((downstream) => {
    downstream.on("error", () => undefined);
    if (refusing) {
      downstream.resetAndDestroy();
      return;
    }
    if (holding) {
      // No "data" listener yet: the socket stays paused and keeps what the client sends.
      waiting.push({ downstream, forward: () => forward(downstream) });
      return;
    }
    forward(downstream);
  });
  const forward = (downstream: net.Socket) => {
    if (downstream.destroyed) return;
    const upstream = net.connect(targetPort, "127.0.0.1");
    upstream.on("error", () => undefined);
    const c: Connection = { id: nextId++, applicationName: "", frozen: false, repliesHeld: false, stalled: false, answerDelayMs: 0, downstream, upstream };
    open.set(c.id, c);
    let head = Buffer.alloc(0);
    let parsing = true;
    downstream.on("data", (chunk: Buffer) => {
      if (parsing) {
        head = Buffer.concat([head, chunk]);
        const parsed = parseStartup(head);
        if (parsed.done) {
          parsing = false;
          c.applicationName = parsed.applicationName;
          head = Buffer.alloc(0);
        }
      }
      if (!c.frozen) upstream.write(chunk);
    });
    upstream.on("data", (chunk: Buffer) => {
      if (c.frozen || c.repliesHeld) return;
      if (c.answerDelayMs > 0) setTimeout(() => downstream.writable && downstream.write(chunk), c.answerDelayMs);
      else downstream.write(chunk);
    });
    // A close on either side closes the other (also when frozen: nothing of ours must linger).
    downstream.on("close", () => destroy(c));
    upstream.on("close", () => destroy(c));
  };
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as net.AddressInfo).port;

  const matching = (match: (c: ProxiedConnection) => boolean) => [...open.values()].filter((c) => match(c));

  return {
    port,
    through(url) {
      const parsed = new URL(url);
      parsed.port = String(port);
      return parsed.toString();
    },
    connections: () =>
      [...open.values()].map(({ id, applicationName, frozen, repliesHeld }) => ({ id, applicationName, frozen, repliesHeld })),
    freeze(match) {
      const hit = matching(match).filter((c) => !c.frozen);
      for (const c of hit) c.frozen = true;
      return hit.length;
    },
    holdReplies(match) {
      const hit = matching(match).filter((c) => !c.repliesHeld);
      for (const c of hit) c.repliesHeld = true;
      return hit.length;
    },
    cut(match) {
      const hit = matching(match);
      for (const c of hit) {
        c.downstream.resetAndDestroy();
        destroy(c);
      }
      return hit.length;
    },
    refuse() {
      refusing = true;
      for (const c of [...open.values()]) {
        c.downstream.resetAndDestroy();
        destroy(c);
      }
    },
    accept() {
      refusing = false;
    },
    hold() {
      holding = true;
    },
    release() {
      holding = false;
      for (const w of waiting.splice(0)) w.forward();
    },
    held: () => waiting.filter((w) => !w.downstream.destroyed).length,
    stall(match) {
      const hit = matching(match).filter((c) => !c.stalled);
      for (const c of hit) {
        c.stalled = true;
        c.downstream.pause();
        c.upstream.pause();
      }
      return hit.length;
    },
    delayAnswers(match, ms) {
      const hit = matching(match);
      for (const c of hit) c.answerDelayMs = ms;
      return hit.length;
    },
    unstall() {
      for (const c of open.values()) {
        if (!c.stalled) continue;
        c.stalled = false;
        c.downstream.resume();
        c.upstream.resume();
      }
    },
    async close() {
      refusing = true;
      for (const w of waiting.splice(0)) w.downstream.destroy();
      for (const c of [...open.values()]) destroy(c);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * Reads the startup packet at the start of `head`. An SSL or GSS encryption
 * request (8 bytes) comes first when the client asks for encryption; the
 * startup packet then follows it (plaintext only here: the server says no).
 */
function parseStartup(head: Buffer): { done: false } | { done: true; applicationName: string } {
  let at = 0;
  for (;;) {
    if (head.length < at + 8) return { done: false };
    const length = head.readInt32BE(at);
    const code = head.readInt32BE(at + 4);
    if (length === 8 && (code === SSL_REQUEST || code === GSSENC_REQUEST)) {
      at += 8;
      continue;
    }
    if (code !== PROTOCOL_3) return { done: true, applicationName: "" };
    if (head.length < at + length) return { done: false };
    const fields = head.subarray(at + 8, at + length - 1).toString("utf8").split("\0");
    for (let i = 0; i + 1 < fields.length; i += 2) {
      if (fields[i] === "application_name") return { done: true, applicationName: fields[i + 1]! };
    }
    return { done: true, applicationName: "" };
  }
}
