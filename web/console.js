// The console: a program editor, live charts, the latest values, the computations list and a
// stream status, over the gateway's own API (POST /computations, then EventSource on
// /computations/{id}/events). No framework and no build step: plain ES modules.

import { ApiError, apiKey, call, eventsUrl, onKeyNeeded, simulatorInventory } from "./api.js";
import { Charts, seriesLabel, seriesName } from "./charts.js";

const $ = (id) => document.getElementById(id);

/** Demo programs for the simulator's built-in inventory; shown when their metrics exist. */
const DEMOS = [
  { name: "CPU by region", metrics: ["cpu.utilization"], program: "data('cpu.utilization').mean(by=['region']).publish('cpu')", start: "-2m", resolution: "1s" },
  {
    name: "Requests and errors",
    metrics: ["requests.count", "errors.count"],
    program: "data('requests.count').sum(by=['service']).publish('requests')\ndata('errors.count').sum(by=['service']).publish('errors')",
    start: "-2m",
    resolution: "1s",
  },
  { name: "Latency by endpoint", metrics: ["request.latency"], program: "data('request.latency').max(by=['endpoint']).publish('latency')", start: "-2m", resolution: "1s" },
  {
    name: "CPU alert (detect)",
    metrics: ["cpu.utilization"],
    program: "cpu = data('cpu.utilization').mean(by=['region'])\ncpu.publish('cpu')\ndetect(when(cpu > 47, lasting='5s')).publish('cpu high')",
    start: "-15m",
    resolution: "1s",
  },
];

const PARAMS = ["program", "start", "stop", "resolution"];
const charts = new Charts($("charts"));
const latest = new Map();
let sort = { key: "label", dir: 1 };
let current = null; // { id, source, ended }

const statusHistory = [];

// For tests and the curious: the live charts (label → chart, its uPlot instance in `.plot`), the
// detect() markers, the latest values and every status shown (the last 100).
window.signalflowConsole = { charts: charts.charts, markers: charts.markers, latest, statusHistory, current: () => current, keyPrompts: () => keyPrompts };

// ---- status ----------------------------------------------------------------------------------

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status-text").textContent = text;
  statusHistory.push({ state, text });
  if (statusHistory.length > 100) statusHistory.shift();
}

function log(kind, text) {
  const item = document.createElement("li");
  item.textContent = `${new Date().toLocaleTimeString()} ${kind}: ${text}`;
  $("log").append(item);
  while ($("log").children.length > 200) $("log").firstElementChild.remove();
  $("log").scrollTop = $("log").scrollHeight;
}

// ---- the form and the shareable URL ----------------------------------------------------------

function formParams() {
  const params = {};
  for (const name of PARAMS) {
    const value = $(name).value.trim();
    if (value) params[name] = value;
  }
  return params;
}

function fillForm(params) {
  for (const name of PARAMS) $(name).value = params[name] || "";
}

/** The view's URL: this page with the program and its parameters in the fragment. */
function shareUrl(params) {
  const url = new URL(location.href);
  url.hash = new URLSearchParams(params).toString();
  return url.href;
}

function paramsFromHash() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const params = {};
  for (const name of PARAMS) if (hash.get(name)) params[name] = hash.get(name);
  return params.program ? params : null;
}

function showShare(params) {
  const href = shareUrl(params);
  $("share-link").href = href;
  $("share-link").removeAttribute("aria-disabled");
  history.replaceState(null, "", href);
}

// ---- running and following a computation -----------------------------------------------------

async function run(params) {
  $("form-error").textContent = "";
  const body = { program: params.program };
  for (const name of ["start", "stop", "resolution"]) {
    if (params[name]) body[name] = /^-?\d+$/.test(params[name]) ? Number(params[name]) : params[name];
  }
  setStatus("connecting", "Starting…");
  let computation;
  try {
    computation = await call("POST", "computations", body);
  } catch (e) {
    setStatus("error", "Not started");
    $("form-error").textContent = e instanceof ApiError ? e.message : `The gateway cannot be reached: ${e.message}`;
    return;
  }
  showShare(params);
  follow(computation.id);
  refreshComputations();
}

function closeStream() {
  if (current?.source) current.source.close();
}

