// The operator console: one page over switchboard's own API. It reads /api/events (an SSE
// stream, read with fetch so the key can travel in a header; EventSource cannot send one) and
// acts through /api/unload, /api/generate (an empty prompt loads), /api/pull and, for the
// playground, /v1/chat/completions. The key, when the server wants one, lives in this page's
// memory only. Charts are drawn with uPlot (gateway/ui/vendor, fetched at set-up).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  key: null, logsOf: null, stream: null, retry: null, runners: new Map(), catalog: [],
  chat: [], chatAbort: null,
};

function headers(extra = {}) {
  const h = { "content-type": "application/json", ...extra };
  if (state.key) h.authorization = "Bearer " + state.key;
  return h;
}

function setStatus(kind, text) {
  $("status").dataset.status = kind;
  $("status").textContent = text;
}

function needKey() {
  $("key-form").hidden = false;
  setStatus("error", "API key needed");
  $("key").focus();
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    needKey();
    throw new Error("unauthorised");
  }
  return response;
}

// A streamed body as the pieces ``separator`` ends: "\n\n" for SSE events (CRLF line ends
// made LF first, as SSE allows either), "\n" for NDJSON lines.
async function* pieces(response, separator) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    if (separator === "\n\n") buffer = buffer.replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf(separator)) >= 0) {
      yield buffer.slice(0, cut);
      buffer = buffer.slice(cut + separator.length);
    }
  }
}

// -- formatting ------------------------------------------------------------------------------

function bytes(n) {
  if (!n) return "-";
  if (n >= 1 << 30) return (n / (1 << 30)).toFixed(1) + " GiB";
  return Math.round(n / (1 << 20)) + " MiB";
}

function cell(text, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  td.textContent = text;
  return td;
}

function bar(estimate, actual, scale) {
  const wrap = document.createElement("div");
  wrap.className = "bar";
  const est = document.createElement("span");
  est.className = "estimate";
  est.style.width = Math.min(100, (100 * estimate) / scale) + "%";
  const act = document.createElement("span");
  act.className = "actual";
  act.style.width = Math.min(100, (100 * (actual || 0)) / scale) + "%";
  wrap.append(est, act);
  return wrap;
}

// -- runners ---------------------------------------------------------------------------------

function renderRunners() {
  const body = $("runners").querySelector("tbody");
  body.replaceChildren();
  let scale = 1;
  for (const r of state.runners.values()) {
    scale = Math.max(scale, r.estimated_bytes || 0, r.actual_bytes || 0);
  }
  for (const [key, r] of state.runners) {
    const tr = document.createElement("tr");
    tr.dataset.runner = key;
    tr.dataset.state = r.state;
    const name = cell(key);
    const history = document.createElement("span");
    history.className = "history";
    history.textContent = r.history.join(" → ");
    name.append(history);
    const memory = document.createElement("td");
    memory.className = "bars";
    memory.append(bar(r.estimated_bytes || 0, r.actual_bytes, scale * 1.1));
    const figures = document.createElement("div");
    figures.className = "figures";
    figures.textContent = "estimated " + bytes(r.estimated_bytes) + " · measured " +
      bytes(r.actual_bytes) + (r.vram_bytes ? " · GPU " + bytes(r.vram_bytes) : "");
    memory.append(figures);
    const actions = document.createElement("td");
    const unload = document.createElement("button");
    unload.textContent = "unload";
    unload.className = "unload";
    unload.onclick = () => api("POST", "/api/unload", { model: r.model }).catch(() => {});
    const logs = document.createElement("button");
    logs.textContent = "logs";
    logs.className = "logs";
    logs.onclick = () => watchLogs(key);
    actions.append(unload, logs);
    tr.append(name, cell(r.state, "state"), cell(r.pid ?? "-"), cell(r.variant || "-"),
      cell(r.load_seconds ? r.load_seconds.toFixed(2) + " s" : "-"), cell(r.in_flight ?? 0),
      memory, actions);
    body.append(tr);
  }
  $("no-runners").hidden = state.runners.size > 0;
}

