/**
 * Fault injection: three nodes in child processes, 54 clients over three
 * rooms, steady emits from every node, and one fault at a time (then a seeded
 * sequence of them) injected while it runs:
 *
 * - the listener connections terminated (pg_terminate_backend), or made
 *   half-open (the proxy stops forwarding them without closing anything);
 * - the pool connections terminated; the pools exhausted by slow queries;
 * - Postgres restarted in the middle of a burst; Postgres unreachable for 10 s
 *   (the proxy resets every connection);
 * - SIGTERM of a node under load.
 *
 * The suite owns its Postgres (an embedded instance on a free port, whatever
 * DATABASE_URL says) and every node reaches it through a proxy
 * (test/helpers/postgres-proxy.ts). It runs when DATABASE_URL is unset (the
 * embedded run of .ci/run), or when FAULT_SUITE=1: running it against the
 * local server too would only repeat it. FAULT_SEED picks the schedule (printed).
 *
 * After each scenario the history checker verifies every client: nothing
 * logged is lost, duplicated or reordered, recovered or not; packets delivered
 * without an offset (outage mode) were delivered once, by the node the client
 * was connected to, and never logged. Each scenario prints one `[faults]` line
 * with its numbers.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { closeAll, comeBack, goOffline, waitFor } from "./helpers/cluster.js";
import { FaultRig, formatSummary, seededRandom, sleep } from "./helpers/fault-rig.js";
import { startOwnedPostgres, type OwnedPostgres } from "./helpers/owned-postgres.js";
import { startPostgresProxy, type PostgresProxy } from "./helpers/postgres-proxy.js";
import { LISTENER_APPLICATION_NAME } from "../src/index.js";
import type { ClientHandle } from "./helpers/history.js";

/** "reason xN; other xM" */
function summarize(reasons: readonly string[]): string {
  const counts = new Map<string, number>();
  for (const r of reasons) counts.set(r, (counts.get(r) ?? 0) + 1);
  return [...counts].map(([r, n]) => `${r} x${n}`).join("; ") || "none";
}

const RUN = process.env.FAULT_SUITE === "1" || !process.env.DATABASE_URL;
const SEED = Number(process.env.FAULT_SEED ?? 20261126);

/** Small, so that a half-open listener is replaced quickly: see LIVENESS_BOUND_MS. */
const LISTENER_CHECK_INTERVAL_MS = 300;
/**
 * A check runs every interval and gives up on an answer after one more
 * interval: a connection frozen just after a check answered is replaced at
 * most 2 intervals later (src/listener.ts), plus the time to connect again.
 */
const LIVENESS_BOUND_MS = 2 * LISTENER_CHECK_INTERVAL_MS;
const RESTORE_TIMEOUT_MS = 3000;
const CLOSE_TIMEOUT_MS = 10_000;

const ADAPTER = {
  listenerCheckIntervalMs: LISTENER_CHECK_INTERVAL_MS,
  restoreTimeoutMs: RESTORE_TIMEOUT_MS,
  closeTimeoutMs: CLOSE_TIMEOUT_MS,
};

