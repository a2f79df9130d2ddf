import type pg from "pg";

/**
 * A client checked out of a `pg.Pool` has no "error" listener: the pool
 * listens only while it is idle. Should its connection fail between two
 * statements (a reset, a server restart), `pg` emits "error" with nobody
 * listening, and Node ends the process. Guard every checkout that outlives
 * a single statement; the returned function removes the guard and gives the
 * error seen meanwhile, so the client is released as broken (destroyed),
 * not handed to the next borrower.
 */
export function guardCheckedOut(client: pg.PoolClient): () => Error | undefined {
  let failure: Error | undefined;
  const onError = (err: Error) => {
    failure ??= err;
  };
  client.on("error", onError);
  return () => {
    client.removeListener("error", onError);
    return failure;
  };
}