function follow(id) {
  closeStream();
  charts.reset();
  latest.clear();
  renderLatest();
  $("log").replaceChildren();
  $("no-charts").hidden = true;
  const source = new EventSource(eventsUrl(id));
  current = { id, source, ended: false };
  $("stop-button").disabled = false;
  setStatus("connecting", `Connecting to ${id}…`);
  const mine = (handler) => (event) => current?.source === source && handler(event);
  source.onopen = mine(() => setStatus("connected", `Connected: ${id}`));
  // An SSE `error` event (a program error) is a MessageEvent with data; a connection error is not.
  source.addEventListener("error", mine((event) => (event.data ? onProgramError(JSON.parse(event.data)) : onConnectionError(source))));
  const on = (name, handler) => source.addEventListener(name, mine((event) => handler(JSON.parse(event.data))));
  on("metadata", (m) => charts.setMetadata(m.tsId, m.properties));
  on("data", onData);
  on("event", onEvent);
  on("message", (m) => log("message", JSON.stringify(m.message)));
  on("expired-tsid", (m) => log("expired", m.tsId));
  on("control-message", onControl);
  on("gateway", onNotice);
}

function onData(batch) {
  const t = batch.logicalTimestampMs;
  charts.addBatch(t, batch.data);
  for (const { tsId, value } of batch.data) latest.set(tsId, { tsId, value, t });
  scheduleLatest();
}

function onEvent(e) {
  const anomalous = e.properties?.is === "anomalous";
  charts.addMarker(e.timestampMs, anomalous);
  const props = { ...charts.props(e.tsId), ...(e.metadata || {}) };
  log("detect", `${seriesLabel(props)} ${seriesName(e.tsId, props)} is ${e.properties?.is ?? "?"} at ${new Date(e.timestampMs).toISOString()}`);
}

function onControl(m) {
  if (m.event === "END_OF_CHANNEL") return end("end of channel (the stop time was reached)");
  if (m.event === "CHANNEL_ABORT") return end(m.abortInfo?.sf_job_abortReason || m.abortInfo?.sf_job_abortState || "aborted");
  if (m.event === "JOB_START") log("control", `job started, handle ${m.handle}`);
  else if (m.event === "JOB_PROGRESS") log("control", `progress ${m.progress}%`);
  else log("control", m.event);
}

function onNotice(n) {
  switch (n.event) {
    case "UPSTREAM_DISCONNECTED":
      setStatus("upstream-disconnected", "Upstream disconnected; the gateway is reconnecting…");
      break;
    case "UPSTREAM_RESUMED":
      setStatus("resumed", `Resumed after ${n.outageMs ?? "?"} ms; data gap ${n.gapMs ?? 0} ms`);
      break;
    case "REPLAY_INCOMPLETE":
      log("gateway", `some events were no longer held (oldest id ${n.oldestId ?? "?"})`);
      break;
    case "SUBSCRIBER_TOO_SLOW":
      setStatus("reconnecting", "Too slow for the stream; reconnecting…");
      break;
    case "SHUTTING_DOWN":
      end("the gateway is shutting down");
      break;
  }
  log("gateway", JSON.stringify(n));
}

function onProgramError(e) {
  const where = e.context?.line != null ? ` (line ${e.context.line}, column ${e.context.column})` : "";
  $("form-error").textContent = `${e.errorType || "error"}: ${e.message || ""}${where}`;
  end(`error: ${e.message || e.errorType}`, "error");
}

function onConnectionError(source) {
  if (current.ended) return;
  if (source.readyState === EventSource.CLOSED) setStatus("error", "Disconnected from the gateway");
  else setStatus("reconnecting", "Connection to the gateway lost; reconnecting…");
}

function end(reason, state = "ended") {
  current.ended = true;
  current.source.close();
  charts.flush();
  $("stop-button").disabled = true;
  setStatus(state, `Ended: ${reason}`);
  log("end", reason);
  refreshComputations();
}

async function stop(id) {
  try {
    await call("DELETE", `computations/${encodeURIComponent(id)}?reason=${encodeURIComponent("stopped from the console")}`);
  } catch (e) {
    $("form-error").textContent = e.message;
  }
  refreshComputations();
}

// ---- the latest-values table -----------------------------------------------------------------

let latestScheduled = false;
function scheduleLatest() {
  if (latestScheduled) return;
  latestScheduled = true;
  setTimeout(() => {
    latestScheduled = false;
    renderLatest();
  }, 200);
}

function renderLatest() {
  const rows = [...latest.values()].map((r) => {
    const props = charts.props(r.tsId);
    return { ...r, label: seriesLabel(props), series: seriesName(r.tsId, props) };
  });
  const { key, dir } = sort;
  rows.sort((a, b) => (a[key] < b[key] ? -dir : a[key] > b[key] ? dir : 0));
  $("latest").tBodies[0].replaceChildren(
    ...rows.map((r) => {
      const tr = document.createElement("tr");
      tr.append(cell(r.label), cell(r.series), cell(formatValue(r.value), "num"), cell(new Date(r.t).toISOString()));
      return tr;
    }),
  );
}

