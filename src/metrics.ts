/**
 * Prometheus metrics (option `metrics`: a prom-client `Registry`).
 *
 * The modules report what happens through the small `RecoveryMetrics`
 * interface; without a registry they get `NO_METRICS`, whose calls do
 * nothing, and prom-client is never loaded (it is an optional peer
 * dependency). With one, prom-client is loaded synchronously with `require`
 * (it is CommonJS), so `createAdapter()` stays synchronous and can say at once
 * when the package is missing.
 *
 * One set of metrics per registry: every adapter (namespace) and every node
 * of the process that is given the same registry reports into the same
 * series, so nothing is registered twice. Counters and histograms add up over
 * them; gauges are computed when scraped from the namespaces being watched
 * (pending writes summed, lag and outage the worst of the process' nodes).
 *
 * The namespace label is bounded: the first `MAX_NAMESPACE_LABELS` names a
 * registry sees get their own value, later ones share `other` (dynamic
 * namespaces are client input). Refusal reasons are folded into a fixed set
 * of codes (`refusalReason`): the texts carry offsets and error messages.
 */
import { createRequire } from "node:module";
import { OptionsError } from "./options.js";

/**
 * What this package uses of a prom-client `Registry` (structural, so that the
 * declarations shipped do not import the optional peer's types).
 */
export interface MetricsRegistry {
  registerMetric(metric: never): void;
  getSingleMetric(name: string): unknown;
  metrics(): Promise<string> | string;
}

/** Live figures of one namespace's adapter on one node, read when scraped. */
export interface NamespaceGauges {
  /** Entries known committed and not delivered yet by this node (undefined before it started). */
  lagEntries(): number | undefined;
  /** Logged broadcasts accepted and not committed yet. */
  pendingWrites(): number;
  /** Whether this node delivers this namespace's new events unlogged (outage mode). */
  inOutage(): boolean;
}

/** Rows one pruning pass deleted, by kind (see PruneReport). */
export interface PrunedCounts {
  logEntries: number;
  sessions: number;
  attachments: number;
  writers: number;
  namespaceRows: number;
}

/** What the modules report. Every call is cheap: it runs per restore, per batch, per pass. */
export interface RecoveryMetrics {
  restored(nsp: string, seconds: number, replayed: number): void;
  /** `reason`: the refusal's text as the "restore-refused" event gives it. */
  refused(nsp: string, reason: string, seconds: number): void;
  appended(nsp: string, seconds: number, batchSize: number): void;
  unlogged(nsp: string): void;
  sessionsWritten(count: number): void;
  pruned(counts: PrunedCounts): void;
  listenerReconnected(): void;
  /** Reads the namespace's gauges at every scrape until the returned function is called. */
  watch(nsp: string, gauges: NamespaceGauges): () => void;
}

export const NO_METRICS: RecoveryMetrics = Object.freeze({
  restored: () => undefined,
  refused: () => undefined,
  appended: () => undefined,
  unlogged: () => undefined,
  sessionsWritten: () => undefined,
  pruned: () => undefined,
  listenerReconnected: () => undefined,
  watch: () => () => undefined,
});

/** Distinct namespace label values per registry; later namespaces are counted as `other`. */
export const MAX_NAMESPACE_LABELS = 50;
export const OTHER_NAMESPACE = "other";

/**
 * Refusal texts (restorer.ts, replay.ts) and their label. First match wins;
 * a text none matches is `other`.
 */
