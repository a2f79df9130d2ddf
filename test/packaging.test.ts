/**
 * The package as users get it: `npm pack` (after a build when a source is newer
 * than dist/), installed from the tarball into an empty project next to `pg`
 * and `socket.io`, then used from a CommonJS program (`require()`) and from an
 * ES module (`import`). Each one migrates a fresh database with the migrations
 * shipped in the tarball, creates a Socket.IO server with `createAdapter(pool)`
 * and connection state recovery, broadcasts once and sees the entry in the log
 * table. TypeScript consumers of both kinds type-check against the shipped
 * declarations, and the CLI shipped as `bin` answers.
 *
 * The package is ESM; `require()` of it relies on Node's require(esm), on by
 * default from 20.19 and 22.12 (package.json `engines` says so).
 */
import { execFile } from "node:child_process";
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createTestDatabase, type TestDatabase } from "./helpers/database.js";

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, "..");
const NPM = process.platform === "win32" ? "npm.cmd" : "npm";

/** What each consumer does; only the way it loads the packages differs. */
const BODY = `
async function main() {
  const pool = new pg.Pool({ connectionString: process.env.CONSUMER_DATABASE_URL, max: 4 });
  await migrate(pool);
  const httpServer = createServer();
  const io = new Server(httpServer, { adapter: createAdapter(pool), connectionStateRecovery: { maxDisconnectionDuration: 60000 } });
  await new Promise((resolve) => httpServer.listen(0, "127.0.0.1", resolve));
  io.emit("hello", "from the tarball");
  let rows = 0;
  for (let i = 0; i < 200 && rows === 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 25));
    rows = (await pool.query("SELECT count(*)::int AS n FROM socket_io.log_entries")).rows[0].n;
  }
  await io.close();
  // prom-client is an optional peer, not installed here: loading the package never needed it,
  // and asking for metrics says what to install.
  let metrics = "";
  try {
    createAdapter(pool, { metrics: { registerMetric() {}, getSingleMetric() {}, metrics() { return ""; } } });
  } catch (err) {
    metrics = err instanceof OptionsError && /npm install prom-client/.test(err.message) ? "needs prom-client" : String(err);
  }
  await pool.end();
  console.log(JSON.stringify({ adapter: io.of("/").adapter.constructor.name, rows, optionsError: typeof OptionsError, metrics }));
}
main().catch((err) => { console.error(err); process.exit(1); });
`;

/** TypeScript consumers, type-checked only: a CommonJS one (.cts) and an ES module (.mts). */
const TYPESCRIPT_CONSUMERS = {
  "consumer.cts": `import pg = require("pg");
import { Server } from "socket.io";
import { createAdapter, OptionsError, type PostgresRecoveryAdapterOptions } from "socket.io-postgres-recovery";
const options: PostgresRecoveryAdapterOptions = { tableName: "socket_io_attachments", heartbeatInterval: 5000 };
export const io = new Server({ adapter: createAdapter(new pg.Pool(), options) });
export const isOptionsError = (err: unknown): boolean => err instanceof OptionsError;
`,
  "consumer.mts": `import pg from "pg";
import { Server } from "socket.io";
import { createAdapter, migrate, type PostgresRecoveryAdapterOptions } from "socket.io-postgres-recovery";
const options: PostgresRecoveryAdapterOptions = { schema: "socket_io", maxReplayEntries: 1000 };
const pool = new pg.Pool();
await migrate(pool);
export const io = new Server({ adapter: createAdapter(pool, options) });
`,
};

const CONSUMERS = {
  "require.cjs": `const { createServer } = require("node:http");
const pg = require("pg");
const { Server } = require("socket.io");
const { createAdapter, migrate, OptionsError } = require("socket.io-postgres-recovery");
${BODY}`,
  "import.mjs": `import { createServer } from "node:http";
import pg from "pg";
import { Server } from "socket.io";
import { createAdapter, migrate, OptionsError } from "socket.io-postgres-recovery";
${BODY}`,
};

/** Whether dist/ is missing or older than a file under src/ (tsc rewrites every output). */
async function buildIsStale(): Promise<boolean> {
  const built = await stat(path.join(ROOT, "dist", "index.js")).catch(() => undefined);
  if (built === undefined) return true;
  const sources = await readdir(path.join(ROOT, "src"), { recursive: true, withFileTypes: true });
  for (const entry of sources) {
    if (entry.isFile() && (await stat(path.join(entry.parentPath, entry.name))).mtimeMs > built.mtimeMs) return true;
  }
  return false;
}

