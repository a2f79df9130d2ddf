/**
 * @socket.io/postgres-adapter's own test suite (vendored unchanged in
 * test/peer/postgres-adapter/), run against: upstream itself, for comparison.
 * Its node:cluster test is left out: the published package's setupPrimary
 * throws (dist/node-cluster.js reads `require("cluster").default.isPrimary`,
 * and `require("cluster")` has no `default`). See README "Upstream's test suites".
 */
import { runPostgresAdapterSuite } from "./peer/run.js";

await runPostgresAdapterSuite("upstream");
