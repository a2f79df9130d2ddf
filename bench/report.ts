/**
 * Turns a run's raw results into medians with min–max over repetitions,
 * ratios (ours / peer) computed within each repetition, a verdict per target
 * of issue 4, a Markdown report and the JSON written under bench/results/.
 */
import type { MetricDef, Metrics } from "./lib/context.js";
import { OURS, PEERS, type PeerId } from "./peers.js";
import type { EmitterThroughput } from "./workloads/emitters.js";
import type { RawLimit } from "./workloads/raw-limits.js";

/** One workload × peer × repetition: numbers, or why not. */
export type Outcome = { metrics: Metrics } | { na: string } | { error: string };

export interface WorkloadResult {
  id: string;
  title: string;
  metrics: MetricDef[];
  /** outcomes[peer][rep] */
  outcomes: Partial<Record<PeerId, Outcome[]>>;
}

export interface RunReport {
  date: string;
  command: string;
  mode: "quick" | "full";
  reps: number;
  machine: Record<string, unknown>;
  notes: string[];
  rawLimits: RawLimit[];
  /** Emitter throughput, every repetition (absent in reports written before it existed). */
  emitters?: EmitterThroughput[];
  workloads: WorkloadResult[];
  /** Workloads' own sections (SOAK's per-minute series). */
  appendices?: Array<{ id: string; markdown: string; data: unknown }>;
  durationSeconds?: number;
}

export interface Stat {
  median: number;
  min: number;
  max: number;
  n: number;
}

