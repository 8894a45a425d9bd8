// Talking to the server: the same endpoints and auth as any client. The API key and the admin
// token the user types are kept in sessionStorage (this tab only, gone when it closes).

const KEY = "mis.api_key";
const ADMIN = "mis.admin_token";

export const auth = {
  get key() { return sessionStorage.getItem(KEY) || ""; },
  set key(value) { value ? sessionStorage.setItem(KEY, value) : sessionStorage.removeItem(KEY); },
  get admin() { return sessionStorage.getItem(ADMIN) || ""; },
  set admin(value) { value ? sessionStorage.setItem(ADMIN, value) : sessionStorage.removeItem(ADMIN); },
};

const listeners = { unauthorized: [] };
export function onUnauthorized(callback) { listeners.unauthorized.push(callback); }

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// fetch with our auth; a non-2xx answer becomes an ApiError carrying the server's message.
export async function call(path, { method = "GET", json, body, admin = false, signal } = {}) {
  const headers = {};
  const token = admin ? auth.admin : auth.key;
  if (token) headers.Authorization = `Bearer ${token}`;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers, body, signal });
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  let code;
  try {
    const error = (await response.json()).error || {};
    message = `${response.status}: ${error.message || message}`;
    code = error.code;
  } catch { /* not JSON: keep the status line */ }
  if (response.status === 401 && !admin) listeners.unauthorized.forEach((f) => f());
  throw new ApiError(response.status, message, code);
}

export async function getJSON(path, options) {
  return (await call(path, options)).json();
}

// The data objects of a server-sent event stream, in order; an `error` object ends it with an
// ApiError (a job that failed or was cancelled says so in the stream).
export async function* events(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const event = JSON.parse(data);
      if (event.error) throw new ApiError(0, event.error.message || "the job failed", event.error.code);
      yield event;
    }
  }
}
