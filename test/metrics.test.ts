/**
 * Prometheus metrics (option `metrics`): scraped from a real prom-client
 * Registry, in its text format, after real restores, refusals, an outage, a
 * prune and a lost listener connection. Several nodes of this process share
 * one registry, as several namespaces do, without registering anything twice.
 */
import { readFileSync } from "node:fs";
import pg from "pg";
import { register as defaultRegister, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { createAdapter, LISTENER_APPLICATION_NAME } from "../src/index.js";
import { MAX_NAMESPACE_LABELS, recoveryMetrics, refusalReason } from "../src/metrics.js";
import { Cluster, comeBack, goOffline, logHead, recordEvents, serverNoticed, waitFor, waitForHead, waitForSession } from "./helpers/cluster.js";
import { attempt, prepare } from "./helpers/recovery-attempts.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("metrics");

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Scrapes `register` as Prometheus would (the text exposition format) and parses the samples. */
async function scrape(register: Registry): Promise<Sample[]> {
  const text = await register.metrics();
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const match = /^(\w+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match) throw new Error(`unparsable line: ${line}`);
    const labels: Record<string, string> = {};
    for (const [, key, value] of (match[2] ?? "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[key!] = value!;
    samples.push({ name: match[1]!, labels, value: Number(match[3]) });
  }
  return samples;
}

/** The sum of the samples named `name` whose labels include `labels` (undefined: none). */
async function value(register: Registry, name: string, labels: Record<string, string> = {}): Promise<number | undefined> {
  const matching = (await scrape(register)).filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  return matching.length === 0 ? undefined : matching.reduce((sum, s) => sum + s.value, 0);
}

async function valueOf(register: Registry, name: string, labels: Record<string, string> = {}): Promise<number> {
  return (await value(register, name, labels)) ?? 0;
}

function urlWith(params: Record<string, string>): string {
  const url = new URL(db.url);
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  return url.toString();
}

describe("metrics", () => {
  it("counts restores (recovered, refused by reason) and their replays; nodes of one process share the registry", async () => {
    const register = new Registry();
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: { metrics: register } });
    const old = await prepare(cluster);
    const head = await logHead(cluster.node(0).pool);
    cluster.node(0).io.to("secret-room").emit("ev", { n: 1 });
    cluster.node(0).io.to("secret-room").emit("ev", { n: 2 });
    await waitForHead(cluster.node(0).pool, head + 2);

    // Refused: a pid nobody stored, an offset that is not one.
    expect((await attempt(cluster, 1, "AAAAAAAAAAAAAAAAAAAAAA", old.offset)).recovered).toBe(false);
    expect((await attempt(cluster, 1, "BBBBBBBBBBBBBBBBBBBBBB", "not-an-offset")).recovered).toBe(false);
    // Recovered on the other node, with the two events it missed.
    expect(await comeBack(old.socket, cluster.node(1))).toBe(true);
    // The same pid again: consumed, refused.
    expect((await attempt(cluster, 0, old.pid, old.offset)).recovered).toBe(false);

    const restores = "socketio_recovery_restores_total";
    expect(await value(register, restores, { namespace: "/", outcome: "recovered" })).toBe(1);
    expect(await value(register, restores, { namespace: "/", outcome: "refused", reason: "unknown_session" })).toBe(2);
    expect(await value(register, restores, { namespace: "/", outcome: "refused", reason: "malformed" })).toBe(1);
    expect(await value(register, restores, { outcome: "refused" })).toBe(3);
    expect(await value(register, "socketio_recovery_replayed_packets_count", { namespace: "/" })).toBe(1);
    expect(await value(register, "socketio_recovery_replayed_packets_sum", { namespace: "/" })).toBe(2);
    expect(await value(register, "socketio_recovery_replayed_packets_bucket", { namespace: "/", le: "1" })).toBe(0);
    expect(await value(register, "socketio_recovery_replayed_packets_bucket", { namespace: "/", le: "5" })).toBe(1);
    expect(await value(register, "socketio_recovery_restore_duration_seconds_count", { outcome: "recovered" })).toBe(1);
    expect(await value(register, "socketio_recovery_restore_duration_seconds_count", { outcome: "refused" })).toBe(3);
    expect(await valueOf(register, "socketio_recovery_restore_duration_seconds_sum")).toBeGreaterThan(0);

    // The log: at least the two events (and what the helpers emitted), in batches of at least one.
    const batches = await valueOf(register, "socketio_recovery_log_batch_size_count", { namespace: "/" });
    const appended = await valueOf(register, "socketio_recovery_log_batch_size_sum", { namespace: "/" });
    expect(batches).toBeGreaterThanOrEqual(1);
    expect(appended).toBeGreaterThanOrEqual(2);
    expect(appended).toBeGreaterThanOrEqual(batches);
    expect(await value(register, "socketio_recovery_log_append_duration_seconds_count", { namespace: "/" })).toBe(batches);
    // The session written at the disconnect (the refused attempts' sessions are not written yet: connected).
    expect(await valueOf(register, "socketio_recovery_sessions_written_total")).toBeGreaterThanOrEqual(1);
    // Steady state: nothing pending, nothing left to deliver, no outage.
    await waitFor(async () => (await value(register, "socketio_recovery_pending_writes", { namespace: "/" })) === 0);
    await waitFor(async () => (await value(register, "socketio_recovery_delivery_lag_entries", { namespace: "/" })) === 0);
    expect(await value(register, "socketio_recovery_outage", { namespace: "/" })).toBe(0);
    expect(await value(register, "socketio_recovery_unlogged_events_total")).toBeUndefined();
  });

  it("registers nothing without the option, and one set per registry with it (a second server, namespaces)", async () => {
    const shared = new Registry();
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, namespaces: ["/chat"], adapter: { metrics: shared } });
    await cluster.addNode({ adapter: {} });
    // A second createAdapter() on the same registry: no "already registered" error.
    expect(() => createAdapter(cluster.node(0).pool, { metrics: shared })).not.toThrow();
    await cluster.connect(0, { nsp: "/chat" });
    await cluster.connect(0);
    // The node without the option registered nothing, not even in prom-client's default registry.
    expect((await defaultRegister.getMetricsAsJSON()).map((m) => m.name).filter((n) => n.startsWith("socketio_recovery"))).toEqual([]);
    const names = new Set((await scrape(shared)).map((s) => s.name));
    for (const name of [
      "socketio_recovery_pending_writes",
      "socketio_recovery_outage",
      "socketio_recovery_delivery_lag_entries",
      "socketio_recovery_prune_deleted_total",
    ]) {
      expect(names).toContain(name);
    }
    // Gauges per namespace of the node that has the registry, and only while the namespace lives.
    expect(await value(shared, "socketio_recovery_outage", { namespace: "/chat" })).toBe(0);
    await cluster.close();
    expect(await value(shared, "socketio_recovery_outage")).toBeUndefined();
  });

  it("an outage: the gauge is 1 while the log is unwritable, events delivered unlogged are counted, restores refused", async () => {
    const register = new Registry();
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    const cluster = await Cluster.start({
      databaseUrl: urlWith({ application_name: "metrics-outage" }),
      nodes: 1,
      poolMax: 3,
      adapter: { metrics: register, unloggedDeliveryAfterMs: 300 },
    });
    const terminate = () =>
      admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'metrics-outage' AND pid <> pg_backend_pid()");
    try {
      const node = cluster.node(0);
      const client = await cluster.connect(node);
      const got = recordEvents(client);
      const old = await prepare(cluster);

      await admin.query(`ALTER DATABASE ${pg.escapeIdentifier(db.name)} SET default_transaction_read_only = on`);
      await terminate();
      node.io.emit("ev", 1); // its batch fails and is retried: the probe that ends the outage
      await waitFor(async () => (await value(register, "socketio_recovery_outage", { namespace: "/" })) === 1, {
        timeout: 10_000,
        message: "the outage gauge at 1",
      });
      // The failed batch waits in the queue (it is retried, not dropped).
      expect(await value(register, "socketio_recovery_pending_writes", { namespace: "/" })).toBe(1);
      node.io.emit("ev", 2);
      node.io.emit("ev", 3);
      await waitFor(() => got.filter((r) => r.event === "ev").length >= 2, { message: "the unlogged events" });
      expect(await value(register, "socketio_recovery_unlogged_events_total", { namespace: "/" })).toBe(2);
      // A restore meanwhile is refused, for the outage.
      expect(await comeBack(old.socket, node)).toBe(false);
      expect(await value(register, "socketio_recovery_restores_total", { outcome: "refused", reason: "outage" })).toBe(1);

      await admin.query(`ALTER DATABASE ${pg.escapeIdentifier(db.name)} RESET default_transaction_read_only`);
      await terminate();
      await waitFor(async () => (await value(register, "socketio_recovery_outage", { namespace: "/" })) === 0, {
        timeout: 10_000,
        message: "the outage gauge back at 0",
      });
      await waitFor(async () => (await value(register, "socketio_recovery_pending_writes", { namespace: "/" })) === 0);
      expect(await value(register, "socketio_recovery_unlogged_events_total", { namespace: "/" })).toBe(2);
    } finally {
      await admin.query(`ALTER DATABASE ${pg.escapeIdentifier(db.name)} RESET default_transaction_read_only`);
      await admin.end();
    }
  });

  it("counts what a pruning pass deleted, by kind", async () => {
    const register = new Registry();
    const nsp = "/pruned"; // its own namespace: the other tests declared a long retention for "/"
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 1,
      namespaces: [nsp],
      maxDisconnectionDuration: 1000,
      adapter: { metrics: register, retentionMarginMs: 0, pruneIntervalMs: 200 },
    });
    const pool = cluster.node(0).pool;
    const client = await cluster.connect(0, { nsp });
    const head = await logHead(pool, nsp);
    for (let i = 0; i < 5; i++) cluster.node(0).io.of(nsp).emit("ev", i);
    await waitForHead(pool, head + 5, nsp);
    const sid = client.id!;
    goOffline(client);
    await serverNoticed(cluster.node(0), sid, nsp);
    await waitForSession(pool, sid);
    const entries = async () =>
      Number(
        (
          await pool.query<{ n: string }>(
            `SELECT count(*)::text AS n FROM socket_io.log_entries e JOIN socket_io.namespaces n ON n.id = e.namespace_id WHERE n.name = $1`,
            [nsp],
          )
        ).rows[0]!.n,
      );
    const sessions = async () =>
      Number((await pool.query<{ n: string }>(`SELECT count(*)::text AS n FROM socket_io.sessions WHERE sid = $1`, [sid])).rows[0]!.n);
    await waitFor(async () => (await entries()) === 0 && (await sessions()) === 0, { timeout: 10_000, message: "the pruning of the log and the session" });
    // Every entry of the namespace (the prime offsets are not entries) and the one expired session, each counted once.
    // The pass counts once its statements are done: the table may be empty a moment before.
    await waitFor(async () => (await value(register, "socketio_recovery_prune_deleted_total", { kind: "sessions" })) === 1, {
      message: "the session's deletion counted",
    });
    expect(await value(register, "socketio_recovery_prune_deleted_total", { kind: "log_entries" })).toBe(5 + head);
    expect(await value(register, "socketio_recovery_prune_deleted_total", { kind: "sessions" })).toBe(1);
  });

  it("the delivery lag: entries another node committed that this node has not delivered yet", async () => {
    const register = new Registry();
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1 });
    const a = await cluster.addNode({ poolMax: 2, adapter: { metrics: register } });
    await cluster.waitForServerCount();
    await cluster.connect(a);
    const head = await logHead(cluster.node(0).pool);
    // A's pool is taken: A hears of B's entries (the NOTIFY comes on its own connection) but cannot
    // read them (too large to travel in the NOTIFY), so its cursor stays behind.
    const held = [await a.pool.connect(), await a.pool.connect()];
    try {
      for (let i = 0; i < 3; i++) cluster.node(0).io.emit("ev", "x".repeat(10_000));
      await waitForHead(cluster.node(0).pool, head + 3);
      await waitFor(async () => (await value(register, "socketio_recovery_delivery_lag_entries", { namespace: "/" })) === 3, {
        message: "a lag of 3 entries",
      });
    } finally {
      for (const client of held) client.release();
    }
    await waitFor(async () => (await value(register, "socketio_recovery_delivery_lag_entries", { namespace: "/" })) === 0, {
      message: "the lag back at 0 once A reads them",
    });
  });

  it("counts each replacement of the LISTEN connection", async () => {
    const register = new Registry();
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: { metrics: register, listenerCheckIntervalMs: 200 } });
    await cluster.connect(0);
    expect(await value(register, "socketio_recovery_listener_reconnects_total")).toBe(0);
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    try {
      for (let i = 1; i <= 2; i++) {
        await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2`, [
          db.name,
          LISTENER_APPLICATION_NAME,
        ]);
        await waitFor(async () => (await value(register, "socketio_recovery_listener_reconnects_total")) === i, {
          timeout: 10_000,
          message: `reconnect ${i} counted`,
        });
      }
    } finally {
      await admin.end();
    }
  });
});

describe("metric labels stay bounded", () => {
  it(`gives the first ${MAX_NAMESPACE_LABELS} namespaces their own label and counts the rest as "other"`, async () => {
    const register = new Registry();
    const metrics = recoveryMetrics(register);
    for (let i = 0; i < MAX_NAMESPACE_LABELS + 30; i++) metrics.refused(`/dyn-${i}`, "session expired", 0.01);
    const samples = (await scrape(register)).filter((s) => s.name === "socketio_recovery_restores_total");
    expect(new Set(samples.map((s) => s.labels.namespace)).size).toBe(MAX_NAMESPACE_LABELS + 1);
    expect(samples.find((s) => s.labels.namespace === "other")?.value).toBe(30);
    expect(samples.find((s) => s.labels.namespace === "/dyn-0")?.value).toBe(1);
    expect(recoveryMetrics(register)).toBe(metrics);
  });

  it("folds every refusal text into a fixed set of reasons", () => {
    expect(refusalReason("offset 12 outside the session's range [3, 9]")).toBe("offset_out_of_range");
    expect(refusalReason("entry 5, which the replay after offset 3 needs, was pruned (retention too short for this session?)")).toBe("pruned");
    expect(refusalReason("70000 entries to replay exceed maxReplayEntries (50000)")).toBe("too_many_entries");
    expect(refusalReason("9000000 bytes to replay exceed maxReplayBytes (1024)")).toBe("too_large");
    expect(refusalReason("failed: restore took longer than restoreTimeoutMs (5000 ms)")).toBe("failed");
    expect(refusalReason("session expired")).toBe("expired");
    expect(refusalReason("this node is closing")).toBe("closing");
    expect(refusalReason("something new")).toBe("other");
  });
});

describe("the operations guide and the Grafana dashboard", () => {
  const read = (file: string) => readFileSync(new URL(`../docs/${file}`, import.meta.url), "utf8");
  /** Metric names a text mentions (histogram series folded into their metric). */
  const mentioned = (text: string) =>
    new Set([...text.matchAll(/socketio_recovery_\w+/g)].map(([name]) => name.replace(/_(bucket|sum|count)$/, "")));

  it("name every metric the adapter registers, and no other", async () => {
    const register = new Registry();
    recoveryMetrics(register);
    const registered = new Set((await register.getMetricsAsJSON()).map((m) => m.name));
    expect(registered.size).toBe(12);
    const dashboard = JSON.parse(read("grafana-dashboard.json")) as { panels: Array<{ targets?: Array<{ expr: string }> }> };
    const exprs = dashboard.panels.flatMap((p) => p.targets ?? []).map((t) => t.expr).join("\n");
    expect([...mentioned(exprs)].sort()).toEqual([...registered].sort());
    expect([...mentioned(read("operations.md"))].sort()).toEqual([...registered].sort());
  });
});
