// A run's trajectory as a page: RunTree turns trajectory events into a live, nested view.
//
// Events (see service/rlm/engine.py) arrive one at a time, live or replayed, and each one
// updates the page in place, so open "show more" toggles and nested trees stay as they are.
// A recursive child run has its own run id; its parent is found through the sandbox
// namespace ("root/3" is a child of "root"), and it is drawn under the code block that was
// running when it started. The parent's sub_call of kind "rlm" arrives when it finishes.
//
// parseTrajectoryFile turns the official RLM library's JSONL (also written by
// RLM_TRAJECTORY_DIR) into the same events, so files and live runs share one view.

import { badge, el, fmtInt, fmtMs, longText } from "./dom.js";
import { CostByModel, Timeline, fmtUsd } from "./timeline.js";

// The engine's ```repl fence (service/rlm/parsing.py), to place code blocks in the prose.
const FENCE = /^[ \t]*```[ \t]*repl[ \t]*\n([\s\S]*?)^[ \t]*```[ \t]*$/gm;
const PREVIEW_SUFFIX = /\.\.\. \[\d+ more chars\]$/;

/** Split a model response into prose and ```repl code parts, in order. */
export function splitResponse(text) {
  const parts = [];
  let last = 0;
  for (const m of String(text ?? "").matchAll(FENCE)) {
    if (m.index > last) parts.push({ prose: text.slice(last, m.index) });
    parts.push({ code: m[1] });
    last = m.index + m[0].length;
  }
  if (last < String(text ?? "").length) parts.push({ prose: text.slice(last) });
  return parts;
}

function parentNs(ns) {
  const i = String(ns || "").lastIndexOf("/");
  return i > 0 ? ns.slice(0, i) : null;
}

function stripPreview(text) {
  return String(text ?? "").replace(PREVIEW_SUFFIX, "");
}

function tokensOf(ev) {
  const u = ev.usage || {};
  return {
    prompt: Number(ev.prompt_tokens ?? u.prompt_tokens ?? 0) || 0,
    completion: Number(ev.completion_tokens ?? u.completion_tokens ?? 0) || 0,
  };
}

function errorText(error) {
  if (!error) return "";
  if (typeof error === "string") return error;
  const tb = error.traceback || "";
  const head = [error.type || error.name, error.message || error.value].filter(Boolean).join(": ");
  return tb || head || JSON.stringify(error);
}

/** The live view of one run (the root and its recursive children). */
export class RunTree {
  constructor() {
    this.runs = new Map(); // run id -> run node
    this.byNs = new Map(); // sandbox namespace -> run node
    this.root = null;
    this.ended = false;
    this.totals = { iterations: 0, modelCalls: 0, subCalls: 0, prompt: 0, completion: 0, start: null, last: null };
    this.summary = null;

    this.statusEl = badge("waiting", "status-running");
    this.queryEl = el("div", { class: "run-query" });
    this.totalsEl = el("dl", { class: "totals" });
    this.bodyEl = el("div", { class: "run-body" });
    this.errorEl = el("div", { class: "run-error", hidden: true });
    // Time and money: the timeline's lanes and the cost by model (timeline.js).
    this.timeline = new Timeline();
    this.costs = new CostByModel();
    this.el = el(
      "article",
      { class: "trajectory" },
      el("header", { class: "run-header" }, el("div", { class: "run-title" }, "Run ", this.statusEl), this.queryEl, this.totalsEl),
      this.errorEl,
      el("div", { class: "run-charts" }, this.timeline.el, this.costs.el),
      this.bodyEl,
    );
    this.renderTotals();
  }

