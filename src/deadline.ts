/**
 * Shutdown steps that share one deadline: `io.close()` must return within
 * `closeTimeoutMs` even when a step never settles (a statement sent into a
 * half-open connection, a pool with no free connection and no connection
 * timeout), or the orchestrator kills the process first.
 */

/**
 * Waits for `step` until the clock reaches `deadline` (ms since the epoch).
 * Resolves true when it settled in time (a rejection in time is thrown),
 * false when the deadline came first: the step goes on, unawaited.
 */
export async function settledBy(step: Promise<unknown>, deadline: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), Math.max(0, deadline - Date.now()));
  });
  try {
    return await Promise.race([step.then(() => true as const), expired]);
  } finally {
    clearTimeout(timer);
  }
}