function updateRunner(info) {
  const key = info.runner;
  const known = state.runners.get(key) || { history: [] };
  const merged = { ...known, ...info };
  if (known.history[known.history.length - 1] !== info.state) {
    merged.history = [...known.history, info.state].slice(-6);
  }
  state.runners.set(key, merged);
  renderRunners();
  renderModels();
  if (key === state.logsOf && known.state !== info.state) followLogs(info, known.state);
  if (info.state === "stopped" || info.state === "failed") {
    // Shown for a moment, then gone: the loaded set no longer has it.
    setTimeout(() => {
      if (state.runners.get(key)?.state === info.state) {
        state.runners.delete(key);
        renderRunners();
        renderModels();
      }
    }, 1500);
  }
}

// -- other panels ----------------------------------------------------------------------------

function renderMemory(sample) {
  const box = $("memory");
  box.replaceChildren();
  const devices = [{ name: "RAM", total: sample.ram.total, used: sample.ram.total - sample.ram.available }];
  for (const gpu of sample.gpus || []) {
    devices.push({ name: "GPU " + gpu.index + " " + gpu.name, total: gpu.total, used: gpu.total - gpu.free });
  }
  for (const d of devices) {
    const line = document.createElement("div");
    line.className = "figures";
    line.textContent = d.name + ": " + bytes(d.used) + " used of " + bytes(d.total);
    box.append(line, bar(d.used, d.used, d.total));
  }
  for (const r of sample.runners || []) {
    const known = state.runners.get(r.runner);
    if (known) Object.assign(known, r);
  }
  renderRunners();
  renderModels();
  charts.memory(sample);
}

function addRequest(r, at) {
  charts.request(r, at);
  const body = $("requests").querySelector("tbody");
  const tr = document.createElement("tr");
  tr.dataset.status = r.status;
  const time = new Date(at * 1000).toLocaleTimeString();
  tr.append(cell(time), cell(r.method + " " + r.path), cell(r.model || "-"), cell(r.status),
    cell(r.ms.toFixed(1)), cell(r.completion_tokens ?? "-"),
    cell(r.tokens_per_second ? r.tokens_per_second.toFixed(1) : "-"));
  body.prepend(tr);
  while (body.children.length > 50) body.lastChild.remove();
}

