/**
 * As root, embedded Postgres runs as the user `postgres`, which must be able to
 * enter every folder on the way to the binaries and the data (see
 * tools/postgres-user-access.ts). The whole path, as root in a mode-700 clone,
 * is exercised by .ci/run (a real clone, npm ci, a test file, npm start).
 */
import { chmod, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { reachableByEveryone } from "../tools/postgres-user-access.js";

describe("reachableByEveryone", () => {
  const dirs: string[] = [];
  afterAll(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  it("is false below a folder others cannot enter (mktemp -d), true once they can", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "sio-reach-"));
    dirs.push(dir);
    const inside = path.join(dir, "app", "node_modules", "bin");
    await mkdir(inside, { recursive: true, mode: 0o755 });
    await chmod(dir, 0o700);
    expect(reachableByEveryone(inside)).toBe(false);
    expect(reachableByEveryone(path.join(inside, "not-made-yet"))).toBe(false);
    await chmod(dir, 0o755);
    expect(reachableByEveryone(inside)).toBe(true);
    expect(reachableByEveryone(path.join(inside, "not-made-yet"))).toBe(true);
  });

  it("counts the folder itself when it is one", async () => {
    const dir = await mkdtemp(path.join(tmpdir(), "sio-reach-"));
    dirs.push(dir);
    await chmod(dir, 0o700);
    expect(reachableByEveryone(dir)).toBe(false);
  });
});
