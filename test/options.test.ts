/** Options are validated once, at createAdapter(), with messages that say what to fix. */
import pg from "pg";
import { describe, expect, it } from "vitest";
import { createAdapter, OptionsError } from "../src/index.js";
import { resolveOptions } from "../src/options.js";

describe("options", () => {
  it("fills every default and freezes the result", () => {
    const opts = resolveOptions(undefined);
    expect(opts).toMatchObject({
      channelPrefix: "socket.io",
      attachmentsTable: { schema: undefined, table: "socket_io_attachments", fallbackSchema: "socket_io" },
      payloadThreshold: 8000,
      cleanupInterval: 30000,
      heartbeatInterval: 5000,
      heartbeatTimeout: 10000,
      schema: "socket_io",
      retentionMarginMs: undefined,
      primeOffsetEvent: "socket.io-postgres-recovery:offset",
      unloggedDeliveryAfterMs: 2000,
      preparedStatements: true,
      logChannel: "socket.io:socket_io:log",
    });
    expect(Object.isFrozen(opts)).toBe(true);
  });

  it.each([
    [{ schema: 'x"; DROP TABLE y; --' }, /option "schema" must be a Postgres identifier/],
    [{ schema: "" }, /option "schema"/],
    [{ schema: "a".repeat(64) }, /at most 63 characters/],
    [{ tableName: "public.t; DROP" }, /option "tableName"/],
    [{ tableName: "a.b.c" }, /option "tableName"/],
    [{ channelPrefix: 'a"b' }, /option "channelPrefix"/],
    [{ channelPrefix: "" }, /option "channelPrefix"/],
    [{ pruneIntervalMs: -5 }, /option "pruneIntervalMs" must be an integer from 100 to 86400000 \(ms\); got -5/],
    [{ maxReplayEntries: 1.5 }, /option "maxReplayEntries"/],
    [{ payloadThreshold: "8000" }, /option "payloadThreshold" .*got "8000"/],
    [{ heartbeatInterval: 5000, heartbeatTimeout: 4000 }, /option "heartbeatTimeout" must be greater than heartbeatInterval/],
    [{ errorHandler: "log" }, /option "errorHandler" must be a function/],
    [{ primeOffsetEvent: "connect" }, /option "primeOffsetEvent"/],
    [{ primeOffsetEvent: true }, /option "primeOffsetEvent"/],
    [{ unloggedDeliveryAfterMs: 0 }, /option "unloggedDeliveryAfterMs" must be an integer from 100 to 600000 \(ms\) or false; got 0/],
    [{ unloggedDeliveryAfterMs: true }, /option "unloggedDeliveryAfterMs"/],
    [{ preparedStatements: "yes" }, /option "preparedStatements" must be true or false/],
    [{ retentionMarginMs: Number.NaN }, /option "retentionMarginMs"/],
    [{ pruneIntervalMS: 1000 }, /unknown option "pruneIntervalMS"/],
    [{ maxEntryBytes: 100 }, /option "maxEntryBytes" must be an integer from 1024 to 67108864 \(bytes\)/],
    [{ maxEntryBytes: 8192, maxReplayBytes: 4096 }, /option "maxEntryBytes" must be at most maxReplayBytes \(4096\); got 8192/],
  ])("refuses %j", (input, message) => {
    expect(() => resolveOptions(input as never)).toThrow(OptionsError);
    expect(() => resolveOptions(input as never)).toThrow(message);
  });

  it("maxEntryBytes defaults to 16 MiB, or to maxReplayBytes when that is smaller", () => {
    expect(resolveOptions(undefined).maxEntryBytes).toBe(16 * 1024 * 1024);
    expect(resolveOptions({ maxReplayBytes: 4096 }).maxEntryBytes).toBe(4096);
  });

  it("accepts a schema-qualified attachments table and turning the priming event off", () => {
    const opts = resolveOptions({ tableName: "public.socket_io_attachments", primeOffsetEvent: false, schema: "tenant_2" });
    expect(opts.attachmentsTable).toEqual({ schema: "public", table: "socket_io_attachments", fallbackSchema: undefined });
    // A bare name is found through the search path, as upstream does; only the default name falls back to `schema`.
    expect(resolveOptions({ tableName: "events", schema: "tenant_2" }).attachmentsTable).toEqual({ schema: undefined, table: "events", fallbackSchema: undefined });
    expect(opts.primeOffsetEvent).toBe(false);
    expect(opts.logChannel).toBe("socket.io:tenant_2:log");
    expect(resolveOptions({ unloggedDeliveryAfterMs: false }).unloggedDeliveryAfterMs).toBe(false);
  });

  it("createAdapter refuses what is not a pool, and bad options, before touching any database", () => {
    expect(() => createAdapter(undefined as never)).toThrow(/needs a pg.Pool/);
    expect(() => createAdapter({} as never)).toThrow(/needs a pg.Pool/);
    // A pool that was never connected: validation fails before any connection is attempted.
    const pool = new pg.Pool({ host: "127.0.0.1", port: 1 });
    expect(() => createAdapter(pool, { schema: "1bad" })).toThrow(/option "schema"/);
    return pool.end();
  });
});
