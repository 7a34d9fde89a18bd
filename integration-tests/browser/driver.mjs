// Drives the jobcast dashboard in headless Chromium, one JSON command per stdin line,
// one JSON answer per stdout line. Started by integration-tests/tests/browser.rs.
import { chromium } from "playwright-core";
import readline from "node:readline";

const [base, artifacts] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
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
    await page.click("#run-kill");
    // Nothing happens before the kill is confirmed.
    await page.waitForSelector("#kill-confirm:not([hidden])");
    await page.click("#kill-yes");
    await page.waitForSelector("#run-facts dd.state.killed", { timeout: 30000 });
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
  async screenshot({ name, tab }) {
    if (tab) {
      await page.click(`a[data-tab=${tab}]`);
      await page.waitForSelector(`#tab-${tab}:not([hidden])`);
    }
    await page.screenshot({ path: `${artifacts}/${name}.png` });
    return {};
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
