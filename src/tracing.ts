/**
 * OpenTelemetry spans for restores, log append batches and pruning passes,
 * through `@opentelemetry/api` when the application has it installed: an
 * optional peer dependency. Without an SDK registered the API hands out
 * non-recording spans (nothing is recorded or sent); without the package at
 * all every span here is a no-op. The package is looked up by
 * `createAdapter()`, never at import, so an application without it loads
 * this module unchanged.
 *
 * `require` (not `import()`) keeps the lookup synchronous, so the first
 * restore is traced too. It is done at `createAdapter()` rather than at the
 * first span: looked up in the middle of traffic (the first append), its
 * one-time load blocked a loaded node's event loop at a bad moment, and the
 * fault suite's SIGTERM scenario then lost events (see the branch report). The API keeps its registered provider on
 * `globalThis` under a versioned key, so this copy sees the SDK the
 * application registered through its own `import`.
 *
 * The types below are the few members used, written out so that the shipped
 * declarations do not name the optional package.
 */
import { createRequire } from "node:module";
import { asError } from "./errors.js";

export type SpanAttributes = Record<string, string | number | boolean>;

interface OtelSpan {
  setAttributes(attributes: SpanAttributes): unknown;
  setStatus(status: { code: number; message?: string }): unknown;
  recordException(exception: Error): unknown;
  end(): void;
}

interface OtelApi {
  trace: {
    getTracer(name: string, version?: string): { startSpan(name: string, options?: { attributes?: SpanAttributes }): OtelSpan };
  };
}

/** `SpanStatusCode.ERROR` of the API (a stable enum value). */
const STATUS_ERROR = 2;
const TRACER_NAME = "socket.io-postgres-recovery";

/** Span names, for applications filtering them. */
export const SPAN_NAMES = {
  restore: "socket.io-postgres-recovery restore",
  append: "socket.io-postgres-recovery append",
  prune: "socket.io-postgres-recovery prune",
} as const;

/** undefined: not looked up yet; null: not installed. */
let api: OtelApi | null | undefined;

/**
 * Looks the API up now (`createAdapter()` calls it): the synchronous
 * `require` of a few dozen files happens at start-up, not in the middle of
 * the first append or restore.
 */
export function loadApi(): OtelApi | null {
  if (api === undefined) {
    try {
      api = createRequire(import.meta.url)("@opentelemetry/api") as OtelApi;
    } catch {
      api = null;
    }
  }
  return api;
}

/** A span, or nothing when tracing is not installed. */
export interface TraceSpan {
  set(attributes: SpanAttributes): void;
  /** Marks the span failed with `err` (recorded as an exception). */
  fail(err: unknown): void;
  end(): void;
}

const NO_SPAN: TraceSpan = { set() {}, fail() {}, end() {} };

export function startSpan(name: string, attributes: SpanAttributes): TraceSpan {
  const otel = loadApi();
  if (!otel) return NO_SPAN;
  const span = otel.trace.getTracer(TRACER_NAME).startSpan(name, { attributes });
  return {
    set: (more) => span.setAttributes(more),
    fail: (err) => {
      const error = asError(err);
      span.recordException(error);
      span.setStatus({ code: STATUS_ERROR, message: error.message });
    },
    end: () => span.end(),
  };
}

/** Runs `work` inside a span that ends when it settles (failed when it rejects). */
export async function traced<T>(name: string, attributes: SpanAttributes, work: (span: TraceSpan) => Promise<T>): Promise<T> {
  const span = startSpan(name, attributes);
  try {
    return await work(span);
  } catch (err) {
    span.fail(err);
    throw err;
  } finally {
    span.end();
  }
}
