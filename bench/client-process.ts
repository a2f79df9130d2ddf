/**
 * Many socket.io-client sockets in one process (websocket transport, one
 * manager each), driven by bench/run.ts over IPC. Each socket keeps a
 * ClientLedger of the bench events it receives; the answers carry only
 * summaries, never per-event data.
 *
 * Environment: OFFSET_KIND ("ours" | "redis" | empty).
 */
import { io as connect, type Socket } from "socket.io-client";
import { nowMs, push, serve } from "./lib/ipc.js";
import { ClientLedger, percentile, type BenchPayload, type OffsetKind } from "./receipts.js";

interface Client {
  socket: Socket;
  ledger: ClientLedger;
  /** The room it joined (auth.room), "all" otherwise: expectations are given per group. */
  group: string;
  disconnectedAt?: number;
  reconnectedAt?: number;
  recovered?: boolean;
  /** Reconnection attempts before it was back (1 when the first one succeeded). */
  attempts?: number;
}

const offsetKind = (process.env.OFFSET_KIND || undefined) as OffsetKind;
const clients: Client[] = [];
let expectedTotal = 0;
let completed = 0;
let waiters: Array<() => void> = [];
let firstDisconnectPushed = false;
/** Self-check of the accounting: the Nth receipt of client 0 is dropped / recorded twice. */
const inject = { dropAt: -1, dupAt: -1, seen: 0 };

function onReceipt(client: Client, payload: BenchPayload, offset: unknown): void {
  const at = nowMs();
  const isClient0 = client === clients[0];
  if (isClient0) {
    inject.seen++;
    if (inject.seen === inject.dropAt) return;
  }
  if (client.ledger.record(payload, typeof offset === "string" ? offset : undefined, at)) completed++;
  if (isClient0 && inject.seen === inject.dupAt) client.ledger.record(payload, undefined, at);
  if (completed === expectedTotal && waiters.length) {
    const ready = waiters;
    waiters = [];
    ready.forEach((fn) => fn());
  }
}

function recount(): void {
  expectedTotal = clients.reduce((n, c) => n + c.ledger.expectedCount, 0);
  completed = clients.reduce((n, c) => n + c.ledger.distinctExpected, 0);
}

type Expectations = Record<string, Record<number, number | { from: number; to: number }>>;

function selected(indices?: number[]): Client[] {
  return indices ? indices.map((i) => clients[i]!) : clients;
}

const churn = {
  timer: undefined as NodeJS.Timeout | undefined,
  away: new Set<Client>(),
  dropped: 0,
  recovered: 0,
  refused: 0,
  /** Indices of clients that came back with a fresh session at least once (they may miss events). */
  refusedClients: new Set<number>(),
};

function comeBack(c: Client, urls: string[]): void {
  (c.socket.io as unknown as { uri: string }).uri = urls[Math.floor(Math.random() * urls.length)]!;
  const failed = () => {
    c.socket.off("connect", connected);
    setTimeout(() => comeBack(c, urls), 1000);
  };
  const connected = () => {
    c.socket.off("connect_error", failed);
    churn.away.delete(c);
    if (c.socket.recovered) churn.recovered++;
    else {
      churn.refused++;
      churn.refusedClients.add(clients.indexOf(c));
    }
  };
  c.socket.once("connect", connected);
  c.socket.once("connect_error", failed);
  c.socket.connect();
}

function churnStats() {
  return { dropped: churn.dropped, recovered: churn.recovered, refused: churn.refused, away: churn.away.size, refusedClients: [...churn.refusedClients] };
}