const REFUSAL_REASONS: ReadonlyArray<[RegExp, string]> = [
  [/^this node is closing/, "closing"],
  [/outage mode/, "outage"],
  [/^malformed/, "malformed"],
  [/^namespace not started/, "not_started"],
  [/^unknown pid/, "unknown_session"],
  [/^session expired/, "expired"],
  [/outside the session's range/, "offset_out_of_range"],
  [/^unreadable session/, "unreadable_session"],
  [/exceed maxReplayEntries/, "too_many_entries"],
  [/exceed maxReplayBytes|more was delivered during the restore/, "too_large"],
  [/was pruned/, "pruned"],
  [/^abandoned/, "failed"],
  [/^failed/, "failed"],
];

export function refusalReason(reason: string): string {
  for (const [pattern, code] of REFUSAL_REASONS) if (pattern.test(reason)) return code;
  return "other";
}

const PRUNED_KINDS: ReadonlyArray<[keyof PrunedCounts, string]> = [
  ["logEntries", "log_entries"],
  ["sessions", "sessions"],
  ["attachments", "attachments"],
  ["writers", "writers"],
  ["namespaceRows", "namespaces"],
];

/** The parts of prom-client used here (its own types are not imported: optional peer). */
interface LabelledMetric {
  labels(...values: string[]): { inc(n?: number): void; observe(v: number): void; set(v: number): void };
  inc(n?: number): void;
  reset(): void;
}
interface MetricConfig {
  name: string;
  help: string;
  labelNames?: string[];
  buckets?: number[];
  registers: MetricsRegistry[];
  collect?: () => void;
}
type MetricClass = new (config: MetricConfig) => LabelledMetric;
interface PromClient {
  Counter: MetricClass;
  Gauge: MetricClass;
  Histogram: MetricClass;
}

function loadPromClient(): PromClient {
  try {
    return createRequire(import.meta.url)("prom-client") as PromClient;
  } catch (err) {
    throw new OptionsError(
      'socket.io-postgres-recovery: option "metrics" needs the prom-client package (an optional peer dependency): npm install prom-client',
      { cause: err },
    );
  }
}

const sets = new WeakMap<MetricsRegistry, RecoveryMetrics>();

/** The metrics of `register`, created and registered at its first use (see the module comment). */
export function recoveryMetrics(register: MetricsRegistry): RecoveryMetrics {
  let set = sets.get(register);
  if (!set) {
    set = new RegistryMetrics(register, loadPromClient());
    sets.set(register, set);
  }
  return set;
}

const SECONDS_FAST = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
const SECONDS_RESTORE = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
const PACKETS = [0, 1, 5, 10, 50, 100, 500, 1000, 5000, 10_000, 50_000];
const BATCH = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 5000];

class RegistryMetrics implements RecoveryMetrics {
  private readonly labels = new Map<string, string>();
  private readonly watched = new Set<{ nsp: string; gauges: NamespaceGauges }>();
  private readonly restores: LabelledMetric;
  private readonly restoreDuration: LabelledMetric;
  private readonly replayedPackets: LabelledMetric;
  private readonly appendDuration: LabelledMetric;
  private readonly batchSize: LabelledMetric;
  private readonly unloggedEvents: LabelledMetric;
  private readonly sessionsWrittenTotal: LabelledMetric;
  private readonly prunedTotal: LabelledMetric;
  private readonly listenerReconnects: LabelledMetric;

  constructor(
    private readonly register: MetricsRegistry,
    private readonly prom: PromClient,
  ) {
    const ns = ["namespace"];
    this.restores = this.metric("Counter", {
      name: "socketio_recovery_restores_total",
      help: "Restores decided on this node: recovered, or refused (the client got a new session) with a reason",
      labelNames: ["namespace", "outcome", "reason"],
    });
    this.restoreDuration = this.metric("Histogram", {
      name: "socketio_recovery_restore_duration_seconds",
      help: "Time from Socket.IO asking for a restore to its outcome (recovered or refused)",
      labelNames: ["namespace", "outcome"],
      buckets: SECONDS_RESTORE,
    });
    this.replayedPackets = this.metric("Histogram", {
      name: "socketio_recovery_replayed_packets",
      help: "Missed packets replayed by a successful restore (read at the restore; more may follow live)",
      labelNames: ns,
      buckets: PACKETS,
    });
    this.appendDuration = this.metric("Histogram", {
      name: "socketio_recovery_log_append_duration_seconds",
      help: "Time of one committed log append statement (one batch)",
      labelNames: ns,
      buckets: SECONDS_FAST,
    });
    this.batchSize = this.metric("Histogram", {
      name: "socketio_recovery_log_batch_size",
      help: "Broadcasts per committed log append (group commit)",
      labelNames: ns,
      buckets: BATCH,
    });
    this.metric("Gauge", {
      name: "socketio_recovery_delivery_lag_entries",
      help: "Entries known committed that this process' nodes have not delivered yet (known head minus cursor; the worst node)",
      labelNames: ns,
      collect: this.collector((g) => g.lagEntries(), Math.max),
    });
    this.metric("Gauge", {
      name: "socketio_recovery_pending_writes",
      help: "Logged broadcasts accepted and not committed yet (queued or being written)",
      labelNames: ns,
      collect: this.collector((g) => g.pendingWrites(), (a, b) => a + b),
    });
    this.metric("Gauge", {
      name: "socketio_recovery_outage",
      help: "1 while a node delivers the namespace's new events unlogged because the log is unwritable (outage mode)",
      labelNames: ns,
      collect: this.collector((g) => (g.inOutage() ? 1 : 0), Math.max),
    });
    this.unloggedEvents = this.metric("Counter", {
      name: "socketio_recovery_unlogged_events_total",
      help: "Broadcasts delivered to this node's sockets only, without being logged (outage mode, full write queue); not recoverable",
      labelNames: ns,
    });
    this.sessionsWrittenTotal = this.metric("Counter", {
      name: "socketio_recovery_sessions_written_total",
      help: "Sessions written to the database at a disconnect (or put back after a failed restore)",
    });
    this.prunedTotal = this.metric("Counter", {
      name: "socketio_recovery_prune_deleted_total",
      help: "Rows deleted by this node's pruning passes, by kind",
      labelNames: ["kind"],
    });
    // Every kind shows from the start (at 0), so rate() and alerts see a series before the first deletion.
    for (const [, kind] of PRUNED_KINDS) this.prunedTotal.labels(kind).inc(0);
    this.listenerReconnects = this.metric("Counter", {
      name: "socketio_recovery_listener_reconnects_total",
      help: "Times the LISTEN connection was replaced after it was lost (each followed by a catch-up read)",
    });
  }

