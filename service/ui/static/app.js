// The viewer's pages and navigation (hash routes, so a reload keeps the page):
//   #/                          the caller's sessions and their runs
//   #/session/{sid}             one session: variables, shared state, runs
//   #/run/{sid}/{run}           one run, live while it runs (SSE), replayed when done
//   #/file                      open a JSONL trajectory file (upload or paste)

import { AuthError, getJSON, getKey, setKey, streamEvents } from "./api.js";
import { badge, clear, el, fmtInt, fmtMs, fmtTime, longText } from "./dom.js";
import { fmtUsd } from "./timeline.js";
import { RunTree, parseTrajectoryFile } from "./trajectory.js";

const LIST_REFRESH_MS = 3000;
const main = document.getElementById("main");
const signOut = document.getElementById("sign-out");

// Work of the page on screen (stream readers, refresh timers) stops when it is left.
let pageAbort = new AbortController();

function newPage() {
  pageAbort.abort();
  pageAbort = new AbortController();
  clear(main);
  return pageAbort.signal;
}

function enc(value) {
  return encodeURIComponent(String(value));
}

function link(href, ...children) {
  return el("a", { href }, ...children);
}

function crumbs(...items) {
  const nav = el("nav", { class: "crumbs" });
  items.forEach((item, i) => {
    if (i) nav.append(el("span", { class: "sep" }, "/"));
    nav.append(item);
  });
  return nav;
}

function problem(message) {
  return el("div", { class: "problem", role: "alert" }, message);
}

function handleError(exc, signal) {
  if (signal.aborted) return;
  if (exc instanceof AuthError) {
    setKey("");
    showKeyForm(exc.message);
    return;
  }
  main.append(problem(exc.message || String(exc)));
}

// ---- the key ------------------------------------------------------------------------

function showKeyForm(reason) {
  const signal = newPage();
  const input = el("input", {
    type: "password", id: "api-key", name: "api-key", autocomplete: "off",
    placeholder: "the API key (RLM_API_KEYS)", required: true,
  });
  const form = el(
    "form",
    { class: "key-form", id: "key-form" },
    el("h2", {}, "API key"),
    el("p", { class: "muted" }, "The key stays in this tab's session storage and is sent only as an Authorization header to this service."),
    reason ? problem(reason) : null,
    el("div", { class: "row" }, input, el("button", { type: "submit" }, "Continue")),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    setKey(input.value.trim());
    route(); // back to the page that asked for the key
  });
  if (!signal.aborted) main.append(form);
  updateSignOut();
  input.focus();
}

function updateSignOut() {
  signOut.hidden = !getKey();
}

signOut.addEventListener("click", () => {
  setKey("");
  updateSignOut();
  showKeyForm("Signed out.");
});

// ---- sessions -----------------------------------------------------------------------

function runRow(sid, run) {
  const usage = run.usage || {};
  return el(
    "tr",
    { class: "run-row", dataset: { run: run.id } },
    el("td", {}, badge(run.status, `status-${run.status}`)),
    el("td", { class: "query-cell" }, link(`#/run/${enc(sid)}/${enc(run.id)}`, run.query || "(no query)")),
    el("td", { class: "num" }, fmtInt(run.iterations)),
    el("td", { class: "num" }, fmtInt(run.sub_calls)),
    el("td", { class: "num" }, fmtInt(usage.total_tokens)),
    el("td", { class: "num" }, run.status === "running" ? "…" : fmtMs(run.elapsed_ms)),
    el("td", { class: `num cost${run.cost_usd === null ? " unknown" : ""}`, title: costTitle(run) }, run.status === "running" ? "…" : fmtUsd(run.cost_usd)),
    el("td", { class: "muted" }, fmtTime(run.started)),
  );
}

// A run's cost by model as a tooltip of its cost cell (the run page has the table).
function costTitle(run) {
  const byModel = run.usage_by_model && typeof run.usage_by_model === "object" ? run.usage_by_model : {};
  const lines = Object.entries(byModel).map(
    ([model, u]) => `${model}: ${fmtInt(u.calls)} call${u.calls === 1 ? "" : "s"}, ${u.priced === false ? "unknown (no price)" : fmtUsd(u.cost_usd)}`,
  );
  return lines.length ? lines.join("\n") : undefined;
}

function runsTable(sid, runs) {
  if (!runs.length) return el("p", { class: "muted" }, "No runs yet.");
  return el(
    "table",
    { class: "runs" },
    el("thead", {}, el("tr", {}, ["status", "query", "iterations", "sub-calls", "tokens", "time", "cost", "started"].map((h) => el("th", {}, h)))),
    el("tbody", {}, [...runs].reverse().map((r) => runRow(sid, r))),
  );
}

function sessionCard(s) {
  return el(
    "section",
    { class: "session", dataset: { session: s.id } },
    el(
      "h3",
      {},
      link(`#/session/${enc(s.id)}`, s.id),
      el("span", { class: "meta" }, `${s.turns} turn${s.turns === 1 ? "" : "s"} · sandbox ${s.sandbox} · ${fmtTime(s.created)}`),
      s.busy ? badge("busy", "status-running") : null,
    ),
    runsTable(s.id, s.runs || []),
  );
}

