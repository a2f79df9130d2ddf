/**
 * Summarises the .cpuprofile files of a directory (written by node processes
 * started with --cpu-prof): top functions by self time, and self time per
 * package. Also runnable alone: `npx tsx bench/profile-summary.ts <dir>`.
 */
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

function where(url: string): string {
  if (!url) return "(native/gc)";
  const clean = url.replace(/^file:\/\//, "");
  const nm = clean.lastIndexOf("node_modules/");
  if (nm >= 0) {
    const rest = clean.slice(nm + "node_modules/".length).split("/");
    return rest[0]!.startsWith("@") ? `${rest[0]}/${rest[1]}` : rest[0]!;
  }
  if (clean.startsWith("node:")) return "node core";
  const src = clean.indexOf("/src/");
  if (src >= 0) return `ours ${clean.slice(src + 1)}`;
  return path.basename(clean);
}

export function summariseProfiles(dir: string, top = 20): string {
  const files = readdirSync(dir).filter((f) => f.endsWith(".cpuprofile")).sort().map((f) => path.join(dir, f));
  const lines: string[] = [];
  for (const file of files) {
    const profile = JSON.parse(readFileSync(file, "utf8")) as Profile;
    const byNode = new Map<number, number>();
    profile.samples.forEach((id, i) => byNode.set(id, (byNode.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
    const total = [...byNode.values()].reduce((a, b) => a + b, 0);
    const byFunction = new Map<string, number>();
    const byPackage = new Map<string, number>();
    for (const node of profile.nodes) {
      const us = byNode.get(node.id) ?? 0;
      if (!us) continue;
      const { functionName, url, lineNumber } = node.callFrame;
      const key = `${functionName || "(anonymous)"} ${where(url)}${url ? `:${lineNumber + 1}` : ""}`;
      byFunction.set(key, (byFunction.get(key) ?? 0) + us);
      const pkg = where(url).split(" ")[0]!;
      byPackage.set(pkg, (byPackage.get(pkg) ?? 0) + us);
    }
    const pct = (us: number) => ((100 * us) / total).toFixed(1);
    lines.push(`#### ${path.relative(dir, file)} (${(total / 1e6).toFixed(1)} s sampled)`, "", "| self % | function |", "| ---: | --- |");
    for (const [k, us] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top)) lines.push(`| ${pct(us)} | \`${k}\` |`);
    const ours = [...byFunction].filter(([k]) => k.includes(" ours ")).sort((a, b) => b[1] - a[1]).slice(0, 10);
    if (ours.length) {
      lines.push("", "| self % | our function |", "| ---: | --- |");
      for (const [k, us] of ours) lines.push(`| ${pct(us)} | \`${k}\` |`);
    }
    lines.push("", "| self % | package |", "| ---: | --- |");
    for (const [k, us] of [...byPackage].sort((a, b) => b[1] - a[1]).slice(0, 12)) lines.push(`| ${pct(us)} | ${k} |`);
    lines.push("");
  }
  return lines.join("\n");
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.stdout.write(summariseProfiles(process.argv[2] ?? ".", Number(process.argv[3] ?? 20)) + "\n");
}
