/**
 * src/schema.ts and migrations/ must agree: drizzle-kit, run on a copy of
 * migrations/, must find nothing to generate. When this fails, run
 * `npm run db:generate` and commit the new migration.
 */
import { execFile } from "node:child_process";
import { cp, mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { afterAll, expect, it } from "vitest";

const root = fileURLToPath(new URL("..", import.meta.url));
const drizzleKit = path.join(root, "node_modules", "drizzle-kit", "bin.cjs");
let copy: string | undefined;

afterAll(async () => {
  if (copy !== undefined) await rm(copy, { recursive: true, force: true });
});

async function listFiles(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(dir, path.join(e.parentPath, e.name)))
    .sort();
}

it("schema.ts has no changes that migrations/ lacks", async () => {
  copy = await mkdtemp(path.join(tmpdir(), "sio-migrations-"));
  await cp(path.join(root, "migrations"), copy, { recursive: true });

  // drizzle-kit prefixes "./" to --out, so it must be relative to the working directory.
  const { stdout, stderr } = await promisify(execFile)(
    process.execPath,
    [drizzleKit, "generate", "--dialect", "postgresql", "--schema", "./src/schema.ts", "--out", path.relative(root, copy)],
    { cwd: root, timeout: 30_000 },
  );

  // drizzle-kit exits 0 even when it fails, so check both what it said and what it wrote.
  expect(`${stdout}${stderr}`).toContain("No schema changes, nothing to migrate");
  expect(await listFiles(copy)).toEqual(await listFiles(path.join(root, "migrations")));
});