function addLog(line) {
  const pre = $("logs");
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.append(line + "\n");
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

function watchLogs(key) {
  state.logsOf = key;
  $("logs-of").textContent = key;
  $("logs").textContent = "";
  connect();
}

// The panel stays on its runner through an unload: the lines stay, a marker says what became
// of it, and the next runner of the same key (its next load) carries on below.
function followLogs(info, before) {
  const marks = {
    stopping: "runner stopping" + (info.reason ? " (" + info.reason + ")" : ""),
    stopped: "runner stopped: its lines stay here, and its next load follows",
    failed: "runner failed" + (info.error ? ": " + info.error : ""),
    starting: before ? "loading again" : null,
    ready: before === "starting" && $("logs").textContent ? "ready" : null,
  };
  const mark = marks[info.state];
  if (mark) addLog("── " + mark + " ──");
  const gone = info.state === "stopped" || info.state === "failed";
  $("logs-of").textContent = state.logsOf + (gone ? " (" + info.state + ")" : "");
}

function showPull(event) {
  $("pull-progress").hidden = false;
  if (event.total) {
    const percent = Math.floor((100 * (event.completed || 0)) / event.total);
    $("pull-bar").value = percent;
    $("pull-percent").textContent = percent + "%";
  }
  if (event.status === "success") {
    $("pull-bar").value = 100;
    $("pull-percent").textContent = "100%";
  }
  $("pull-status").textContent = event.error ? "error: " + event.error : event.status || "";
}

function showModels(names) {
  for (const select of [$("load-model"), $("chat-model")]) {
    const chosen = select.value;
    select.replaceChildren(...names.map((m) => new Option(m, m)));
    if (chosen && names.includes(chosen)) select.value = chosen;
  }
}

// -- models ----------------------------------------------------------------------------------

function relative(seconds) {
  const s = Math.round(seconds);
  if (s < 60) return "in " + Math.max(s, 0) + " s";
  const m = Math.round(s / 60);
  if (m < 120) return "in " + m + (m === 1 ? " minute" : " minutes");
  return "in " + Math.round(m / 60) + " hours";
}

function expiry(r) {
  if (!r) return "-";
  if (r.state !== "ready") return "-";
  if (r.in_flight > 0) return "busy";
  if (r.keep_alive !== undefined && r.keep_alive < 0) return "never";
  if (r.expires_at) return relative(r.expires_at - Date.now() / 1000);
  return "-";
}

function button(text, cls, onclick) {
  const b = document.createElement("button");
  b.textContent = text;
  b.className = cls;
  b.type = "button";
  b.onclick = onclick;
  return b;
}

function renderModels() {
  const rows = state.catalog.map((m) => {
    // A model's runners: its chat runner is keyed by its name, others by name+mode.
    const runners = [...state.runners.values()].filter((r) => r.model === m.name);
    const main = state.runners.get(m.name) || runners[0];
    const tr = document.createElement("tr");
    tr.dataset.model = m.name;
    tr.dataset.state = main ? main.state : "not-loaded";
    const stateText = main ? main.state + (runners.length > 1 ? " (+" + (runners.length - 1) +
      " more)" : "") : "not loaded";
    const context = main && main.ctx_size ? main.ctx_size : m.context;
    const actions = document.createElement("td");
    actions.append(
      button("load", "load", () => api("POST", "/api/generate", {
        model: m.name, keep_alive: $("load-keep").value }).catch(() => {})),
      button("unload", "unload", () => api("POST", "/api/unload", { model: m.name })
        .catch(() => {})),
      button("logs", "logs", () => watchLogs(main ? main.runner : m.name)),
      button("chat", "chat", () => { $("chat-model").value = m.name; $("chat-input").focus(); }),
    );
    tr.append(cell(m.name), cell(stateText, "state"), cell(context ? String(context) : "-"),
      cell(expiry(main), "expires"), cell(bytes(m.size)), actions);
    if (m.problem) tr.title = m.problem;
    return tr;
  });
  $("models").querySelector("tbody").replaceChildren(...rows);
  $("no-models").hidden = state.catalog.length > 0;
}
setInterval(renderModels, 5000);  // "in 4 minutes" counts down

// -- charts ----------------------------------------------------------------------------------

// Requests and tokens are counted into BUCKET-second buckets over the last WINDOW seconds;
// memory is one point per sample. Each chart container says in data-total how much it has
// counted, so a test can tell that a chart moved.
const BUCKET = 5;
const WINDOW = 600;

const charts = (() => {
  const buckets = new Map();  // bucket start (s) -> {tokens, requests, errors}
  const seen = new Set();  // request ids: a reconnect's snapshot repeats recent requests
  const memory = { t: [], byRunner: new Map() };
  const plots = {};
  const available = typeof window.uPlot === "function";
  let totals = { tokens: 0, requests: 0, memory: 0 };
  if (!available) {
    $("charts-note").textContent =
      "charts need gateway/ui/vendor (make console-assets): not installed";
  }

  function size(el) {
    return { width: Math.max(el.clientWidth, 240), height: 150 };
  }

  function make(id, series, data, unit) {
    const el = $(id);
    if (plots[id]) plots[id].destroy();
    const fmt = unit === "bytes" ? (u, v) => v.map((x) => (x ? bytes(x) : "0")) : undefined;
    plots[id] = new window.uPlot({
      ...size(el), legend: { show: true }, cursor: { show: true },
      scales: { x: { time: true } },
      axes: [{}, { values: fmt, size: unit === "bytes" ? 70 : 50 }],
      series: [{}, ...series],
    }, data, el);
  }

  const colours = ["#3b7dd8", "#c0392b", "#1f8a4c", "#b7791f", "#8e44ad", "#16a085"];

  function window_() {
    const now = Math.floor(Date.now() / 1000 / BUCKET) * BUCKET;
    const xs = [];
    for (let t = now - WINDOW + BUCKET; t <= now; t += BUCKET) xs.push(t);
    return xs;
  }

  function draw() {
    const xs = window_();
    for (const t of [...buckets.keys()]) if (t < xs[0]) buckets.delete(t);
    const at = (t, k) => (buckets.get(t)?.[k] || 0) / BUCKET;
    const tokens = [xs, xs.map((t) => at(t, "tokens"))];
    const requests = [xs, xs.map((t) => at(t, "requests")), xs.map((t) => at(t, "errors"))];
    $("chart-tokens").dataset.total = totals.tokens;
    $("chart-requests").dataset.total = totals.requests;
    if (!available) return;
    if (!plots["chart-tokens"]) {
      make("chart-tokens", [{ label: "tokens/s", stroke: colours[0], fill: "#3b7dd822" }],
        tokens);
      make("chart-requests", [{ label: "requests/s", stroke: colours[0] },
        { label: "errors/s", stroke: colours[1] }], requests);
    } else {
      plots["chart-tokens"].setData(tokens);
      plots["chart-requests"].setData(requests);
    }
  }

  function drawMemory(rebuild) {
    $("chart-memory").dataset.total = totals.memory;
    if (!available || memory.t.length === 0) return;
    const keys = [...memory.byRunner.keys()];
    const data = [memory.t, ...keys.map((k) => memory.byRunner.get(k))];
    if (rebuild || !plots["chart-memory"]) {
      make("chart-memory", keys.map((k, i) => ({ label: k, stroke: colours[i % colours.length] })),
        data, "bytes");
    } else {
      plots["chart-memory"].setData(data);
    }
  }

  setInterval(draw, 2000);  // the window slides even when nothing happens
  window.addEventListener("resize", () => {
    for (const [id, plot] of Object.entries(plots)) plot.setSize(size($(id)));
  });

  return {
    request(r, at) {
      if (r.request_id) {
        if (seen.has(r.request_id)) return;
        seen.add(r.request_id);
        if (seen.size > 5000) seen.clear();
      }
      const t = Math.floor(at / BUCKET) * BUCKET;
      const b = buckets.get(t) || { tokens: 0, requests: 0, errors: 0 };
      b.requests += 1;
      if (r.status >= 400) b.errors += 1;
      b.tokens += r.completion_tokens || 0;
      buckets.set(t, b);
      totals.requests += 1;
      totals.tokens += r.completion_tokens || 0;
      draw();
    },
    memory(sample) {
      const now = Date.now() / 1000;
      const runners = sample.runners || [];
      let rebuild = false;
      for (const r of runners) {
        if (!memory.byRunner.has(r.runner)) {
          memory.byRunner.set(r.runner, memory.t.map(() => null));
          rebuild = true;
        }
      }
      memory.t.push(now);
      for (const [key, values] of memory.byRunner) {
        const r = runners.find((x) => x.runner === key);
        values.push(r ? r.actual_bytes || null : null);
      }
      while (memory.t.length && memory.t[0] < now - WINDOW) {
        memory.t.shift();
        for (const values of memory.byRunner.values()) values.shift();
      }
      for (const [key, values] of memory.byRunner) {  // runners gone from the whole window
        if (values.every((v) => v === null)) { memory.byRunner.delete(key); rebuild = true; }
      }
      totals.memory += 1;
      drawMemory(rebuild);
    },
    draw,
  };
})();

// -- playground ------------------------------------------------------------------------------

function chatBubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.dataset.role = role;
  const who = document.createElement("b");
  who.textContent = role === "user" ? "you" : role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(who, body);
  $("chat-log").append(div);
  $("chat-log").scrollTop = $("chat-log").scrollHeight;
  return body;
}

