/**
 * The machinery of the fault suite (test/faults.test.ts): a cluster of nodes
 * in child processes that reach their own embedded Postgres through a proxy
 * the test controls, many clients recorded by the history checker, steady
 * traffic from every node, reconnection churn, the faults themselves, and
 * the per-scenario numbers.
 */
import pg from "pg";
import { LISTENER_APPLICATION_NAME } from "../../src/index.js";
import { withAdminClient } from "./admin.js";
import { Cluster, comeBack, goOffline, recoveryFields, spawnNode, waitFor, type ChildNode } from "./cluster.js";
import { History, logOffsets, type ClientHandle, type HistorySummary } from "./history.js";
import type { OwnedPostgres } from "./owned-postgres.js";
import type { PostgresProxy } from "./postgres-proxy.js";

/** application_name of the test's own connections (never a fault's target). */
export const ADMIN_APPLICATION_NAME = "fault-suite-admin";

/** A small seeded PRNG (mulberry32): the same seed gives the same schedule. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

export interface RigOptions {
  /** The suite's own Postgres (for `terminate`); the crash suite uses the test database's server. */
  postgres?: OwnedPostgres;
  /** Nodes reach Postgres through it when given (faults that cut the network). */
  proxy?: PostgresProxy;
  /** Database URL (direct, not through the proxy). */
  databaseUrl: string;
  random: () => number;
  nodes?: number;
  clients?: number;
  rooms?: number;
  /** Adapter options of every node. */
  adapter?: Record<string, unknown>;
}

export class FaultRig {
  readonly nodes: ChildNode[] = [];
  readonly clients: ClientHandle[] = [];
  readonly history = new History();
  /** Test-side connections, straight to Postgres (not through the proxy). */
  readonly db: pg.Pool;
  private cluster!: Cluster;
  private traffic: Promise<void> | undefined;
  private trafficOn = false;
  /** Nodes the traffic no longer emits from (about to be stopped). */
  private readonly retired = new Set<ChildNode>();
  private tick: Promise<unknown> = Promise.resolve();
  /** Emit commands a node did not answer (it must always answer). */
  readonly emitFailures: string[] = [];
  readonly reconnectTimes: number[] = [];
  private bursts = 0;
  /** Failed connection attempts during churn (a handshake that timed out on the client). */
  connectErrors = 0;

  private constructor(readonly opts: RigOptions) {
    this.db = new pg.Pool({ connectionString: withApplicationName(opts.databaseUrl), max: 2 });
    this.db.on("error", () => undefined); // a Postgres restart kills idle ones
  }

  static async start(opts: RigOptions): Promise<FaultRig> {
    const rig = new FaultRig(opts);
    const nodeUrl = opts.proxy ? opts.proxy.through(opts.databaseUrl) : opts.databaseUrl;
    const count = opts.nodes ?? 3;
    const started = await Promise.allSettled(
      Array.from({ length: count }, (_, i) =>
        spawnNode({ databaseUrl: nodeUrl, name: `n${i}`, adapter: opts.adapter, startTimeout: 60_000 }),
      ),
    );
    for (const s of started) if (s.status === "fulfilled") rig.nodes.push(s.value);
    const failed = started.find((s): s is PromiseRejectedResult => s.status === "rejected");
    if (failed) throw failed.reason;
    rig.cluster = await Cluster.start({ databaseUrl: opts.databaseUrl, nodes: 0 });
    const rooms = opts.rooms ?? 3;
    for (let i = 0; i < (opts.clients ?? 54); i++) {
      // Everyone in one room, every third client in a second one.
      const joined = i % 3 === 0 ? [`r${i % rooms}`, `r${(i + 1) % rooms}`] : [`r${i % rooms}`];
      const socket = rig.cluster.client(rig.nodes[i % rig.nodes.length]!, { rooms: joined, reconnectionDelay: 100 });
      rig.clients.push(rig.history.watch(socket, `c${i}`, joined));
    }
    await waitFor(
      () => rig.clients.every((c) => c.socket.connected && recoveryFields(c.socket)._lastOffset !== undefined),
      { timeout: 30_000, message: "clients connected with an offset" },
    );
    return rig;
  }

  urlOf = (source: string): string | undefined => this.nodes.find((n) => n.name === source)?.url;