  /** Apply one event; unknown kinds are ignored (newer services may send more). */
  apply(ev) {
    if (!ev || typeof ev !== "object") return;
    if (typeof ev.t === "number") {
      if (this.totals.start === null) this.totals.start = ev.t;
      this.totals.last = Math.max(this.totals.last ?? ev.t, ev.t);
    }
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
        this.onRunEnd(ev);
        break;
      default:
        return;
    }
    this.timeline.apply(ev);
    const run = this.runs.get(ev.run);
    this.costs.add(ev, run ? run.model : "");
    this.renderTotals();
  }

  setStatus(status) {
    this.statusEl.textContent = status;
    this.statusEl.className = `badge status-${status}`;
  }

  // ---- events -------------------------------------------------------------------------

  onRunStart(ev) {
    const run = this.newRun(ev.run, ev);
    const parent = run.depth > 0 ? this.byNs.get(parentNs(ev.ns)) : null;
    if (run.depth === 0 && this.root === null) {
      this.root = run;
      this.queryEl.replaceChildren(longText(ev.query ?? "", { cls: "query", lines: 6, label: "Query" }));
      if (this.totals.start === null && typeof ev.t === "number") this.totals.start = ev.t;
      this.setStatus("running");
      this.bodyEl.append(run.el);
    } else if (parent) {
      const block = this.currentBlock(parent);
      const call = this.newCall(block, {
        kind: "rlm", model: ev.model, prompt: ev.query, running: true, batch: ev.batch, index: ev.batch_index,
      });
      call.child = run;
      call.nest.append(
        el("details", { class: "child-run", open: true }, el("summary", {}, `recursive run · depth ${run.depth}`), run.el),
      );
      block.pendingChildren.push(call);
    } else {
      this.bodyEl.append(run.el); // a run whose parent we never saw: show it on its own
    }
  }

  onIteration(ev) {
    const run = this.runOf(ev);
    const idx = Number(ev.iteration ?? run.iters.size);
    const tok = tokensOf(ev);
    this.totals.modelCalls += 1;
    this.totals.prompt += tok.prompt;
    this.totals.completion += tok.completion;
    if (run === this.root) this.totals.iterations += 1;

    const meta = [fmtMs(ev.ms)];
    if (tok.prompt || tok.completion) meta.push(`${fmtInt(tok.prompt)} → ${fmtInt(tok.completion)} tok`);
    if (ev.finish_reason && ev.finish_reason !== "stop") meta.push(`finish: ${ev.finish_reason}`);
    const content = el("div", { class: "iteration-body" });
    const node = {
      idx,
      blocks: [],
      content,
      el: el(
        "section",
        { class: "iteration", dataset: { iteration: String(idx) } },
        el("h3", {}, `Iteration ${idx + 1}`, el("span", { class: "meta" }, meta.join(" · "))),
        content,
      ),
    };
    const response = String(ev.response ?? "");
    if (!response.trim()) content.append(el("p", { class: "muted" }, "(empty response)"));
    for (const part of splitResponse(response)) {
      if (part.prose !== undefined) {
        if (part.prose.trim()) content.append(longText(part.prose.trim(), { cls: "response" }));
      } else {
        const block = this.newBlock(node, part.code);
        content.append(block.el);
      }
    }
    run.iters.set(idx, node);
    run.lastIter = node;
    run.list.append(node.el);
  }

  onCode(ev) {
    const run = this.runOf(ev);
    const iter = run.iters.get(Number(ev.iteration)) || run.lastIter || this.syntheticIteration(run);
    let block = iter.blocks[Number(ev.block ?? iter.blocks.length)];
    if (!block) {
      block = this.newBlock(iter, ev.code ?? "");
      iter.content.append(block.el);
    }
    this.fillBlock(block, ev);
  }

  onSubCall(ev) {
    const run = this.runOf(ev);
    const tok = tokensOf(ev);
    this.totals.subCalls += 1;
    // A recursive run's model calls are counted by its own iteration events; its sub_call
    // carries tokens only when those iterations do not (the official format).
    if (ev.kind !== "rlm") this.totals.modelCalls += 1;
    this.totals.prompt += tok.prompt;
    this.totals.completion += tok.completion;
    const block = this.currentBlock(run);
    if (ev.kind === "rlm") {
      const call = this.takeChild(block, ev);
      if (call) {
        this.finishCall(call, ev, tok);
        return;
      }
    }
    const call = this.newCall(block, {
      kind: ev.kind || "llm", model: ev.model, prompt: ev.prompt, batch: ev.batch, index: ev.batch_index,
    });
    this.finishCall(call, ev, tok);
  }

  onFinal(ev) {
    const run = this.runOf(ev);
    run.done = true;
    for (const iter of run.iters.values()) {
      for (const block of iter.blocks) if (!block.done) this.markNotRun(block);
    }
    const meta = [`how: ${ev.how || "?"}`];
    if (ev.stopped_by) meta.push(`stopped by: ${ev.stopped_by}`);
    const n = ev.iterations ?? run.iters.size;
    meta.push(`${n} iteration${n === 1 ? "" : "s"}`);
    if (ev.ms !== undefined) meta.push(fmtMs(ev.ms));
    run.finalEl.replaceChildren(
      el("h3", {}, run.depth === 0 ? "Final answer" : "Answer", el("span", { class: "meta" }, meta.join(" · "))),
      longText(ev.answer ?? "", { cls: "answer" }),
    );
    run.finalEl.hidden = false;
    if (run === this.root && typeof ev.t === "number") this.totals.last = ev.t;
  }

  onRunEnd(ev) {
    this.ended = true;
    const summary = ev.summary || {};
    this.summary = summary;
    this.costs.setSummary(summary);
    this.setStatus(ev.status || summary.status || "done");
    if (summary.error) {
      this.errorEl.hidden = false;
      this.errorEl.replaceChildren(el("strong", {}, "Error: "), String(summary.error));
    }
    if (this.root) {
      for (const iter of this.root.iters.values()) {
        for (const block of iter.blocks) if (!block.done) this.markNotRun(block);
      }
    }
  }

  // ---- nodes --------------------------------------------------------------------------

  newRun(id, ev) {
    const list = el("div", { class: "iterations" });
    const finalEl = el("div", { class: "final", hidden: true });
    const run = {
      id,
      depth: Number(ev.depth || 0),
      model: String(ev.model ?? ""),
      ns: ev.ns || "",
      iters: new Map(),
      lastIter: null,
      list,
      finalEl,
      done: false,
      el: el(
        "div",
        { class: `run depth-${Math.min(Number(ev.depth || 0), 4)}`, dataset: { run: String(id ?? "") } },
        el("div", { class: "run-meta" }, [ev.model && `model ${ev.model}`, `run ${id ?? "?"}`].filter(Boolean).join(" · ")),
        list,
        finalEl,
      ),
    };
    this.runs.set(id, run);
    if (ev.ns) this.byNs.set(ev.ns, run);
    return run;
  }

  runOf(ev) {
    const known = this.runs.get(ev.run);
    if (known) return known;
    // Events of a run whose run_start is missing (replay capped): draw it anyway.
    const run = this.newRun(ev.run, { depth: ev.depth || 0 });
    if (this.root === null && !ev.depth) {
      this.root = run;
      this.setStatus("running");
    }
    this.bodyEl.append(run.el);
    return run;
  }

  syntheticIteration(run) {
    this.onIteration({ event: "iteration", run: run.id, iteration: run.iters.size, response: "" });
    return run.lastIter;
  }

  newBlock(iter, code) {
    const block = {
      idx: iter.blocks.length,
      done: false,
      pendingChildren: [],
      statusEl: badge("running", "status-running"),
      metaEl: el("span", { class: "meta" }),
      outEl: el("div", { class: "block-output" }),
      callsEl: el("ol", { class: "calls" }),
    };
    block.codeEl = el("div", { class: "block-code" }, longText(code, { cls: "code" }));
    block.el = el(
      "div",
      { class: "block", dataset: { block: String(block.idx) } },
      el("div", { class: "block-head" }, `code block ${block.idx + 1}`, block.statusEl, block.metaEl),
      block.codeEl,
      block.callsEl,
      block.outEl,
    );
    iter.blocks.push(block);
    return block;
  }

  fillBlock(block, ev) {
    block.done = true;
    block.statusEl.textContent = ev.error ? "error" : "ran";
    block.statusEl.className = `badge ${ev.error ? "status-failed" : "status-done"}`;
    block.metaEl.textContent = fmtMs(ev.ms);
    if (ev.code !== undefined) block.codeEl.replaceChildren(longText(ev.code, { cls: "code" }));
    const out = [];
    if (ev.stdout) out.push(longText(ev.stdout, { cls: "stdout", label: "stdout" }));
    if (ev.stderr) out.push(longText(ev.stderr, { cls: "stderr", label: "stderr" }));
    if (ev.error) out.push(longText(errorText(ev.error), { cls: "error", label: "error" }));
    if (!out.length) out.push(el("div", { class: "muted" }, "(no output)"));
    const changed = Array.isArray(ev.changed) ? ev.changed : [];
    if (changed.length) {
      out.push(
        el(
          "details",
          { class: "changed" },
          el("summary", {}, `variables set: ${changed.map((c) => c.name).join(", ")}`),
          el(
            "table",
            {},
            changed.map((c) => el("tr", {}, el("td", {}, String(c.name ?? "")), el("td", { class: "muted" }, String(c.type ?? "")), el("td", {}, el("code", {}, String(c.repr ?? ""))))),
          ),
        ),
      );
    }
    block.outEl.replaceChildren(...out);
  }

  markNotRun(block) {
    block.done = true;
    block.statusEl.textContent = "not run";
    block.statusEl.className = "badge status-skipped";
  }

  /** The block of `run` that is executing now (sub-calls and child runs belong to it). */
  currentBlock(run) {
    const iter = run.lastIter || this.syntheticIteration(run);
    const open = iter.blocks.find((b) => !b.done);
    if (open) return open;
    const block = this.newBlock(iter, "(code not recorded)");
    iter.content.append(block.el);
    return block;
  }

  /** A sub-call under its block; calls of one batch stay in input order as they arrive. */
  newCall(block, { kind, model, prompt, running = false, batch, index }) {
    const statusEl = running ? badge("running", "status-running") : null;
    const metaEl = el("span", { class: "meta" });
    const answerEl = el("div", { class: "call-answer" });
    const nest = el("div", { class: "call-nest" });
    const inBatch = Number.isInteger(batch) && Number.isInteger(index);
    const li = el(
      "li",
      { class: `call kind-${kind}`, dataset: inBatch ? { batch: String(batch), index: String(index) } : undefined },
      el("div", { class: "call-head" }, badge(kind, `kind kind-${kind}`), model ? el("span", { class: "model" }, model) : null, statusEl, metaEl),
      longText(prompt ?? "", { cls: "prompt", lines: 4, chars: 400, label: "prompt" }),
      answerEl,
      nest,
    );
    const after = inBatch
      ? [...block.callsEl.children].find((o) => o.dataset.batch === String(batch) && Number(o.dataset.index) > index)
      : undefined;
    if (after) block.callsEl.insertBefore(li, after);
    else block.callsEl.append(li);
    return { el: li, statusEl, metaEl, answerEl, nest, prompt: String(prompt ?? ""), child: null };
  }

  takeChild(block, ev) {
    const pending = block.pendingChildren;
    if (!pending.length) return null;
    let i = ev.child_run ? pending.findIndex((c) => c.child && c.child.id === ev.child_run) : -1;
    if (i >= 0) return pending.splice(i, 1)[0];
    const want = stripPreview(ev.prompt);
    i = pending.findIndex((c) => c.child && c.child.done && stripPreview(c.prompt).startsWith(want));
    if (i < 0) i = pending.findIndex((c) => c.child && c.child.done);
    if (i < 0) i = 0;
    return pending.splice(i, 1)[0];
  }

  finishCall(call, ev, tok) {
    if (call.statusEl) call.statusEl.remove();
    const meta = [];
    if (tok.prompt || tok.completion) meta.push(`${fmtInt(tok.prompt)} → ${fmtInt(tok.completion)} tok`);
    if (ev.iterations !== undefined) meta.push(`${ev.iterations} iteration${ev.iterations === 1 ? "" : "s"}`);
    meta.push(fmtMs(ev.ms));
    call.metaEl.textContent = meta.join(" · ");
    call.answerEl.replaceChildren(longText(ev.answer ?? "", { cls: "answer", lines: 6, chars: 600, label: "answer" }));
  }

  // ---- totals -------------------------------------------------------------------------

  renderTotals() {
    const t = this.totals;
    const s = this.summary;
    const usage = (s && s.usage) || {};
    const prompt = usage.prompt_tokens ?? t.prompt;
    const completion = usage.completion_tokens ?? t.completion;
    const wall = s && s.elapsed_ms ? s.elapsed_ms : t.start !== null && t.last !== null ? (t.last - t.start) * 1000 : null;
    const items = [
      ["iterations", fmtInt(s && s.iterations !== undefined ? s.iterations : t.iterations)],
      ["sub-calls", fmtInt(s && s.sub_calls !== undefined ? s.sub_calls : t.subCalls)],
      ["model calls", fmtInt(t.modelCalls)],
      ["tokens", `${fmtInt(prompt + completion)} (${fmtInt(prompt)} in, ${fmtInt(completion)} out)`],
      ["wall time", fmtMs(wall)],
      // The service's meter when the run is over; the events' sum while it runs.
      ["cost", fmtUsd(s && "cost_usd" in s ? s.cost_usd : this.costs.total())],
    ];
    this.totalsEl.replaceChildren(
      ...items.map(([k, v]) => el("div", { class: "total", dataset: { total: k } }, el("dt", {}, k), el("dd", {}, v))),
    );
  }
}

