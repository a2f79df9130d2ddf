/**
 * Crash fault suite: three nodes in child processes, 36 clients over three
 * rooms, steady traffic from every node, and one crash per scenario:
 *
 * - SIGKILL under steady traffic;
 * - SIGKILL right after a burst the node accepted (some of it never logged);
 * - SIGKILL during a join/leave storm of its clients;
 * - a restore storm: the clients of one crash reconnect while a second node
 *   is SIGKILLed, and its clients reconnect too;
 * - SIGSTOP past the dead bound, the clients restored elsewhere, then SIGCONT:
 *   the resumed node must not resurrect or overwrite their sessions.
 *
 * The clients of the dead node reconnect to the others (as behind a load
 * balancer). The history checker then verifies every client: nothing lost,
 * duplicated or reordered, nothing received that it would not have received
 * live; and at least 95% of the reconnections after the crash recovered.
 * Each scenario prints one `[crash]` line. Runs against the test database's
 * server (DATABASE_URL, or the embedded one). CRASH_SEED picks the schedule.
 */
import { afterEach, describe, expect, it } from "vitest";
import { closeAll, killChildren, moveTo, waitFor, type ChildNode } from "./helpers/cluster.js";
import { createTestDatabase, type TestDatabase } from "./helpers/database.js";
import { FaultRig, formatSummary, isRunning, seededRandom, sleep } from "./helpers/fault-rig.js";
import type { ClientHandle } from "./helpers/history.js";

const SEED = Number(process.env.CRASH_SEED ?? 20261203);

/** A crash is noticed in about a second; a restore may wait that long for it. */
const ADAPTER = {
  nodeHeartbeatIntervalMs: 200,
  nodeDeadAfterMs: 1000,
  checkpointIntervalMs: 500,
  restoreTimeoutMs: 6000,
  listenerCheckIntervalMs: 300,
};

