// DOM helpers. Every piece of data enters the page as a text node (textContent or
// createTextNode): model output, code, prompts and ids are hostile text, never markup.

/** el("div", {class: "x", onclick: fn}, child, "text", ...) with text children as text nodes. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, ...children);
  return node;
}

/** Append children: nodes as they are, everything else as text. */
export function append(node, ...children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

const COLLAPSE_LINES = 12;
const COLLAPSE_CHARS = 1200;

/**
 * A block of preformatted text, collapsed past `lines` lines or `chars` characters, with a
 * "show more" / "show less" toggle. `cls` styles the block (response, code, stdout...).
 */
export function longText(text, { cls = "", lines = COLLAPSE_LINES, chars = COLLAPSE_CHARS, label } = {}) {
  const full = String(text ?? "");
  const wrap = el("div", { class: `long ${cls}`.trim() });
  if (label) wrap.append(el("div", { class: "long-label" }, label));
  const pre = el("pre", { class: "long-text" });
  wrap.append(pre);
  const allLines = full.split("\n");
  let short = full;
  if (allLines.length > lines) short = allLines.slice(0, lines).join("\n");
  if (short.length > chars) short = short.slice(0, chars);
  if (short.length === full.length) {
    pre.textContent = full;
    return wrap;
  }
  const hiddenLines = allLines.length - short.split("\n").length;
  const more = hiddenLines > 0
    ? `show more (${hiddenLines} more line${hiddenLines === 1 ? "" : "s"})`
    : `show more (${full.length - short.length} more characters)`;
  const button = el("button", { type: "button", class: "show-more" }, more);
  let expanded = false;
  const render = () => {
    pre.textContent = expanded ? full : short + "\n…";
    button.textContent = expanded ? "show less" : more;
    wrap.classList.toggle("expanded", expanded);
  };
  button.addEventListener("click", () => {
    expanded = !expanded;
    render();
  });
  render();
  wrap.append(button);
  return wrap;
}

export function fmtMs(ms) {
  if (ms === undefined || ms === null || Number.isNaN(Number(ms))) return "–";
  const v = Number(ms);
  if (v < 1000) return `${Math.round(v)} ms`;
  if (v < 60_000) return `${(v / 1000).toFixed(v < 10_000 ? 2 : 1)} s`;
  const m = Math.floor(v / 60_000);
  return `${m} min ${Math.round((v - m * 60_000) / 1000)} s`;
}

export function fmtInt(n) {
  return Number(n || 0).toLocaleString("en-US");
}

export function fmtTime(epochSeconds) {
  if (!epochSeconds) return "–";
  return new Date(epochSeconds * 1000).toLocaleString();
}

/** A small label: badge("done", "status-done"). */
export function badge(text, cls = "") {
  return el("span", { class: `badge ${cls}`.trim() }, text);
}