async function showSessions() {
  const signal = newPage();
  const list = el("div", { class: "sessions" });
  const updated = el("span", { class: "muted" });
  main.append(
    el("div", { class: "page-head" }, el("h2", {}, "Sessions"), updated, el("button", { type: "button", onclick: () => refresh() }, "Refresh")),
    list,
  );
  let timer = null;
  const refresh = async () => {
    clearTimeout(timer);
    try {
      const body = await getJSON("/v1/sessions", { signal });
      const sessions = body.data || [];
      list.replaceChildren(
        ...(sessions.length
          ? sessions.map(sessionCard)
          : [el("p", { class: "muted" }, "No sessions for this key yet. Send a chat completion request, then watch it here.")]),
      );
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (exc) {
      handleError(exc, signal);
      return;
    }
    // The list is small; a run itself is followed by its event stream, never polled.
    if (!signal.aborted) timer = setTimeout(refresh, LIST_REFRESH_MS);
  };
  signal.addEventListener("abort", () => clearTimeout(timer));
  await refresh();
}

function varsTable(items) {
  if (!items || !items.length) return el("p", { class: "muted" }, "none");
  return el(
    "table",
    { class: "vars" },
    el("thead", {}, el("tr", {}, el("th", {}, "name"), el("th", {}, "type"), el("th", {}, "value"))),
    el("tbody", {}, items.map((v) => el("tr", {}, el("td", {}, String(v.name)), el("td", { class: "muted" }, String(v.type)), el("td", {}, longText(v.repr ?? "", { lines: 3, chars: 300 }))))),
  );
}

async function showSession(sid) {
  const signal = newPage();
  main.append(crumbs(link("#/", "Sessions"), el("span", {}, sid)));
  try {
    const s = await getJSON(`/v1/sessions/${enc(sid)}`, { signal });
    const sandbox = s.sandbox || {};
    main.append(
      el("p", { class: "meta" }, `${s.turns} turns · sandbox ${sandbox.status}${sandbox.lost_reason ? ` (${sandbox.lost_reason})` : ""} · created ${fmtTime(s.created)}`),
      el("h3", {}, "Runs"),
      runsTable(sid, s.runs || []),
      el("h3", {}, "Variables (root namespace)"),
      varsTable(s.variables),
      el("h3", {}, "Shared state"),
      varsTable(s.state),
    );
  } catch (exc) {
    handleError(exc, signal);
  }
}

// ---- one run --------------------------------------------------------------------------

async function showRun(sid, runId) {
  const signal = newPage();
  const tree = new RunTree();
  const streamState = el("span", { class: "muted stream-state" }, "connecting…");
  main.append(
    crumbs(link("#/", "Sessions"), link(`#/session/${enc(sid)}`, sid), el("span", {}, runId)),
    el("div", { class: "stream-line" }, streamState),
    tree.el,
  );
  try {
    await streamEvents(
      `/v1/sessions/${enc(sid)}/runs/${enc(runId)}/events`,
      (ev) => {
        tree.apply(ev);
        streamState.textContent = tree.ended ? "" : "live";
      },
      { signal },
    );
    if (!tree.ended && !signal.aborted) {
      streamState.replaceChildren(
        "The event stream ended before the run did. ",
        el("button", { type: "button", onclick: () => showRun(sid, runId) }, "Reconnect"),
      );
    } else {
      streamState.textContent = "";
    }
  } catch (exc) {
    if (exc && exc.name === "AbortError") return;
    streamState.textContent = "";
    handleError(exc, signal);
  }
}

// ---- files ------------------------------------------------------------------------------

function showFile() {
  newPage();
  const result = el("div", { class: "file-result" });
  const area = el("textarea", { id: "paste", rows: 8, spellcheck: "false", placeholder: "Paste a trajectory: the RLM library's JSONL (metadata + iteration lines) or rlm-py events" });
  const input = el("input", { type: "file", id: "file-input", accept: ".jsonl,.json,.txt,application/json" });
  const render = (text, name) => {
    result.replaceChildren();
    let events;
    try {
      events = parseTrajectoryFile(text);
    } catch (exc) {
      result.append(problem(`Could not read ${name}: ${exc.message}`));
      return;
    }
    const tree = new RunTree();
    for (const ev of events) tree.apply(ev);
    if (!tree.ended) {
      const finished = events.some((e) => e.event === "final" && !e.depth);
      tree.apply({ event: "run_end", status: finished ? "done" : "partial", summary: {} });
    }
    result.append(el("p", { class: "muted" }, `${name}: ${events.length} events`), tree.el);
  };
  input.addEventListener("change", async () => {
    const file = input.files && input.files[0];
    if (file) render(await file.text(), file.name);
  });
  main.append(
    crumbs(link("#/", "Sessions"), el("span", {}, "Open a trajectory file")),
    el(
      "div",
      { class: "file-form" },
      el("label", {}, "Upload a .jsonl file ", input),
      el("div", { class: "muted" }, "or paste it:"),
      area,
      el("div", {}, el("button", { type: "button", id: "open-paste", onclick: () => render(area.value, "pasted text") }, "Open")),
    ),
    result,
  );
}

// ---- routing ----------------------------------------------------------------------------

function route() {
  updateSignOut();
  const parts = location.hash.replace(/^#\/?/, "").split("/").map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  if (parts[0] === "file") return showFile();
  if (parts[0] === "run" && parts.length >= 3) return showRun(parts[1], parts[2]);
  if (parts[0] === "session" && parts[1]) return showSession(parts[1]);
  return showSessions();
}

window.addEventListener("hashchange", route);
route();
