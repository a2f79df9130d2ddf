/**
 * `setupPrimary` for Node's `cluster`: a machine of workers running
 * `@socket.io/cluster-adapter` behind our primary, next to a standalone node
 * of ours with recovery. Broadcasts go both ways (the standalone node's are
 * logged, and relayed on the bus for the workers, which have no log).
 */
import { spawn, type ChildProcess } from "node:child_process";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { Cluster, recordEvents, waitFor } from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("nodecluster");
const HEARTBEAT = { heartbeatInterval: 200, heartbeatTimeout: 1000 };
const FIXTURE = fileURLToPath(new URL("./fixtures/cluster-primary.ts", import.meta.url));

const machines: ChildProcess[] = [];

afterEach(async () => {
  await Promise.all(
    machines.splice(0).map(
      (child) =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null) return resolve();
          child.once("exit", () => resolve());
          child.kill("SIGTERM");
        }),
    ),
  );
});

async function startMachine(): Promise<{ url: string; stderr: string[] }> {
  const child = spawn(process.execPath, ["--import", "tsx", FIXTURE], {
    cwd: fileURLToPath(new URL("..", import.meta.url)),
    env: { ...process.env, DATABASE_URL: db.url, HEARTBEAT: JSON.stringify(HEARTBEAT) },
    stdio: ["pipe", "pipe", "pipe"],
  });
  machines.push(child);
  const stderr: string[] = [];
  child.stderr!.setEncoding("utf8").on("data", (chunk: string) => stderr.push(chunk));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the cluster machine did not start: ${stderr.join("")}`)), 20_000);
    readline.createInterface({ input: child.stdout! }).on("line", (line) => {
      const m = /^ready (\d+)$/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
  });
  return { url: `http://127.0.0.1:${port}`, stderr };
}

describe("setupPrimary", () => {
  it("joins a cluster's workers to standalone nodes, broadcasts flowing both ways", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: HEARTBEAT });
    const machine = await startMachine();
    await waitFor(async () => (await cluster.node(0).io.of("/").adapter.serverCount()) === 2, {
      timeout: 10_000,
      message: "the standalone node to count the worker",
    });
    const onWorker = await cluster.connect(machine, { waitForOffset: false });
    const onNode = await cluster.connect(0, {});
    const gotWorker = recordEvents(onWorker);
    const gotNode = recordEvents(onNode);

    // From the standalone recovery node: logged, and relayed for the worker.
    for (let i = 0; i < 3; i++) cluster.node(0).io.emit("from-node", { i });
    cluster.node(0).io.emit("from-node", { i: 3 }, Buffer.from([7]));
    // From the worker (socket.broadcast on the worker): through the primary and the bus.
    await onWorker.timeout(5000).emitWithAck("broadcast-emit", { event: "from-worker", args: [{ i: 0 }] });

    await waitFor(() => gotWorker.length === 4 && gotNode.length === 5, {
      timeout: 10_000,
      message: () => `events (worker ${gotWorker.length}/4, node ${gotNode.length}/5; primary: ${machine.stderr.join("")})`,
    });
    expect(gotWorker.map((r) => `${r.event}:${(r.args[0] as { i: number }).i}`)).toEqual(["from-node:0", "from-node:1", "from-node:2", "from-node:3"]);
    expect(Buffer.isBuffer(gotWorker[3]!.args[1])).toBe(true);
    expect(gotNode.map((r) => r.event).sort()).toEqual(["from-node", "from-node", "from-node", "from-node", "from-worker"]);
    expect(machine.stderr.join("")).toBe("");
  });
});
