// The status page's one job: show /api/v1/status as it is now, and say so when it cannot.
// Every value goes in with textContent (labels and file names come from operators), each poll
// waits for the previous one (a slow node never piles requests up), and a failed poll marks the
// page disconnected instead of leaving old numbers looking current.
"use strict";

const POLL_MS = 1000;
const TIMEOUT_MS = 3000;
const $ = (id) => document.getElementById(id);

function text(value) {
  return value === null || value === undefined || value === "" ? "\u2014" : String(value);
}

function fixed(value, digits) {
  return typeof value === "number" ? value.toFixed(digits) : text(value);
}

function set(id, value) {
  $(id).textContent = text(value);
}

function cell(row, field, value, className) {
  const td = row.insertCell();
  td.dataset.field = field;
  td.textContent = text(value);
  if (className) td.className = className;
  return td;
}

function showState(state, detail) {
  const el = $("state");
  el.textContent = state;
  el.className = "state state-" + state;
  $("detail").textContent = detail || "";
}

function showCurrent(run) {
  $("no-current").hidden = run !== null;
  $("current-run-fields").hidden = run === null;
  if (run === null) return;
  set("current-run", run.run);
  set("current-run-id", run.run_id);
  set("current-series", run.series);
  set("current-file", run.file);
  set("current-state", run.state);
  set("current-frames-written", run.frames_written);
  set("current-frames-expected", run.frames_expected === null ? "?" : run.frames_expected);
  set("current-missing", run.missing);
  set("current-started", run.started);
  const bar = $("current-progress");
  bar.hidden = !run.frames_expected;
  if (run.frames_expected) bar.value = run.frames_written / run.frames_expected;
}

function showStages(stages) {
  const body = $("stages").tBodies[0];
  body.replaceChildren();
  stages.forEach((st, i) => {
    const row = body.insertRow();
    row.dataset.stage = st.name || String(i);
    if (st.error) {
      cell(row, "error", st.error, "error").colSpan = 8;
      return;
    }
    const rates = st.rates || {};
    const drops = Object.values(st.dropped || {}).reduce((a, b) => a + Number(b || 0), 0);
    cell(row, "role", st.role);
    cell(row, "name", st.name);
    cell(row, "state", st.state);
    cell(row, "frames_per_s", fixed(rates.frames_per_s, 1));
    cell(row, "gbytes_per_s", fixed(rates.gbytes_per_s, 2));
    cell(row, "frames", st.frames);
    cell(row, "dropped", drops);
    cell(row, "ring", st.ring ? st.ring.occupancy + "/" + st.ring.slots : "");
  });
}

function showRuns(runs) {
  const body = $("runs").tBodies[0];
  body.replaceChildren();
  for (const r of runs) {
    const row = body.insertRow();
    row.dataset.run = r.run;
    row.className = "run-" + r.state;
    cell(row, "run", r.run);
    cell(row, "series", r.series);
    cell(row, "file", r.file);
    cell(row, "frames_written", r.frames_written);
    cell(row, "missing", r.missing);
    cell(row, "exit_code", r.exit_code);
    cell(row, "state", r.state);
  }
}

function showConfig(config) {
  const list = $("config");
  list.replaceChildren();
  for (const [key, value] of Object.entries(config)) {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = key;
    dd.dataset.field = key;
    dd.textContent = typeof value === "object" && value !== null ? JSON.stringify(value)
      : text(value);
    list.append(dt, dd);
  }
}

function show(status) {
  document.body.className = "connected";
  $("disconnected").hidden = true;
  set("connection", "connected");
  set("node", status.node);
  document.title = status.node + " \u2014 " + status.state;
  showState(status.state, status.detail);
  const safe = $("safe-to-arm");
  safe.textContent = status.safe_to_arm ? "safe to arm: the node waits for the detector's series"
    : "not ready to arm (" + status.state + ")";
  safe.className = status.safe_to_arm ? "safe" : "unsafe";
  showCurrent(status.current);
  showStages(status.stages || []);
  showRuns(status.runs || []);
  const c = status.counters || {};
  set("counter-runs", c.runs);
  set("counter-failed-runs", c.failed_runs);
  set("counter-frames-written", c.frames_written);
  set("counter-missing", c.missing);
  showConfig(status.config || {});
  set("version", status.version);
  set("updated", status.time);
  $("last-update").textContent = status.time;
}

function disconnected(why) {
  document.body.className = "disconnected";
  $("disconnected").hidden = false;
  set("connection", "disconnected: " + why);
  showState("disconnected", "");
}

// The newest frame: a new request only once the last one has finished; an answer without an
// image (204: no frame yet) hides it.
let frameLoading = false;
function refreshFrame() {
  if (frameLoading) return;
  frameLoading = true;
  $("frame").src = "/api/v1/frame.png?t=" + Date.now();
}

function frameDone(loaded) {
  frameLoading = false;
  $("frame").hidden = !loaded;
  $("no-frame").hidden = loaded;
}

async function poll() {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  try {
    const response = await fetch("/api/v1/status", {cache: "no-store", signal: abort.signal});
    if (!response.ok) throw new Error("HTTP " + response.status);
    show(await response.json());
    refreshFrame();
  } catch (err) {
    disconnected(err.name === "AbortError" ? "no answer in " + TIMEOUT_MS / 1000 + " s"
      : err.message);
  } finally {
    clearTimeout(timer);
    setTimeout(poll, POLL_MS);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("frame").addEventListener("load", () => frameDone(true));
  $("frame").addEventListener("error", () => frameDone(false));
  poll();
});
