/**
 * The log writer's retry path against a real failure: the nodes' pooled
 * connections are killed (pg_terminate_backend) again and again while a node
 * emits. Writes fail mid-flight and are retried on new connections; since
 * appends are idempotent, every client still gets every event once, in order.
 */
import pg from "pg";
import { describe, expect, it } from "vitest";
import { LISTENER_APPLICATION_NAME } from "../src/index.js";
import { Cluster, recordEvents, waitFor } from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("write_retry");

describe("log writes while pooled connections die", () => {
  it("retries failed appends without losing or duplicating an event", async () => {
    // Outage mode off: on a loaded machine, ten rounds of kills can keep appends failing for longer
    // than unloggedDeliveryAfterMs, and this test is about the retries, not outage mode (outage.test.ts).
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, poolMax: 3, adapter: { unloggedDeliveryAfterMs: false } });
    const clients = await Promise.all(
      Array.from({ length: 6 }, (_, i) => cluster.connect(i % 2, { rooms: ["feed"] })),
    );
    const received = clients.map((socket) => recordEvents(socket));

    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    const killPooled = async () => {
      const { rows } = await admin.query<{ killed: boolean }>(
        `SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()
            AND backend_type = 'client backend' AND application_name <> $1`,
        [LISTENER_APPLICATION_NAME],
      );
      return rows.filter((r) => r.killed).length;
    };

    // Rounds of 40 events, cutting the pooled connections while some writes are under way, until
    // a cut has hit an append (reported) and at least 10 rounds ran: whether one lands depends on
    // timing, so the test does not stop at a fixed count that might never hit one.
    const appendErrors = () => cluster.node(0).errors.filter((e) => /appending to the log/.test(e.message)).length;
    let total = 0;
    let killed = 0;
    for (let round = 0; round < 10 || (appendErrors() === 0 && round < 100); round++) {
      for (let i = 0; i < 40; i++) {
        cluster.node(0).io.to("feed").emit("feed", total++);
        if (i === 20) {
          // Let some writes get under way, then cut their connections.
          await new Promise((resolve) => setImmediate(resolve));
          killed += await killPooled();
        }
        if (i % 10 === 0) await new Promise((resolve) => setTimeout(resolve, 2));
      }
    }
    await admin.end();
    expect(killed).toBeGreaterThan(0);

    await waitFor(() => received.every((r) => r.length >= total), {
      timeout: 30_000,
      message: "every client to receive every event",
    });
    // Exactly one row per event: no batch was logged twice.
    const { rows } = await cluster.node(0).pool.query<{ n: string }>("SELECT count(*)::text AS n FROM socket_io.log_entries");
    expect(Number(rows[0]!.n)).toBe(total);
    for (const r of received) {
      expect(r.map((e) => e.args[0])).toEqual(Array.from({ length: total }, (_, i) => i));
      const offsets = r.map((e) => Number(String(e.offset).slice(1)));
      expect(offsets.every((o, i) => i === 0 || o === offsets[i - 1]! + 1)).toBe(true);
    }
    // The retry path ran: failed attempts were reported.
    expect(appendErrors()).toBeGreaterThan(0);
  });
});
