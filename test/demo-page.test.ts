/**
 * The `npm start` demo, driven in headless Chromium: the real supervisor and
 * node processes on the test's database, the real page.
 *
 * - A tab taken offline (the page's switch) while the stream goes on comes
 *   back with its socket.id, `recovered` shown, and every event it missed
 *   shown once and in order: its offsets are contiguous and match, offset by
 *   offset, what a tab that stayed online saw.
 * - Dropping a tab's connection, then moving it to another node: it recovers
 *   each time, the same way.
 * - A node restarted from the page (graceful): its tabs recover the same way.
 * - A node crashed from the page (SIGKILL, nothing written): its tabs recover
 *   on the other nodes, the same way.
 * - The emit buttons: a worker process's events (createEmitter) reach every
 *   tab, the one rolled back in its transaction never; a tab offline
 *   meanwhile gets the committed ones replayed.
 * - Each node's /metrics, linked from the page, counts the restores it made.
 * - Ctrl-C (SIGINT) stops the demo cleanly: exit 0, no node process left.
 *
 * Screenshots go to test-artifacts/demo-page/ (ignored by git).
 */
import { mkdir } from "node:fs/promises";
import path from "node:path";
import { chromium, type Browser, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { findChromium } from "./helpers/browser.js";
import { waitFor } from "./helpers/cluster.js";
import { createTestDatabase, type TestDatabase } from "./helpers/database.js";
import { isRunning, startDemo, type DemoProcess } from "./helpers/demo-process.js";

const ARTIFACTS = path.resolve(import.meta.dirname, "..", "test-artifacts", "demo-page");
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
/** Generous: a loaded 2-core machine, node processes restarting. */
const WAIT = { timeout: 30_000, interval: 50 };

/** What a tab's page exposes as `window.demo` (demo/public/app.js), the parts read here. */
interface TabState {
  node: string | null;
  id: string | null;
  recovered: boolean | null;
  replayed: number | null;
  received: number;
  gaps: number;
  duplicates: number;
  offsets: number[];
  awaitingWelcome: boolean;
  welcomes: number;
}

interface Row {
  offset: number;
  node: string;
  kind: string;
  text: string;
  replayed: boolean;
}

/** `window.demo` and the stream as shown (oldest first), read at one moment. */
async function snapshot(page: Page): Promise<TabState & { rows: Row[] }> {
  return page.evaluate(() => {
    const d = (window as unknown as { demo: TabState }).demo;
    const rows = [...document.querySelectorAll<HTMLElement>("#stream li[data-offset]")].reverse().map((li) => ({
      offset: Number(li.dataset.offset),
      node: li.dataset.node ?? "",
      kind: li.dataset.kind ?? "",
      text: (li.querySelector(".what")?.textContent ?? "").replace(/\s+↺ replayed$/, ""),
      replayed: li.classList.contains("replayed"),
    }));
    return { ...d, offsets: [...d.offsets], offlineTimer: undefined, rows };
  });
}

async function state(page: Page): Promise<TabState> {
  return snapshot(page);
}

async function rows(page: Page): Promise<Row[]> {
  return (await snapshot(page)).rows;
}

async function openTab(browser: Browser, url: string, node: string): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1200, height: 860 } });
  page.on("pageerror", (err) => console.error(`[page ${node}] ${err.message}`));
  await page.goto(`${url}/?node=${node}`);
  await waitFor(async () => (await state(page)).node === node && (await state(page)).received >= 2, {
    ...WAIT,
    message: `a tab on ${node} connected and receiving`,
  });
  return page;
}

/** Every offset once, each one more than the previous: nothing missed, nothing twice, one order. */
function expectContiguous(offsets: number[], label: string): void {
  const broken = offsets.flatMap((offset, i) => (i > 0 && offset !== offsets[i - 1]! + 1 ? [`${offsets[i - 1]} -> ${offset}`] : []));
  expect(broken, `${label}: offsets not contiguous`).toEqual([]);
}

/** The tab shows the same stream as the reference tab over their common range. */
function expectSameStream(tab: Row[], reference: Row[], label: string): void {
  const byOffset = new Map(reference.map((row) => [row.offset, row]));
  const common = tab.filter((row) => byOffset.has(row.offset));
  expect(common.length, `${label}: rows in common with the reference tab`).toBeGreaterThan(0);
  expect(
    common.map(({ offset, node, kind, text }) => ({ offset, node, kind, text })),
    `${label}: rows differ from the reference tab`,
  ).toEqual(common.map((row) => byOffset.get(row.offset)!).map(({ offset, node, kind, text }) => ({ offset, node, kind, text })));
}

