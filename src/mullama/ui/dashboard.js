// The operations dashboard: polls /api/system/status every 2 s (not while the tab is
// hidden) and draws what the daemon is doing; load, unload and pin need an admin key.
import { apiJson, el, fmtBytes, fmtSecs, setupKeyDialog } from "/ui/common.js";

const POLL_MS = 2000;
const MODELS_EVERY = 5; // polls between refreshes of the model list (/v1/models)
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const KINDS = {
  400: "bad request", 401: "no or wrong API key", 403: "forbidden", 404: "not found",
  405: "method not allowed", 408: "request timeout", 413: "body too large",
  415: "not JSON", 429: "rate limited", 431: "headers too large", 499: "client went away",
  500: "server error", 502: "engine crashed", 503: "overloaded or unavailable",
  504: "timed out", 507: "no room (memory or disk)", stream: "cut mid-stream",
};

let available = [];
let polls = 0;
let busy = false; // an operator action is running

let errorFrom = null; // "poll" or "action": a poll clears only its own message

function showError(text, from = "poll") {
  errorFrom = text ? from : null;
  $("error").textContent = text;
  $("error").hidden = !text;
}

function pair(dl, term, value, id) {
  dl.append(el("dt", { text: term }), el("dd", { text: value, id }));
}

function pct(part, whole) {
  return whole ? `${((100 * part) / whole).toFixed(1)} %` : "–";
}

function overview(s) {
  const dl = $("overview");
  dl.replaceChildren();
  const st = s.stats;
  pair(dl, "Status", s.status, "daemon-status");
  pair(dl, "Version", s.version);
  pair(dl, "Uptime", fmtSecs(s.uptime_secs));
  pair(dl, "Requests", String(st.total_requests));
  pair(dl, "Active", String(st.active_requests), "active-requests");
  pair(dl, "Queued", String(st.queued_requests), "queued-requests");
  pair(dl, "Tokens generated", String(st.tokens_generated));
  const p = s.prompt_tokens;
  pair(dl, "Prompt tokens from KV cache", `${p.reused} of ${p.reused + p.computed} (${pct(p.reused, p.reused + p.computed)})`, "prefix-hits");
  const rc = s.response_cache;
  pair(dl, "Response cache hits", rc ? `${rc.hits} of ${rc.hits + rc.misses}` : "off");
  pair(dl, "Rate-limit rejections", String(s.errors["429"] || 0), "rate-limited");
  pair(dl, "Daemon memory", fmtBytes(s.memory.rss_bytes));
}