  /** Registers a metric, or takes the one of that name already there (another copy of this package). */
  private metric(kind: keyof PromClient, config: Omit<MetricConfig, "registers">): LabelledMetric {
    const existing = this.register.getSingleMetric(config.name);
    if (existing) return existing as LabelledMetric;
    return new this.prom[kind]({ ...config, registers: [this.register] });
  }

  /** A gauge's collect(): one value per namespace label, combined over the watched adapters. */
  private collector(read: (g: NamespaceGauges) => number | undefined, combine: (a: number, b: number) => number) {
    const watched = this.watched;
    return function (this: LabelledMetric): void {
      const values = new Map<string, number>();
      for (const { nsp, gauges } of watched) {
        const value = read(gauges);
        if (value === undefined) continue;
        const previous = values.get(nsp);
        values.set(nsp, previous === undefined ? value : combine(previous, value));
      }
      // Namespaces gone since the last scrape disappear rather than keep their last value.
      this.reset();
      for (const [nsp, value] of values) this.labels(nsp).set(value);
    };
  }

  private label(nsp: string): string {
    let label = this.labels.get(nsp);
    if (label === undefined) {
      label = this.labels.size < MAX_NAMESPACE_LABELS ? nsp : OTHER_NAMESPACE;
      // Only capped names are remembered: the map stays at MAX_NAMESPACE_LABELS entries.
      if (label !== OTHER_NAMESPACE) this.labels.set(nsp, label);
    }
    return label;
  }

  restored(nsp: string, seconds: number, replayed: number): void {
    const label = this.label(nsp);
    this.restores.labels(label, "recovered", "").inc();
    this.restoreDuration.labels(label, "recovered").observe(seconds);
    this.replayedPackets.labels(label).observe(replayed);
  }

  refused(nsp: string, reason: string, seconds: number): void {
    const label = this.label(nsp);
    this.restores.labels(label, "refused", refusalReason(reason)).inc();
    this.restoreDuration.labels(label, "refused").observe(seconds);
  }

  appended(nsp: string, seconds: number, batchSize: number): void {
    const label = this.label(nsp);
    this.appendDuration.labels(label).observe(seconds);
    this.batchSize.labels(label).observe(batchSize);
  }

  unlogged(nsp: string): void {
    this.unloggedEvents.labels(this.label(nsp)).inc();
  }

  sessionsWritten(count: number): void {
    this.sessionsWrittenTotal.inc(count);
  }

  pruned(counts: PrunedCounts): void {
    for (const [key, kind] of PRUNED_KINDS) {
      if (counts[key] > 0) this.prunedTotal.labels(kind).inc(counts[key]);
    }
  }

  listenerReconnected(): void {
    this.listenerReconnects.inc();
  }

  watch(nsp: string, gauges: NamespaceGauges): () => void {
    const entry = { nsp: this.label(nsp), gauges };
    this.watched.add(entry);
    return () => {
      this.watched.delete(entry);
    };
  }
}
