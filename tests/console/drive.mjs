// Drives the console in the system Chromium through Playwright and prints one JSON report of
// what it saw; tests/it/console.rs starts the gateway, runs this, and asserts on the report.
//
//   node drive.mjs SCENARIO BASE_URL ARTEFACT_DIR
//
// CONSOLE_NODE_DIR names the folder whose node_modules holds playwright-core. Every wait has a
// timeout (a hang guard); on a failed wait the report says which step and what the page showed.

import { createRequire } from "node:module";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";

const require = createRequire(resolve(process.env.CONSOLE_NODE_DIR, "package.json"));
const { chromium } = require("playwright-core");

const [scenario, base, artefacts] = process.argv.slice(2);
const WAIT = 30_000;
const report = { scenario, steps: [], consoleErrors: [] };

/** What the page shows: status, history, and per chart its series names, x and y data. */
const snapshot = (page) =>
  page.evaluate(() => {
    const c = window.signalflowConsole;
    const charts = {};
    for (const [label, chart] of c.charts) {
      charts[label] = { series: chart.plot.series.slice(1).map((s) => s.label), data: chart.plot.data };
    }
    return {
      state: document.getElementById("status").dataset.state,
      status: document.getElementById("status-text").textContent,
      history: c.statusHistory,
      charts,
      markers: c.markers.map((m) => ({ t: m.t, anomalous: m.anomalous })),
      latestRows: document.querySelectorAll("#latest tbody tr").length,
      form: Object.fromEntries(["program", "start", "stop", "resolution"].map((n) => [n, document.getElementById(n).value])),
      hash: location.hash,
    };
  });

/** Pixels of the chart's canvas close to each series' stroke colour, and to the detect()
 * marker colours (anomalous, ok). */
const pixels = (page, label) =>
  page.evaluate((label) => {
    const chart = window.signalflowConsole.charts.get(label);
    const canvas = chart.plot.ctx.canvas;
    const { data } = chart.plot.ctx.getImageData(0, 0, canvas.width, canvas.height);
    const rgb = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    const strokes = chart.plot.series.slice(1).map((s) => rgb(s._stroke ?? s.stroke()));
    const markerColours = [rgb("#b42318"), rgb("#116329")];
    const counts = strokes.map(() => 0);
    const markers = markerColours.map(() => 0);
    for (let i = 0; i < data.length; i += 4) {
      markerColours.forEach(([r, g, b], k) => {
        if (Math.abs(data[i] - r) < 24 && Math.abs(data[i + 1] - g) < 24 && Math.abs(data[i + 2] - b) < 24 && data[i + 3] > 200) markers[k]++;
      });
      strokes.forEach(([r, g, b], k) => {
        if (Math.abs(data[i] - r) < 24 && Math.abs(data[i + 1] - g) < 24 && Math.abs(data[i + 2] - b) < 24 && data[i + 3] > 200) counts[k]++;
      });
    }
    return { width: canvas.width, height: canvas.height, counts, markers };
  }, label);

async function step(page, name, fn) {
  try {
    const result = await fn(); // a plain object of observations, or nothing
    report.steps.push({ name, ok: true, ...(result ?? {}) });
    await page.screenshot({ path: join(artefacts, `${scenario}-${report.steps.length}-${name}.png`), fullPage: true });
  } catch (e) {
    report.steps.push({ name, ok: false, error: String(e), page: await snapshot(page).catch(() => null) });
    await page.screenshot({ path: join(artefacts, `${scenario}-failed-${name}.png`), fullPage: true }).catch(() => {});
    throw e;
  }
}

const waitFor = (page, fn, arg) => page.waitForFunction(fn, arg, { timeout: WAIT, polling: 50 });
const lastX = (label) => {
  const d = window.signalflowConsole.charts.get(label)?.plot.data[0];
  return d && d.length ? d[d.length - 1] : null;
};

async function demoScenario(context) {
  const page = await context.newPage();
  watch(page);
  await step(page, "load", async () => {
    await page.goto(base, { waitUntil: "load" });
    await page.getByRole("button", { name: "Run the demo: CPU by region" }).waitFor({ timeout: WAIT });
  });
  await step(page, "run-demo", async () => {
    await page.getByRole("button", { name: "Run the demo: CPU by region" }).click();
    await waitFor(page, () => (window.signalflowConsole.charts.get("cpu")?.plot.data[0].length ?? 0) >= 30);
    await waitFor(page, () => document.querySelectorAll("#latest tbody tr").length >= 2);
    return { view: await snapshot(page), pixels: await pixels(page, "cpu") };
  });
  await step(page, "sort-latest", async () => {
    const column = () => page.$$eval("#latest tbody tr td:nth-child(3)", (cells) => cells.map((c) => Number(c.textContent)));
    const sortState = () => page.$eval("#latest th:nth-child(3)", (th) => th.getAttribute("aria-sort"));
    await page.getByRole("button", { name: "Value", exact: true }).click();
    const ascending = { order: await column(), ariaSort: await sortState() };
    await page.getByRole("button", { name: "Value", exact: true }).press("Enter");
    const descending = { order: await column(), ariaSort: await sortState() };
    return { ascending, descending };
  });
  await step(page, "upstream-kill", async () => {
    const before = await page.evaluate(lastX, "cpu");
    const killed = await fetch(new URL("_sim/connections/kill", base), { method: "POST" });
    if (!killed.ok) throw new Error(`kill: HTTP ${killed.status}`);
    await waitFor(page, () => window.signalflowConsole.statusHistory.some((s) => s.state === "upstream-disconnected"));
    await waitFor(page, () => window.signalflowConsole.statusHistory.some((s) => s.state === "resumed"));
    await waitFor(page, (b) => {
      const x = window.signalflowConsole.charts.get("cpu").plot.data[0];
      return x[x.length - 1] > b + 2;
    }, before);
    return { before, view: await snapshot(page), pixels: await pixels(page, "cpu") };
  });
  await step(page, "stop", async () => {
    // Stopped from the computations list (the form's Stop button does the same call).
    const id = await page.evaluate(() => window.signalflowConsole.current().id);
    await page.getByRole("button", { name: `Stop computation ${id}`, exact: true }).click();
    await waitFor(page, () => document.getElementById("status").dataset.state === "ended");
    await waitFor(page, (id) => document.querySelector(`#computations tr[data-id="${id}"] td:nth-child(2)`)?.textContent === "aborted", id);
    return { id, view: await snapshot(page) };
  });
}