function chatError(text) {
  const div = document.createElement("div");
  div.className = "msg error";
  div.textContent = text;
  $("chat-log").append(div);
}

async function sendChat(text) {
  const model = $("chat-model").value;
  if (!text.trim() || !model) return;
  state.chat.push({ role: "user", content: text });
  chatBubble("user", text);
  const answer = chatBubble("assistant", "");
  answer.parentElement.dataset.model = model;
  const thinking = document.createElement("span");
  thinking.className = "thinking";
  answer.before(thinking);
  const controller = new AbortController();
  state.chatAbort = controller;
  $("chat-send").disabled = true;
  $("chat-stop").hidden = false;
  $("chat-stats").textContent = "waiting for " + model + "…";
  const started = performance.now();
  let first = null;
  let content = "";
  let usage = null;
  let timings = null;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({
        model, messages: state.chat, stream: true, stream_options: { include_usage: true },
        max_tokens: parseInt($("chat-max").value, 10) || 64,
      }),
    });
    if (response.status === 401) needKey();
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error?.message || "HTTP " + response.status);
    }
    for await (const block of pieces(response, "\n\n")) {
      for (const line of block.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || String(chunk.error));
        const delta = chunk.choices?.[0]?.delta || {};
        if (delta.reasoning_content) thinking.textContent += delta.reasoning_content;
        if (delta.content) {
          if (first === null) first = performance.now();
          content += delta.content;
          answer.textContent = content;
          $("chat-log").scrollTop = $("chat-log").scrollHeight;
        }
        if (chunk.usage) usage = chunk.usage;
        if (chunk.timings) timings = chunk.timings;
      }
    }
    state.chat.push({ role: "assistant", content });
    const tokens = usage?.completion_tokens ?? timings?.predicted_n;
    const rate = timings?.predicted_per_second;
    $("chat-stats").textContent = [
      tokens !== undefined ? tokens + " tokens" : null,
      rate ? rate.toFixed(1) + " tokens/s" : null,
      first !== null ? "first token after " + ((first - started) / 1000).toFixed(2) + " s" : null,
    ].filter(Boolean).join(" · ");
    answer.parentElement.dataset.done = "true";
  } catch (error) {
    state.chat.pop();  // the question stays on screen; the conversation goes on without it
    if (error.name !== "AbortError") chatError(error.message);
    $("chat-stats").textContent = error.name === "AbortError" ? "stopped" : "";
    if (content) state.chat.push({ role: "user", content: text },
      { role: "assistant", content });
  } finally {
    state.chatAbort = null;
    $("chat-send").disabled = false;
    $("chat-stop").hidden = true;
  }
}

