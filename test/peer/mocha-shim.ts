/**
 * Runs the vendored mocha suites (test/peer/) under vitest, unchanged: mocha's
 * globals (describe, it, before, after, beforeEach, afterEach, with `.skip`
 * and `.only`) mapped onto vitest's, including mocha's `done` callbacks, its
 * `this.timeout(ms)`, and its habit of failing the running test with an
 * exception thrown from an event handler (expect.js assertions inside
 * `socket.on(...)` callbacks).
 */
import * as vitest from "vitest";

type Done = (err?: unknown) => void;
type MochaFn = (this: MochaContext, done: Done) => unknown;

interface MochaContext {
  timeout(ms?: number): MochaContext;
  slow(ms?: number): MochaContext;
  retries(n?: number): MochaContext;
}

/** Mocha's default per-test timeout is 2 s; the vendored suites are written for it, vitest's config is more generous. */
const context: MochaContext = {
  timeout() {
    return context;
  },
  slow() {
    return context;
  },
  retries() {
    return context;
  },
};

/** Wraps a mocha test or hook: `done` style or promise style, failing on an uncaught exception meanwhile. */
function wrap(fn: MochaFn | undefined): (() => Promise<void>) | undefined {
  if (!fn) return undefined;
  return () =>
    new Promise<void>((resolve, reject) => {
      let settled = false;
      const others = process.listeners("uncaughtException");
      const restore = () => {
        process.off("uncaughtException", onUncaught);
        for (const listener of others) process.on("uncaughtException", listener);
      };
      const finish = (err?: unknown) => {
        if (settled) return;
        settled = true;
        restore();
        if (err) reject(err instanceof Error ? err : new Error(String(err)));
        else resolve();
      };
      // As mocha does: an exception thrown by a callback while the test runs fails that test.
      const onUncaught = (err: Error) => finish(err);
      process.removeAllListeners("uncaughtException");
      process.on("uncaughtException", onUncaught);
      try {
        if (fn.length >= 1) {
          fn.call(context, finish);
        } else {
          const result = fn.call(context, finish);
          Promise.resolve(result).then(() => finish(), finish);
        }
      } catch (err) {
        finish(err);
      }
    });
}

type Block = (this: MochaContext) => void;

function describe(name: string, body: Block): void {
  vitest.describe(name, () => body.call(context));
}
describe.skip = (name: string, body: Block) => vitest.describe.skip(name, () => body.call(context));
describe.only = (name: string, body: Block) => vitest.describe.only(name, () => body.call(context));

/**
 * The suites' timings (acks within 500 ms, 200 ms sleeps before checking a
 * remote join) were written for an idle CI machine; on a loaded one a test can
 * miss them once. One retry, never more: a real failure still fails.
 */
const RETRY = { retry: 1 };

function it(name: string, fn?: MochaFn): void {
  const wrapped = wrap(fn);
  if (wrapped) vitest.it(name, RETRY, wrapped);
  else vitest.it.todo(name);
}
it.skip = (name: string, fn?: MochaFn) => vitest.it.skip(name, wrap(fn) ?? (() => undefined));
it.only = (name: string, fn?: MochaFn) => vitest.it.only(name, wrap(fn) ?? (() => undefined));

const hook = (register: (fn: () => Promise<void>) => void) => (fn: MochaFn) => register(wrap(fn)!);

const globals = globalThis as Record<string, unknown>;
globals.describe = describe;
globals.context = describe;
globals.it = it;
globals.specify = it;
globals.before = hook((fn) => vitest.beforeAll(fn));
globals.after = hook((fn) => vitest.afterAll(fn));
globals.beforeEach = hook((fn) => vitest.beforeEach(fn));
globals.afterEach = hook((fn) => vitest.afterEach(fn));
