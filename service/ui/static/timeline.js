// Time and money of one run: a timeline on lanes and a cost-by-model table.
//
// Timeline places every model call, code block and sub-call of a run (and of its recursive
// children) by its start and end on the request's clock (events' start_ms / end_ms, measured
// by the host; see service/rlm/events.py). Each lane (root model calls, code blocks,
// sub-calls, then the same one level down) is packed into as many rows as it has calls at
// once, so concurrency shows as stacked bars and long bars show where the time went. Calls
// of one batched call are placed in input order (batch_index), whatever order they ended in.
// Events without those fields (older services, files) are placed by their emission time
// `t` and duration `ms` when they have them, and left out when they do not.
//
// CostByModel is the run's usage and cost per model: the service's own meter
// (summary.usage_by_model, at the end of the run) or, while the run is live, the sum of its
// events. A model without a price costs "unknown", never $0.
//
// Everything shown comes from events and is text: bars carry it in `title` attributes and
// table cells as text nodes; positions are set through the CSSOM (allowed by the page's CSP).

import { el, fmtInt, fmtMs } from "./dom.js";

/** "$0.0123", "unknown" for null (no price), "–" when there is nothing to show. */
export function fmtUsd(value) {
  if (value === null) return "unknown";
  if (value === undefined || Number.isNaN(Number(value))) return "–";
  const v = Number(value);
  if (v === 0) return "$0.00";
  if (v >= 1) return `$${v.toFixed(2)}`;
  if (v >= 0.01) return `$${v.toFixed(4)}`;
  if (v >= 0.000001) return `$${v.toFixed(6)}`;
  return "< $0.000001";
}

const KIND_LABEL = {
  model: "model call",
  code: "code block",
  llm: "sub-call llm_query",
  rlm: "sub-call rlm_query (recursive run)",
  rlm_as_llm: "sub-call rlm_query (at the depth limit: one model call)",
};
const GROUP_ORDER = { model: 0, code: 1, calls: 2 };

function num(value) {
  return typeof value === "number" && Number.isFinite(value) ? value : undefined;
}

function laneLabel(group, depth) {
  if (group === "calls") return depth <= 1 ? "sub-calls" : `sub-calls · depth ${depth}`;
  const name = group === "model" ? "model calls" : "code blocks";
  return depth === 0 ? `root ${name}` : `${name} · depth ${depth}`;
}

/** A tick step (ms) of 1, 2 or 5 times a power of ten giving about `want` ticks. */
function tickStep(span, want = 6) {
  const raw = Math.max(span / want, 1);
  const pow = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * pow >= raw) return m * pow;
  return 10 * pow;
}

/** The run's timeline: lanes of bars placed by start and end (ms on the request's clock). */
export class Timeline {
  constructor() {
    this.bars = [];
    this.runs = new Map(); // run id -> { depth, model, parent, cost, unknown }
    this.childBars = new Map(); // child run id -> its (open until its sub_call) bar
    this.origin = null; // Unix seconds of the root run's start: the fallback clock
    this.ended = false;
    this.scheduled = false;
    this.metaEl = el("span", { class: "meta" });
    this.bodyEl = el("div", { class: "tl-body" });
    this.el = el(
      "section",
      { class: "timeline-panel panel" },
      el("h3", {}, "Timeline", this.metaEl),
      this.bodyEl,
    );
    this.render();
  }

  /** Take one event; the page is redrawn once per burst of events. */
  apply(ev) {
    if (!ev || typeof ev !== "object") return;
    switch (ev.event) {
      case "run_start":
        this.onRunStart(ev);
        break;
      case "iteration":
        this.onIteration(ev);
        break;
      case "code":
        this.onCode(ev);
        break;
      case "sub_call":
        this.onSubCall(ev);
        break;
      case "final":
        this.onFinal(ev);
        break;
      case "run_end":
        this.ended = true;
        break;
      default:
        return;
    }
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    setTimeout(() => {
      this.scheduled = false;
      this.render();
    }, 0);
  }

  // ---- events -------------------------------------------------------------------------

  run(id) {
    let run = this.runs.get(id);
    if (!run) {
      run = { depth: 0, model: "", parent: null, cost: 0, unknown: false };
      this.runs.set(id, run);
    }
    return run;
  }

  /** [start, end] in ms on the request's clock, or null when the event has no timing. */
  span(ev) {
    const start = num(ev.start_ms);
    const end = num(ev.end_ms);
    if (start !== undefined && end !== undefined) return [start, Math.max(end, start)];
    const t = num(ev.t);
    const ms = num(ev.ms);
    if (t === undefined || ms === undefined || this.origin === null) return null;
    const stop = (t - this.origin) * 1000;
    return [Math.max(stop - ms, 0), stop];
  }

