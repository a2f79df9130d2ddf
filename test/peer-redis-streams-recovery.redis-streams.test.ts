/**
 * @socket.io/redis-streams-adapter's connection-state-recovery suite
 * (vendored unchanged in test/peer/redis-streams-adapter/), run against: redis-streams.
 * See README "Upstream's test suites".
 */
import { runRedisStreamsRecoverySuite } from "./peer/run.js";

await runRedisStreamsRecoverySuite("redis-streams", { streamName: `peer-csr-${process.pid}-${Date.now()}` });
