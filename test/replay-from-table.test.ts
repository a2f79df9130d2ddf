/**
 * Replays longer than the in-memory ring are read from the table. Offsets
 * cross digit boundaries (9 → 10 → 100 → 1000), rooms filter, and the replay
 * is stitched to live packets that keep flowing during the restore.
 */
import { describe, expect, it } from "vitest";
import {
  Cluster,
  comeBack,
  goOffline,
  logHead,
  offsetNumber,
  recordEvents,
  serverNoticed,
  waitFor,
  waitForHead,
} from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("replay_from_table");

describe("replay from the table", () => {
  it("replays 2,500 missed packets in order, filtered by room, while packets keep flowing", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: { recentEntries: 1000 } });
    const client = await cluster.connect(0, { rooms: ["mine"] });
    const got = recordEvents(client);
    const sid = client.id!;
    goOffline(client);
    await serverNoticed(cluster.node(0), sid);

    const head = await logHead(cluster.node(1).pool);
    const missed = 2500;
    // One source, so the log's order is the emission order (two nodes' packets interleave in commit order).
    for (let i = 0; i < missed; i++) {
      cluster.node(0).io.to(i % 5 === 4 ? "other" : "mine").emit("ev", i);
    }
    await waitForHead(cluster.node(1).pool, head + missed, "/", "socket_io", 20_000);

    // Packets keep coming while the client restores on node 1 (whose ring holds only the last 1000).
    let live = 0;
    const stream = setInterval(() => cluster.node(0).io.to("mine").emit("ev", missed + live++), 1);
    try {
      expect(await comeBack(client, cluster.node(1), 15_000)).toBe(true);
      await new Promise((resolve) => setTimeout(resolve, 100));
    } finally {
      clearInterval(stream);
    }
    const expected = [
      ...Array.from({ length: missed }, (_, i) => i).filter((i) => i % 5 !== 4),
      ...Array.from({ length: live }, (_, i) => missed + i),
    ];
    await waitFor(() => got.length >= expected.length, {
      timeout: 20_000,
      message: () => `${expected.length} packets, got ${got.length}`,
    });
    expect(got.map((r) => r.args[0])).toEqual(expected);
    const offsets = got.map((r) => offsetNumber(r.offset));
    expect(offsets.every((o, i) => i === 0 || o > offsets[i - 1]!)).toBe(true);
  });
});
