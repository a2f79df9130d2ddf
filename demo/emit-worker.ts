/**
 * A separate worker process that emits into the demo's log with
 * createEmitter, as an HTTP API or a job worker would, then exits. Started
 * by the supervisor for the page's buttons:
 *   worker    one event, emitted directly (resolves once logged);
 *   rollback  one event in a transaction that commits, then one in a
 *             transaction that rolls back: only the first ever reaches a
 *             tab, live or replayed.
 * Usage: emit-worker.ts <databaseUrl> <worker|rollback>
 */
import pg from "pg";
import { createEmitter } from "../src/index.js";

const [databaseUrl, mode] = process.argv.slice(2);
const pool = new pg.Pool({ connectionString: databaseUrl, max: 1 });
const emitter = createEmitter(pool);
const from = `worker pid ${process.pid}`;
try {
  if (mode === "rollback") {
    const client = await pool.connect();
    try {
      await client.query("BEGIN");
      await emitter.withClient(client).emit("chat", { node: "worker", from, text: "committed in a transaction: every tab gets this one" });
      await client.query("COMMIT");
      await client.query("BEGIN");
      await emitter.withClient(client).emit("chat", { node: "worker", from, text: "ROLLED BACK: no tab should ever show this" });
      await client.query("ROLLBACK");
    } finally {
      client.release();
    }
    console.log(`  ${from}: one event committed, one rolled back`);
  } else {
    await emitter.emit("chat", { node: "worker", from, text: "emitted from a separate worker process" });
    console.log(`  ${from}: one event emitted`);
  }
} finally {
  await emitter.close();
  await pool.end();
}
