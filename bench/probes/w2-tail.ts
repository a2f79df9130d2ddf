/**
 * W2's time per step with its tail (issue 14), from the timestamps the W2
 * probe writes (apply bench/probes/w2-steps.patch, then run W2 with
 * W2_PROBE=<empty dir>; each process writes `step epoch seq time emittedAt`
 * lines): joined per event, every step's p50/p90/p99, and for the slowest
 * 10 % and 1 % of events (by emit → first client) which step holds them.
 *
 *   npx tsx bench/probes/w2-tail.ts <dir written by W2_PROBE>
 */
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";

type Role = "node0" | "node1" | "client";
const dir = process.argv[2];
if (!dir) throw new Error("usage: npx tsx bench/probes/w2-tail.ts <dir written by W2_PROBE>");

const events = new Map<string, Map<string, number>>();
for (const file of readdirSync(dir).filter((f) => f.endsWith(".log"))) {
  const rows = readFileSync(path.join(dir, file), "utf8").split("\n").map((l) => l.split(" ")).filter((r) => r.length === 5);
  const steps = new Set(rows.map((r) => r[0]));
  const role: Role | undefined = steps.has("recv0") ? "client" : steps.has("submit") ? "node0" : steps.has("notify") ? "node1" : undefined;
  if (!role) continue;
  for (const [step, epoch, seq, time, emittedAt] of rows as Array<[string, string, string, string, string]>) {
    const key = `${epoch} ${seq}`;
    const event = events.get(key) ?? new Map<string, number>();
    event.set(`${role}:${step}`, Number(time));
    if (emittedAt !== "0" && role === "node0") event.set("emit", Number(emittedAt));
    events.set(key, event);
  }
}
const epoch = Math.max(...[...events.keys()].map((k) => Number(k.split(" ")[0])));
const measured = [...events].filter(([k]) => Number(k.split(" ")[0]) === epoch).map(([k, e]) => ({ q: Number(k.split(" ")[1]), e }));

const chain: Array<[string, string]> = [
  ["emit", "emit()"],
  ["node0:submit", "emit → LogWriter.submit"],
  ["node0:prepared", "submit → prepared"],
  ["node0:a0", "prepared → batcher runs the write (microtask or append in flight)"],
  ["node0:append", "write → append sent (started, roomChangesDurable)"],
  ["node1:data", "append sent → NOTIFY bytes read on node 1"],
  ["node1:notify", "bytes read → notification handler (pg parse)"],
  ["node1:decoded", "handler → decoded"],
  ["node1:deliver", "decoded → sequencer delivers"],
  ["node1:sent", "deliver → written to 20 sockets"],
  ["client:recv0", "written → client 1 receives"],
  ["client:recvL", "client 1 → client 20 receives"],
];
const complete = measured.filter(({ e }) => chain.every(([s]) => e.has(s)));
const pct = (values: number[], p: number): number => {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((s.length * p) / 100))]!;
};
const us = (ms: number): string => (ms * 1000).toFixed(0);
const step = (e: Map<string, number>, i: number): number => e.get(chain[i]![0])! - e.get(chain[i - 1]![0])!;
const e2e = (e: Map<string, number>): number => e.get("client:recv0")! - e.get("emit")!;
console.log(`epoch ${epoch}: ${measured.length} events, ${complete.length} with every step`);
const tot = complete.map(({ e }) => e2e(e));
console.log(`emit → client 1: p50 ${us(pct(tot, 50))} p90 ${us(pct(tot, 90))} p99 ${us(pct(tot, 99))} µs; → client 20 p50 ${us(pct(complete.map(({ e }) => e.get("client:recvL")! - e.get("emit")!), 50))}`);
const sorted = [...complete].sort((a, b) => e2e(a.e) - e2e(b.e));
const slow10 = sorted.slice(Math.floor(sorted.length * 0.9));
const slow1 = sorted.slice(Math.floor(sorted.length * 0.99));
const mean = (v: number[]): number => v.reduce((a, b) => a + b, 0) / v.length;
console.log(`| step | p50 | p90 | p99 | mean, slowest 10 % | mean, slowest 1 % |\n| --- | ---: | ---: | ---: | ---: | ---: |`);
for (let i = 1; i < chain.length; i++) {
  const all = complete.map(({ e }) => step(e, i));
  console.log(`| ${chain[i]![1]} | ${us(pct(all, 50))} | ${us(pct(all, 90))} | ${us(pct(all, 99))} | ${us(mean(slow10.map(({ e }) => step(e, i))))} | ${us(mean(slow1.map(({ e }) => step(e, i))))} |`);
}
// Which step holds each slow event: the step with the largest excess over its own median.
const medians = chain.map((_, i) => (i === 0 ? 0 : pct(complete.map(({ e }) => step(e, i)), 50)));
for (const [name, set] of [["slowest 10 %", slow10], ["slowest 1 %", slow1]] as const) {
  const holder = new Map<string, number>();
  for (const { e } of set) {
    let best = 1;
    for (let i = 2; i < chain.length - 1; i++) if (step(e, i) - medians[i]! > step(e, best) - medians[best]!) best = i;
    holder.set(chain[best]![1], (holder.get(chain[best]![1]) ?? 0) + 1);
  }
  console.log(`${name} (${set.length} events, emit → client 1 ≥ ${us(e2e(set[0]!.e))} µs), held most by: ` + [...holder].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`).join("; "));
}
const extra = (a: string, b: string, label: string): void => {
  const v = complete.filter(({ e }) => e.has(a) && e.has(b)).map(({ e }) => e.get(b)! - e.get(a)!);
  if (v.length) console.log(`${label}: p50 ${us(pct(v, 50))} p90 ${us(pct(v, 90))} p99 ${us(pct(v, 99))} µs`);
};
extra("node0:append", "node0:committed", "append sent → commit answer on node 0");
extra("node0:committed", "node1:data", "commit answer on node 0 → NOTIFY bytes on node 1");
extra("node0:a0", "node0:a1", "a0 → started()");
const sizes = new Map<number, number>();
for (const { e } of measured) {
  const sent = e.get("node0:append");
  if (sent !== undefined) sizes.set(sent, (sizes.get(sent) ?? 0) + 1);
}
const bySize = new Map<number, number>();
for (const n of sizes.values()) bySize.set(n, (bySize.get(n) ?? 0) + 1);
console.log(`appends: ${sizes.size} for ${measured.length} events; batch sizes ${[...bySize].sort((a, b) => a[0] - b[0]).map(([n, c]) => `${n}×${c}`).join(", ")}`);
// Slowest 1 %: the raw steps, to see whether they come in runs (one stall holding consecutive events).
console.log("slowest 1 %, by seq: " + slow1.map(({ q }) => q).sort((a, b) => a - b).join(" "));
// What waiting for the append in flight adds: the same latency with that wait taken out (an upper
// bound on what a second append in flight could save: it would still wait for the first's row locks).
const waitOf = (e: Map<string, number>): number => e.get("node0:a0")! - e.get("node0:prepared")!;
const waited = complete.filter(({ e }) => waitOf(e) > 0.1);
const without = complete.map(({ e }) => e2e(e) - waitOf(e));
console.log(
  `${((100 * waited.length) / complete.length).toFixed(0)} % of events waited > 100 µs for the append in flight; ` +
    `emit → client 1 without that wait: p50 ${us(pct(without, 50))} p90 ${us(pct(without, 90))} p99 ${us(pct(without, 99))} µs`,
);
