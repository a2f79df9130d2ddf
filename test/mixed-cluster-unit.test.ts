/**
 * The peer bookkeeping of mixed clusters (src/mixed-cluster.ts), without a
 * database: which messages are dropped as already in our log, and when a
 * logged broadcast must also go out on the bus.
 */
import { MessageType, type ClusterMessage } from "socket.io-adapter";
import { describe, expect, it } from "vitest";
import { LOG_MARKER, MixedCluster } from "../src/mixed-cluster.js";

/** `null`: a node with recovery off (no log). */
function make(logSchema: string | null = "socket_io") {
  const published: ClusterMessage[] = [];
  const mixed = new MixedCluster({
    uid: "me",
    nsp: "/",
    logSchema: logSchema ?? undefined,
    heartbeatTimeout: 60_000,
    publish: async (message) => {
      published.push(message as ClusterMessage);
    },
    isLocalSocket: (room) => room === "my-socket",
  });
  // Past the announcement's grace period: only the peers decide.
  mixed.tagOutgoing({ uid: "me", nsp: "/", type: MessageType.INITIAL_HEARTBEAT });
  (mixed as unknown as { unsureUntil: number }).unsureUntil = 0;
  return { mixed, published };
}

const heartbeat = (uid: string, schema?: string) =>
  ({ uid, nsp: "/", type: MessageType.HEARTBEAT, ...(schema ? { [LOG_MARKER]: { schema } } : {}) }) as unknown as ClusterMessage;
const broadcast = (uid: string, schema?: string) =>
  ({
    uid,
    nsp: "/",
    type: MessageType.BROADCAST,
    data: { packet: { type: 2, data: ["ev"], nsp: "/" }, opts: { rooms: [], except: [], flags: {} } },
    ...(schema ? { [LOG_MARKER]: { schema } } : {}),
  }) as unknown as ClusterMessage;

describe("MixedCluster", () => {
  it("marks this node's heartbeats with its log, and only with recovery", () => {
    const { mixed } = make("tenant");
    expect(mixed.tagOutgoing(heartbeat("me"))).toMatchObject({ [LOG_MARKER]: { schema: "tenant" } });
    expect(mixed.tagOutgoing(broadcast("me"))).not.toHaveProperty(LOG_MARKER);
    expect(make(null).mixed.tagOutgoing(heartbeat("me"))).not.toHaveProperty(LOG_MARKER);
  });

  it("drops only relays of the log it reads (not another schema's, not without recovery)", () => {
    const { mixed } = make("socket_io");
    expect(mixed.isFromOurLog(broadcast("peer", "socket_io"))).toBe(true);
    expect(mixed.isFromOurLog(broadcast("peer", "tenant_b"))).toBe(false);
    expect(mixed.isFromOurLog(broadcast("peer"))).toBe(false);
    expect(mixed.isFromOurLog({ ...broadcast("peer"), [LOG_MARKER]: "socket_io" } as unknown as ClusterMessage)).toBe(false);
    expect(make(null).mixed.isFromOurLog(broadcast("peer", "socket_io"))).toBe(false);
  });

  it("relays while a live peer is not known to read our log", () => {
    const { mixed, published } = make();
    expect(mixed.needsRelay()).toBe(false);
    mixed.observe(heartbeat("ours", "socket_io"));
    expect(mixed.needsRelay()).toBe(false);
    mixed.observe(heartbeat("other-deployment", "tenant_b"));
    expect(mixed.needsRelay()).toBe(true);
    mixed.observe({ uid: "other-deployment", nsp: "/", type: MessageType.ADAPTER_CLOSE } as ClusterMessage);
    expect(mixed.needsRelay()).toBe(false);
    // First seen through something else than a heartbeat: unknown, so relayed to.
    mixed.observe({ uid: "upstream", nsp: "/", type: MessageType.SOCKETS_JOIN, data: { opts: { rooms: [], except: [] }, rooms: [] } } as unknown as ClusterMessage);
    expect(mixed.needsRelay()).toBe(true);
    mixed.relay({ data: ["ev", 1], rooms: ["r"], except: [] });
    mixed.relay({ data: ["mine"], rooms: ["my-socket"], except: [] });
    expect(published).toEqual([
      {
        uid: "me",
        nsp: "/",
        type: MessageType.BROADCAST,
        data: { packet: { type: 2, data: ["ev", 1], nsp: "/" }, opts: { rooms: ["r"], except: [], flags: {} } },
        [LOG_MARKER]: { schema: "socket_io" },
      },
    ]);
    // The emitter never receives: it does not count.
    const alone = make();
    alone.mixed.observe(broadcast("emitter"));
    expect(alone.mixed.needsRelay()).toBe(false);
  });

  it("relays until its initial heartbeat's answers had time to arrive", () => {
    const mixed = new MixedCluster({ uid: "me", nsp: "/", logSchema: "socket_io", heartbeatTimeout: 60_000, publish: async () => undefined, isLocalSocket: () => false });
    expect(mixed.needsRelay()).toBe(true);
    mixed.tagOutgoing({ uid: "me", nsp: "/", type: MessageType.INITIAL_HEARTBEAT });
    expect(mixed.needsRelay()).toBe(true);
  });
});
