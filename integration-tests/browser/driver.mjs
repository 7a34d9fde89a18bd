// Drives the jobcast dashboard in headless Chromium, one JSON command per stdin line,
// one JSON answer per stdout line. Started by integration-tests/tests/browser.rs.
import { chromium } from "playwright-core";
import readline from "node:readline";
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);

const [base, artifacts] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
// Every main-thread task over 50 ms the page runs, from its first script on.
await context.addInitScript(() => {
  window.__longTasks = [];
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.__longTasks.push(entry.duration);
  }).observe({ type: "longtask", buffered: true });
});
let page = null;
const errors = [];

async function open(token) {
  page = await context.newPage();
  page.on("pageerror", (e) => errors.push(e.message));
  await page.goto(base + "/");
  await page.fill("#token", token);
  await page.click("button[type=submit]");
  await page.waitForSelector("#live.on", { timeout: 15000 });
}

async function showRuns() {
  await page.click("a[data-tab=runs]");
  await page.waitForSelector("#tab-runs:not([hidden])");
}

const commands = {
  async open({ token }) {
    await open(token);
    return { role: await page.textContent("#role") };
  },
  async wait_run({ id, state }) {
    await showRuns();
    const cell = `#runs tr[data-run="${id}"] td.state.${state}`;
    await page.waitForSelector(cell, { timeout: 30000 });
    return {};
  },
  async log_latency({ id, marker }) {
    await showRuns();
    await page.click(`#runs tr[data-run="${id}"]`);
    const handle = await page.waitForFunction(
      (marker) => {
        const match = document.querySelector("#run-log").textContent.match(new RegExp(marker + "(\\d+)"));
        return match ? Date.now() - Number(match[1]) : null;
      },
      marker,
      { timeout: 30000, polling: 10 },
    );
    return { latency_ms: await handle.jsonValue() };
  },
  async kill({ id }) {
    await showRuns();
    await page.click(`#runs tr[data-run="${id}"]`);
    await page.waitForSelector("#run-kill:not([disabled])", { timeout: 15000 });
    // Escape closes the confirmation: nothing is done.
    await page.click("#run-kill");
    await page.waitForSelector("#confirm[open]");
    await page.keyboard.press("Escape");
    await page.waitForSelector("#confirm", { state: "hidden" });
    await page.waitForSelector("#run-facts dd.state.running");
    // Nothing happens before the kill is confirmed.
    await page.click("#run-kill");
    await page.waitForSelector("#confirm[open]");
    await page.click("#confirm-yes");
    await page.waitForSelector("#run-facts dd.state.killed", { timeout: 30000 });
    // Focus stays on the page (the Kill button is disabled now).
    const focused = await page.evaluate(() => document.activeElement && document.activeElement.id);
    if (focused !== "run-message") throw new Error(`focus went to ${focused || "the body"}`);
    return {};
  },
  async operator_buttons() {
    await showRuns();
    await page.click("#runs tbody tr");
    // The run view is open and filled in, so the buttons' absence means something.
    await page.waitForSelector("#run-view:not([hidden]) #run-facts dd", { timeout: 15000 });
    const visible = await page.isVisible("#run-kill");
    return { visible, title: await page.textContent("#run-title") };
  },
  async api_kill({ id, token }) {
    const status = await page.evaluate(async ({ id, token }) => {
      const r = await fetch(`/api/v1/runs/${id}/kill`, { method: "POST", headers: { Authorization: "Bearer " + token } });
      return r.status;
    }, { id, token });
    return { status };
  },
  async wait_live({ live }) {
    await page.waitForSelector(live ? "#live.on" : "#live.off", { timeout: 30000 });
    return { text: await page.textContent("#live") };
  },
  async screenshot({ name, tab, full }) {
    if (tab) {
      await page.click(`a[data-tab=${tab}]`);
      await page.waitForSelector(`#tab-${tab}:not([hidden])`);
    }
    await page.screenshot({ path: `${artifacts}/${name}.png`, fullPage: !!full });
    return {};
  },
  // The page's longest main-thread task since the last call.
  async long_tasks() {
    const tasks = await page.evaluate(() => window.__longTasks.splice(0));
    return { count: tasks.length, max_ms: Math.max(0, ...tasks) };
  },
  // Waits until `expr` (a JS expression) is truthy; answers how long that took and its value.
  // (Polled with page.evaluate: the page's CSP forbids the eval waitForFunction uses.)
  async wait_js({ expr, timeout }) {
    const started = Date.now();
    const deadline = started + (timeout || 30000);
    for (;;) {
      const value = await page.evaluate(expr);
      if (value) return { waited_ms: Date.now() - started, value };
      if (Date.now() > deadline) throw new Error(`still false after ${timeout || 30000} ms: ${expr}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  },
  async press({ key }) {
    await page.keyboard.press(key);
    return {};
  },
  async eval_js({ expr }) {
    return { value: await page.evaluate(expr) };
  },
  async goto({ hash }) {
    await page.evaluate((hash) => { location.hash = hash; }, hash);
    await page.waitForFunction((hash) => location.hash === hash, hash);
    return {};
  },
  async click({ selector }) {
    await page.click(selector);
    return {};
  },
  async fill({ selector, value }) {
    await page.fill(selector, value);
    return {};
  },
  async select({ selector, value }) {
    await page.selectOption(selector, value);
    return {};
  },
  async back() {
    await page.goBack();
    return { hash: await page.evaluate(() => location.hash) };
  },
  async reload() {
    await page.reload();
    await page.waitForSelector("#live.on", { timeout: 15000 });
    return { hash: await page.evaluate(() => location.hash) };
  },
  // Pages from the newest runs to the oldest with "Older"; answers the runs seen.
  async page_all() {
    await page.evaluate(() => { location.hash = "#/runs"; });
    await page.waitForSelector("#tab-runs:not([hidden]) #runs tbody tr");
    const seen = new Set();
    let pages = 0;
    for (;;) {
      const ids = await page.$$eval("#runs tbody tr", (rows) => rows.map((r) => r.dataset.run));
      ids.forEach((id) => seen.add(id));
      pages += 1;
      if (await page.isDisabled("#older")) break;
      const last = ids[ids.length - 1];
      await page.click("#older");
      await page.waitForFunction((last) => {
        const rows = [...document.querySelectorAll("#runs tbody tr")];
        return rows.length > 0 && !rows.some((r) => r.dataset.run === last);
      }, last, { timeout: 15000 });
    }
    return { runs: seen.size, pages };
  },
  // axe-core's serious and critical violations at `width` px, and how wide the page is.
  async axe({ width, height, dark }) {
    await page.setViewportSize({ width, height: height || 800 });
    await page.emulateMedia({ colorScheme: dark ? "dark" : "light" });
    const source = await readFile(require.resolve("axe-core/axe.min.js"), "utf8");
    await page.evaluate(source);
    const violations = await page.evaluate(async () => {
      const result = await window.axe.run(document, { resultTypes: ["violations"] });
      return result.violations
        .filter((v) => v.impact === "serious" || v.impact === "critical")
        .map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" ")) }));
    });
    const scroll_width = await page.evaluate(() => document.documentElement.scrollWidth);
    // What sticks out, when something does: the outermost elements past the right edge.
    const too_wide = await page.evaluate((width) => [...document.querySelectorAll("body *")]
      .filter((e) => e.getBoundingClientRect().right > width + 1 && !(e.parentElement && e.parentElement.getBoundingClientRect().right > width + 1))
      .slice(0, 5)
      .map((e) => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + (e.className ? "." + String(e.className).replace(/ /g, ".") : "")), width);
    return { violations, scroll_width, too_wide };
  },
  async new_page() {
    if (page) await page.close();
    await context.clearCookies();
    await context.addInitScript(() => localStorage.clear());
    page = null;
    return {};
  },
};

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  if (command.cmd === "close") break;
  try {
    const result = await commands[command.cmd](command);
    process.stdout.write(JSON.stringify({ ok: true, ...result, errors }) + "\n");
  } catch (error) {
    process.stdout.write(JSON.stringify({ ok: false, error: String(error), errors }) + "\n");
  }
}
await browser.close();
