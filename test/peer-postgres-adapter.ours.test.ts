/**
 * @socket.io/postgres-adapter's own test suite (vendored unchanged in
 * test/peer/postgres-adapter/), run against: ours. See README "Upstream's test suites".
 */
import { runPostgresAdapterSuite } from "./peer/run.js";

await runPostgresAdapterSuite("ours", { nodeCluster: true });
