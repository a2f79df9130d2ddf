import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/global-setup.ts"],
    // Real Postgres (possibly started by global setup), child processes: be generous.
    testTimeout: 60_000,
    hookTimeout: 120_000,
    teardownTimeout: 60_000,
    pool: "forks",
    // 2-core machine: two test files at a time.
    maxWorkers: 2,
    fileParallelism: true,
    retry: 0,
  },
});
