/**
 * The adapters a bench run compares. Each has a stable id (used on the
 * command line, in the table and in the JSON) and the facts the workloads
 * need: how many nodes it can run, whether it recovers, what its offsets
 * look like.
 */
export type PeerId = "ours" | "ours-metrics" | "ours-no-crash-safety" | "in-memory" | "upstream-pg" | "redis-streams";

export interface Peer {
  id: PeerId;
  label: string;
  /** 1 for the in-memory adapter: workloads needing two nodes run on one (W1) or say n/a; 3 (SOAK's count) for the others. */
  maxNodes: number;
  /** Socket.IO's connectionStateRecovery on for this peer. */
  recovery: boolean;
  /** How to compare two offsets a client saw; undefined when the peer's offsets are not ordered. */
  offsetKind?: "ours" | "redis";
  /** Uses the run's Postgres database (pg_stat_database deltas mean something). */
  postgres: boolean;
  /** Ours with `crashSafety: false`: the reference that prices crash safety (skeletons, checkpoints, liveness). */
  crashSafety?: false;
}

export const PEERS: Record<PeerId, Peer> = {
  ours: { id: "ours", label: "ours (pg + recovery)", maxNodes: 3, recovery: true, offsetKind: "ours", postgres: true },
  // Ours with the `metrics` option (a prom-client Registry, scraped every second): its cost against "ours".
  "ours-metrics": { id: "ours-metrics", label: "ours + metrics", maxNodes: 3, recovery: true, offsetKind: "ours", postgres: true },
  // Ours with `crashSafety: false`: what crash safety costs, against "ours".
  "ours-no-crash-safety": {
    id: "ours-no-crash-safety",
    label: "ours, crashSafety: false",
    maxNodes: 3,
    recovery: true,
    offsetKind: "ours",
    postgres: true,
    crashSafety: false,
  },
  "in-memory": { id: "in-memory", label: "in-memory (1 node)", maxNodes: 1, recovery: true, postgres: false },
  "upstream-pg": { id: "upstream-pg", label: "upstream pg (no recovery)", maxNodes: 3, recovery: false, postgres: true },
  "redis-streams": { id: "redis-streams", label: "redis-streams", maxNodes: 3, recovery: true, offsetKind: "redis", postgres: false },
};

/** The default set; "ours-metrics" and "ours-no-crash-safety" only on request (`--peers ours,ours-metrics`): they price a feature. */
export const ALL_PEERS: PeerId[] = ["ours", "in-memory", "upstream-pg", "redis-streams"];

/** This package, with or without metrics or crash safety (same tables, channels, offsets). */
export function isOurs(peer: Peer): boolean {
  return peer.id === "ours" || peer.id === "ours-metrics" || peer.id === "ours-no-crash-safety";
}

/** The comparison's reference point: ratios are ours / peer. */
export const OURS: PeerId = "ours";