$("chat-send-form").onsubmit = (e) => {
  e.preventDefault();
  const text = $("chat-input").value;
  $("chat-input").value = "";
  sendChat(text);
};
$("chat-input").onkeydown = (e) => {
  if (e.key === "Enter" && !e.shiftKey) {
    e.preventDefault();
    $("chat-send-form").requestSubmit();
  }
};
$("chat-stop").onclick = () => state.chatAbort?.abort();
$("chat-clear").onclick = () => {
  state.chat = [];
  $("chat-log").replaceChildren();
  $("chat-stats").textContent = "";
};

// Polled, not streamed: the view changes at most every 0.1 s (a nudged record) per node.
const NODES_EVERY = 3000;

function renderNodes(nodes) {
  const rows = nodes.map((n) => {
    const tr = document.createElement("tr");
    tr.dataset.node = n.name;
    tr.dataset.state = n.state;
    const busy = n.runners.reduce((sum, r) => sum + r.busy, 0);
    const slots = n.runners.reduce((sum, r) => sum + r.slots, 0);
    tr.append(cell(n.name), cell(n.url), cell(n.state, "state"), cell(n.version),
              cell(String(n.models.length)), cell(busy + "/" + slots), cell(String(n.queue_depth)),
              cell(bytes(n.memory.ram_available)));
    return tr;
  });
  $("nodes").querySelector("tbody").replaceChildren(...rows);
}

