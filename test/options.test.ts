/** Options are validated once, at createAdapter(), with messages that say what to fix. */
import { createRequire } from "node:module";
import type { PostgresAdapterOptions as UpstreamPostgresAdapterOptions } from "@socket.io/postgres-adapter";
import pg from "pg";
import type { ClusterAdapterOptions } from "socket.io-adapter";
import ts from "typescript";
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
      queryTimeoutMs: 15000,
      closeTimeoutMs: 10000,
      preparedStatements: true,
      maxBufferedEntries: 20_000,
      maxBufferedBytes: 32 * 1024 * 1024,
      maxConcurrentRestoreReads: 4,
      checkpointIntervalMs: 5000,
      nodeHeartbeatIntervalMs: 1000,
      nodeDeadAfterMs: 3000,
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
    [{ queryTimeoutMs: 50 }, /option "queryTimeoutMs" must be an integer from 100 to 600000 \(ms\) or false; got 50/],
    [{ queryTimeoutMs: "15s" }, /option "queryTimeoutMs"/],
    [{ preparedStatements: "yes" }, /option "preparedStatements" must be true or false/],
    [{ retentionMarginMs: Number.NaN }, /option "retentionMarginMs"/],
    [{ directConnection: "postgres://u:secret@db/app" }, /option "directConnection" must be pg client settings.*got a string \(write \{ connectionString: … \}\)$/],
    [{ directConnection: null }, /option "directConnection" must be pg client settings/],
    [{ directConnection: { user: "app" } }, /option "directConnection" must be settings naming the server: connectionString or host; got \["user"\]/],
    [{ directConnection: { connectionString: "" } }, /option "directConnection.connectionString" must be a non-empty string/],
    [{ directConnection: { host: "db", port: "5432" } }, /option "directConnection.port" must be an integer from 1 to 65535; got "5432"/],
    [{ directConnection: { host: "db", password: 42 } }, /option "directConnection.password" must be a string or a function returning one; got "number"/],
    [{ pruneIntervalMS: 1000 }, /unknown option "pruneIntervalMS"/],
    [{ maxEntryBytes: 100 }, /option "maxEntryBytes" must be an integer from 1024 to 67108864 \(bytes\)/],
    [{ maxEntryBytes: 8192, maxReplayBytes: 4096 }, /option "maxEntryBytes" must be at most maxReplayBytes \(4096\); got 8192/],
    [{ maxBufferedEntries: 10 }, /option "maxBufferedEntries" must be an integer from 100 to 10000000 \(entries\); got 10/],
    [{ maxBufferedBytes: 1000 }, /option "maxBufferedBytes" must be an integer from 65536 to 2147483648 \(bytes\); got 1000/],
    [{ maxConcurrentRestoreReads: 0 }, /option "maxConcurrentRestoreReads" must be an integer from 1 to 1000 \(reads\); got 0/],
    [{ checkpointIntervalMs: 10 }, /option "checkpointIntervalMs" must be an integer from 100 to 86400000 \(ms\); got 10/],
    [{ nodeHeartbeatIntervalMs: 0 }, /option "nodeHeartbeatIntervalMs"/],
    [{ nodeHeartbeatIntervalMs: 1000, nodeDeadAfterMs: 1500 }, /option "nodeDeadAfterMs" must be at least twice nodeHeartbeatIntervalMs \(2000 ms\); got 1500/],
    [{ metrics: true }, /option "metrics" must be a prom-client Registry/],
    [{ metrics: { metrics: () => "" } }, /option "metrics" must be a prom-client Registry/],
  ])("refuses %j", (input, message) => {
    expect(() => resolveOptions(input as never)).toThrow(OptionsError);
    expect(() => resolveOptions(input as never)).toThrow(message);
  });

  it("directConnection: absent by default (the pool's settings); given, kept as given and frozen", () => {
    expect(resolveOptions(undefined).directConnection).toBeUndefined();
    const password = () => "s3cret";
    const opts = resolveOptions({ directConnection: { host: "db.internal", port: 5432, user: "app", password, database: "app" } });
    expect(opts.directConnection).toEqual({ host: "db.internal", port: 5432, user: "app", password, database: "app" });
    expect(Object.isFrozen(opts.directConnection)).toBe(true);
    expect(resolveOptions({ directConnection: { connectionString: "postgres://app@db/app" } }).directConnection).toEqual({
      connectionString: "postgres://app@db/app",
    });
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
    expect(resolveOptions({ queryTimeoutMs: false }).queryTimeoutMs).toBe(false);
  });

  it("createAdapter refuses what is not a pool, and bad options, before touching any database", () => {
    expect(() => createAdapter(undefined as never)).toThrow(/needs a pg.Pool/);
    expect(() => createAdapter({} as never)).toThrow(/needs a pg.Pool/);
    // A pool that was never connected: validation fails before any connection is attempted.
    const pool = new pg.Pool({ host: "127.0.0.1", port: 1 });
    expect(() => createAdapter(pool, { schema: "1bad" })).toThrow(/option "schema"/);
    expect(() => createAdapter(pool, { metrics: {} as never })).toThrow(/option "metrics" must be a prom-client Registry \(new Registry\(\) or prom-client's register\)/);
    return pool.end();
  });
});

