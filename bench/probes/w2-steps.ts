/**
 * W2's time per step, from the timestamps the W2 probe writes (apply
 * bench/probes/w2-steps.patch, then run W2 with W2_PROBE=<empty dir>):
 * each process writes `step epoch seq time emittedAt` lines; this joins them
 * per event (the measured epoch) and prints each step's median.
 *
 *   npx tsx bench/probes/w2-steps.ts <dir>
 */
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";

type Role = "node0" | "node1" | "client";
const dir = process.argv[2];
if (!dir) throw new Error("usage: npx tsx bench/probes/w2-steps.ts <dir written by W2_PROBE>");

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
    if (emittedAt !== "0") event.set("emit", Number(emittedAt));
    events.set(key, event);
  }
}
const epoch = Math.max(...[...events.keys()].map((k) => Number(k.split(" ")[0])));
const measured = [...events].filter(([k]) => Number(k.split(" ")[0]) === epoch).map(([, e]) => e);

const chain: Array<[string, string]> = [
  ["emit", "emit() (bench payload time)"],
  ["node0:bcast", "emit() → adapter.broadcast"],
  ["node0:submit", "broadcast → LogWriter.submit (program order)"],
  ["node0:prepared", "submit → prepared (parser normalise + msgpack)"],
  ["node0:append", "prepared → append sent (batcher: microtask, or waiting for the append in flight)"],
  ["node1:notify", "append sent → NOTIFY on node 1 (statement + commit flush + NOTIFY)"],
  ["node1:decoded", "NOTIFY → decoded (base64 + msgpack)"],
  ["node1:deliver", "decoded → sequencer delivers"],
  ["node1:sent", "deliver → written to 20 sockets"],
  ["client:recv0", "written → client 1 receives"],
  ["client:recvL", "client 1 → client 20 receives"],
];
const complete = measured.filter((e) => chain.every(([s]) => e.has(s)));
const median = (values: number[]): number => [...values].sort((a, b) => a - b)[values.length >> 1]!;
const percentile = (values: number[], p: number): number => [...values].sort((a, b) => a - b)[Math.floor((values.length * p) / 100)]!;
const us = (ms: number): string => (ms * 1000).toFixed(0);
const total = median(complete.map((e) => e.get("client:recvL")! - e.get("emit")!));
console.log(`epoch ${epoch}: ${measured.length} events, ${complete.length} with every step`);
console.log(`| step | median µs | % of emit → client 20 (${us(total)} µs) |\n| --- | ---: | ---: |`);
for (let i = 1; i < chain.length; i++) {
  const [from] = chain[i - 1]!;
  const [to, label] = chain[i]!;
  const m = median(complete.map((e) => e.get(to)! - e.get(from)!));
  console.log(`| ${label} | ${us(m)} | ${((100 * m) / total).toFixed(0)}% |`);
}
const withCommit = complete.filter((e) => e.has("node0:committed"));
console.log(`append sent → commit answer on node 0: ${us(median(withCommit.map((e) => e.get("node0:committed")! - e.get("node0:append")!)))} µs (median)`);
const waits = complete.map((e) => e.get("node0:append")! - e.get("node0:prepared")!);
console.log(
  `batcher wait: p50 ${us(percentile(waits, 50))}, p75 ${us(percentile(waits, 75))}, p90 ${us(percentile(waits, 90))} µs; ` +
    `${((100 * waits.filter((w) => w > 0.1).length) / waits.length).toFixed(0)}% of events wait > 100 µs (an append in flight)`,
);
const sizes = new Map<number, number>();
for (const e of measured) {
  const sent = e.get("node0:append");
  if (sent !== undefined) sizes.set(sent, (sizes.get(sent) ?? 0) + 1);
}
const bySize = new Map<number, number>();
for (const n of sizes.values()) bySize.set(n, (bySize.get(n) ?? 0) + 1);
console.log(`appends: ${sizes.size} for ${measured.length} events; batch sizes ${[...bySize].sort((a, b) => a[0] - b[0]).map(([n, c]) => `${n}×${c}`).join(", ")}`);
