/**
 * State changes worth an operator's attention, one structured record each:
 * the log of a namespace unwritable (outage mode) and writable again, the
 * LISTEN connection lost and replaced, pruning refused by the database and
 * running again, this node declared dead by another and registered again.
 *
 * Each is said once per change, never per retry: the first failure of an
 * episode and its end, not every attempt in between (those go to `debug`
 * only). Each goes to two places:
 *
 * - the debug channel `socket.io-postgres-recovery:events`, as one line of
 *   JSON (`DEBUG=socket.io-postgres-recovery:events`);
 * - `errorHandler`, as an `OperatorNotice`: an `Error` (so handlers written
 *   for errors keep working) whose `event` field holds the same record.
 */
import createDebug from "debug";

const eventLog = createDebug("socket.io-postgres-recovery:events");

/** The records, told apart by `event`. `at` is the time of the change (ISO 8601). */
export type OperatorEvent =
  | { event: "outage-started"; at: string; namespace: string; failingForMs: number; lastError?: string }
  | { event: "outage-ended"; at: string; namespace: string; unloggedPackets: number }
  | { event: "listener-lost"; at: string; reason: string }
  | { event: "listener-replaced"; at: string; downForMs: number; attempts: number }
  | { event: "pruning-refused"; at: string; reason: string }
  | { event: "pruning-resumed"; at: string; failedPasses: number }
  | { event: "node-declared-dead"; at: string; nodeId: string }
  | { event: "node-revived"; at: string; nodeId: string };

/** An `OperatorEvent` without its time, as the code raising it writes it. */
export type OperatorEventInput = OperatorEvent extends infer E ? (E extends OperatorEvent ? Omit<E, "at"> : never) : never;

/** What `errorHandler` receives for an `OperatorEvent`: `err instanceof OperatorNotice`, then `err.event`. */
export class OperatorNotice extends Error {
  override readonly name = "OperatorNotice";

  constructor(
    readonly event: OperatorEvent,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * Logs `event` as one JSON line and returns the notice for `errorHandler`
 * (the caller reports it, as it reports errors).
 */
export function operatorNotice(input: OperatorEventInput, message: string, cause?: unknown): OperatorNotice {
  const event = { ...input, at: new Date().toISOString() } as OperatorEvent;
  eventLog("%s", JSON.stringify(event));
  return new OperatorNotice(event, `socket.io-postgres-recovery: ${message}`, cause === undefined ? undefined : { cause });
}