function chart(svg, values) {
  svg.replaceChildren();
  const n = values.length;
  const max = Math.max(1e-9, ...values);
  const step = n > 1 ? 300 / (n - 1) : 300;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(58 - (56 * v) / max).toFixed(1)}`);
  if (n === 1) points.push(`300,${points[0].split(",")[1]}`);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("class", "line");
  svg.append(line);
  const label = document.createElementNS(SVG, "title");
  label.textContent = `now ${values[n - 1] ?? 0}, peak ${max > 1e-9 ? max : 0}`;
  svg.append(label);
}

function charts(s) {
  const h = s.history;
  const tps = h.tokens_per_second;
  const rps = h.requests_per_second;
  chart($("tps-chart"), tps.length ? tps : [0]);
  chart($("rps-chart"), rps.length ? rps : [0]);
  const last = (xs) => (xs.length ? xs[xs.length - 1].toFixed(1) : "0");
  const span = tps.length * h.step_secs;
  const shown = span < 120 ? `${Math.round(span)} s` : `${Math.round(span / 60)} min`;
  $("tps-caption").textContent = `Tokens/s: ${last(tps)} now (last ${shown})`;
  $("rps-caption").textContent = `Requests/s: ${last(rps)} now`;
}

function latency(s) {
  const dl = $("latency");
  dl.replaceChildren();
  const ms = (v) => (v === null || v === undefined ? "–" : `${Math.round(v)} ms`);
  const l = s.latency;
  pair(dl, "Time to first token p50 / p95", `${ms(l.ttft_p50_ms)} / ${ms(l.ttft_p95_ms)}`);
  pair(dl, "Request latency p50 / p95", `${ms(l.latency_p50_ms)} / ${ms(l.latency_p95_ms)}`);
  const body = $("errors").tBodies[0];
  body.replaceChildren();
  const kinds = Object.entries(s.errors).sort((a, b) => b[1] - a[1]);
  if (!kinds.length) body.append(el("tr", {}, el("td", { colspan: 2, text: "none" })));
  for (const [kind, count] of kinds) {
    body.append(el("tr", {}, el("td", { text: `${KINDS[kind] || "error"} (${kind})` }), el("td", { text: String(count) })));
  }
}

async function act(name, action) {
  busy = true;
  if (errorFrom === "action") showError("");
  try {
    await apiJson(`/api/models/${encodeURIComponent(name)}/${action}`, { method: "POST" });
  } catch (err) {
    showError(`${action} ${name}: ${err.message}`, "action");
  } finally {
    busy = false;
    poll();
  }
}

function actions(name, model) {
  const cell = el("td", { class: "actions" });
  const button = (action, label) => el("button", {
    type: "button", class: "quiet", "data-action": action, text: label,
    "aria-label": `${label} ${name}`, disabled: busy || undefined,
    onclick: () => act(name, action),
  });
  const loaded = model && (model.state === "loaded" || model.state === "loading");
  cell.append(loaded ? button("unload", "Unload") : button("load", "Load"));
  cell.append(model && model.pinned ? button("unpin", "Unpin") : button("pin", "Pin"));
  return cell;
}

function models(s) {
  const budget = s.memory.budget_bytes;
  const used = s.memory.estimated_bytes;
  const meter = el("meter", { id: "memory-meter", min: 0, max: budget, value: used, high: budget * 0.9 });
  $("memory").replaceChildren(
    el("label", { for: "memory-meter", text: `Memory estimate of loaded models: ${fmtBytes(used)} of the ${fmtBytes(budget)} budget ` }),
    meter,
  );
  const body = $("models").tBodies[0];
  body.replaceChildren();
  const byName = new Map(s.models.map((m) => [m.name, m]));
  const names = [...new Set([...s.models.map((m) => m.name), ...available])];
  for (const name of names) {
    const m = byName.get(name);
    const state = m ? m.state : "on disk";
    const left = !m || m.state !== "loaded" ? "–" : m.keep_alive_secs === null ? "forever" : fmtSecs(m.expires_in_secs ?? m.keep_alive_secs);
    const stateCell = el("td", { text: m && m.circuit !== "closed" ? `${state} (circuit ${m.circuit})` : state, "data-state": state });
    if (m && m.error) stateCell.title = m.error;
    const lora = m && m.adapters
      ? el("div", { class: "figures", text: "LoRA: " + m.adapters.map((a) => `${a.name} ×${a.scale}`).join(", ") })
      : null;
    body.append(el("tr", { "data-model": name },
      el("th", { scope: "row", text: name }, lora), stateCell,
      el("td", { text: m && m.pinned ? "yes" : "no" }), el("td", { text: left }),
      el("td", { text: m && m.estimate_bytes ? fmtBytes(m.estimate_bytes) : "–" }),
      actions(name, m)));
  }
}

function engines(s) {
  const box = $("engines");
  box.replaceChildren();
  const loaded = s.models_loaded.filter((m) => m.loaded);
  if (!loaded.length) box.append(el("p", { text: "No model is loaded." }));
  for (const m of loaded) {
    const dl = el("dl", { class: "figures-grid" });
    pair(dl, "Active sequences", String(m.active_sequences));
    pair(dl, "Queued", String(m.queued_sequences));
    pair(dl, "Tokens/s", m.tokens_per_second.toFixed(1));
    pair(dl, "KV cells used", `${m.kv_cache_used} of ${m.kv_cache_size}`);
    pair(dl, "Threads", String(m.threads_now ?? m.threads));
    pair(dl, "Worker memory", fmtBytes(m.memory_bytes));
    const ram = m.kv_reuse && m.kv_reuse.ram_cache;
    if (ram) pair(dl, "Host-RAM KV cache", `${ram.entries} states, ${fmtBytes(ram.bytes)}; ${ram.hits} hits, ${ram.misses} misses`);
    const rows = m.slots.map((slot) => el("tr", { "data-slot": slot.slot, "data-state": slot.state },
      el("td", { text: String(slot.slot) }), el("td", { text: slot.state }),
      el("td", { text: String(slot.tokens) }),
      el("td", { text: slot.state === "idle" ? "–" : String(slot.generated) })));
    const table = el("table", { class: "table slots", "data-model": m.name },
      el("caption", { text: `Slots of ${m.name}` }),
      el("thead", {}, el("tr", {}, ...["Slot", "Doing", "Tokens in KV", "Generated"].map((t) => el("th", { scope: "col", text: t })))),
      el("tbody", {}, ...rows));
    box.append(el("section", { class: "engine", "data-model": m.name }, el("h3", { text: m.name }), dl, el("div", { class: "table-wrap" }, table)));
  }
}

async function poll() {
  try {
    if (polls % MODELS_EVERY === 0) {
      const listed = await apiJson("/v1/models");
      available = (listed.data || []).map((m) => m.id);
    }
    polls += 1;
    const s = await apiJson("/api/system/status");
    overview(s);
    charts(s);
    latency(s);
    models(s);
    engines(s);
    if (errorFrom === "poll") showError("");
    document.body.dataset.updated = String(Date.now());
  } catch (err) {
    showError(err.message);
  }
}

async function loop() {
  if (!document.hidden) await poll();
  setTimeout(loop, POLL_MS);
}

setupKeyDialog();
loop();
