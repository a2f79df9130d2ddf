/**
 * Cluster responses carrying binary travel as binary: `fetchSockets()` on one
 * node returns a remote socket's `socket.data` Buffers as Buffers (JSON would
 * make them `{ type: "Buffer", data: [...] }`), to our nodes and to an
 * upstream `@socket.io/postgres-adapter` node, which reads the attachments
 * table the same way.
 */
import http from "node:http";
import type net from "node:net";
import { createAdapter as createUpstreamAdapter } from "@socket.io/postgres-adapter";
import pg from "pg";
import { Server, type ServerOptions } from "socket.io";
import { describe, expect, it } from "vitest";
import { Cluster, waitFor, type TestNode } from "./helpers/cluster.js";
import { useClusterSuite } from "./fixtures/suite.js";

const db = useClusterSuite("cluster_binary");

/** Fast heartbeats so that nodes know each other quickly. */
const HEARTBEAT = { heartbeatInterval: 200, heartbeatTimeout: 1000 };

/** `socket.data` with binary at several depths, set on the node serving the socket. */
function binaryData(): Record<string, unknown> {
  return { buf: Buffer.from([1, 2, 3]), nested: { list: [Buffer.from("héllo"), 2] }, text: "t" };
}

async function socketWithBinaryData(cluster: Cluster, node: TestNode): Promise<string> {
  const client = await cluster.connect(node);
  const socket = node.io.of("/").sockets.get(client.id!)!;
  socket.data = binaryData();
  return client.id!;
}

describe("binary in cluster responses", () => {
  it("fetchSockets() returns a remote socket's Buffers as Buffers", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: HEARTBEAT });
    await cluster.waitForServerCount();
    const sid = await socketWithBinaryData(cluster, cluster.node(1));
    const [remote] = await cluster.node(0).io.fetchSockets();
    expect(remote?.id).toBe(sid);
    const data = remote!.data as { buf: unknown; nested: { list: unknown[] }; text: string };
    expect(Buffer.isBuffer(data.buf)).toBe(true);
    expect(data).toStrictEqual(binaryData());
    expect(cluster.nodes.flatMap((n) => n.errors.map(String))).toEqual([]);
  });

  it("socket.data with a Buffer and a function (which msgpack refuses): fetchSockets still answers, as JSON would", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 2, adapter: HEARTBEAT });
    await cluster.waitForServerCount();
    const client = await cluster.connect(1);
    cluster.node(1).io.of("/").sockets.get(client.id!)!.data = { buf: Buffer.from([1]), fn: () => 1, n: 1 };
    const [remote] = await cluster.node(0).io.fetchSockets();
    expect(remote?.data).toStrictEqual({ buf: { type: "Buffer", data: [1] }, n: 1 });
    expect(cluster.nodes.flatMap((n) => n.errors.map(String))).toEqual([]);
  });

  it("an upstream @socket.io/postgres-adapter node gets them as Buffers too", async () => {
    const cluster = await Cluster.start({ databaseUrl: db.url, nodes: 1, adapter: HEARTBEAT });
    const pool = new pg.Pool({ connectionString: db.url, max: 3 });
    const upstreamErrors: unknown[] = [];
    const httpServer = http.createServer();
    const upstream = new Server(httpServer, {
      adapter: createUpstreamAdapter(pool, {
        ...HEARTBEAT,
        tableName: "socket_io.socket_io_attachments",
        errorHandler: (err: Error) => upstreamErrors.push(err),
      }) as unknown as ServerOptions["adapter"],
    });
    try {
      await new Promise<void>((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
      const port = (httpServer.address() as net.AddressInfo).port;
      let count = 0;
      await waitFor(
        async () => {
          count = await upstream.of("/").adapter.serverCount();
          return count === 2;
        },
        { message: () => `the upstream node to count 2 servers (got ${count})` },
      );
      const sid = await socketWithBinaryData(cluster, cluster.node(0));
      const upstreamClient = await cluster.connect({ url: `http://127.0.0.1:${port}` }, { waitForOffset: false });

      const fetched = await upstream.fetchSockets();
      const remote = fetched.find((s) => s.id === sid);
      expect(remote).toBeDefined();
      expect(remote!.data).toStrictEqual(binaryData());
      // And the other way round: our node fetches the upstream node's plain sockets.
      expect((await cluster.node(0).io.fetchSockets()).map((s) => s.id).sort()).toEqual([sid, upstreamClient.id].sort());
      expect(upstreamErrors).toEqual([]);
    } finally {
      await upstream.close();
      await pool.end();
    }
  });
});