  addCost(runId, cost) {
    // A call's cost counts for its run and every run above it (a child's bar shows its total).
    const seen = new Set();
    let id = runId;
    while (id !== null && id !== undefined && !seen.has(id)) {
      seen.add(id);
      const run = this.run(id);
      if (cost === null) run.unknown = true;
      else if (typeof cost === "number") run.cost += cost;
      id = run.parent;
    }
  }

  onRunStart(ev) {
    const depth = Number(ev.depth || 0);
    const run = this.run(ev.run);
    Object.assign(run, { depth, model: String(ev.model ?? ""), parent: ev.parent ?? null });
    if (depth === 0 && this.origin === null && num(ev.t) !== undefined) this.origin = ev.t;
    if (depth === 0) return;
    let start = num(ev.start_ms);
    if (start === undefined && num(ev.t) !== undefined && this.origin !== null) start = (ev.t - this.origin) * 1000;
    if (start === undefined) return;
    const bar = {
      group: "calls", depth, kind: "rlm", start, end: null, model: run.model, childRun: ev.run,
      batch: num(ev.batch), index: num(ev.batch_index), size: num(ev.batch_size), label: "",
    };
    this.childBars.set(ev.run, bar);
    this.bars.push(bar);
  }

  onIteration(ev) {
    const run = this.run(ev.run);
    this.addCost(ev.run, ev.cost_usd);
    const span = this.span(ev);
    if (!span) return;
    const u = ev.usage || {};
    this.bars.push({
      group: "model", depth: run.depth, kind: "model", start: span[0], end: span[1],
      model: run.model, cost: ev.cost_usd,
      label: ev.forced ? "forced final answer" : `iteration ${Number(ev.iteration ?? 0) + 1}`,
      tokens: [u.prompt_tokens, u.completion_tokens],
    });
  }

  onCode(ev) {
    const run = this.run(ev.run);
    const span = this.span(ev);
    if (!span) return;
    const error = ev.error && typeof ev.error === "object" ? ev.error.type || "error" : ev.error ? "error" : "";
    this.bars.push({
      group: "code", depth: run.depth, kind: "code", start: span[0], end: span[1], error,
      label: `iteration ${Number(ev.iteration ?? 0) + 1}, block ${Number(ev.block ?? 0) + 1}`,
    });
  }

  onSubCall(ev) {
    const run = this.run(ev.run);
    const kind = ["llm", "rlm", "rlm_as_llm"].includes(ev.kind) ? ev.kind : "llm";
    if (kind !== "rlm") this.addCost(ev.run, ev.cost_usd);
    const span = this.span(ev);
    let bar = kind === "rlm" && ev.child_run ? this.childBars.get(ev.child_run) : undefined;
    if (!bar) {
      if (!span) return;
      bar = { group: "calls", depth: run.depth + 1, kind, start: span[0], end: null, label: "" };
      this.bars.push(bar);
    }
    if (span) bar.end = span[1];
    else bar.end = bar.start;
    Object.assign(bar, {
      model: ev.model ?? bar.model, iterations: ev.iterations,
      tokens: kind === "rlm" ? undefined : [ev.prompt_tokens, ev.completion_tokens],
      batch: num(ev.batch) ?? bar.batch, index: num(ev.batch_index) ?? bar.index,
      size: num(ev.batch_size) ?? bar.size,
    });
    if (kind !== "rlm") bar.cost = ev.cost_usd;
  }

  onFinal(ev) {
    const run = this.run(ev.run);
    run.done = true;
    const bar = this.childBars.get(ev.run);
    const end = num(ev.end_ms);
    if (bar && bar.end === null && end !== undefined) bar.end = end;
  }

  // ---- drawing ------------------------------------------------------------------------

  costOf(bar) {
    if (bar.kind === "rlm" && bar.childRun !== undefined) {
      const child = this.runs.get(bar.childRun);
      if (!child) return undefined;
      return child.unknown ? null : child.cost;
    }
    return bar.cost;
  }

  tooltip(bar) {
    const lines = [KIND_LABEL[bar.kind] || bar.kind];
    if (bar.label) lines[0] += ` · ${bar.label}`;
    if (bar.batch !== undefined) {
      lines.push(`batched call #${bar.batch}: input ${(bar.index ?? 0) + 1} of ${bar.size ?? "?"}`);
    }
    const running = bar.end === null;
    lines.push(`duration ${running ? "running" : fmtMs(bar.end - bar.start)} · from ${fmtMs(bar.start)}`);
    if (bar.model) lines.push(`model ${bar.model}`);
    if (bar.tokens && (bar.tokens[0] || bar.tokens[1])) {
      lines.push(`tokens ${fmtInt(bar.tokens[0])} in, ${fmtInt(bar.tokens[1])} out`);
    }
    if (bar.iterations !== undefined) lines.push(`${bar.iterations} iteration${bar.iterations === 1 ? "" : "s"}`);
    if (bar.kind !== "code") {
      const cost = this.costOf(bar);
      if (cost !== undefined) lines.push(`cost ${cost === null ? "unknown (a model has no price)" : fmtUsd(cost)}`);
    }
    if (bar.error) lines.push(`error: ${bar.error}`);
    return lines.join("\n");
  }

