/**
 * What one client received during one phase ("epoch") of a workload, and the
 * accounting made from it: lost, duplicated, reordered per source, offset
 * regressions, and a fingerprint of the delivery order.
 *
 * Every bench event carries (epoch, source, seq); seqs of one source are
 * 1, 2, 3… in emission order. A client expects, per source, seqs
 * 1..expected[source] (or startSeq..: see `expect`).
 */
export type OffsetKind = "ours" | "redis" | undefined;

export interface BenchPayload {
  e: number;
  s: number;
  q: number;
  t?: number;
}

export interface LedgerSummary {
  received: number;
  distinct: number;
  expected: number;
  lost: number;
  duplicated: number;
  /** Receipts whose seq is lower than one already received from the same source. */
  reordered: number;
  /** Receipts whose offset is lower than the previous receipt's (undefined: offsets not comparable). */
  regressions: number | undefined;
  /** Lost / duplicated among seqs <= splitAtSeq and above it (W3: missed while away vs storm-time). */
  lostUpTo: number;
  lostAfter: number;
  duplicatedUpTo: number;
  duplicatedAfter: number;
  /** FNV-1a of the (source, seq) sequence in arrival order: equal for clients that saw one order. */
  orderHash: string;
}

/** -1, 0, 1 comparing two offsets; undefined when they cannot be compared. */
export function compareOffsets(kind: OffsetKind, a: string, b: string): number | undefined {
  if (kind === "ours") {
    const x = Number(a.slice(1));
    const y = Number(b.slice(1));
    return Math.sign(x - y);
  }
  if (kind === "redis") {
    const [am = "0", as = "0"] = a.split("-");
    const [bm = "0", bs = "0"] = b.split("-");
    const byMs = Math.sign(Number(am) - Number(bm));
    return byMs !== 0 ? byMs : Math.sign(Number(as) - Number(bs));
  }
  return undefined;
}

export class ClientLedger {
  private epoch = -1;
  private expected = new Map<number, { from: number; to: number }>();
  private seen = new Map<number, Uint8Array>();
  private maxSeq = new Map<number, number>();
  private lastOffset: string | undefined;
  private hashA = 0x811c9dc5;
  private hashB = 0x01000193;
  received = 0;
  distinct = 0;
  duplicated = 0;
  reordered = 0;
  regressions = 0;
  /** Time of the last receipt of the current epoch (ms, nowMs()). */
  lastAt = 0;
  readonly latencies: number[] = [];
  /** When each of `latencies` was emitted (payload.t, ms): SOAK buckets them by second. */
  readonly emittedAt: number[] = [];

  constructor(private readonly offsetKind: OffsetKind) {}

  /** Starts a new phase: receipts of other epochs are ignored from now on. */
  arm(epoch: number, expected: Record<number, number | { from: number; to: number }>, keepLatencies = false): void {
    this.epoch = epoch;
    this.expect(expected);
    this.seen.clear();
    this.maxSeq.clear();
    this.lastOffset = undefined;
    this.hashA = 0x811c9dc5;
    this.hashB = 0x01000193;
    this.received = this.distinct = this.duplicated = this.reordered = this.regressions = 0;
    this.lastAt = 0;
    this.dupSeqs.length = 0;
    if (!keepLatencies) this.latencies.length = this.emittedAt.length = 0;
  }

  /** Sets what this client should end up with: per source, a count (seqs 1..n) or a seq range. */
  expect(expected: Record<number, number | { from: number; to: number }>): void {
    this.expected = new Map(
      Object.entries(expected).map(([source, e]) => [Number(source), typeof e === "number" ? { from: 1, to: e } : e]),
    );
  }

  get expectedCount(): number {
    let n = 0;
    for (const { from, to } of this.expected.values()) n += Math.max(0, to - from + 1);
    return n;
  }

  /** Distinct receipts that were expected (the completion criterion). */
  get distinctExpected(): number {
    let n = 0;
    for (const [source, { from, to }] of this.expected) {
      const seen = this.seen.get(source);
      if (!seen) continue;
      for (let q = from; q <= Math.min(to, seen.length - 1); q++) n += seen[q]!;
    }
    return n;
  }

  private readonly dupSeqs: number[] = [];

  /** Returns true when this receipt was new and expected (for completion counting). */
  record(payload: BenchPayload, offset: string | undefined, at: number): boolean {
    if (payload.e !== this.epoch) return false;
    this.received++;
    this.lastAt = at;
    if (payload.t !== undefined) {
      this.latencies.push(at - payload.t);
      this.emittedAt.push(payload.t);
    }
    const { s, q } = payload;
    this.hashA = Math.imul(this.hashA ^ s, 0x01000193) >>> 0;
    this.hashA = Math.imul(this.hashA ^ q, 0x01000193) >>> 0;
    this.hashB = Math.imul(this.hashB ^ (q * 31 + s), 0x85ebca6b) >>> 0;
    if (typeof offset === "string" && this.offsetKind) {
      if (this.lastOffset !== undefined && (compareOffsets(this.offsetKind, offset, this.lastOffset) ?? 0) < 0) this.regressions++;
      this.lastOffset = offset;
    }
    let seen = this.seen.get(s);
    if (!seen || seen.length <= q) {
      const grown = new Uint8Array(Math.max(q + 1, (seen?.length ?? 0) * 2, 1024));
      if (seen) grown.set(seen);
      seen = grown;
      this.seen.set(s, seen);
    }
    const max = this.maxSeq.get(s) ?? 0;
    if (q < max) this.reordered++;
    else this.maxSeq.set(s, q);
    if (seen[q]) {
      this.duplicated++;
      this.dupSeqs.push(q);
      return false;
    }
    seen[q] = 1;
    this.distinct++;
    const range = this.expected.get(s);
    return range !== undefined && q >= range.from && q <= range.to;
  }

  summary(splitAtSeq = Number.MAX_SAFE_INTEGER): LedgerSummary {
    let lostUpTo = 0;
    let lostAfter = 0;
    for (const [source, { from, to }] of this.expected) {
      const seen = this.seen.get(source);
      for (let q = from; q <= to; q++) {
        if (seen && q < seen.length && seen[q]) continue;
        if (q <= splitAtSeq) lostUpTo++;
        else lostAfter++;
      }
    }
    const duplicatedUpTo = this.dupSeqs.filter((q) => q <= splitAtSeq).length;
    return {
      received: this.received,
      distinct: this.distinct,
      expected: this.expectedCount,
      lost: lostUpTo + lostAfter,
      duplicated: this.duplicated,
      reordered: this.reordered,
      regressions: this.offsetKind ? this.regressions : undefined,
      lostUpTo,
      lostAfter,
      duplicatedUpTo,
      duplicatedAfter: this.duplicated - duplicatedUpTo,
      orderHash: `${this.hashA.toString(16)}${this.hashB.toString(16)}`,
    };
  }
}

/** Nearest-rank percentile of an already sorted array. */
export function percentile(sorted: number[], p: number): number | undefined {
  if (sorted.length === 0) return undefined;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank];
}
