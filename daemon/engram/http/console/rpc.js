// Calls to this daemon's gateway with the token the user entered (kept in sessionStorage only).
const TOKEN_KEY = "engram.token";
let nextId = 1;

export class RpcError extends Error {
  constructor(error) {
    super(error.message);
    this.code = error.code;
    this.data = error.data || {};
  }
}

export function token() { return sessionStorage.getItem(TOKEN_KEY); }
export function setToken(value) { sessionStorage.setItem(TOKEN_KEY, value); }
export function forgetToken() { sessionStorage.removeItem(TOKEN_KEY); }

export function authHeaders() { return { Authorization: `Bearer ${token()}` }; }

// One JSON-RPC call over POST /rpc; rejects with RpcError (its code and data.reason) on an error.
export async function call(method, params = {}) {
  const response = await fetch("/rpc", {
    method: "POST",
    headers: { "Content-Type": "application/json", ...authHeaders() },
    body: JSON.stringify({ jsonrpc: "2.0", id: nextId++, method, params }),
    credentials: "omit",
    cache: "no-store",
  });
  const body = await response.json();
  if (body.error) throw new RpcError(body.error);
  return body.result;
}

// Server-sent events of GET /v1/events, read with fetch() (EventSource cannot send the token).
// onEvent(kind, data) for each event; resolves when the stream ends, rejects on a refusal.
export async function follow(topics, onEvent, signal) {
  const query = new URLSearchParams({ topics: topics.join(",") });
  const response = await fetch(`/v1/events?${query}`, { headers: authHeaders(), signal, credentials: "omit", cache: "no-store" });
  if (!response.ok) {
    const body = await response.json();
    throw new RpcError(body.error);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length) onEvent(kind, JSON.parse(data.join("\n")));
    }
  }
}