async function sendChat(page: Page, text: string): Promise<void> {
  await page.fill("#chat-text", text);
  await page.press("#chat-text", "Enter");
}

/** Waits until the reference tab has shown at least up to `tab`'s last offset. */
async function referenceCaughtUp(reference: Page, tab: Page): Promise<void> {
  const last = (await state(tab)).offsets.at(-1)!;
  await waitFor(async () => ((await state(reference)).offsets.at(-1) ?? 0) >= last, { ...WAIT, message: "the reference tab to catch up" });
}

describe("the npm start demo page", () => {
  let db: TestDatabase;
  let demo: DemoProcess | undefined;
  let browser: Browser | undefined;

  beforeAll(async () => {
    // The system's Chromium, else the one an npm dev dependency ships (see helpers/browser.ts).
    const chromiumBinary = await findChromium();
    console.log(`[demo-page] browser: ${chromiumBinary.description}`);
    await mkdir(ARTIFACTS, { recursive: true });
    // Not migrated: the demo applies the migrations itself.
    db = await createTestDatabase("demo_page");
    demo = await startDemo(db.url);
    browser = await chromium.launch({ executablePath: chromiumBinary.executablePath, args: CHROMIUM_ARGS });
  });

  afterAll(async () => {
    await browser?.close();
    await demo?.stop();
    await db?.drop();
  });

  it("a tab kept offline while the stream goes on comes back recovered, every missed event shown once and in order", async () => {
    const online = await openTab(browser!, demo!.url, "node-1");
    const away = await openTab(browser!, demo!.url, "node-2");
    const before = await state(away);

    // Offline for up to 2 minutes: the test brings it back once the stream went on without it.
    await away.fill("#offline-seconds", "120");
    await away.click("#offline");
    await waitFor(async () => (await away.textContent("#connection"))!.startsWith("offline"), { ...WAIT, message: "the tab offline" });
    const offlineAt = (await state(online)).received;
    const missed = `sent while the other tab is offline ${Date.now()}`;
    await sendChat(online, missed);
    await waitFor(async () => (await rows(online)).some((r) => r.text.endsWith(missed)) && (await state(online)).received >= offlineAt + 4, {
      ...WAIT,
      message: "events flowing while the tab is offline",
    });
    expect(await away.textContent("#offline")).toBe("Back online now");
    await away.click("#offline");
    await waitFor(async () => {
      const s = await state(away);
      return s.welcomes > before.welcomes && !s.awaitingWelcome;
    }, { ...WAIT, message: "the tab back online" });
    await referenceCaughtUp(online, away);
    await away.screenshot({ path: path.join(ARTIFACTS, "offline-tab-recovered.png"), fullPage: true });
    await online.screenshot({ path: path.join(ARTIFACTS, "offline-reference-tab.png"), fullPage: true });

    const after = await snapshot(away);
    expect(after.id).toBe(before.id);
    expect(after.recovered).toBe(true);
    expect(await away.textContent("#recovered")).toBe("true");
    expect(await away.textContent("#sid")).toBe(before.id);
    expect(after.replayed).toBeGreaterThanOrEqual(1);
    expect(await away.textContent("#replayed")).toBe(String(after.replayed));

    const shown = after.rows;
    expect(shown.map((r) => r.offset)).toEqual(after.offsets);
    expectContiguous(after.offsets, "tab that was offline");
    expect([after.gaps, after.duplicates]).toEqual([0, 0]);
    expect(await away.textContent("#gaps")).toBe("0");
    expect(await away.textContent("#duplicates")).toBe("0");
    // The chat sent while it was away: shown once, as replayed.
    const chat = shown.filter((r) => r.text.endsWith(missed));
    expect(chat).toHaveLength(1);
    expect(chat[0]!.replayed).toBe(true);
    expectSameStream(shown, await rows(online), "tab that was offline");
    expectContiguous((await state(online)).offsets, "tab that stayed online");

    // The page links to each node's Prometheus metrics: node-2's count the restore.
    const href = await away.getAttribute('#nodes tr[data-node="node-2"] a.metrics', "href");
    expect(href).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    const metricsPage = await browser!.newPage();
    const response = await metricsPage.goto(href!);
    expect(response?.status()).toBe(200);
    const scraped = (await response!.text()).split("\n");
    const recovered = scraped.find((line) => line.startsWith('socketio_recovery_restores_total{namespace="/",outcome="recovered",reason=""} '));
    expect(Number(recovered?.split(" ")[1]), "restores counted on node-2").toBeGreaterThanOrEqual(1);
    const replays = scraped.find((line) => line.startsWith('socketio_recovery_replayed_packets_sum{namespace="/"} '));
    expect(Number(replays?.split(" ")[1])).toBeGreaterThanOrEqual(after.replayed!);
    await metricsPage.close();

    await online.close();
    await away.close();
  });

  it("emit buttons: a worker process's events reach every tab, the rolled-back one never, and a tab offline meanwhile gets them replayed", async () => {
    const online = await openTab(browser!, demo!.url, "node-1");
    const away = await openTab(browser!, demo!.url, "node-2");
    const before = await state(away);
    await away.fill("#offline-seconds", "120");
    await away.click("#offline");
    await waitFor(async () => (await away.textContent("#connection"))!.startsWith("offline"), { ...WAIT, message: "the tab offline" });

    const committed = ["emitted from a separate worker process", "committed in a transaction: every tab gets this one"];
    await online.click("#emit-worker");
    await online.click("#emit-rollback");
    await waitFor(
      async () => {
        const shown = await rows(online);
        return committed.every((text) => shown.filter((r) => r.text.endsWith(text)).length === 1);
      },
      { ...WAIT, message: "the worker's events in the online tab" },
    );

    await away.click("#offline");
    await waitFor(async () => {
      const s = await state(away);
      return s.welcomes > before.welcomes && !s.awaitingWelcome;
    }, { ...WAIT, message: "the tab back online" });
    await referenceCaughtUp(online, away);
    const after = await snapshot(away);
    expect(after.recovered).toBe(true);
    for (const text of committed) {
      const shown = after.rows.filter((r) => r.text.endsWith(text));
      expect(shown, text).toHaveLength(1);
      expect(shown[0]!.replayed, text).toBe(true);
    }
    // Ticks went on after both workers exited: a rolled-back event that leaked would be shown by now.
    const onlineRows = await rows(online);
    for (const tab of [onlineRows, after.rows]) expect(tab.filter((r) => r.text.includes("ROLLED BACK"))).toEqual([]);
    expectContiguous(after.offsets, "tab that was offline");
    expectSameStream(after.rows, onlineRows, "tab that was offline");
    await online.close();
    await away.close();
  });

  it("drop my connection, then move me to another node: the tab recovers each time, nothing missed or doubled", async () => {
    const reference = await openTab(browser!, demo!.url, "node-1");
    const tab = await openTab(browser!, demo!.url, "node-1");
    const first = await state(tab);

    await tab.click("#drop");
    await waitFor(async () => (await state(tab)).welcomes > first.welcomes && !(await state(tab)).awaitingWelcome, {
      ...WAIT,
      message: "the tab back after dropping its connection",
    });
    const dropped = await state(tab);
    expect([dropped.node, dropped.id, dropped.recovered]).toEqual(["node-1", first.id, true]);

    await tab.selectOption("#move-target", "node-2");
    await tab.click("#move");
    await waitFor(async () => (await state(tab)).node === "node-2" && !(await state(tab)).awaitingWelcome, {
      ...WAIT,
      message: "the tab on node-2",
    });
    await waitFor(async () => (await state(tab)).offsets.length > dropped.offsets.length + 2, { ...WAIT, message: "events on node-2" });
    await referenceCaughtUp(reference, tab);
    const moved = await snapshot(tab);
    expect([moved.id, moved.recovered]).toEqual([first.id, true]);
    expect(await tab.textContent("#node")).toBe("node-2");
    expect(moved.rows.map((r) => r.offset)).toEqual(moved.offsets);
    expectContiguous(moved.offsets, "tab that dropped and moved");
    expect([moved.gaps, moved.duplicates]).toEqual([0, 0]);
    expectSameStream(moved.rows, await rows(reference), "tab that dropped and moved");
    await tab.screenshot({ path: path.join(ARTIFACTS, "moved-tab.png"), fullPage: true });

    await reference.close();
    await tab.close();
  });

  it("a node restarted from the page: its tabs come back recovered with every event in order", async () => {
    const reference = await openTab(browser!, demo!.url, "node-1");
    const tabs = [await openTab(browser!, demo!.url, "node-2"), await openTab(browser!, demo!.url, "node-2")];
    const before = await Promise.all(tabs.map(state));
    const pidsBefore = demo!.nodePids();

    await tabs[0]!.click("#restart-mine");
    // Its tabs notice the node closing; what is sent now reaches them only through recovery or live, once.
    await waitFor(async () => (await Promise.all(tabs.map(state))).every((s) => s.awaitingWelcome), {
      ...WAIT,
      message: "the restarted node's tabs disconnected",
    });
    const during = `sent while node-2 restarts ${Date.now()}`;
    await sendChat(reference, during);
    await reference.screenshot({ path: path.join(ARTIFACTS, "restart-in-progress.png"), fullPage: true });

    for (const [i, tab] of tabs.entries()) {
      await waitFor(async () => {
        const s = await state(tab);
        return s.welcomes > before[i]!.welcomes && !s.awaitingWelcome && s.offsets.length > before[i]!.offsets.length;
      }, { ...WAIT, message: `tab ${i} back after the restart` });
    }
    // The page shows node-2 up again after one restart, with a new process.
    await waitFor(async () => (await reference.textContent('#nodes tr[data-node="node-2"]'))?.includes("up") === true, {
      ...WAIT,
      message: "node-2 shown up again",
    });
    expect(await reference.getAttribute('#nodes tr[data-node="node-2"]', "data-state")).toBe("up");
    await waitFor(() => demo!.nodePids().length > pidsBefore.length, { ...WAIT, message: "the restart printed" });

    const referenceRows = async () => {
      await Promise.all(tabs.map((tab) => referenceCaughtUp(reference, tab)));
      return rows(reference);
    };
    const seen = await referenceRows();
    for (const [i, tab] of tabs.entries()) {
      const after = await snapshot(tab);
      expect(after.node).toBe("node-2");
      expect(after.id).toBe(before[i]!.id);
      expect(after.recovered).toBe(true);
      expect(await tab.textContent("#recovered")).toBe("true");
      const shown = after.rows;
      expect(shown.map((r) => r.offset)).toEqual(after.offsets);
      expectContiguous(after.offsets, `tab ${i}`);
      expect([after.gaps, after.duplicates]).toEqual([0, 0]);
      expect(shown.filter((r) => r.text.endsWith(during))).toHaveLength(1);
      expectSameStream(shown, seen, `tab ${i}`);
      await tab.screenshot({ path: path.join(ARTIFACTS, `restart-tab-${i}-recovered.png`), fullPage: true });
    }
    // The cluster panel counted the restores.
    await waitFor(async () => /^[1-9]\d* succeeded/.test((await reference.textContent("#recoveries")) ?? ""), {
      ...WAIT,
      message: "recoveries counted in the cluster panel",
    });
    await reference.screenshot({ path: path.join(ARTIFACTS, "restart-reference-tab.png"), fullPage: true });
  });

  it("a node crashed from the page (SIGKILL): its tabs come back recovered on another node, every event in order", async () => {
    const reference = await openTab(browser!, demo!.url, "node-1");
    const tabs = [await openTab(browser!, demo!.url, "node-2"), await openTab(browser!, demo!.url, "node-2")];
    const before = await Promise.all(tabs.map(state));

    // The first tab moves away as its node dies; the second finds its node down and fails over.
    await tabs[0]!.click("#crash-mine");
    await waitFor(async () => (await reference.getAttribute('#nodes tr[data-node="node-2"]', "data-state")) === "down", {
      ...WAIT,
      message: "node-2 shown down",
    });
    const during = `sent while node-2 is dead ${Date.now()}`;
    await sendChat(reference, during);
    for (const [i, tab] of tabs.entries()) {
      await waitFor(async () => {
        const s = await state(tab);
        return s.welcomes > before[i]!.welcomes && !s.awaitingWelcome && s.offsets.length > before[i]!.offsets.length;
      }, { ...WAIT, message: `tab ${i} back after the crash` });
    }
    await Promise.all(tabs.map((tab) => referenceCaughtUp(reference, tab)));
    const seen = await rows(reference);
    for (const [i, tab] of tabs.entries()) {
      const after = await snapshot(tab);
      expect(after.node).not.toBe("node-2");
      expect(after.id).toBe(before[i]!.id);
      expect(after.recovered).toBe(true);
      const shown = after.rows;
      expect(shown.map((r) => r.offset)).toEqual(after.offsets);
      expectContiguous(after.offsets, `crashed node's tab ${i}`);
      expect([after.gaps, after.duplicates]).toEqual([0, 0]);
      expect(shown.filter((r) => r.text.endsWith(during))).toHaveLength(1);
      expectSameStream(shown, seen, `crashed node's tab ${i}`);
      await tab.screenshot({ path: path.join(ARTIFACTS, `crash-tab-${i}-recovered.png`), fullPage: true });
    }
    await reference.close();
    for (const tab of tabs) await tab.close();
  });

  it("Ctrl-C stops it cleanly: exit code 0, no node process left", async () => {
    const pids = demo!.nodePids();
    expect(pids.length).toBeGreaterThanOrEqual(3);
    const code = await demo!.stop();
    expect(code, demo!.output()).toBe(0);
    expect(demo!.output()).toContain("stopped cleanly");
    expect(pids.filter(isRunning)).toEqual([]);
  });
});
