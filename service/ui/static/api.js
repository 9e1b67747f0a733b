// Talking to the service: the API key, JSON requests and Server-Sent Events.
//
// The key lives in sessionStorage (gone when the tab closes) and travels only in the
// Authorization header. EventSource cannot send headers, and a key in a URL ends up in
// logs and history, so events are read with fetch() and a stream reader instead.

const KEY_NAME = "rlm-viewer.api-key";

export class AuthError extends Error {}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY_NAME) || "";
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY_NAME, key);
  else sessionStorage.removeItem(KEY_NAME);
}

function headers(extra = {}) {
  const out = { ...extra };
  const key = getKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function failure(res) {
  let message = `${res.status} ${res.statusText}`;
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) message = String(body.error.message);
  } catch {
    // not JSON: keep the status line
  }
  if (res.status === 401) return new AuthError(message);
  return new ApiError(res.status, message);
}

/** GET a JSON document from the service; AuthError on 401, ApiError otherwise. */
export async function getJSON(path, { signal } = {}) {
  const res = await fetch(path, { headers: headers({ Accept: "application/json" }), signal, cache: "no-store" });
  if (!res.ok) throw await failure(res);
  return res.json();
}

/**
 * Read a text/event-stream and call onEvent(data) for each `data:` event (JSON-decoded).
 * Resolves when the server ends the stream; rejects on HTTP errors or when `signal` aborts.
 */
export async function streamEvents(path, onEvent, { signal } = {}) {
  const res = await fetch(path, {
    headers: headers({ Accept: "text/event-stream" }),
    signal,
    cache: "no-store",
  });
  if (!res.ok) throw await failure(res);
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  const boundary = /\r\n\r\n|\n\n|\r\r/;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let match;
      while ((match = boundary.exec(buffer)) !== null) {
        const block = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        const data = dataOf(block);
        if (data === null) continue; // a comment (keep-alive) or an event without data
        let parsed;
        try {
          parsed = JSON.parse(data);
        } catch {
          continue; // not ours; the service only sends JSON
        }
        onEvent(parsed);
      }
    }
  } finally {
    reader.releaseLock();
  }
}

function dataOf(block) {
  const parts = [];
  for (const line of block.split(/\r\n|\n|\r/)) {
    if (line.startsWith("data:")) parts.push(line.slice(line.startsWith("data: ") ? 6 : 5));
  }
  return parts.length ? parts.join("\n") : null;
}
