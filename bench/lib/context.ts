/** What every workload gets from bench/run.ts, and the sizes of a run. */
import type { Peer } from "../peers.js";
import type { RunDatabase } from "./database.js";

export interface Sizes {
  w1Events: number;
  w1ClientsPerNode: number;
  w2Events: number;
  w2IntervalMs: number;
  w2Clients: number;
  w3Clients: number;
  w3Rooms: number;
  w3MissedPerRoom: number;
  w3StormIntervalMs: number;
  w4Missed: number;
  w5Rows: number;
  /** W8: how long the sockets stay idle while statements are counted. */
  w8IdleMs: number;
  /** G-NSP: namespace counts measured in turn (each step adds to the previous). */
  gNspSteps: number[];
  /** G-PRIV: sockets, each receiving gPrivHz private events per second; gPrivDrop of them drop for gPrivAwayMs. */
  gPrivSockets: number;
  gPrivHz: number;
  gPrivDrop: number;
  gPrivAwayMs: number;
  /** G-RESTORE: stored sessions and log entries put in the tables before each point, and the clients restoring. */
  gRestoreLevels: Array<{ sessions: number; entries: number }>;
  gRestoreClients: number;
  /** SOAK: minutes at the steady rate (`--soak-minutes N` overrides). */
  soakMinutes: number;
  /** SOAK: at most this many seconds of rising-rate steps measure the maximum first (a step under way ends). */
  soakProbeSeconds: number;
}

export const FULL: Sizes = {
  w1Events: 5000,
  w1ClientsPerNode: 100,
  w2Events: 2500,
  w2IntervalMs: 2,
  w2Clients: 20,
  w3Clients: 500,
  w3Rooms: 10,
  w3MissedPerRoom: 50,
  w3StormIntervalMs: 5,
  w4Missed: 10_000,
  w5Rows: 1_000_000,
  w8IdleMs: 30_000,
  gNspSteps: [100, 500, 2000],
  gPrivSockets: 2000,
  gPrivHz: 5,
  gPrivDrop: 200,
  gPrivAwayMs: 2000,
  gRestoreLevels: [
    { sessions: 1_000, entries: 10_000 },
    { sessions: 10_000, entries: 1_000_000 },
    { sessions: 100_000, entries: 10_000_000 },
  ],
  gRestoreClients: 50,
  soakMinutes: 10,
  soakProbeSeconds: 40,
};

/** `--quick`: the same workloads, smaller, under ~3 minutes in all. */
export const QUICK: Sizes = {
  ...FULL,
  w1Events: 1000,
  w1ClientsPerNode: 50,
  w2Events: 750,
  w3Clients: 200,
  w5Rows: 200_000,
  w8IdleMs: 15_000,
  gNspSteps: [50, 200, 500],
  gPrivSockets: 500,
  gPrivDrop: 50,
  gRestoreLevels: [
    { sessions: 1_000, entries: 10_000 },
    { sessions: 10_000, entries: 100_000 },
  ],
  // The shortest run where every target is judged (the size reference is minute 3, see workloads/soak.ts).
  soakMinutes: 4,
  soakProbeSeconds: 30,
};

export interface RunContext {
  peer: Peer;
  sizes: Sizes;
  db: RunDatabase;
  redisUrl: string;
  /** A fresh stream / key prefix per workload run for redis-streams. */
  streamName: string;
  rep: number;
  /** Passed to the node processes of our adapter under W1 when profiling. */
  cpuProfDir?: string;
  nextEpoch(): number;
}

/** A workload's numbers for one peer in one repetition; null = not measurable here. */
export type Metrics = Record<string, number | null>;

export interface MetricDef {
  key: string;
  label: string;
  /** Which way is better, for the ratio column (ours / peer). */
  better?: "higher" | "lower";
  digits?: number;
}

export interface Workload {
  id: string;
  title: string;
  metrics: MetricDef[];
  /** true, or why this peer cannot run it ("n/a: …"). */
  applies(peer: Peer): true | string;
  run(ctx: RunContext): Promise<Metrics>;
  /** Long workloads: once per run, not once per repetition. */
  oncePerRun?: boolean;
  /** Why it is left out of a run without `--only` naming it (e.g. it takes many minutes). */
  onRequestOnly?: string;
  /** What the metrics table cannot hold (e.g. per-minute series): appended to the report and its JSON. */
  appendix?(): Appendix | undefined;
  /** After the last repetition (what the workload kept across runs, e.g. a database of its own). */
  teardown?(): Promise<void>;
}

/** A workload's own section of the report. */
export interface Appendix {
  markdown: string;
  data: unknown;
}