describe("the packed tarball", () => {
  let dir: string;
  const databases: TestDatabase[] = [];

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "sio-recovery-pack-"));
    // `npm pack` would run `prepare` (the build, the slow part); npm ci ran it already, so
    // build again only when a source changed since, then pack what is built.
    if (await buildIsStale()) await run(NPM, ["run", "build"], { cwd: ROOT });
    const { stdout } = await run(NPM, ["pack", "--json", "--ignore-scripts", "--pack-destination", dir], {
      cwd: ROOT,
      maxBuffer: 16 * 1024 * 1024,
    });
    const [packed] = JSON.parse(stdout.slice(stdout.indexOf("["))) as Array<{ filename: string }>;
    const consumer = path.join(dir, "consumer");
    await mkdir(consumer);
    await writeFile(path.join(consumer, "package.json"), JSON.stringify({ name: "consumer", private: true }));
    // As the README says: the package and its peers. --prefer-offline: the cache npm ci filled.
    // --ignore-scripts: none of these needs one, and npm would list the tarball's `prepare`
    // (enumerated for file installs, never for registry ones).
    await run(
      NPM,
      ["install", "--no-audit", "--no-fund", "--prefer-offline", "--ignore-scripts", path.join(dir, packed!.filename), "pg", "socket.io", "@types/node@20"],
      { cwd: consumer, maxBuffer: 16 * 1024 * 1024 },
    );
    for (const [file, source] of Object.entries({ ...CONSUMERS, ...TYPESCRIPT_CONSUMERS })) {
      await writeFile(path.join(consumer, file), source);
    }
  });

  afterAll(async () => {
    for (const db of databases) await db.drop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it("ships the build, the migrations and the README, and no sources or tests", async () => {
    const installed = path.join(dir, "consumer", "node_modules", "socket.io-postgres-recovery");
    const manifest = JSON.parse(await readFile(path.join(installed, "package.json"), "utf8")) as { engines: { node: string } };
    expect(manifest.engines.node).toBe("^20.19.0 || >=22.12.0");
    const { stdout } = await run("find", [".", "-path", "./node_modules", "-prune", "-o", "-type", "f", "-print"], { cwd: installed });
    const files = stdout.split("\n").filter(Boolean);
    expect(files).toContain("./dist/index.js");
    expect(files).toContain("./dist/index.d.ts");
    expect(files).toContain("./migrations/meta/_journal.json");
    expect(files.filter((f) => f.startsWith("./src/") || f.startsWith("./test/"))).toEqual([]);
    // The optional peer is not installed: the consumers below log (and so trace) a broadcast without it.
    await expect(stat(path.join(dir, "consumer", "node_modules", "@opentelemetry", "api"))).rejects.toThrow(/ENOENT/);
  });

  it.each(Object.keys(CONSUMERS))("%s: createAdapter(pool) from the installed package logs a broadcast", async (file) => {
    const db = await createTestDatabase(`packaging_${file.replace(".", "_")}`);
    databases.push(db);
    const { stdout, stderr } = await run(process.execPath, [file], {
      cwd: path.join(dir, "consumer"),
      env: { ...process.env, CONSUMER_DATABASE_URL: db.url, DEBUG: "" },
    });
    expect(stderr).toBe("");
    expect(JSON.parse(stdout.trim())).toEqual({ adapter: "PostgresRecoveryAdapter", rows: 1, optionsError: "function", metrics: "needs prom-client" });
  });

  // `module: node16` would refuse the .cts (TS1479: it cannot require an ES module); nodenext allows it (TS 5.8+).
  it.each([["nodenext"], ["commonjs"]])("TypeScript consumers type-check with module %s", async (module) => {
    const files = module === "commonjs" ? ["consumer.cts"] : Object.keys(TYPESCRIPT_CONSUMERS);
    const tsc = path.join(ROOT, "node_modules", "typescript", "bin", "tsc");
    const flags = ["--noEmit", "--strict", "--skipLibCheck", "--target", "es2022", "--module", module, "--types", "node"];
    const { stdout } = await run(process.execPath, [tsc, ...flags, ...files], { cwd: path.join(dir, "consumer") }).catch(
      (err: { stdout?: string }) => ({ stdout: err.stdout ?? String(err) }),
    );
    expect(stdout).toBe("");
  });

  it("the CLI runs from the installed bin", async () => {
    const { stdout } = await run(path.join(dir, "consumer", "node_modules", ".bin", "socket.io-postgres-recovery"), ["--version"]);
    const { version } = JSON.parse(await readFile(path.join(ROOT, "package.json"), "utf8")) as { version: string };
    expect(stdout.trim()).toBe(version);
  });
});