function formatValue(v) {
  return typeof v === "number" ? String(Math.round(v * 1000) / 1000) : String(v);
}

function cell(content, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  return td;
}

for (const button of document.querySelectorAll("#latest th button")) {
  button.addEventListener("click", () => {
    const key = button.dataset.sort;
    sort = { key, dir: sort.key === key ? -sort.dir : 1 };
    for (const th of document.querySelectorAll("#latest th")) th.setAttribute("aria-sort", "none");
    button.parentElement.setAttribute("aria-sort", sort.dir > 0 ? "ascending" : "descending");
    renderLatest();
  });
}

// ---- the computations list -------------------------------------------------------------------

const ENDED = new Set(["completed", "aborted", "failed"]);

async function refreshComputations() {
  let list;
  try {
    // The list refreshes in the background: it asks for a key only until one was declined.
    list = (await call("GET", "computations", undefined, { ask: !keyDeclined })).computations;
  } catch {
    return;
  }
  $("computations").tBodies[0].replaceChildren(...list.map(computationRow));
}

function computationRow(c) {
  const tr = document.createElement("tr");
  tr.dataset.id = c.id;
  const last = c.lastLogicalTimestampMs != null ? `${new Date(c.lastLogicalTimestampMs).toISOString()} (#${c.lastEventId})` : "—";
  const code = document.createElement("code");
  code.textContent = c.program.length > 60 ? `${c.program.slice(0, 60)}…` : c.program;
  const actions = document.createElement("span");
  actions.className = "actions";
  const open = button("Open", `Open computation ${c.id}`, () => {
    fillForm({ program: c.program, start: c.start != null ? String(c.start) : "", stop: c.stop != null ? String(c.stop) : "", resolution: c.resolution != null ? String(c.resolution) : "" });
    showShare(formParams());
    follow(c.id);
  });
  const stopButton = button("Stop", `Stop computation ${c.id}`, () => stop(c.id));
  stopButton.disabled = ENDED.has(c.status);
  actions.append(open, stopButton);
  tr.append(cell(c.id), cell(c.status), cell(String(c.subscribers), "num"), cell(c.lagMs != null ? `${c.lagMs} ms` : "—", "num"), cell(last), cell(code), cell(actions));
  return tr;
}

function button(text, label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "secondary";
  b.textContent = text;
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

// ---- the API key -----------------------------------------------------------------------------

// One prompt at a time: calls that meet a 401 while it is open wait for the same answer.
let keyPrompt = null;
let keyDeclined = false;
let keyPrompts = 0;

function askForKey(forbidden) {
  keyPrompt ??= promptForKey(forbidden).finally(() => (keyPrompt = null));
  return keyPrompt;
}

function promptForKey(forbidden) {
  const dialog = $("key-dialog");
  keyPrompts++;
  $("key-reason").textContent = forbidden ? "The API key was refused; enter another." : "This gateway requires an API key.";
  $("key-input").value = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const value = $("key-input").value.trim();
        const saved = dialog.returnValue === "save" && value !== "";
        if (saved) apiKey.set(value);
        keyDeclined = !saved;
        resolve(saved);
      },
      { once: true },
    );
  });
}

// ---- start-up --------------------------------------------------------------------------------

async function showDemos() {
  const inventory = await simulatorInventory();
  if (!inventory) return;
  const metrics = new Set(Object.keys(inventory.metrics || {}));
  const demos = DEMOS.filter((d) => d.metrics.every((m) => metrics.has(m)));
  $("demo-buttons").replaceChildren(
    ...demos.map((d) =>
      button(d.name, `Run the demo: ${d.name}`, () => {
        const params = { program: d.program, start: d.start, resolution: d.resolution };
        fillForm(params);
        run(params);
      }),
    ),
  );
  $("demos").hidden = demos.length === 0;
}

onKeyNeeded(askForKey);
$("key-button").addEventListener("click", () => askForKey(false));
$("run-form").addEventListener("submit", (event) => {
  event.preventDefault();
  run(formParams());
});
$("program").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    event.preventDefault();
    $("run-form").requestSubmit();
  }
});
$("stop-button").addEventListener("click", () => current && stop(current.id));
$("share-link").addEventListener("click", (event) => {
  event.preventDefault();
  navigator.clipboard?.writeText($("share-link").href).then(
    () => log("link", "copied to the clipboard"),
    () => log("link", $("share-link").href),
  );
});

const shared = paramsFromHash();
if (shared) {
  fillForm(shared);
  run(shared);
} else {
  fillForm(DEMOS[0]);
}
showDemos();
refreshComputations();
setInterval(refreshComputations, 2000);
