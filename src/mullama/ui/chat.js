// The chat playground: streams replies from /v1/chat/completions, keeps conversations
// in the browser's localStorage, and shows each reply's figures.
import { ApiError, api, apiJson, el, setupKeyDialog } from "/ui/common.js";
import { render } from "/ui/markdown.js";

const STORE = "mullama.conversations";
const $ = (id) => document.getElementById(id);

let conversations = [];
let currentId = null;
let controller = null; // the running request's AbortController

function load() {
  try {
    conversations = JSON.parse(localStorage.getItem(STORE) || "[]");
  } catch {
    conversations = [];
  }
  if (!Array.isArray(conversations)) conversations = [];
}

function save() {
  localStorage.setItem(STORE, JSON.stringify(conversations));
}

function current() {
  let conv = conversations.find((c) => c.id === currentId);
  if (!conv) conv = newConversation();
  return conv;
}

function newConversation() {
  const conv = { id: `c${Date.now()}${Math.floor(Math.random() * 1000)}`, title: "New chat", messages: [], updated: Date.now() };
  conversations.unshift(conv);
  currentId = conv.id;
  save();
  return conv;
}

// ---- rendering ------------------------------------------------------------------------

function renderList() {
  const list = $("conversations");
  list.replaceChildren();
  for (const conv of conversations) {
    const select = el("button", {
      type: "button",
      class: "conv-title",
      "aria-current": conv.id === currentId ? "true" : null,
      text: conv.title || "New chat",
      onclick: () => {
        if (controller) return;
        currentId = conv.id;
        renderAll();
      },
    });
    const remove = el("button", {
      type: "button",
      class: "quiet conv-delete",
      "aria-label": `Delete conversation ${conv.title}`,
      text: "×",
      onclick: () => {
        if (controller && conv.id === currentId) return;
        conversations = conversations.filter((c) => c !== conv);
        if (currentId === conv.id) currentId = conversations[0]?.id ?? null;
        save();
        renderAll();
      },
    });
    list.append(el("li", {}, select, remove));
  }
}

function figures(stats) {
  const parts = [];
  if (stats.tokens !== undefined) parts.push(`${stats.tokens} tokens`);
  if (stats.ttft_ms !== undefined) parts.push(`TTFT ${Math.round(stats.ttft_ms)} ms`);
  if (stats.tps !== undefined) parts.push(`${stats.tps.toFixed(1)} tok/s`);
  if (stats.cached) parts.push(`${stats.cached} prompt tokens cached`);
  if (stats.finish) parts.push(`finish: ${stats.finish}`);
  return parts.join(" · ");
}

function messageNode(msg, index, conv) {
  const body = el("div", { class: "content" });
  const node = el("article", { class: `message ${msg.role}`, "data-index": index },
    el("div", { class: "role", text: msg.role === "user" ? "You" : "Assistant" }), body);
  fill(node, msg, index === conv.messages.length - 1);
  return node;
}

// (Re)draws one message's content, tool calls, figures and buttons.
function fill(node, msg, isLast) {
  const body = node.querySelector(".content");
  if (msg.role === "assistant") render(msg.content || "", body);
  else body.textContent = msg.content;
  node.querySelector(".tool-calls")?.remove();
  node.querySelector(".figures")?.remove();
  node.querySelector(".actions")?.remove();
  if (msg.tool_calls && msg.tool_calls.length) {
    const calls = el("div", { class: "tool-calls" });
    for (const call of msg.tool_calls) {
      calls.append(el("pre", {}, el("code", { text: `${call.name}(${call.arguments})` })));
    }
    node.append(calls);
  }
  if (msg.role !== "assistant") return;
  const notes = [];
  if (msg.stats) notes.push(figures(msg.stats));
  if (msg.stopped) notes.push("stopped");
  if (msg.error) notes.push(`error: ${msg.error}`);
  if (notes.length) node.append(el("div", { class: "figures", text: notes.join(" · ") }));
  if (msg.pending) return;
  const actions = el("div", { class: "actions" },
    el("button", {
      type: "button", class: "quiet copy", text: "Copy",
      onclick: (ev) => copy(msg.content, ev.target),
    }));
  if (isLast) {
    actions.append(el("button", {
      type: "button", class: "quiet regenerate", text: "Regenerate",
      onclick: regenerate,
    }));
  }
  node.append(actions);
}

function renderMessages() {
  const conv = current();
  const box = $("messages");
  box.replaceChildren(...conv.messages.map((m, i) => messageNode(m, i, conv)));
  box.scrollTop = box.scrollHeight;
}

function renderAll() {
  renderList();
  renderMessages();
  const conv = current();
  if (conv.model) $("model").value = conv.model;
  $("system").value = conv.system || "";
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    // No clipboard permission (an insecure origin): select the text instead.
    const range = document.createRange();
    range.selectNodeContents(button.closest(".message").querySelector(".content"));
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    button.textContent = "Selected: press Ctrl+C";
  }
}

let errorFrom = null; // what put the message up: "models" or "reply"

