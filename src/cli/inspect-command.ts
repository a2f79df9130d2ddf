import { Command, Option } from "commander";
import { inspectSessions, type StoredSessionInfo } from "../inspect.js";
import {
  EXIT_CODES_HELP,
  UsageError,
  connectionFrom,
  withConnectionOptions,
  withPool,
  type CliContext,
  type ConnectionFlags,
} from "./common.js";
import { fields, formatBytes, relative, table } from "./format.js";

interface InspectFlags extends ConnectionFlags {
  json?: boolean;
  namespace?: string;
}

/** Longer than any id Socket.IO issues (20 characters), short enough to refuse garbage. */
const MAX_SOCKET_ID_LENGTH = 256;

export function renderSession(session: StoredSessionInfo): string {
  const rooms =
    session.rooms.length === 0
      ? "  (no rooms)"
      : table(
          ["ROOM", "JOINED AT OFFSET"],
          session.rooms.map((r) => [r.room, String(r.joinedAtOffset)]),
          [1],
        );
  const expiry = session.live
    ? `${session.expiresAt} (${relative(session.expiresInMs)})`
    : `${session.expiresAt} (EXPIRED ${relative(session.expiresInMs)}: a restore will be refused; the next prune removes it)`;
  return [
    `session of socket ${session.sid} in namespace "${session.namespace}"`,
    fields([
      ["floor offset", String(session.floorOffset)],
      ["last offset", `${session.lastOffset} (the replay starts after it)`],
      ["disconnected", session.disconnectedAt],
      ["expires", expiry],
      ["data", `${formatBytes(session.dataBytes)} (whole payload ${formatBytes(session.payloadBytes)})`],
    ]),
    `rooms (${session.rooms.length})`,
    rooms,
  ].join("\n");
}

export function inspectCommand(ctx: CliContext): Command {
  return withConnectionOptions(
    new Command("inspect")
      .summary("show the stored session of a socket id (never its private id)")
      .argument("<socket-id>", "the socket id (socket.id on the server, the sid) of a disconnected socket")
      .description(
        `Shows the session stored for a disconnected socket: namespace, rooms with
the offset each was joined at, floor and last offsets, expiry, and the size of
socket.data. Never shows the private session id (pid) nor its hash, nor the
content of socket.data.

Fails (exit 1) when no session is stored under that id: never stored (recovery
off, or the socket never disconnected), already restored, or pruned.`,
      ),
  )
    .addOption(new Option("--namespace <name>", 'only the session of this namespace, e.g. "/" or "/chat"'))
    .addOption(new Option("--json", "print { sessions: [...] } as JSON (for machines)"))
    .addHelpText("after", `\n${EXIT_CODES_HELP}`)
    .action(async (socketId: string, flags: InspectFlags) => {
      if (socketId.length === 0 || socketId.length > MAX_SOCKET_ID_LENGTH) {
        throw new UsageError(`the socket id must be 1 to ${MAX_SOCKET_ID_LENGTH} characters, got ${socketId.length}`);
      }
      const connection = connectionFrom(flags, ctx.env);
      const sessions = await withPool(connection, (pool) =>
        inspectSessions(pool, socketId, { schema: connection.schema, namespace: flags.namespace }),
      );
      if (sessions.length === 0) {
        const where = flags.namespace === undefined ? "" : ` in namespace ${JSON.stringify(flags.namespace)}`;
        throw new Error(
          `no session stored for socket id ${JSON.stringify(socketId)}${where} in schema "${connection.schema}" (never stored, already restored, or pruned)`,
        );
      }
      ctx.write(flags.json === true ? `${JSON.stringify({ sessions }, null, 2)}\n` : `${sessions.map(renderSession).join("\n\n")}\n`);
    });
}