/**
 * Every option `@socket.io/postgres-adapter` accepts (its PostgresAdapterOptions
 * & socket.io-adapter's ClusterAdapterOptions, read from the installed .d.ts
 * files), with upstream's default or a typical value, is accepted here: code
 * written for upstream keeps working when only the import changes.
 */
describe("options of @socket.io/postgres-adapter", () => {
  const UPSTREAM_VALUES: Record<string, unknown> = {
    channelPrefix: "socket.io",
    tableName: "socket_io_attachments",
    payloadThreshold: 8000,
    cleanupInterval: 30000,
    errorHandler: (err: Error) => console.error(err),
    heartbeatInterval: 5000,
    heartbeatTimeout: 10000,
  };

  /** Property names of the type of upstream createAdapter's second parameter, as TypeScript sees them. */
  function upstreamOptionNames(): string[] {
    const require = createRequire(import.meta.url);
    const entry = require.resolve("@socket.io/postgres-adapter").replace(/\.js$/, ".d.ts");
    const program = ts.createProgram([entry], { strict: true, skipLibCheck: true });
    const checker = program.getTypeChecker();
    const source = program.getSourceFile(entry)!;
    const createAdapterSymbol = checker.getExportsOfModule(checker.getSymbolAtLocation(source)!).find((s) => s.name === "createAdapter")!;
    const signature = checker.getTypeOfSymbol(checker.getAliasedSymbol(createAdapterSymbol)).getCallSignatures()[0]!;
    const optionsType = checker.getNonNullableType(checker.getTypeOfSymbol(signature.parameters[1]!));
    return checker.getPropertiesOfType(optionsType).map((p) => p.name).sort();
  }

  it("the list checked here is upstream's list", () => {
    expect(upstreamOptionNames()).toEqual(Object.keys(UPSTREAM_VALUES).sort());
  });

  it.each(Object.entries(UPSTREAM_VALUES))("accepts %s", (name, value) => {
    expect(() => resolveOptions({ [name]: value })).not.toThrow();
  });

  it("accepts all of them at once, through createAdapter, typed as upstream's options", async () => {
    const upstream: UpstreamPostgresAdapterOptions & ClusterAdapterOptions = UPSTREAM_VALUES;
    const pool = new pg.Pool({ host: "127.0.0.1", port: 1 });
    expect(typeof createAdapter(pool, upstream)).toBe("function");
    await pool.end();
  });

  it("an unquoted table name means what it means to upstream, which interpolates it unquoted: Postgres folds it to lower case", () => {
    // A bare name is found through the search path at start, as upstream's is (see attachments-table.ts).
    expect(resolveOptions({ tableName: "My_Attachments" }).attachmentsTable).toEqual({ schema: undefined, table: "my_attachments", fallbackSchema: undefined });
    expect(resolveOptions({ tableName: "Public.Socket_IO_Attachments" }).attachmentsTable).toEqual({
      schema: "public",
      table: "socket_io_attachments",
      fallbackSchema: undefined,
    });
  });
});