function showError(text, from = "reply") {
  errorFrom = text ? from : null;
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

// ---- models -----------------------------------------------------------------------------

async function loadModels() {
  const select = $("model");
  try {
    const [listed, running] = await Promise.all([apiJson("/v1/models"), apiJson("/api/ps")]);
    const loaded = new Set((running.models || []).map((m) => m.name));
    const keep = select.value || current().model;
    select.replaceChildren();
    for (const m of listed.data || []) {
      select.append(el("option", { value: m.id, text: loaded.has(m.id) ? `${m.id} (loaded)` : m.id }));
    }
    if (keep && [...select.options].some((o) => o.value === keep)) select.value = keep;
    if (errorFrom === "models") showError("");
  } catch (err) {
    showError(err.message, "models");
  }
}

// ---- generation ---------------------------------------------------------------------------

function number(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

function parseJson(id, what) {
  const text = $(id).value.trim();
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new ApiError(0, `${what} is not valid JSON: ${err.message}`);
  }
}

function requestBody(conv) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({ role: "system", content: system });
  for (const m of conv.messages) {
    if (m.pending) continue;
    if (m.role === "assistant" && m.tool_calls?.length) {
      messages.push({
        role: "assistant",
        content: m.content || null,
        tool_calls: m.tool_calls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } })),
      });
      for (const c of m.tool_calls) messages.push({ role: "tool", tool_call_id: c.id, content: "(no result: the playground does not run tools)" });
      continue;
    }
    messages.push({ role: m.role, content: m.content });
  }
  const body = {
    model: $("model").value,
    messages,
    stream: true,
    stream_options: { include_usage: true },
    temperature: number("temperature"),
    top_p: number("top-p"),
    max_tokens: number("max-tokens"),
    seed: number("seed"),
  };
  const schema = parseJson("schema", "The reply schema");
  if (schema !== undefined) body.response_format = { type: "json_schema", json_schema: { name: "reply", schema } };
  const tools = parseJson("tools", "Tools");
  if (tools !== undefined) {
    body.tools = tools;
    body.tool_choice = $("tool-choice").value;
  }
  return body;
}

// Reads an SSE stream, calling onEvent with each `data:` JSON object until [DONE].
async function readEvents(resp, onEvent) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  document.body.classList.toggle("busy", busy);
}

async function generate() {
  const conv = current();
  conv.model = $("model").value;
  conv.system = $("system").value;
  let body;
  try {
    body = requestBody(conv);
  } catch (err) {
    showError(err.message);
    return;
  }
  showError("");
  const msg = { role: "assistant", content: "", pending: true };
  conv.messages.push(msg);
  renderMessages();
  const node = $("messages").lastElementChild;
  controller = new AbortController();
  setBusy(true);
  const started = performance.now();
  let first = null;
  let tokens;
  let cached;
  let finish;
  const calls = [];
  let drawn = false;
  const redraw = () => {
    if (drawn) return;
    drawn = true;
    requestAnimationFrame(() => {
      drawn = false;
      fill(node, msg, true);
      $("messages").scrollTop = $("messages").scrollHeight;
    });
  };
  try {
    const resp = await api("/v1/chat/completions", { method: "POST", body, signal: controller.signal });
    await readEvents(resp, (chunk) => {
      if (chunk.error) throw new ApiError(500, chunk.error.message || "the stream failed");
      if (chunk.usage) {
        tokens = chunk.usage.completion_tokens;
        cached = chunk.usage.prompt_tokens_details?.cached_tokens;
      }
      const choice = chunk.choices && chunk.choices[0];
      if (!choice) return;
      if (choice.finish_reason) finish = choice.finish_reason;
      const delta = choice.delta || {};
      if (delta.content) {
        if (first === null) first = performance.now();
        msg.content += delta.content;
        redraw();
      }
      for (const tc of delta.tool_calls || []) {
        if (first === null) first = performance.now();
        const call = (calls[tc.index] ||= { id: "", name: "", arguments: "" });
        if (tc.id) call.id = tc.id;
        if (tc.function?.name) call.name += tc.function.name;
        if (tc.function?.arguments) call.arguments += tc.function.arguments;
        msg.tool_calls = calls.filter(Boolean);
        redraw();
      }
    });
  } catch (err) {
    if (err.name === "AbortError") msg.stopped = true;
    else msg.error = err.message;
  } finally {
    const ended = performance.now();
    msg.pending = false;
    msg.stats = { finish };
    if (tokens !== undefined) msg.stats.tokens = tokens;
    if (cached) msg.stats.cached = cached;
    if (first !== null) {
      msg.stats.ttft_ms = first - started;
      const n = tokens ?? 0;
      if (n > 1 && ended > first) msg.stats.tps = (n - 1) / ((ended - first) / 1000);
    }
    if (!msg.content && !msg.tool_calls && msg.error) {
      showError(msg.error);
    }
    controller.abort(); // closes the connection whatever ended the stream
    controller = null;
    setBusy(false);
    conv.updated = Date.now();
    save();
    fill(node, msg, true);
    renderList();
    loadModels();
  }
}

async function send() {
  const text = $("prompt").value.trim();
  if (!text || controller) return;
  const conv = current();
  if (!conv.messages.length) conv.title = text.slice(0, 40);
  conv.messages.push({ role: "user", content: text });
  $("prompt").value = "";
  renderList();
  await generate();
}

function stop() {
  if (controller) controller.abort();
}

async function regenerate() {
  const conv = current();
  if (controller) return;
  while (conv.messages.length && conv.messages[conv.messages.length - 1].role === "assistant") conv.messages.pop();
  if (!conv.messages.length) return;
  await generate();
}

// ---- wiring ---------------------------------------------------------------------------------

function init() {
  setupKeyDialog();
  load();
  currentId = conversations[0]?.id ?? null;
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      send();
    }
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && controller) {
      ev.preventDefault();
      stop();
    }
  });
  $("stop").addEventListener("click", stop);
  $("new-chat").addEventListener("click", () => {
    if (controller) return;
    newConversation();
    renderAll();
    $("prompt").focus();
  });
  $("model").addEventListener("change", () => {
    current().model = $("model").value;
    save();
  });
  window.addEventListener("mullama-key", loadModels);
  renderAll();
  loadModels();
  $("prompt").focus();
}

init();