// ---- files ------------------------------------------------------------------------------

function promptText(prompt) {
  if (typeof prompt === "string") return prompt;
  if (Array.isArray(prompt)) {
    const last = [...prompt].reverse().find((m) => m && m.role === "user") || prompt[prompt.length - 1];
    if (last && typeof last === "object") return typeof last.content === "string" ? last.content : JSON.stringify(last.content);
  }
  return prompt === undefined || prompt === null ? "" : JSON.stringify(prompt);
}

function callTokens(call) {
  if (call.prompt_tokens !== undefined || call.completion_tokens !== undefined) {
    return { prompt_tokens: call.prompt_tokens || 0, completion_tokens: call.completion_tokens || 0 };
  }
  const summaries = (call.usage_summary && call.usage_summary.model_usage_summaries) || {};
  let p = 0;
  let c = 0;
  for (const u of Object.values(summaries)) {
    p += Number(u.total_input_tokens || 0);
    c += Number(u.total_output_tokens || 0);
  }
  return { prompt_tokens: p, completion_tokens: c };
}

function timeOf(value) {
  if (typeof value === "number") return value;
  const parsed = Date.parse(value);
  return Number.isNaN(parsed) ? undefined : parsed / 1000;
}

/** Events for the official JSONL shape: one metadata line, then iteration lines. */
function officialToEvents(lines) {
  const meta = lines.find((l) => l.type === "metadata") || {};
  const iterations = lines.filter((l) => l.type === "iteration");
  const events = [];
  officialRun(meta, iterations, { id: "file", ns: "root", depth: 0 }, events);
  // Wall time: the span of the timestamps (metadata at the start, each iteration at its
  // end), or the iterations' own times when those are longer (a file written at once).
  const times = [meta, ...iterations].map((l) => timeOf(l.timestamp)).filter((t) => t !== undefined);
  const span = times.length > 1 ? (Math.max(...times) - Math.min(...times)) * 1000 : 0;
  const summed = iterations.reduce((ms, it) => ms + Number(it.iteration_time || 0) * 1000, 0);
  const finished = events.some((e) => e.event === "final" && e.run === "file");
  events.push({ event: "run_end", status: finished ? "done" : "partial", summary: { elapsed_ms: Math.max(span, summed) } });
  return events;
}