describe("crash faults (child processes)", { timeout: 120_000 }, () => {
  let db: TestDatabase | undefined;
  let rig: FaultRig | undefined;
  let scenarios = 0;
  const rejections: unknown[] = [];
  const onRejection = (reason: unknown) => rejections.push(reason);
  process.on("unhandledRejection", onRejection);

  afterEach(async () => {
    await rig?.close();
    rig = undefined;
    await closeAll();
    killChildren();
    await db?.drop();
    db = undefined;
    expect(rejections.map(String)).toEqual([]);
  });

  async function setUp(scenario: string): Promise<FaultRig> {
    db = await createTestDatabase(`crash_${scenario}`, { migrated: true });
    rig = await FaultRig.start({
      databaseUrl: db.url,
      random: seededRandom(SEED + ++scenarios),
      adapter: ADAPTER,
      clients: 36,
    });
    return rig;
  }

  const uriOf = (c: ClientHandle) => (c.socket.io as unknown as { uri: string }).uri;

  /** Reconnections each client has made so far. */
  const counts = (r: FaultRig) => new Map(r.clients.map((c) => [c, c.reconnections.length]));

  /**
   * Sends `signal` to `victim` after pointing its clients at the other running
   * nodes (or `targets`); returns those clients.
   */
  async function crash(r: FaultRig, victim: ChildNode, signal: NodeJS.Signals = "SIGKILL", targets?: ChildNode[]): Promise<ClientHandle[]> {
    const moved = r.clients.filter((c) => uriOf(c).startsWith(victim.url));
    await r.retire(victim);
    const to = targets ?? r.nodes.filter((n) => n !== victim && isRunning(n));
    moved.forEach((c, i) => moveTo(c.socket, to[i % to.length]!.url));
    victim.process.kill(signal);
    return moved;
  }

  /** Waits until every client is connected again and each moved one reconnected. */
  async function allBack(r: FaultRig, moved: readonly ClientHandle[], before: Map<ClientHandle, number>): Promise<void> {
    await waitFor(() => r.clients.every((c) => c.socket.connected) && moved.every((c) => c.reconnections.length > before.get(c)!), {
      timeout: 20_000,
      interval: 50,
      message: () => `${moved.filter((c) => !c.socket.connected).length} moved clients to reconnect`,
    });
  }

  /** The checks every scenario ends with; prints its line. */
  async function finish(r: FaultRig, scenario: string, moved: readonly ClientHandle[], before: Map<ClientHandle, number>, extra = "") {
    await r.stopTraffic();
    const after = moved.flatMap((c) => c.reconnections.slice(before.get(c)!));
    const recovered = after.filter((x) => x.recovered).length;
    const { violations, summary } = await r.check({ unlogged: true });
    console.log(
      formatSummary(scenario, summary, `${extra ? `${extra}; ` : ""}after the crash ${recovered}/${after.length} recovered`),
    );
    expect(violations.slice(0, 30)).toEqual([]);
    expect(summary.unloggedDeliveries).toBe(0);
    expect(r.emitFailures).toEqual([]);
    expect(after.length).toBeGreaterThanOrEqual(moved.length);
    expect(recovered / after.length).toBeGreaterThanOrEqual(0.95);
    // The cluster goes on: a last packet from every running node is logged and delivered.
    const tail = r.history.emissions.length;
    for (const n of r.nodes.filter(isRunning)) await r.emitOne(n);
    // Emissions a dead node accepted and never logged stay unresolved: settle once quiet.
    await r.history.settle({ lookup: r.lookup, timeout: 20_000, unlogged: { quietMs: 1000 } });
    const lookup = await r.lookup();
    expect(r.history.emissions.slice(tail).filter((e) => !lookup.has(e.id))).toEqual([]);
    expect(await r.stopNodes()).toEqual([]);
  }

  it("SIGKILL under steady traffic", async () => {
    const r = await setUp("steady");
    r.startTraffic();
    await sleep(1500);
    const before = counts(r);
    const moved = await crash(r, r.nodes[0]!);
    await allBack(r, moved, before);
    await sleep(500);
    await finish(r, "SIGKILL under steady traffic", moved, before);
  });

  it("SIGKILL right after a burst", async () => {
    const r = await setUp("burst");
    r.startTraffic();
    await sleep(1000);
    const victim = r.nodes[0]!;
    const before = counts(r);
    // 400 packets accepted at once; the node dies while writing them: some are logged, some never.
    await r.burst(victim, 400, ["r1"]);
    await sleep(5);
    const moved = await crash(r, victim);
    await allBack(r, moved, before);
    await sleep(500);
    await finish(r, "SIGKILL right after a burst", moved, before);
  });

  it("SIGKILL during a join/leave storm", async () => {
    const r = await setUp("storm");
    r.startTraffic();
    const victim = r.nodes[0]!;
    const emitter = r.nodes[1]!;
    const stormers = r.clients.filter((c) => uriOf(c).startsWith(victim.url));
    let storming = true;
    let changes = 0;
    const storms = stormers.map(async (c, i) => {
      for (let k = 0; storming; k++) {
        const room = `x${(i + k) % 2}`;
        try {
          await r.history.join(c, room);
          changes++;
          await r.history.leave(c, room);
          changes++;
        } catch {
          return; // the node died under it
        }
      }
    });
    // Traffic to the storm's rooms from another node.
    let feeding = true;
    const feed = (async () => {
      for (let n = 0; feeding; n++) {
        const rooms = [`x${n % 2}`];
        const emission = r.history.record({ rooms }, emitter.name);
        await emitter.emit({ rooms }, "ev", { id: emission.id }).catch(() => undefined);
        await sleep(25);
      }
    })();
    await sleep(1500);
    const before = counts(r);
    const moved = await crash(r, victim);
    storming = false;
    await Promise.all(storms);
    await allBack(r, moved, before);
    feeding = false;
    await feed;
    await sleep(500);
    await finish(r, "SIGKILL during a join/leave storm", moved, before, `${changes} room changes before the crash`);
  });

  it("restore storm: a second node dies while the first one's clients reconnect", async () => {
    const r = await setUp("restore_storm");
    r.startTraffic();
    await sleep(1000);
    const [first, survivor, second] = r.nodes as [ChildNode, ChildNode, ChildNode];
    const before = counts(r);
    const movedFirst = await crash(r, first, "SIGKILL", [survivor]);
    await sleep(400);
    const movedSecond = await crash(r, second, "SIGKILL", [survivor]);
    const moved = [...movedFirst, ...movedSecond];
    await allBack(r, moved, before);
    await sleep(500);
    await finish(r, "restore storm (two SIGKILLs)", moved, before, `${moved.length} clients moved to one node`);
  });

  it("SIGSTOP past the dead bound, clients restored elsewhere, then SIGCONT", async () => {
    const r = await setUp("sigstop");
    r.startTraffic();
    await sleep(1000);
    const zombie = r.nodes[0]!;
    const before = counts(r);
    const moved = await crash(r, zombie, "SIGSTOP");
    try {
      // A silent server is noticed by the ping timeout; the clients notice at once here.
      for (const c of moved) c.socket.io.engine.close();
      await allBack(r, moved, before);
    } finally {
      zombie.process.kill("SIGCONT");
    }
    // The zombie resumes: its heartbeat finds it was declared dead, and it drops what was taken.
    await waitFor(async () => ((await zombie.command({ cmd: "sockets", nsp: "/" })).sockets as string[]).length === 0, {
      timeout: 10_000,
      message: "the resumed node to drop the sockets restored elsewhere",
    });
    // The restored sessions are intact: clients moving around now (the zombie included) recover.
    const churned = await r.churn(8);
    await sleep(500);
    await finish(r, "SIGSTOP then SIGCONT", moved, before, `then churn ${churned.recovered}/${churned.attempted} recovered`);
    expect(churned.recovered).toBe(churned.attempted);
  });
});
