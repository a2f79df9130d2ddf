/**
 * OpenTelemetry spans, with the SDK's in-memory exporter registered the way
 * an application registers one (the global tracer provider of
 * `@opentelemetry/api`), against a real Postgres: a restore from the ring of
 * recent entries, one from the table, a refused one, log append batches, and
 * a pruning pass that deletes an expired session.
 */
import { trace } from "@opentelemetry/api";
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SPAN_NAMES } from "../src/tracing.js";
import { Cluster, comeBack, goOffline, recordEvents, recoveryFields, waitFor, waitForSession } from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("tracing");

const exporter = new InMemorySpanExporter();
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });

beforeAll(() => {
  expect(trace.setGlobalTracerProvider(provider)).toBe(true);
});
afterAll(async () => {
  trace.disable();
  await provider.shutdown();
});

const spans = (name: string): ReadableSpan[] => exporter.getFinishedSpans().filter((s) => s.name === name);

describe("tracing", () => {
  it("spans for restores (outcome, replay size, source), append batches (size) and pruning passes (deleted counts)", async () => {
    const cluster = await Cluster.start({
      databaseUrl: db.url,
      nodes: 1,
      maxDisconnectionDuration: 1500,
      adapter: { pruneIntervalMs: 200 },
    });
    // A node without the ring of recent entries: its replays come from the table.
    const fromTable = await cluster.addNode({ adapter: { pruneIntervalMs: 200, recentEntries: 0 } });
    const n0 = cluster.node(0);
    const pool = n0.pool;

    // Append batches: one emit, then five in one tick (one or more batches, five entries in all).
    const client = await cluster.connect(n0, { rooms: ["r"] });
    const got = recordEvents(client);
    let sid: string;
    n0.io.to("r").emit("ev", 0);
    await waitFor(() => got.length === 1);
    for (let i = 1; i <= 5; i++) n0.io.to("r").emit("ev", i);
    await waitFor(() => got.length === 6);
    const appends = spans(SPAN_NAMES.append).filter((s) => s.attributes["socketio.namespace"] === "/");
    const appended = appends.reduce((sum, s) => sum + Number(s.attributes["socketio.recovery.batch_size"]), 0);
    expect(appended).toBeGreaterThanOrEqual(6);
    expect(Math.max(...appends.map((s) => Number(s.attributes["socketio.recovery.batch_size"])))).toBeGreaterThan(1);
    for (const s of appends) expect(Number(s.attributes["socketio.recovery.batch_bytes"])).toBeGreaterThan(0);

    // A restore from memory: two events missed, replayed from the ring of the same node.
    sid = client.id!;
    goOffline(client);
    await waitForSession(pool, sid);
    n0.io.to("r").emit("ev", 6);
    n0.io.to("r").emit("ev", 7);
    await waitFor(async () => (await pool.query(`SELECT head FROM socket_io.namespaces WHERE name = '/'`)).rows[0].head >= 8);
    expect(await comeBack(client, n0)).toBe(true);
    await waitFor(() => got.length === 8);
    // From the table: on the node without a ring.
    sid = client.id!;
    goOffline(client);
    await waitForSession(pool, sid);
    n0.io.to("r").emit("ev", 8);
    await waitFor(async () => (await pool.query(`SELECT head FROM socket_io.namespaces WHERE name = '/'`)).rows[0].head >= 9);
    expect(await comeBack(client, fromTable)).toBe(true);
    await waitFor(() => got.length === 9);
    // Refused: an offset beyond what was ever written to it.
    sid = client.id!;
    goOffline(client);
    await waitForSession(pool, sid);
    recoveryFields(client)._lastOffset = "o999999";
    expect(await comeBack(client, n0)).toBe(false);

    await waitFor(() => spans(SPAN_NAMES.restore).length >= 3, { message: "three restore spans" });
    const restores = spans(SPAN_NAMES.restore).map((s) => s.attributes);
    expect(restores).toEqual([
      { "socketio.namespace": "/", "socketio.recovery.outcome": "recovered", "socketio.recovery.replay_size": 2, "socketio.recovery.replay_source": "memory", "socketio.recovery.replay_read": 2 },
      { "socketio.namespace": "/", "socketio.recovery.outcome": "recovered", "socketio.recovery.replay_size": 1, "socketio.recovery.replay_source": "table", "socketio.recovery.replay_read": 1 },
      {
        "socketio.namespace": "/",
        "socketio.recovery.outcome": "refused",
        "socketio.recovery.refusal_reason": expect.stringMatching(/^offset 999999 outside the session's range/),
      },
    ]);

    // A pruning pass that deletes the refused session's fence and the expired one of a client gone for good.
    const gone = await cluster.connect(n0);
    const goneSid = gone.id!;
    goOffline(gone);
    await waitForSession(pool, goneSid);
    await waitFor(
      () => spans(SPAN_NAMES.prune).some((s) => Number(s.attributes["socketio.recovery.expired_announced"]) >= 1),
      { timeout: 10_000, interval: 50, message: "a pruning pass that announced an expired session" },
    );
    const pass = spans(SPAN_NAMES.prune).find((s) => Number(s.attributes["socketio.recovery.expired_announced"]) >= 1)!;
    expect(pass.attributes).toMatchObject({ "socketio.recovery.prune_source": "adapter" });
    expect(Number(pass.attributes["socketio.recovery.deleted_sessions"])).toBeGreaterThanOrEqual(1);
    for (const key of ["deleted_log_entries", "deleted_attachments", "deleted_writers", "deleted_namespace_rows"]) {
      expect(typeof pass.attributes[`socketio.recovery.${key}`]).toBe("number");
    }
    expect(
      (await pool.query(`SELECT 1 FROM socket_io.sessions WHERE sid = $1`, [goneSid])).rowCount,
      "the pass deleted the expired session",
    ).toBe(0);
  });
});