serve({
  connect: async ({ url, count, rooms, reconnection = true }: { url: string; count: number; rooms?: string[]; reconnection?: boolean }) => {
    const created: Client[] = [];
    for (let i = 0; i < count; i++) {
      const room = rooms?.[i % rooms.length];
      const socket = connect(url, {
        transports: ["websocket"],
        forceNew: true,
        reconnection,
        auth: room === undefined ? {} : { room },
      });
      const client: Client = { socket, ledger: new ClientLedger(offsetKind), group: room ?? "all" };
      socket.on("b", (payload: BenchPayload, offset: unknown) => onReceipt(client, payload, offset));
      created.push(client);
      clients.push(client);
    }
    await Promise.all(
      created.map(
        (c) =>
          new Promise<void>((resolve, reject) => {
            if (c.socket.connected) return resolve();
            const timer = setTimeout(() => reject(new Error(`a client did not connect to ${url} within 30 s`)), 30_000);
            c.socket.once("connect", () => {
              clearTimeout(timer);
              resolve();
            });
          }),
      ),
    );
    return { first: clients.length - count, count };
  },
  arm: ({ epoch, expect, keepLatencies }: { epoch: number; expect: Expectations; keepLatencies?: boolean }) => {
    for (const c of clients) c.ledger.arm(epoch, expect[c.group] ?? expect.all ?? {}, keepLatencies);
    recount();
    return { expectedTotal };
  },
  expect: ({ expect }: { expect: Expectations }) => {
    for (const c of clients) c.ledger.expect(expect[c.group] ?? expect.all ?? {});
    recount();
    return { expectedTotal, completed };
  },
  /** Resolves when every expected event reached every client (or when `clients` did), or after timeoutMs. */
  wait: async ({ timeoutMs, clients: indices }: { timeoutMs: number; clients?: number[] }) => {
    const done = () =>
      indices ? selected(indices).every((c) => c.ledger.distinctExpected === c.ledger.expectedCount) : completed >= expectedTotal;
    const deadline = Date.now() + timeoutMs;
    while (!done() && Date.now() < deadline) {
      if (indices) await new Promise((resolve) => setTimeout(resolve, 5));
      else await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(200, deadline - Date.now()));
        waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    const chosen = selected(indices);
    return { complete: done(), lastAt: Math.max(0, ...chosen.map((c) => c.ledger.lastAt)), completed, expectedTotal };
  },
  summary: ({ splitAtSeq, clients: indices }: { splitAtSeq?: number; clients?: number[] }) => {
    const chosen = selected(indices);
    const sums = { received: 0, expected: 0, lost: 0, duplicated: 0, reordered: 0, lostUpTo: 0, lostAfter: 0, duplicatedUpTo: 0, duplicatedAfter: 0 };
    let regressions: number | undefined;
    let clientsWithLoss = 0;
    const orders = new Set<string>();
    const latencies: number[] = [];
    for (const c of chosen) {
      const s = c.ledger.summary(splitAtSeq);
      for (const key of Object.keys(sums) as Array<keyof typeof sums>) sums[key] += s[key];
      if (s.regressions !== undefined) regressions = (regressions ?? 0) + s.regressions;
      if (s.lost > 0) clientsWithLoss++;
      if (s.lost === 0 && s.duplicated === 0) orders.add(s.orderHash);
      for (const l of c.ledger.latencies) latencies.push(l);
    }
    latencies.sort((a, b) => a - b);
    return {
      clients: chosen.length,
      ...sums,
      regressions,
      clientsWithLoss,
      /** Among clients that got exactly their expected set. */
      distinctOrders: orders.size,
      latency: latencies.length
        ? { n: latencies.length, p50: percentile(latencies, 50), p90: percentile(latencies, 90), p99: percentile(latencies, 99), max: latencies.at(-1) }
        : undefined,
    };
  },
  /** From now on, a socket that loses its connection reconnects to `url` (socket.io-client 4.8 reads io.uri on reconnect). */
  redirect: ({ url }: { url: string }) => {
    for (const c of clients) {
      c.socket.once("disconnect", () => {
        c.disconnectedAt = nowMs();
        (c.socket.io as unknown as { uri: string }).uri = url;
        if (!firstDisconnectPushed) {
          firstDisconnectPushed = true;
          push("first-disconnect", c.disconnectedAt);
        }
        const counted = (n: number) => (c.attempts = n);
        c.socket.io.on("reconnect_attempt", counted);
        c.socket.once("connect", () => {
          c.reconnectedAt = nowMs();
          c.recovered = c.socket.recovered;
          c.socket.io.off("reconnect_attempt", counted);
        });
      });
    }
    return null;
  },
  "recovery-stats": () => {
    const gone = clients.filter((c) => c.disconnectedAt !== undefined);
    const back = gone.filter((c) => c.reconnectedAt !== undefined);
    return {
      disconnected: gone.length,
      reconnected: back.length,
      recovered: back.filter((c) => c.recovered).length,
      firstDisconnectAt: gone.length ? Math.min(...gone.map((c) => c.disconnectedAt!)) : null,
      lastReconnectAt: back.length ? Math.max(...back.map((c) => c.reconnectedAt!)) : null,
      /** Clients that needed more than one attempt (the first failed: the backoff doubles). */
      retried: back.filter((c) => (c.attempts ?? 1) > 1).length,
    };
  },
  /** Closes the transport of clients (the server sees "transport close" and stores their sessions). */
  drop: ({ clients: indices }: { clients: number[] }) => {
    for (const c of selected(indices)) c.socket.io.engine.close();
    return null;
  },
  /** Reconnects clients created with reconnection: false; resolves once connected, with `recovered`. */
  reconnect: async ({ clients: indices, url }: { clients: number[]; url?: string }) => {
    const chosen = selected(indices);
    if (url) for (const c of chosen) (c.socket.io as unknown as { uri: string }).uri = url;
    await Promise.all(
      chosen.map(
        (c) =>
          new Promise<void>((resolve) => {
            c.socket.once("connect", () => resolve());
            c.socket.connect();
          }),
      ),
    );
    return chosen.map((c) => c.socket.recovered);
  },
  /** Like reconnect, with each client's time from connect() to connected and whether it recovered. */
  "reconnect-timed": async ({ clients: indices, url }: { clients: number[]; url?: string }) => {
    const chosen = selected(indices);
    if (url) for (const c of chosen) (c.socket.io as unknown as { uri: string }).uri = url;
    return Promise.all(
      chosen.map(
        (c) =>
          new Promise<{ ms: number; recovered: boolean; failed?: boolean }>((resolve) => {
            const started = nowMs();
            // Without reconnection, a refused connection (e.g. the middleware timed out) ends the attempt.
            const failed = (): void => {
              c.socket.off("connect", connected);
              resolve({ ms: nowMs() - started, recovered: false, failed: true });
            };
            const connected = (): void => {
              c.socket.off("connect_error", failed);
              resolve({ ms: nowMs() - started, recovered: c.socket.recovered });
            };
            c.socket.once("connect", connected);
            c.socket.once("connect_error", failed);
            c.socket.connect();
          }),
      ),
    );
  },
  /** A new client presenting a given private session id and offset (a session filled in by SQL): whether it recovered. */
  "restore-as": async ({ url, pid, offset }: { url: string; pid: string; offset: string }) => {
    const socket = connect(url, { transports: ["websocket"], forceNew: true, reconnection: false, autoConnect: false });
    const internals = socket as unknown as { _pid?: string; _lastOffset?: string };
    internals._pid = pid;
    internals._lastOffset = offset;
    const recovered = await new Promise<boolean>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("restore-as: not connected within 30 s")), 30_000);
      socket.once("connect", () => {
        clearTimeout(timer);
        resolve(socket.recovered);
      });
      socket.connect();
    });
    socket.close();
    return recovered;
  },
  inject: ({ dropAt, dupAt }: { dropAt?: number; dupAt?: number }) => {
    inject.dropAt = dropAt ?? -1;
    inject.dupAt = dupAt ?? -1;
    inject.seen = 0;
    return null;
  },
  /**
   * SOAK's churn: every second `perSecond` connected clients (created with reconnection: false)
   * close their transport and reconnect, to one of `urls` at random, after minDownMs..maxDownMs.
   */
  "churn-start": ({ perSecond, minDownMs, maxDownMs, urls, clients: indices }: { perSecond: number; minDownMs: number; maxDownMs: number; urls: string[]; clients?: number[] }) => {
    const pool = selected(indices);
    churn.timer = setInterval(() => {
      const candidates = pool.filter((c) => c.socket.connected && !churn.away.has(c));
      for (let k = 0; k < perSecond && candidates.length; k++) {
        const c = candidates.splice(Math.floor(Math.random() * candidates.length), 1)[0]!;
        churn.away.add(c);
        churn.dropped++;
        c.socket.io.engine.close();
        setTimeout(() => comeBack(c, urls), minDownMs + Math.random() * (maxDownMs - minDownMs));
      }
    }, 1000);
    return null;
  },
  /** Stops dropping clients; resolves once those away are back (or after 30 s) with the counts. */
  "churn-stop": async () => {
    clearInterval(churn.timer);
    const deadline = Date.now() + 30_000;
    while (churn.away.size > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100));
    return churnStats();
  },
  "churn-stats": () => churnStats(),
  /** Delivery latencies of `clients` (all by default) since the last call, together; every client's are forgotten. */
  "take-latencies": ({ clients: indices }: { clients?: number[] }) => {
    const chosen = selected(indices);
    const n = chosen.reduce((sum, c) => sum + c.ledger.latencies.length, 0);
    const all = new Float64Array(n);
    let i = 0;
    for (const c of chosen) {
      all.set(c.ledger.latencies, i);
      i += c.ledger.latencies.length;
    }
    for (const c of clients) c.ledger.latencies.length = c.ledger.emittedAt.length = 0;
    all.sort();
    const sorted = Array.from(all);
    return n ? { n, p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted.at(-1) } : { n };
  },
  /**
   * SOAK: the latencies of `clients` since the last call, by second of emission (wall clock, s;
   * 0.1 ms), unsorted; every client's are forgotten. Polled every 2 s so this process (which
   * receives every event) never spends long on them: sorting a minute's worth here at once
   * (0.3–1.5 M values) held receipts back long enough to show as p99 spikes at minute ends.
   */
  "drain-latencies": ({ clients: indices }: { clients?: number[] }) => {
    const bySecond = new Map<number, number[]>();
    for (const c of selected(indices)) {
      const { latencies, emittedAt } = c.ledger;
      for (let k = 0; k < latencies.length; k++) {
        const second = Math.floor(emittedAt[k]! / 1000);
        let list = bySecond.get(second);
        if (!list) bySecond.set(second, (list = []));
        list.push(Math.round(latencies[k]! * 10) / 10);
      }
    }
    for (const c of clients) c.ledger.latencies.length = c.ledger.emittedAt.length = 0;
    return [...bySecond.entries()];
  },
  usage: () => {
    const cpu = process.cpuUsage();
    return { maxRssMb: process.resourceUsage().maxRSS / 1024, cpuMs: (cpu.user + cpu.system) / 1000 };
  },
  close: () => {
    for (const c of clients) c.socket.close();
    return null;
  },
});
push("ready");

