/** What a demo node (node.ts) tells the supervisor over IPC. */
export type NodeReport =
  /** Modules loaded; it waits for a `SupervisorMessage` "database" to start. */
  | { type: "waiting" }
  /** Listening on 127.0.0.1:port. */
  | { type: "ready"; port: number }
  /** Could not start (the message says why); the process exits. */
  | { type: "failed"; message: string }
  /** A session was restored with `replayed` missed packets. */
  | { type: "restored"; replayed: number }
  /** A restore was refused (the tab got a new session). */
  | { type: "refused"; reason: string }
  /** Sockets connected to this node, at every connection and disconnection. */
  | { type: "sockets"; count: number }
  /** Something the adapter reported to its errorHandler. */
  | { type: "error"; message: string };

export function isNodeReport(value: unknown): value is NodeReport {
  return typeof value === "object" && value !== null && typeof (value as { type?: unknown }).type === "string";
}

/** What the supervisor tells a node: where the database is, once it answers. */
export interface SupervisorMessage {
  type: "database";
  url: string;
}

export function isSupervisorMessage(value: unknown): value is SupervisorMessage {
  return (
    typeof value === "object" &&
    value !== null &&
    (value as { type?: unknown }).type === "database" &&
    typeof (value as { url?: unknown }).url === "string"
  );
}