  /** Lanes in drawing order, each packed into rows of bars that do not overlap. */
  lanes(span) {
    const lanes = new Map();
    const key = (group, depth) => `${group}-${depth}`;
    for (const [group, depth] of [["model", 0], ["code", 0], ["calls", 1]]) {
      lanes.set(key(group, depth), { group, depth, bars: [] });
    }
    for (const bar of this.bars) {
      const k = key(bar.group, bar.depth);
      if (!lanes.has(k)) lanes.set(k, { group: bar.group, depth: bar.depth, bars: [] });
      lanes.get(k).bars.push(bar);
    }
    // Calls made at depth d sit right after depth d's model and code lanes.
    const level = (lane) => (lane.group === "calls" ? lane.depth - 1 : lane.depth);
    const ordered = [...lanes.values()].sort(
      (a, b) => level(a) - level(b) || GROUP_ORDER[a.group] - GROUP_ORDER[b.group],
    );
    for (const lane of ordered) lane.rows = pack(lane.bars, span);
    return ordered;
  }

  render() {
    let span = 0;
    for (const bar of this.bars) span = Math.max(span, bar.start, bar.end ?? 0);
    span = Math.max(span, 1);
    const nBars = this.bars.length;
    this.metaEl.textContent = nBars ? `${fmtMs(span)} · ${nBars} bar${nBars === 1 ? "" : "s"}` : "";
    if (!nBars) {
      this.bodyEl.replaceChildren(el("p", { class: "muted" }, this.ended ? "No timing recorded for this run." : "Waiting for the first call…"));
      return;
    }
    const step = tickStep(span);
    const axis = el("div", { class: "tl-axis" });
    for (let at = 0; at <= span + 1e-9; at += step) {
      const tick = el("span", { class: "tl-tick" }, fmtMs(at));
      tick.style.left = `${(at / span) * 100}%`;
      axis.append(tick);
    }
    const lanes = this.lanes(span).map((lane) =>
      el(
        "div",
        { class: `tl-lane group-${lane.group}`, dataset: { lane: `${lane.group}-${lane.depth}` } },
        el("div", { class: "tl-label" }, laneLabel(lane.group, lane.depth)),
        el(
          "div",
          { class: "tl-rows" },
          (lane.rows.length ? lane.rows : [[]]).map((row) => el("div", { class: "tl-track" }, row.map((bar) => this.barEl(bar, span)))),
        ),
      ),
    );
    this.bodyEl.replaceChildren(
      el("div", { class: "tl-lane tl-axis-row" }, el("div", { class: "tl-label" }), axis),
      ...lanes,
    );
  }

  barEl(bar, span) {
    const end = bar.end ?? span;
    const dataset = { kind: bar.kind };
    if (bar.batch !== undefined) Object.assign(dataset, { batch: String(bar.batch), index: String(bar.index ?? 0) });
    const node = el("div", {
      class: `tl-bar kind-${bar.kind}${bar.end === null ? " running" : ""}${bar.error ? " failed" : ""}`,
      title: this.tooltip(bar),
      dataset,
    });
    node.style.left = `${(bar.start / span) * 100}%`;
    node.style.width = `${(Math.max(end - bar.start, 0) / span) * 100}%`;
    return node;
  }
}

/**
 * Rows of non-overlapping bars, first fit. Bars go in order of start, except that the calls
 * of one batch go together, in input order, from the batch's first start: a batch's first
 * wave reads top to bottom as its inputs.
 */
export function pack(bars, span) {
  const batchStart = new Map();
  for (const b of bars) {
    if (b.batch === undefined) continue;
    batchStart.set(b.batch, Math.min(batchStart.get(b.batch) ?? Infinity, b.start));
  }
  const at = (b) => (b.batch === undefined ? b.start : batchStart.get(b.batch));
  const sorted = [...bars].sort(
    (a, b) => at(a) - at(b) || (a.batch ?? -1) - (b.batch ?? -1) || (a.index ?? 0) - (b.index ?? 0) || a.start - b.start,
  );
  const rows = [];
  for (const bar of sorted) {
    const end = bar.end ?? span;
    const fits = (row) => row.every((o) => (o.end ?? span) <= bar.start || o.start >= end);
    let row = rows.find(fits);
    if (!row) {
      row = [];
      rows.push(row);
    }
    row.push(bar);
  }
  return rows;
}