export function stat(values: Array<number | null | undefined>): Stat | undefined {
  const v = values.filter((x): x is number => typeof x === "number" && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const mid = Math.floor(v.length / 2);
  const median = v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
  return { median, min: v[0]!, max: v.at(-1)!, n: v.length };
}

function valuesOf(w: WorkloadResult, peer: PeerId, key: string): Array<number | null> {
  return (w.outcomes[peer] ?? []).map((o) => ("metrics" in o ? (o.metrics[key] ?? null) : null));
}

/** ours / peer, repetition by repetition (both measured in the same repetition). */
export function ratio(w: WorkloadResult, peer: PeerId, key: string): Stat | undefined {
  const ours = valuesOf(w, OURS, key);
  const theirs = valuesOf(w, peer, key);
  return stat(ours.map((o, i) => (o !== null && theirs[i] !== null && theirs[i] !== 0 && theirs[i] !== undefined ? o / theirs[i]! : null)));
}

function fmt(x: number, digits = 0): string {
  if (Math.abs(x) >= 10_000 && digits === 0) return Math.round(x).toLocaleString("en-US");
  return x.toFixed(digits);
}

function cell(s: Stat | undefined, digits = 0): string {
  if (!s) return "–";
  if (s.n === 1 || s.min === s.max) return fmt(s.median, digits);
  return `${fmt(s.median, digits)} (${fmt(s.min, digits)}–${fmt(s.max, digits)})`;
}

function peerCell(w: WorkloadResult, peer: PeerId, def: MetricDef): string {
  const outcomes = w.outcomes[peer] ?? [];
  const na = outcomes.find((o): o is { na: string } => "na" in o);
  if (na && outcomes.every((o) => "na" in o)) return "n/a";
  const s = stat(valuesOf(w, peer, def.key));
  if (!s && outcomes.some((o) => "error" in o)) return "error";
  return cell(s, def.digits ?? 0);
}

export interface Verdict {
  target: string;
  measured: string;
  met: boolean | undefined;
}

function med(w: WorkloadResult | undefined, peer: PeerId, key: string): number | undefined {
  return w ? stat(valuesOf(w, peer, key))?.median : undefined;
}

function worst(w: WorkloadResult | undefined, peer: PeerId, key: string): number | undefined {
  return w ? stat(valuesOf(w, peer, key))?.max : undefined;
}

/** The targets of issue 4 for our adapter, checked against this run's medians (worst case for counts). */
export function verdicts(report: RunReport): Verdict[] {
  const byId = new Map(report.workloads.map((w) => [w.id, w]));
  const out: Verdict[] = [];
  const check = (target: string, measured: number | undefined, ok: (x: number) => boolean, digits = 2) =>
    out.push({ target, measured: measured === undefined ? "–" : fmt(measured, digits), met: measured === undefined ? undefined : ok(measured) });
  for (const id of ["W1", "W1-split"]) {
    const w = byId.get(id);
    if (!w) continue;
    check(`${id} deliveries/s ≥ 1.0× redis-streams (median ratio)`, w && ratio(w, "redis-streams", "deliveriesPerSec")?.median, (x) => x >= 1.0);
    check(`${id} deliveries/s ≥ 1.2× upstream pg (median ratio)`, w && ratio(w, "upstream-pg", "deliveriesPerSec")?.median, (x) => x >= 1.2);
    for (const key of ["lost", "duplicated", "regressions"]) check(`${id} ${key} = 0 (worst rep)`, worst(w, OURS, key), (x) => x === 0, 0);
    check(`${id} one delivery order (worst rep)`, worst(w, OURS, "distinctOrders"), (x) => x === 1, 0);
  }
  const w1 = byId.get("W1");
  if (w1) {
    check("W1 ≤ 1 NOTIFY per write transaction (log NOTIFYs / write transactions)", worst(w1, OURS, "logNotifiesPerWriteTx"), (x) => x <= 1);
    check("W1 ≥ 10 events per write transaction", med(w1, OURS, "eventsPerWriteTx"), (x) => x >= 10, 1);
  }
  const w2 = byId.get("W2");
  if (w2) {
    check("W2 p50 ≤ 1.5 ms", med(w2, OURS, "p50"), (x) => x <= 1.5);
    check("W2 p99 ≤ redis-streams' p99 (median ratio ≤ 1)", ratio(w2, "redis-streams", "p99")?.median, (x) => x <= 1);
  }
  const w3 = byId.get("W3");
  if (w3) {
    check("W3 100% recovered (worst rep)", w3 && stat(valuesOf(w3, OURS, "recoveredPct"))?.min, (x) => x === 100, 1);
    for (const key of ["lostMissed", "lostStorm", "dupMissed", "dupStorm"]) check(`W3 ${key} = 0 (worst rep)`, worst(w3, OURS, key), (x) => x === 0, 0);
    check("W3 total ≤ 0.6× redis-streams (median ratio)", ratio(w3, "redis-streams", "seconds")?.median, (x) => x <= 0.6);
    check("W3 restoreSession mean ≤ 25 ms", med(w3, OURS, "restoreMeanMs"), (x) => x <= 25, 1);
  }
  const w6 = byId.get("W6");
  if (w6) {
    check("W6 100% recovered after SIGKILL (worst rep)", stat(valuesOf(w6, OURS, "recoveredPct"))?.min, (x) => x === 100, 1);
    for (const key of ["lostMissed", "lostStorm", "dupMissed", "dupStorm"]) check(`W6 ${key} = 0 (worst rep)`, worst(w6, OURS, key), (x) => x === 0, 0);
    if (w3) {
      // Both measured in the same repetition, one after the other.
      const w3s = valuesOf(w3, OURS, "seconds");
      const perRep = valuesOf(w6, OURS, "seconds").map((s, i) => (s !== null && w3s[i] ? s / w3s[i]! : null));
      check("W6 time to all back ≤ 1.5× W3's (median of per-repetition ratios)", stat(perRep)?.median, (x) => x <= 1.5);
    }
  }
  // Crash safety's cost: ours against ours with crashSafety: false, repetition by repetition.
  const off: PeerId = "ours-no-crash-safety";
  for (const id of ["W1", "W1-split"]) {
    const w = byId.get(id);
    const r = w && w.outcomes[off] ? ratio(w, off, "deliveriesPerSec")?.median : undefined;
    if (r !== undefined) check(`${id} deliveries/s ≥ 0.95× crashSafety off (median ratio)`, r, (x) => x >= 0.95);
  }
  if (w3?.outcomes[off]) check("W3 time ≤ 1.05× crashSafety off (median ratio)", ratio(w3, off, "seconds")?.median, (x) => x <= 1.05);
  const w8 = byId.get("W8");
  if (w8) check("W8 session/skeleton writes at rest = 0 (worst rep)", worst(w8, OURS, "sessionWritesPerSocketMin"), (x) => x === 0, 3);
  const w4 = byId.get("W4");
  if (w4) check("W4 < 250 ms", med(w4, OURS, "ms"), (x) => x < 250, 0);
  const w5 = byId.get("W5");
  if (w5) check("W5 never stalls writers > 50 ms (worst rep)", worst(w5, OURS, "writerMaxMs"), (x) => x <= 50, 1);
  return out;
}

export function markdown(report: RunReport): string {
  const lines: string[] = [];
  const m = report.machine;
  lines.push(`## Benchmark ${report.date} (${report.mode}, ${report.reps} repetition${report.reps > 1 ? "s" : ""})`, "");
  lines.push(`\`${report.command}\` on ${String(m.cpuModel)} ×${String(m.cpus)}, load average ${String(m.loadavgStart)} → ${String(m.loadavgEnd)}; node ${String(m.node)}, PostgreSQL ${String(m.postgres)}, Redis ${String(m.redis)}.`, "");
  lines.push("Cells: median (min–max) over repetitions; ratio columns: ours ÷ peer, computed within each repetition.", "");
  for (const note of report.notes) lines.push(`- ${note}`);
  lines.push("");
  for (const w of report.workloads) {
    const peers = (Object.keys(w.outcomes) as PeerId[]).sort((a, b) => ORDER.indexOf(a) - ORDER.indexOf(b));
    const others = peers.filter((p) => p !== OURS);
    lines.push(`### ${w.id}: ${w.title}`, "");
    lines.push(`| metric | ${peers.map((p) => PEERS[p].label).join(" | ")} | ${others.map((p) => `ours ÷ ${p}`).join(" | ")} |`);
    lines.push(`| --- | ${peers.map(() => "---:").join(" | ")} | ${others.map(() => "---:").join(" | ")} |`);
    for (const def of w.metrics) {
      const ratios = others.map((p) => (def.better && peers.includes(OURS) ? cell(ratio(w, p, def.key), 2) : ""));
      lines.push(`| ${def.label} | ${peers.map((p) => peerCell(w, p, def)).join(" | ")} | ${ratios.join(" | ")} |`);
    }
    const errors = peers.flatMap((p) => (w.outcomes[p] ?? []).flatMap((o, rep) => ("error" in o ? [`${p} rep ${rep + 1}: ${o.error}`] : [])));
    for (const e of errors) lines.push("", `> error: ${e}`);
    lines.push("");
  }
  if (report.rawLimits.length) {
    lines.push("### Raw limits of this machine: multi-row INSERT and / or one pg_notify per transaction, back to back (one connection unless said)", "");
    lines.push("| statement | rows per transaction | transactions/s | rows/s | mean ms per transaction |", "| --- | ---: | ---: | ---: | ---: |");
    for (const r of report.rawLimits) lines.push(`| ${r.statement ?? "insert+notify"} | ${r.batch} | ${fmt(r.txPerSec)} | ${fmt(r.rowsPerSec)} | ${r.meanMs.toFixed(2)} |`);
    lines.push("");
  }
  if (report.emitters?.length) {
    const names = [...new Set(report.emitters.map((e) => e.emitter))];
    const upstreamName = names.find((n) => n.startsWith("upstream"));
    const median = (name: string) => stat(report.emitters!.filter((e) => e.emitter === name).map((e) => e.eventsPerSec));
    const up = upstreamName ? median(upstreamName)?.median : undefined;
    lines.push(
      "### Emitters: events/s committed from outside the nodes (median, min–max over repetitions)",
      "",
      "| emitter | events/s | ÷ upstream emitter |",
      "| --- | ---: | ---: |",
    );
    for (const name of names) {
      const s = median(name);
      if (!s) continue;
      const range = s.n > 1 && s.min !== s.max ? ` (${fmt(s.min)}–${fmt(s.max)})` : "";
      lines.push(`| ${name} | ${fmt(s.median)}${range} | ${up ? (s.median / up).toFixed(2) : "–"} |`);
    }
    lines.push(
      "",
      "Ours logs every event (offsets, replay on recovery); upstream's emitter and redis-streams' XADD only publish. Direct: group-committed, the promise resolves once in the log. Transactional: one transaction per event on 4 connections; logged = moved into the log by a node.",
      "",
    );
  }
  const v = verdicts(report);
  if (v.length) {
    lines.push("### Targets (ours)", "", "| target | measured | met |", "| --- | ---: | :---: |");
    for (const x of v) lines.push(`| ${x.target} | ${x.measured} | ${x.met === undefined ? "–" : x.met ? "yes" : "**no**"} |`);
    lines.push("");
  }
  return lines.join("\n");
}

const ORDER: PeerId[] = ["ours", "ours-no-crash-safety", "ours-metrics", "in-memory", "upstream-pg", "redis-streams"];