/**
 * One run of the official format, appended to `events`. A recursive call's record
 * (rlm_calls[i]) may carry the child's whole trajectory in `metadata`
 * ({run_metadata, iterations}): it becomes a child run, drawn under its code block.
 */
function officialRun(meta, iterations, where, events) {
  const { id: run, ns, depth } = where;
  // The library's metadata has no query; its first prompt's last user message carries it.
  const firstPrompt = iterations.length && iterations[0].prompt ? promptText(iterations[0].prompt) : "";
  events.push({
    event: "run_start", run, depth, ns, model: meta.root_model,
    query: meta.query ?? (firstPrompt || "(no query recorded)"), t: timeOf(meta.timestamp),
  });
  let final = null;
  let children = 0;
  iterations.forEach((it, i) => {
    const idx = Number.isInteger(it.iteration) ? it.iteration - 1 : i;
    events.push({
      event: "iteration", run, iteration: idx, response: it.response ?? "",
      ms: Number(it.iteration_time || 0) * 1000, usage: it.usage || {}, t: timeOf(it.timestamp),
    });
    (it.code_blocks || []).forEach((cb, b) => {
      const r = cb.result || {};
      for (const call of r.rlm_calls || []) {
        const nested = call.metadata && Array.isArray(call.metadata.iterations) ? call.metadata : null;
        if (nested) {
          children += 1;
          const child = { id: `${run}.${children}`, ns: `${ns}/${children}`, depth: depth + 1 };
          officialRun({ ...(nested.run_metadata || {}), query: promptText(call.prompt) }, nested.iterations, child, events);
        }
        events.push({
          event: "sub_call", run, kind: call.kind || (nested ? "rlm" : "llm"), depth: call.depth ?? depth + 1,
          model: call.root_model || call.model, prompt: promptText(call.prompt),
          answer: call.error ? `Error: ${call.error}` : call.response ?? "",
          ms: Number(call.execution_time || 0) * 1000, ...callTokens(call),
        });
      }
      const locals = r.locals && typeof r.locals === "object" ? r.locals : {};
      events.push({
        event: "code", run, iteration: idx, block: b, code: cb.code ?? "",
        stdout: r.stdout ?? "", stderr: r.stderr ?? "", error: null,
        changed: Object.entries(locals).map(([name, v]) => ({ name, type: "", repr: typeof v === "string" ? v : JSON.stringify(v) })),
        ms: Number(r.execution_time || 0) * 1000,
      });
      if (r.final_answer !== undefined && r.final_answer !== null) final = r.final_answer;
    });
    if (it.final_answer !== undefined && it.final_answer !== null) final = it.final_answer;
  });
  if (final !== null) {
    events.push({
      event: "final", run, depth, answer: typeof final === "string" ? final : JSON.stringify(final),
      how: "final", iterations: iterations.length,
    });
  }
}

