// What both pages share: the API key (kept for this tab only), API calls with readable
// errors, and the key dialog.

const KEY = "mullama.api-key";
let config = null;
let keyWaiters = [];

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export async function uiConfig() {
  if (config === null) {
    const resp = await fetch("/ui/config.json");
    config = await resp.json();
  }
  return config;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The server's own message, from either API's error shape.
function serverMessage(body) {
  if (!body) return "";
  const e = body.error;
  if (typeof e === "string") return e;
  if (e && typeof e.message === "string") return e.message;
  return "";
}

export function describe(status, body, headers) {
  const msg = serverMessage(body) || `HTTP ${status}`;
  const retry = headers && headers.get("retry-after");
  const later = retry ? ` Try again in ${retry} s.` : "";
  if (status === 401) return `An API key is needed, or the one given was refused: ${msg}`;
  if (status === 403) return `Not allowed with this API key: ${msg}`;
  if (status === 404) return `Not found: ${msg}`;
  if (status === 429) return `Rate limit reached: ${msg}.${later}`;
  if (status === 503) return `The server is busy or not ready: ${msg}.${later}`;
  if (status === 507) return `Not enough room on the server: ${msg}`;
  if (status >= 500) return `Server error (${status}): ${msg}`;
  return msg;
}

// Throws ApiError with a readable message; a 401 forgets the key it was sent with and
// asks again (a refusal of a key the user has replaced since is not the new key's).
export async function checked(resp, sentKey) {
  if (resp.ok) return resp;
  let body = null;
  try {
    body = await resp.json();
  } catch {
    body = null;
  }
  if (resp.status === 401 && apiKey() === sentKey) {
    sessionStorage.removeItem(KEY);
    askForKey(describe(resp.status, body, resp.headers));
  }
  throw new ApiError(resp.status, describe(resp.status, body, resp.headers));
}

export async function api(path, { method = "GET", body, signal } = {}) {
  await haveKey();
  for (;;) {
    const headers = {};
    const key = apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
    // Refused with a key the user has replaced since: sent again with the new one.
    if (resp.status === 401 && apiKey() && apiKey() !== key) continue;
    return checked(resp, key);
  }
}

export async function apiJson(path, options) {
  return (await api(path, options)).json();
}

// Resolves once a key is there when the server needs one (asking for it if not).
async function haveKey() {
  const cfg = await uiConfig();
  if (!cfg.auth_required || apiKey()) return;
  await new Promise((resolve) => {
    keyWaiters.push(resolve);
    askForKey("");
  });
}

function askForKey(reason) {
  const dialog = document.getElementById("key-dialog");
  if (!dialog) return;
  document.getElementById("key-reason").textContent = reason;
  if (!dialog.open) dialog.showModal();
  document.getElementById("key-input").focus();
}

// The dialog that asks for a key: the same on every page, so it is made here.
function makeKeyDialog() {
  const dialog = el("dialog", { id: "key-dialog", "aria-labelledby": "key-title" },
    el("form", { id: "key-form" },
      el("h2", { id: "key-title", text: "API key" }),
      el("p", { id: "key-reason" }),
      el("label", { for: "key-input", text: "This server needs an API key. It is kept for this tab only." }),
      el("input", { id: "key-input", type: "password", autocomplete: "off", required: true }),
      el("button", { type: "submit", text: "Use this key" })));
  document.body.append(dialog);
  return dialog;
}

export function setupKeyDialog() {
  const dialog = makeKeyDialog();
  const form = document.getElementById("key-form");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const value = document.getElementById("key-input").value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY, value);
    dialog.close();
    const waiting = keyWaiters;
    keyWaiters = [];
    for (const resolve of waiting) resolve();
    window.dispatchEvent(new Event("mullama-key")); // pages reload what a 401 stopped
  });
  const forget = document.getElementById("forget-key");
  if (forget) {
    forget.addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      askForKey("");
    });
  }
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child);
  }
  return node;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function fmtSecs(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}