/** Usage and cost by model: the service's meter when known, else the events' sum. */
export class CostByModel {
  constructor() {
    this.fromEvents = new Map(); // model -> { calls, input, output, cost (null: unknown) }
    this.wire = null; // summary.usage_by_model
    this.scheduled = false;
    this.metaEl = el("span", { class: "meta" });
    this.bodyEl = el("div");
    this.el = el("section", { class: "cost-panel panel" }, el("h3", {}, "Cost by model", this.metaEl), this.bodyEl);
    this.render();
  }

  /** One event; `model` is the model of the run an iteration belongs to. */
  add(ev, model) {
    let name;
    let cost;
    if (ev.event === "iteration") {
      const u = ev.usage || {};
      name = model || "(unknown model)";
      cost = ev.cost_usd;
      this.count(name, u.prompt_tokens, u.completion_tokens, cost);
    } else if (ev.event === "sub_call" && ev.kind !== "rlm") {
      name = ev.model || "(unknown model)";
      cost = ev.cost_usd;
      this.count(name, ev.prompt_tokens, ev.completion_tokens, cost);
    } else {
      return;
    }
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    setTimeout(() => {
      this.scheduled = false;
      this.render();
    }, 0);
  }

  count(name, input, output, cost) {
    const row = this.fromEvents.get(name) || { calls: 0, input: 0, output: 0, cost: 0 };
    row.calls += 1;
    row.input += Number(input || 0);
    row.output += Number(output || 0);
    // An event without cost_usd (an older service) says nothing: "unknown" too, never $0.
    if (cost === null || cost === undefined || row.cost === null) row.cost = null;
    else row.cost += Number(cost);
    this.fromEvents.set(name, row);
  }

  /** The run's summary (run_end, GET .../runs/{run}): its meter's figures replace the sum. */
  setSummary(summary) {
    const wire = summary && summary.usage_by_model;
    if (wire && typeof wire === "object" && !Array.isArray(wire)) {
      this.wire = wire;
      this.schedule();
    }
  }

  rows() {
    if (this.wire) {
      return Object.entries(this.wire).map(([model, u]) => ({
        model, calls: u.calls, input: u.input_tokens, cached: u.cached_input_tokens,
        output: u.output_tokens, cost: u.priced === false ? null : u.cost_usd ?? null,
      }));
    }
    return [...this.fromEvents.entries()]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([model, r]) => ({ model, ...r, cached: undefined }));
  }

  /** The total: a number, or null when any model has no price; undefined with no calls. */
  total() {
    const rows = this.rows();
    if (!rows.length) return undefined;
    return rows.some((r) => r.cost === null) ? null : rows.reduce((s, r) => s + Number(r.cost || 0), 0);
  }

  render() {
    const rows = this.rows();
    this.metaEl.textContent = this.wire ? "the service's meter" : rows.length ? "so far, from the run's events" : "";
    if (!rows.length) {
      this.bodyEl.replaceChildren(el("p", { class: "muted" }, "No model calls yet."));
      return;
    }
    const sum = (k) => rows.reduce((s, r) => s + Number(r[k] || 0), 0);
    const cached = (v) => (v === undefined ? "–" : fmtInt(v));
    this.bodyEl.replaceChildren(
      el(
        "table",
        { class: "costs" },
        el("thead", {}, el("tr", {}, ["model", "calls", "input tokens", "cached input", "output tokens", "cost"].map((h) => el("th", {}, h)))),
        el(
          "tbody",
          {},
          rows.map((r) =>
            el(
              "tr",
              { class: "cost-row", dataset: { model: r.model } },
              el("td", { class: "model" }, r.model),
              el("td", { class: "num" }, fmtInt(r.calls)),
              el("td", { class: "num" }, fmtInt(r.input)),
              el("td", { class: "num" }, cached(r.cached)),
              el("td", { class: "num" }, fmtInt(r.output)),
              el("td", { class: `num cost${r.cost === null ? " unknown" : ""}` }, fmtUsd(r.cost)),
            ),
          ),
        ),
        el(
          "tfoot",
          {},
          el(
            "tr",
            { class: "cost-total" },
            el("td", {}, "total"),
            el("td", { class: "num" }, fmtInt(sum("calls"))),
            el("td", { class: "num" }, fmtInt(sum("input"))),
            el("td", { class: "num" }, this.wire ? fmtInt(sum("cached")) : "–"),
            el("td", { class: "num" }, fmtInt(sum("output"))),
            el("td", { class: `num cost${this.total() === null ? " unknown" : ""}` }, fmtUsd(this.total())),
          ),
        ),
      ),
    );
    if (!this.wire) this.bodyEl.append(el("p", { class: "muted note" }, "Cached input tokens are known when the run ends."));
  }
}