/**
 * Parse an uploaded or pasted trajectory into events. Accepts the official RLM JSONL
 * (metadata + iteration lines), a JSONL of this service's events, or JSON holding an
 * `events` list (GET /v1/sessions/{id}/runs/{run}) or a bare list of events.
 */
export function parseTrajectoryFile(text) {
  const trimmed = String(text ?? "").trim();
  if (!trimmed) throw new Error("the file is empty");
  let records;
  if (trimmed.startsWith("[") || (trimmed.startsWith("{") && !trimmed.includes("\n"))) {
    try {
      const doc = JSON.parse(trimmed);
      records = Array.isArray(doc) ? doc : Array.isArray(doc.events) ? doc.events : [doc];
    } catch {
      records = null;
    }
  }
  if (!records) {
    records = [];
    trimmed.split(/\r?\n/).forEach((line, i) => {
      if (!line.trim()) return;
      try {
        records.push(JSON.parse(line));
      } catch (exc) {
        throw new Error(`line ${i + 1} is not JSON: ${exc.message}`);
      }
    });
  }
  records = records.filter((r) => r && typeof r === "object");
  if (records.some((r) => r.type === "metadata" || r.type === "iteration")) return officialToEvents(records);
  if (records.some((r) => typeof r.event === "string")) return records.filter((r) => typeof r.event === "string");
  throw new Error("not a trajectory: expected the RLM JSONL (metadata and iteration lines) or rlm-py events");
}