async function shareScenario(context) {
  const page = await context.newPage();
  watch(page);
  const program = process.env.CONSOLE_PROGRAM;
  await step(page, "load", async () => {
    await page.goto(base, { waitUntil: "load" });
  });
  let first;
  await step(page, "run-bounded", async () => {
    await page.getByLabel("SignalFlow program").fill(program);
    await page.getByLabel("Start", { exact: true }).fill(process.env.CONSOLE_START);
    await page.getByLabel("Stop", { exact: true }).fill(process.env.CONSOLE_STOP);
    await page.getByLabel("Resolution", { exact: true }).fill("1s");
    await page.getByLabel("SignalFlow program").press("Control+Enter");
    await waitFor(page, () => document.getElementById("status").dataset.state === "ended");
    first = await snapshot(page);
    return { view: first, link: await page.locator("#share-link").getAttribute("href") };
  });
  const link = await page.locator("#share-link").getAttribute("href");
  const second = await context.newPage();
  watch(second);
  await step(second, "open-shared", async () => {
    await second.goto(link, { waitUntil: "load" });
    await waitFor(second, () => document.getElementById("status").dataset.state === "ended");
    return { link, view: await snapshot(second), pixels: await pixels(second, "cpu") };
  });
  await step(second, "open-from-list", async () => {
    // The first page's computation has ended; opening it replays it from the gateway's ring.
    const id = first.history.find((h) => h.text.startsWith("Connected: ")).text.slice("Connected: ".length);
    await second.getByRole("button", { name: `Open computation ${id}`, exact: true }).click();
    await waitFor(second, (id) => window.signalflowConsole.current().id === id && document.getElementById("status").dataset.state === "ended", id);
    return { id, view: await snapshot(second) };
  });
}

async function keyScenario(context) {
  const page = await context.newPage();
  watch(page);
  const withToken = [];
  page.on("request", (r) => r.url().includes("access_token") && withToken.push(new URL(r.url()).pathname));
  await step(page, "load-and-ask", async () => {
    await page.goto(base, { waitUntil: "load" });
    // The computations list needs the key: the page asks at once.
    await page.getByLabel("Key (kept in this tab's session storage only)").fill(process.env.CONSOLE_API_KEY);
    await page.getByLabel("Key (kept in this tab's session storage only)").press("Enter");
    await page.getByLabel("SignalFlow program").fill("data('cpu.utilization').mean(by=['region']).publish('cpu')");
    await page.getByLabel("Start", { exact: true }).fill("-1m");
    await page.getByRole("button", { name: "Run", exact: true }).click();
    await waitFor(page, () => (window.signalflowConsole.charts.get("cpu")?.plot.data[0].length ?? 0) >= 10);
    const stored = await page.evaluate(() => sessionStorage.getItem("signalflow-gateway.apiKey"));
    const dialogOpen = await page.evaluate(() => document.getElementById("key-dialog").open);
    const prompts = await page.evaluate(() => window.signalflowConsole.keyPrompts());
    const eventsUrl = await page.evaluate(() => window.signalflowConsole.current().source.url);
    return { view: await snapshot(page), storedKeyMatches: stored === process.env.CONSOLE_API_KEY, dialogOpen, prompts, eventsUrl, withToken };
  });
}

function watch(page) {
  page.on("console", (m) => m.type() === "error" && report.consoleErrors.push(`${page.url()}: ${m.text()}`));
  page.on("pageerror", (e) => report.consoleErrors.push(`${page.url()}: uncaught ${e}`));
}

mkdirSync(artefacts, { recursive: true });
const profile = mkdtempSync(join(artefacts, "profile-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1200, height: 900 },
});
let failed = false;
try {
  await { demo: demoScenario, share: shareScenario, key: keyScenario }[scenario](context);
} catch (e) {
  failed = true;
  report.error = String(e);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
// No process.exit(): it may cut a long report written to a pipe.
console.log(JSON.stringify(report));
process.exitCode = failed ? 1 : 0;