  /** Emits one packet from `node` to a random target (everyone or one room), recorded. */
  async emitOne(node: ChildNode): Promise<void> {
    const r = this.opts.random();
    const rooms = r < 0.3 ? [] : [`r${Math.floor(this.opts.random() * (this.opts.rooms ?? 3))}`];
    const emission = this.history.record({ rooms }, node.name);
    try {
      await node.emit({ rooms }, "ev", { id: emission.id });
    } catch (err) {
      this.emitFailures.push(`${node.name}: ${String(err)}`);
    }
  }

  /** Steady traffic: every `intervalMs`, one packet from every node, until `stopTraffic()`. */
  startTraffic(intervalMs = 50): void {
    this.trafficOn = true;
    this.traffic = (async () => {
      while (this.trafficOn) {
        this.tick = Promise.all(this.nodes.filter((n) => isRunning(n) && !this.retired.has(n)).map((n) => this.emitOne(n)));
        await this.tick;
        await sleep(intervalMs);
      }
    })();
  }

  async stopTraffic(): Promise<void> {
    this.trafficOn = false;
    await this.traffic;
  }

  /** Stops the traffic from `node` (what it emits after that is the test's own); resolves once its last emit was answered. */
  async retire(node: ChildNode): Promise<void> {
    this.retired.add(node);
    await this.tick;
  }

  /** `count` packets at once from `node` (one batch on its side), recorded. */
  async burst(node: ChildNode, count: number, rooms: string[] = []): Promise<void> {
    // The child numbers a burst's ids 1..count after the prefix: a prefix of its own keeps them unique.
    const prefix = `ev:${node.name}.burst${++this.bursts}x${Math.floor(this.opts.random() * 1e9)}:`;
    for (let i = 1; i <= count; i++) this.history.record({ rooms }, node.name, `${prefix}${i}`);
    await node.command({ cmd: "emit-burst", rooms, count, prefix });
  }

  /**
   * Takes `count` random clients offline and brings each back on another
   * node, concurrently; resolves with how many recovered. A restore must end
   * (recovered or not) within `timeoutMs`: a hanging handshake fails the test.
   */
  async churn(count: number, timeoutMs = 10_000): Promise<{ attempted: number; recovered: number }> {
    const picked = new Set<ClientHandle>();
    const connected = this.clients.filter((c) => c.socket.connected);
    while (picked.size < Math.min(count, connected.length)) {
      picked.add(connected[Math.floor(this.opts.random() * connected.length)]!);
    }
    const results = await Promise.all(
      [...picked].map(async (c) => {
        const current = (c.socket.io as unknown as { uri: string }).uri;
        const others = this.nodes.filter((n) => isRunning(n) && !current.startsWith(n.url));
        const target = others[Math.floor(this.opts.random() * others.length)] ?? this.nodes[0]!;
        goOffline(c.socket);
        await sleep(50 + Math.floor(this.opts.random() * 200));
        const started = Date.now();
        // A handshake the client gave up on (its 5 s timeout) shows as connect_error, then a new attempt.
        const onError = () => this.connectErrors++;
        c.socket.on("connect_error", onError);
        try {
          return await comeBack(c.socket, target, timeoutMs);
        } finally {
          c.socket.off("connect_error", onError);
          this.reconnectTimes.push(Date.now() - started);
        }
      }),
    );
    return { attempted: results.length, recovered: results.filter(Boolean).length };
  }

  // ---- faults -------------------------------------------------------------

  /** pg_terminate_backend on the nodes' connections matching `which`; returns how many. */
  async terminate(which: "listener" | "pool"): Promise<number> {
    const database = new URL(this.opts.databaseUrl).pathname.slice(1);
    const condition = which === "listener" ? "application_name = $2" : "application_name NOT IN ($2, $3)";
    const params = which === "listener" ? [database, LISTENER_APPLICATION_NAME] : [database, LISTENER_APPLICATION_NAME, ADMIN_APPLICATION_NAME];
    if (!this.opts.postgres) throw new Error("terminate() needs the suite's own Postgres");
    return withAdminClient(this.opts.postgres.adminUrl, async (client) => {
      const { rows } = await client.query<{ killed: boolean }>(
        `SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity
          WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND ${condition}`,
        params,
      );
      return rows.filter((r) => r.killed).length;
    });
  }

  /** Listener connections open through the proxy and not frozen. */
  liveListeners(): number {
    return (this.opts.proxy?.connections() ?? []).filter((c) => c.applicationName === LISTENER_APPLICATION_NAME && !c.frozen).length;
  }

