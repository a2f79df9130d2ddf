/**
 * W6 crash storm: W3 with node 0 SIGKILLed instead of shut down gracefully.
 * It writes nothing: its clients recover on node 1 only from the skeletons of
 * their sessions, as soon as node 1 sees node 0's liveness lock released (its
 * backend ended with the process; `nodeDeadAfterMs` after its last heartbeat
 * is only the fallback, for a lost host). Peers that write sessions only at the disconnect recover
 * none. The in-memory adapter has no second node: n/a.
 */
import type { Workload } from "../lib/context.js";
import { runStorm, w3 } from "./w3-storm.js";

export const w6: Workload = {
  id: "W6",
  title: "crash storm (node 0 is SIGKILLed, clients move to node 1)",
  metrics: w3.metrics,
  applies: (peer) =>
    !peer.recovery ? "n/a: no recovery" : peer.maxNodes < 2 ? "n/a: one node only" : peer.crashSafety === false ? "n/a: crash safety off" : true,
  run: (ctx) => runStorm(ctx, true),
};
