/**
 * A counting semaphore with deadlines: at most `permits` holders at once;
 * the others wait in arrival order, each until its own deadline at most.
 * Bounds the restores of a node that read the table at the same time: after
 * a redeploy thousands of clients reconnect at once, and each such read can
 * fetch up to `maxReplayBytes`.
 */
import { debug } from "./debug.js";

interface Waiter {
  grant(): void;
  timer: NodeJS.Timeout;
}

export class Semaphore {
  private held = 0;
  private readonly waiters: Waiter[] = [];

  constructor(
    private readonly permits: number,
    /** Names the bound in messages (the option that sets it). */
    private readonly name: string,
  ) {}

  /** Holders now, and how many wait (for status and tests). */
  get usage(): { held: number; waiting: number } {
    return { held: this.held, waiting: this.waiters.length };
  }

  /**
   * Runs `task` once a permit is free; rejects without running it when none
   * frees up before `deadline` (ms since the epoch).
   */
  async run<T>(deadline: number, task: () => Promise<T>): Promise<T> {
    await this.acquire(deadline);
    try {
      return await task();
    } finally {
      this.release();
    }
  }

  private acquire(deadline: number): Promise<void> {
    if (this.held < this.permits) {
      this.held++;
      return Promise.resolve();
    }
    debug("%s: all %d permits held, %d waiting", this.name, this.permits, this.waiters.length + 1);
    return new Promise<void>((resolve, reject) => {
      const waiter: Waiter = {
        grant: () => {
          clearTimeout(waiter.timer);
          this.held++;
          resolve();
        },
        timer: setTimeout(() => {
          const i = this.waiters.indexOf(waiter);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(new Error(`waited for one of the ${this.permits} concurrent reads ${this.name} allows until the restore's deadline`));
        }, Math.max(deadline - Date.now(), 0)),
      };
      waiter.timer.unref();
      this.waiters.push(waiter);
    });
  }

  private release(): void {
    this.held--;
    this.waiters.shift()?.grant();
  }
}