  /** Every node runs `count` slow queries on its own pool (exhausting it) for `ms`. */
  async exhaustPools(count: number, ms: number): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.command({ cmd: "hold-pool", count, ms })));
  }

  /** What each node reported to its errorHandler. */
  async errors(): Promise<Map<string, string[]>> {
    const out = new Map<string, string[]>();
    for (const n of this.nodes) {
      if (!isRunning(n)) continue;
      out.set(n.name, (await n.command({ cmd: "errors" })).errors as string[]);
    }
    return out;
  }

  async adapterEvents(node: ChildNode): Promise<Array<{ event: string; at: number; payload: unknown }>> {
    return (await node.command({ cmd: "adapter-events" })).events as Array<{ event: string; at: number; payload: unknown }>;
  }

  /** Waits until no running node is in outage mode (as many outage-ended as outage-started). */
  async outagesEnded(timeout = 15_000): Promise<void> {
    let open: string[] = [];
    await waitFor(
      async () => {
        open = [];
        for (const n of this.nodes.filter((x) => isRunning(x))) {
          const events = await this.adapterEvents(n);
          const started = events.filter((e) => e.event === "outage-started").length;
          const ended = events.filter((e) => e.event === "outage-ended").length;
          if (started !== ended) open.push(n.name);
        }
        return open.length === 0;
      },
      { timeout, interval: 100, message: () => `outage mode to end on ${open.join(", ")}` },
    );
  }

  // ---- checking -------------------------------------------------------------

  lookup = () => logOffsets(this.db);

  /**
   * Waits until every live client has what is addressed to it, then checks
   * the history; resolves with the violations and the numbers.
   */
  async check(options: { unlogged: boolean; timeout?: number }): Promise<{ violations: string[]; summary: HistorySummary }> {
    await this.history
      .settle({ lookup: this.lookup, timeout: options.timeout ?? 30_000, unlogged: options.unlogged ? { quietMs: 2000 } : undefined })
      .catch(() => undefined); // the violations below say what is missing
    const lookup = await this.lookup();
    const violations = this.history.violations({ lookup, unlogged: options.unlogged });
    if (options.unlogged) violations.push(...this.history.unloggedViolations(this.urlOf, lookup));
    return { violations, summary: this.history.summary(violations, lookup, options.unlogged) };
  }

  /**
   * SIGTERMs every node still running; each must exit 0 (io.close() completed)
   * and none may have reported an unhandled rejection or exception.
   */
  async stopNodes(): Promise<string[]> {
    const problems: string[] = [];
    await Promise.all(
      this.nodes.map(async (n) => {
        if (n.process.signalCode !== null) return; // killed on purpose (the crash scenarios)
        const code = n.process.exitCode ?? (await n.stop("SIGTERM", 30_000));
        if (code !== 0) problems.push(`${n.name} exited with ${code}`);
        const stderr = n.stderr.join("");
        if (/UNHANDLED|node-process failed|close failed/.test(stderr)) {
          problems.push(`${n.name}: ${stderr.split("\n").filter((l) => /UNHANDLED|failed/.test(l)).slice(0, 3).join(" | ")}`);
        }
      }),
    );
    return problems;
  }

  async close(): Promise<void> {
    this.trafficOn = false;
    await this.traffic?.catch(() => undefined);
    await this.cluster?.close().catch(() => undefined);
    await this.db.end().catch(() => undefined);
  }
}

/** One summary line for the closing table. */
export function formatSummary(scenario: string, s: HistorySummary, extra = ""): string {
  const rate = s.reconnections === 0 ? "n/a" : `${s.recovered}/${s.reconnections}`;
  return (
    `[faults] ${scenario}: emitted ${s.emitted}, logged ${s.logged}, not logged ${s.notLogged}, ` +
    `delivered ${s.delivered}, unlogged deliveries ${s.unloggedDeliveries}, lost ${s.lost}, ` +
    `duplicated ${s.duplicated}, reordered ${s.reordered}, other violations ${s.other}, recovered ${rate}${extra ? `, ${extra}` : ""}`
  );
}

/** Whether a child node is still running (a node killed by a signal has no exit code, only a signal). */
export function isRunning(node: ChildNode): boolean {
  return node.process.exitCode === null && node.process.signalCode === null;
}

function withApplicationName(url: string): string {
  const parsed = new URL(url);
  parsed.searchParams.set("application_name", ADMIN_APPLICATION_NAME);
  return parsed.toString();
}
