/**
 * Restores and refusals reported by every node since the supervisor started,
 * for the page's cluster panel. Refusal reasons carry numbers (offsets,
 * limits); they are grouped with the numbers blanked, the latest kept whole.
 */
export interface RefusalGroup {
  reason: string;
  count: number;
  latest: string;
}

export interface RecoverySummary {
  succeeded: number;
  /** Missed packets sent back by those restores, in total. */
  replayed: number;
  refused: number;
  reasons: RefusalGroup[];
}

export class RecoveryStats {
  private succeeded = 0;
  private replayed = 0;
  private readonly refusals = new Map<string, RefusalGroup>();

  restored(replayed: number): void {
    this.succeeded++;
    this.replayed += replayed;
  }

  refused(reason: string): void {
    const key = reason.replace(/\d+/g, "n");
    const group = this.refusals.get(key) ?? { reason: key, count: 0, latest: reason };
    group.count++;
    group.latest = reason;
    this.refusals.set(key, group);
  }

  summary(): RecoverySummary {
    const reasons = [...this.refusals.values()].sort((a, b) => b.count - a.count);
    return {
      succeeded: this.succeeded,
      replayed: this.replayed,
      refused: reasons.reduce((sum, group) => sum + group.count, 0),
      reasons: reasons.map((group) => ({ ...group })),
    };
  }
}
