/**
 * Outage mode: a node that cannot write to the log for `unloggedDeliveryAfterMs`
 * keeps delivering its own events to its own sockets, unlogged, refuses
 * restores, and goes back to the log on its own once the database answers.
 * The node under test reaches Postgres through a TCP proxy the test freezes
 * (a dead network: connections hang rather than fail, the harder case).
 */
import { describe, expect, it } from "vitest";
import {
  Cluster,
  comeBack,
  goOffline,
  logHead,
  recordEvents,
  recoveryFields,
  serverNoticed,
  startProxy,
  waitFor,
  type Received,
} from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("outage");

/** The `n` of every "ev" received, in order. */
function ns(received: Received[]): unknown[] {
  return received.filter((r) => r.event === "ev").map((r) => (r.args[0] as { n: unknown }).n);
}

async function loggedNs(cluster: Cluster): Promise<unknown[]> {
  // Payloads are msgpack; the test's events carry a marker string that is searchable in the bytes.
  const { rows } = await cluster.node(0).pool.query<{ payload: Buffer }>(
    `SELECT payload FROM socket_io.log_entries ORDER BY "offset"`,
  );
  return rows.flatMap((r) => {
    const m = /outage-test:([\w-]+)/.exec(r.payload.toString("latin1"));
    return m ? [m[1]] : [];
  });
}

describe("outage mode", () => {
  it("delivers to its own sockets while it cannot write, refuses restores, and resumes logging when the database is back", async () => {
    const adapter = { unloggedDeliveryAfterMs: 300, listenerCheckIntervalMs: 500, restoreTimeoutMs: 2000 };
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter });
    const target = new URL(db.url);
    const proxy = await startProxy(Number(target.port || 5432));
    target.host = `127.0.0.1:${proxy.port}`;
    const cut = cluster.node(0); // healthy
    const node = await cluster.addNode({ databaseUrl: target.toString() }); // behind the proxy
    await cluster.waitForServerCount();
    const events: string[] = [];
    const refusals: string[] = [];
    node.io.of("/").adapter.on("outage-started", () => events.push("started"));
    node.io.of("/").adapter.on("outage-ended", ({ unloggedPackets }: { unloggedPackets: number }) => events.push(`ended:${unloggedPackets}`));
    node.io.of("/").adapter.on("restore-refused", ({ reason }: { reason: string }) => refusals.push(reason));

    const local = await cluster.connect(node); // on the node that loses the database
    const remote = await cluster.connect(cut);
    const localGot = recordEvents(local);
    const remoteGot = recordEvents(remote);
    const emit = (n: string) => node.io.emit("ev", { n, tag: `outage-test:${n}` });

    emit("1");
    await waitFor(() => ns(localGot).length === 1 && ns(remoteGot).length === 1);

    // The remote client drops now: its session is stored by the healthy node.
    const remoteSid = remote.id!;
    goOffline(remote);
    await serverNoticed(cut, remoteSid);

    proxy.freeze();
    proxy.cut();
    emit("2"); // the batch in flight when writes start hanging: its commit is in doubt, it waits
    await new Promise((resolve) => setTimeout(resolve, 50));
    emit("q1"); // queued behind it: taken back and delivered unlogged when outage mode starts
    emit("q2");
    await waitFor(() => events.includes("started"), { timeout: 10_000, message: "outage mode" });
    emit("3");
    emit("4");
    await waitFor(() => ns(localGot).join() === "1,q1,q2,3,4", { message: () => `unlogged delivery (got ${ns(localGot).join()})` });
    // The unlogged events carry this node's cursor: the client's offset stays a real one.
    const during = localGot.filter((r) => r.event === "ev").slice(1);
    expect(during.map((r) => r.offset)).toEqual(during.map(() => localGot[0]!.offset));
    expect(recoveryFields(local)._lastOffset).toBe(localGot[0]!.offset);

    // A restore on the node in outage is refused at once (fail closed).
    expect(await comeBack(remote, node)).toBe(false);
    expect(refusals.some((r) => /outage/.test(r))).toBe(true);

    // The healthy node keeps logging meanwhile; the node in outage gets it once back.
    cut.io.emit("ev", { n: "h1", tag: "outage-test:h1" });

    proxy.cut(); // the hung connections fail, their retries go through
    proxy.thaw();
    await waitFor(() => events.some((e) => e.startsWith("ended")), { timeout: 15_000, message: "outage ended" });
    expect(events).toEqual(["started", "ended:4"]);
    emit("5");
    await waitFor(() => ns(localGot).includes("5") && ns(localGot).includes("h1"), {
      timeout: 10_000,
      message: () => `delivery after the outage (got ${ns(localGot).join()})`,
    });
    // Logged: 1, 2 (the in-doubt batch, committed on retry), h1, 5 — never the unlogged 3 and 4.
    const logged = await loggedNs(cluster);
    expect([...logged].sort()).toEqual(["1", "2", "5", "h1"]);
    expect(logged.indexOf("2")).toBeLessThan(logged.indexOf("5"));
    // The local client got everything once: q1, q2, 3 and 4 first (unlogged, at once), then the log's order.
    const afterOutage = ns(localGot).slice(5);
    expect(ns(localGot).slice(0, 5)).toEqual(["1", "q1", "q2", "3", "4"]);
    expect(afterOutage).toEqual(logged.filter((n) => n !== "1"));

    // And it recovers across nodes afterwards, missing nothing logged while away.
    const head = await logHead(cut.pool);
    const localSid = local.id!;
    goOffline(local);
    await serverNoticed(node, localSid);
    emit("6");
    await waitFor(async () => (await logHead(cut.pool)) > head);
    expect(await comeBack(local, cut)).toBe(true);
    await waitFor(() => ns(localGot).includes("6"));
    expect(ns(localGot).filter((n) => n === "6")).toHaveLength(1);
    expect(new Set(ns(localGot)).size).toBe(ns(localGot).length);
    await proxy.close();
  });
});