async function refreshNodes() {
  try {
    const response = await api("GET", "/api/nodes");
    if (response.ok) renderNodes((await response.json()).nodes);
  } catch { /* asked for a key, or away: the next poll tries again */ }
  setTimeout(refreshNodes, NODES_EVERY);
}

async function refreshModels() {
  const response = await api("GET", "/v1/models");
  if (response.ok) showModels((await response.json()).data.map((m) => m.id));
}

// -- the event stream ------------------------------------------------------------------------

const handlers = {
  snapshot(data) {
    // A reconnect (choosing another runner's logs) keeps what this page saw of each runner.
    const seen = new Map([...state.runners].map(([key, r]) => [key, r.history]));
    state.runners.clear();
    for (const r of data.runners) {
      const history = seen.get(r.runner) || [];
      state.runners.set(r.runner, {
        ...r, history: history[history.length - 1] === r.state ? history : [...history, r.state],
      });
    }
    renderRunners();
    $("queue").textContent = data.queue;
    $("requests").querySelector("tbody").replaceChildren();
    for (const r of data.requests) addRequest(r.data, r.at);
    $("logs").textContent = "";  // a reconnect's snapshot brings the recent lines again
    for (const line of data.logs || []) addLog(line);
    showModels(data.models);
    state.catalog = data.catalog || [];
    renderModels();
  },
  runner: updateRunner,
  queue(data) { $("queue").textContent = data.depth; },
  memory: renderMemory,
  request(data, at) { addRequest(data, at); },
  pull: showPull,
  log(data) { addLog(data.line); },
  dropped(data) { addLog("[console fell behind: " + data.count + " events dropped]"); },
};

function handleBlock(block) {
  let kind = "message";
  let data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (!data || !handlers[kind]) return;  // pings are comments
  const event = JSON.parse(data);
  handlers[kind](event.data, event.at);
}

function retry() {
  clearTimeout(state.retry);
  state.retry = setTimeout(connect, 2000);
}

async function connect() {
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  const url = "/api/events" + (state.logsOf ? "?logs=" + encodeURIComponent(state.logsOf) : "");
  let response;
  try {
    response = await fetch(url, { headers: headers({ accept: "text/event-stream" }), signal: controller.signal });
  } catch (error) {
    if (error.name !== "AbortError") retry();
    return;
  }
  if (response.status === 401) return needKey();
  if (!response.ok) {
    setStatus("error", "events: HTTP " + response.status);
    return retry();
  }
  $("key-form").hidden = state.key === null;
  setStatus("live", "live");
  try {
    for await (const block of pieces(response, "\n\n")) handleBlock(block);
  } catch (error) {
    if (error.name === "AbortError") return;
  }
  if (state.stream === controller) {
    setStatus("error", "disconnected; retrying");
    retry();
  }
}

// -- actions ---------------------------------------------------------------------------------

$("key-form").onsubmit = (e) => {
  e.preventDefault();
  state.key = $("key").value.trim() || null;
  connect();
};

$("load-form").onsubmit = (e) => {
  e.preventDefault();
  api("POST", "/api/generate", { model: $("load-model").value, keep_alive: $("load-keep").value })
    .catch(() => {});
};

$("pull-form").onsubmit = async (e) => {
  e.preventDefault();
  showPull({ status: "starting", completed: 0, total: 0 });
  $("pull-bar").value = 0;
  $("pull-percent").textContent = "0%";
  let response;
  try {
    response = await api("POST", "/api/pull", {
      model: $("pull-name").value.trim(), insecure: $("pull-insecure").checked, stream: true,
    });
  } catch { return; }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    return showPull({ error: body.error || "HTTP " + response.status });
  }
  for await (const line of pieces(response, "\n")) {
    if (line.trim()) showPull(JSON.parse(line));
  }
  refreshModels().catch(() => {});  // a pulled model is servable at once: offer it
  connect();  // and list it, with its context, from a fresh snapshot
};

connect();
refreshNodes();
charts.draw();
