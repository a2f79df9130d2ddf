/**
 * Options of `createEmitter`: the subset of createAdapter's options that an
 * emitter uses, validated by the same rules (and messages), plus `parser`.
 */
import * as defaultParser from "socket.io-parser";
import { OptionsError, resolveOptions, type PostgresRecoveryAdapterOptions } from "./options.js";
import type { EventParser } from "./payload.js";

export interface EmitterOptions
  extends Pick<
    PostgresRecoveryAdapterOptions,
    "schema" | "channelPrefix" | "payloadThreshold" | "maxEntryBytes" | "maxBatchSize" | "maxPendingWrites" | "queryTimeoutMs" | "preparedStatements"
  > {
  /**
   * The Socket.IO parser of your servers (`ServerOptions.parser`), when it is
   * not the default socket.io-parser: events are normalised with it to what a
   * client decodes (JSON semantics, binary kept), as the servers do.
   */
  parser?: { Encoder: new () => EventParser["encoder"]; Decoder: EventParser["Decoder"] };
}

const EMITTER_OPTIONS = [
  "schema",
  "channelPrefix",
  "payloadThreshold",
  "maxEntryBytes",
  "maxBatchSize",
  "maxPendingWrites",
  "queryTimeoutMs",
  "preparedStatements",
  "parser",
] as const;

export interface ResolvedEmitterOptions {
  readonly schema: string;
  /** The log's NOTIFY channel (as the nodes': `${channelPrefix}:${schema}:log`). */
  readonly logChannel: string;
  readonly payloadThreshold: number;
  readonly maxEntryBytes: number;
  readonly maxBatchSize: number;
  readonly maxPendingWrites: number;
  readonly queryTimeoutMs: number | undefined;
  readonly preparedStatements: boolean;
  readonly parser: EventParser;
}

export function resolveEmitterOptions(input: EmitterOptions | undefined): ResolvedEmitterOptions {
  if (input !== undefined && (input === null || typeof input !== "object")) {
    throw new OptionsError(`socket.io-postgres-recovery: createEmitter's options must be an object or undefined; got ${String(input)}`);
  }
  const { parser, ...rest } = (input ?? {}) as Record<string, unknown>;
  for (const key of Object.keys(rest)) {
    if (!(EMITTER_OPTIONS as readonly string[]).includes(key) && rest[key] !== undefined) {
      throw new OptionsError(
        `socket.io-postgres-recovery: unknown emitter option "${key}"; known options: ${EMITTER_OPTIONS.join(", ")} (the others of createAdapter do not apply to an emitter)`,
      );
    }
  }
  const resolved = resolveOptions(rest as PostgresRecoveryAdapterOptions);
  return {
    schema: resolved.schema,
    logChannel: resolved.logChannel,
    payloadThreshold: resolved.payloadThreshold,
    maxEntryBytes: resolved.maxEntryBytes,
    maxBatchSize: resolved.maxBatchSize,
    maxPendingWrites: resolved.maxPendingWrites,
    queryTimeoutMs: resolved.queryTimeoutMs === false ? undefined : resolved.queryTimeoutMs,
    preparedStatements: resolved.preparedStatements,
    parser: resolveParser(parser),
  };
}

function resolveParser(parser: unknown): EventParser {
  const module = (parser ?? defaultParser) as { Encoder?: unknown; Decoder?: unknown };
  if (typeof module !== "object" || typeof module.Encoder !== "function" || typeof module.Decoder !== "function") {
    throw new OptionsError(
      'socket.io-postgres-recovery: option "parser" must be a Socket.IO parser module (with Encoder and Decoder), as given to new Server({ parser })',
    );
  }
  const Encoder = module.Encoder as new () => EventParser["encoder"];
  return { encoder: new Encoder(), Decoder: module.Decoder as EventParser["Decoder"] };
}