describe.skipIf(!RUN)("fault injection (seeded)", { timeout: 150_000 }, () => {
  let postgres: OwnedPostgres;
  let proxy: PostgresProxy;
  let rig: FaultRig | undefined;
  let databases = 0;
  const rejections: unknown[] = [];
  const onRejection = (reason: unknown) => rejections.push(reason);

  beforeAll(async () => {
    console.log(`[faults] seed ${SEED} (FAULT_SEED=${SEED} to replay)`);
    process.on("unhandledRejection", onRejection);
    postgres = await startOwnedPostgres();
    proxy = await startPostgresProxy(postgres.port);
  });

  afterEach(async () => {
    proxy?.accept();
    if (postgres && !postgres.running) await postgres.start();
    await rig?.close();
    rig = undefined;
    await closeAll();
    expect(rejections.map(String)).toEqual([]);
  });

  afterAll(async () => {
    process.off("unhandledRejection", onRejection);
    await proxy?.close();
    await postgres?.destroy();
  });

  /** A fresh database and a running rig, with a seed derived from the suite's and the scenario. */
  async function setUp(scenario: string, adapter: Record<string, unknown> = {}): Promise<FaultRig> {
    const databaseUrl = await postgres.createMigratedDatabase(`${scenario}_${++databases}`);
    rig = await FaultRig.start({
      postgres,
      proxy,
      databaseUrl,
      random: seededRandom(SEED + databases),
      adapter: { ...ADAPTER, ...adapter },
    });
    return rig;
  }

  /** The checks every scenario ends with; prints its line. */
  async function finish(r: FaultRig, scenario: string, options: { unlogged: boolean; extra?: string }) {
    await r.stopTraffic();
    const { violations, summary } = await r.check({ unlogged: options.unlogged });
    const running = r.nodes.filter((n) => n.process.exitCode === null);
    const events = (await Promise.all(running.map(async (n) => (await r.adapterEvents(n)).map((e) => ({ node: n.name, ...e }))))).flat();
    const refusals = events.filter((e) => e.event === "restore-refused").map((e) => (e.payload as { reason: string }).reason);
    // Where events went unlogged, which a scenario without outages must not see: it explains losses below.
    const outages = events.filter((e) => e.event === "outage-started").map((e) => `${e.node} after ${(e.payload as { failingForMs: number }).failingForMs} ms`);
    const slowest = Math.max(0, ...r.reconnectTimes);
    const churnNote = `reconnect ≤ ${slowest} ms, ${r.connectErrors} failed handshakes`;
    const outageNote = options.unlogged ? "" : `; outage mode: ${outages.length === 0 ? "none" : outages.join(", ")}`;
    console.log(formatSummary(scenario, summary, `${options.extra ? `${options.extra}; ` : ""}${churnNote}; all refusals: ${summarize(refusals)}${outageNote}`));
    expect(violations.slice(0, 30)).toEqual([]);
    expect(r.emitFailures).toEqual([]);
    // The cluster resumed without a restart: a last packet from every node is logged and delivered.
    const tail = r.history.emissions.length;
    for (const n of r.nodes) await r.emitOne(n);
    await r.history.settle({ lookup: r.lookup, timeout: 20_000, unlogged: options.unlogged ? { quietMs: 2000 } : undefined });
    const lookup = await r.lookup();
    expect(r.history.emissions.slice(tail).filter((e) => !lookup.has(e.id))).toEqual([]);
    expect(await r.stopNodes()).toEqual([]);
    return summary;
  }

  it("listener connections terminated mid-traffic: they come back, connected clients miss nothing", async () => {
    const r = await setUp("listener_killed");
    r.startTraffic();
    await sleep(1000);
    let killed = 0;
    for (let round = 0; round < 3; round++) {
      killed += await r.terminate("listener");
      const churned = r.churn(4);
      await sleep(700);
      await churned;
    }
    expect(killed).toBeGreaterThanOrEqual(3);
    await waitFor(() => r.liveListeners() === 3, { timeout: 10_000, message: "3 listeners back" });
    const errors = await r.errors();
    for (const [node, list] of errors) expect(list.some((m) => /LISTEN connection lost/.test(m)), node).toBe(true);
    const s = await finish(r, "listener terminated x3", { unlogged: false });
    expect(s.recovered).toBe(s.reconnections);
  });

  it(`half-open listener: the liveness check replaces it within 2 x listenerCheckIntervalMs (${LIVENESS_BOUND_MS} ms) plus a reconnect`, async () => {
    const r = await setUp("listener_half_open");
    await waitFor(() => r.liveListeners() === 3, { timeout: 10_000, message: "3 listeners" });
    r.startTraffic();
    await sleep(1000);
    const frozen = proxy.freeze((c) => c.applicationName === LISTENER_APPLICATION_NAME);
    expect(frozen).toBe(3);
    const frozenAt = Date.now();
    // Generous slack for the reconnect on a loaded machine; the bound itself is in src/listener.ts.
    await waitFor(() => r.liveListeners() === 3, { timeout: LIVENESS_BOUND_MS + 10_000, interval: 20, message: "new listeners" });
    const replacedAfter = Date.now() - frozenAt;
    const errors = await r.errors();
    for (const [node, list] of errors) expect(list.some((m) => /LISTEN connection lost/.test(m)), node).toBe(true);
    await r.churn(4);
    await sleep(500);
    const s = await finish(r, "listener half-open", { unlogged: false, extra: `replaced after ${replacedAfter} ms (bound ${LIVENESS_BOUND_MS} ms + reconnect)` });
    expect(s.recovered).toBe(s.reconnections);
  });

  it("pool connections terminated mid-traffic: writes are retried, nothing lost or doubled", async () => {
    const r = await setUp("pool_killed");
    r.startTraffic(30);
    await sleep(1000);
    let killed = 0;
    for (let round = 0; round < 4; round++) {
      const churned = r.churn(3);
      killed += await r.terminate("pool");
      await r.burst(r.nodes[round % 3]!, 200);
      killed += await r.terminate("pool");
      await churned;
      await sleep(300);
    }
    expect(killed).toBeGreaterThan(0);
    await finish(r, "pool connections terminated x8", { unlogged: false });
  });

  it("pools exhausted by slow queries: delivery resumes, restores end within restoreTimeoutMs", async () => {
    const r = await setUp("pool_exhausted");
    r.startTraffic();
    await sleep(1000);
    // Five 4 s sleeps on each node's pool of five: nothing else gets a connection meanwhile.
    await r.exhaustPools(5, 4000);
    const { attempted, recovered } = await r.churn(6, RESTORE_TIMEOUT_MS + 6000);
    await sleep(4000);
    const s = await finish(r, "pools exhausted 4 s", { unlogged: true, extra: `restores during: ${recovered}/${attempted}` });
    expect(s.lost + s.duplicated + s.reordered).toBe(0);
  });

  it("Postgres restarted in the middle of a burst: the cluster resumes without a restart", async () => {
    const r = await setUp("postgres_restart");
    r.startTraffic();
    await sleep(1000);
    const bursting = r.burst(r.nodes[0]!, 2000);
    await postgres.restart();
    await bursting;
    await r.churn(6);
    await sleep(1000);
    // The listeners came back on their own.
    await waitFor(() => r.liveListeners() === 3, { timeout: 15_000, message: "3 listeners back" });
    // The first successful append ends outage mode (the writer's retry backs off up to 2 s).
    await r.outagesEnded();
    await finish(r, "Postgres restarted mid-burst", { unlogged: true });
  });

  it("Postgres unreachable for 10 s: local delivery goes on, restores fail closed, the cluster resumes", async () => {
    const r = await setUp("unreachable");
    r.startTraffic();
    await sleep(1000);
    const uriOf = (c: ClientHandle) => (c.socket.io as unknown as { uri: string }).uri;
    const connectedBefore = new Map(r.clients.map((c) => [c, uriOf(c)]));
    proxy.refuse();
    const refusedAt = Date.now();
    // Parked at the start of the outage: their sessions are persisted while Postgres is away,
    // wait in memory, and must be written when it returns (they recover afterwards).
    const parked = r.clients.filter((c) => c.socket.connected).slice(-4);
    for (const c of parked) goOffline(c.socket);
    await sleep(3000);
    // Restores during the outage end (not recovered) instead of hanging the handshake.
    const during = await r.churn(6, RESTORE_TIMEOUT_MS + 6000);
    await sleep(Math.max(0, 10_000 - (Date.now() - refusedAt)));
    proxy.accept();
    await waitFor(() => r.liveListeners() === 3, { timeout: 15_000, message: "3 listeners back" });
    // The first successful append ends outage mode (the writer's retry backs off up to 2 s).
    await r.outagesEnded();
    await sleep(1000);
    const parkedBack = await Promise.all(parked.map((c, i) => comeBack(c.socket, r.nodes[i % 3]!)));
    const after = await r.churn(6);
    const events = await Promise.all(r.nodes.map((n) => r.adapterEvents(n)));
    const errors = await r.errors();
    const refusals = events.flat().filter((e) => e.event === "restore-refused").map((e) => (e.payload as { reason: string }).reason);
    const s = await finish(r, "Postgres unreachable 10 s", {
      unlogged: true,
      extra:
        `restores during ${during.recovered}/${during.attempted}, of sessions persisted during it ${parkedBack.filter(Boolean).length}/${parked.length}, ` +
        `after ${after.recovered}/${after.attempted}`,
    });
    expect(during.recovered).toBe(0);
    expect(refusals.some((reason) => /outage/.test(reason))).toBe(true);
    expect(after.recovered).toBe(after.attempted);
    expect(parkedBack).toEqual(parked.map(() => true));
    // Outage mode: every node announced it and its end, and reported it to errorHandler once per outage.
    for (const [i, list] of events.entries()) {
      const started = list.filter((e) => e.event === "outage-started").length;
      const ended = list.filter((e) => e.event === "outage-ended");
      expect(started, r.nodes[i]!.name).toBeGreaterThanOrEqual(1);
      expect(ended.length, r.nodes[i]!.name).toBe(started);
      expect(ended.some((e) => (e.payload as { unloggedPackets: number }).unloggedPackets > 0)).toBe(true);
      const reported = errors.get(r.nodes[i]!.name)!.filter((m) => /unwritable for/.test(m)).length;
      expect(reported, r.nodes[i]!.name).toBe(started);
    }
    expect(s.unloggedDeliveries).toBeGreaterThan(0);
    // Clients that stayed on their node received everything it emitted to them, logged or not.
    const stayed = [...connectedBefore].filter(([c, uri]) => c.reconnections.length === 0 && uriOf(c) === uri);
    expect(stayed.length).toBeGreaterThan(30);
    const missed: string[] = [];
    for (const [c, uri] of stayed) {
      const got = new Set(c.tracks.flatMap((t) => t.received.map((x) => x.id)));
      for (const e of r.history.emissions) {
        const fromItsNode = r.urlOf(e.source) !== undefined && uri.startsWith(r.urlOf(e.source)!);
        const addressed = e.rooms.length === 0 || e.rooms.some((room) => c.initialRooms.includes(room));
        if (fromItsNode && addressed && !got.has(e.id)) missed.push(`${c.label} missed ${e.id} from its own node`);
      }
    }
    expect(missed.slice(0, 10)).toEqual([]);
  });

  // Session writes are retried until the database returns (bounded by maxPendingWrites and the
  // session's expiry); an earlier version gave up after ~11 s and this test caught it.
  it("a session persisted at the start of a 15 s outage is written when Postgres returns", async () => {
    const r = await setUp("long_outage");
    r.startTraffic(100);
    await sleep(500);
    proxy.refuse();
    const parked = r.clients.filter((c) => c.socket.connected).slice(-3);
    for (const c of parked) goOffline(c.socket);
    await sleep(15_000);
    proxy.accept();
    await waitFor(() => r.liveListeners() === 3, { timeout: 15_000, message: "3 listeners back" });
    // The first successful append ends outage mode (the writer's retry backs off up to 2 s).
    await r.outagesEnded();
    await sleep(1000);
    const back = await Promise.all(parked.map((c, i) => comeBack(c.socket, r.nodes[i % 3]!)));
    await finish(r, "Postgres unreachable 15 s, sessions persisted at its start", {
      unlogged: true,
      extra: `restores of those sessions after it ${back.filter(Boolean).length}/${back.length}`,
    });
    expect(back).toEqual(parked.map(() => true));
  });

  it("SIGTERM under load: every accepted packet and every session of its sockets is written within closeTimeoutMs", async () => {
    // The victim's 3000-entry burst holds the namespace's head lock while each of its batches commits;
    // under CI load another node's append once waited past the 2 s default of unloggedDeliveryAfterMs,
    // and that node rightly went into outage mode (one event delivered unlogged, to its sockets only).
    // Outage mode has scenarios of its own ("unreachable"): here it is kept out of the way.
    const r = await setUp("graceful_shutdown", { unloggedDeliveryAfterMs: 10_000 });
    const victim = r.nodes[2]!;
    r.startTraffic();
    await sleep(1000);
    const sids = (await victim.command({ cmd: "sockets", nsp: "/" })).sockets as string[];
    expect(sids.length).toBe(18);
    const victims = r.clients.filter((c) => sids.includes(c.socket.id!));
    for (const c of victims) c.socket.io.reconnection(false);
    // Everything emitted on the victim from here on is answered before the SIGTERM: all of it was accepted.
    await r.retire(victim);
    const burstStart = r.history.emissions.length;
    await r.burst(victim, 3000);
    const burst = r.history.emissions.slice(burstStart, burstStart + 3000);
    const started = Date.now();
    const code = await victim.stop("SIGTERM", CLOSE_TIMEOUT_MS + 10_000);
    const closedIn = Date.now() - started;
    expect(code).toBe(0);
    const lookup = await r.lookup();
    expect(burst.filter((e) => !lookup.has(e.id)).length).toBe(0);
    const { rows } = await r.db.query<{ sid: string }>(`SELECT sid FROM socket_io.sessions WHERE sid = ANY($1)`, [sids]);
    expect(rows.map((x) => x.sid).sort()).toEqual([...sids].sort());
    // Its clients recover elsewhere, with everything.
    const others = r.nodes.slice(0, 2);
    const results = await Promise.all(
      victims.map(async (c, i) => {
        await waitFor(() => !c.socket.connected, { message: "victim clients disconnected" });
        return comeBack(c.socket, others[i % 2]!);
      }),
    );
    r.nodes.splice(2, 1); // stopped already; the checks below use the others
    const s = await finish(r, "SIGTERM under load (3000-packet burst, 18 sessions)", {
      unlogged: false,
      extra: `close took ${closedIn} ms (bound ${CLOSE_TIMEOUT_MS} ms)`,
    });
    expect(results.every(Boolean)).toBe(true);
    expect(s.recovered).toBe(s.reconnections);
  });

  it("a seeded sequence of combined faults", async () => {
    const r = await setUp("combined");
    const random = seededRandom(SEED);
    const faults = ["listener-kill", "listener-freeze", "pool-kill", "pool-exhaust", "postgres-restart", "unreachable", "churn"] as const;
    const STEPS = 6;
    const DEADLINE = Date.now() + 60_000;
    const schedule: string[] = [];
    r.startTraffic();
    await sleep(1000);
    for (let step = 0; step < STEPS && Date.now() < DEADLINE; step++) {
      const fault = faults[Math.floor(random() * faults.length)]!;
      const pause = 300 + Math.floor(random() * 1500);
      schedule.push(`${fault}+${pause}ms`);
      switch (fault) {
        case "listener-kill":
          await r.terminate("listener");
          break;
        case "listener-freeze":
          proxy.freeze((c) => c.applicationName === LISTENER_APPLICATION_NAME);
          break;
        case "pool-kill":
          await r.terminate("pool");
          break;
        case "pool-exhaust":
          await r.exhaustPools(5, 2000);
          break;
        case "postgres-restart":
          await postgres.restart();
          break;
        case "unreachable":
          proxy.refuse();
          await sleep(3000);
          proxy.accept();
          break;
        case "churn":
          break;
      }
      await Promise.all([r.churn(3, RESTORE_TIMEOUT_MS + 6000), sleep(pause)]);
    }
    console.log(`[faults] combined schedule (seed ${SEED}): ${schedule.join(", ")}`);
    await waitFor(() => r.liveListeners() === 3, { timeout: 15_000, message: "3 listeners back" });
    // The first successful append ends outage mode (the writer's retry backs off up to 2 s).
    await r.outagesEnded();
    await sleep(1000);
    const after = await r.churn(6);
    await finish(r, `combined (${schedule.length} steps)`, {
      unlogged: true,
      extra: `restores after the last fault ${after.recovered}/${after.attempted}`,
    });
    expect(after.recovered).toBe(after.attempted);
  });
});
