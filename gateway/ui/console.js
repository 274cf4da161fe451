// The operator console: one page over switchboard's own API. It reads /api/events (an SSE
// stream, read with fetch so the key can travel in a header; EventSource cannot send one) and
// acts through /api/unload, /api/generate (an empty prompt loads) and /api/pull. The key, when
// the server wants one, lives in this page's memory only.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: null, logsOf: null, stream: null, retry: null, runners: new Map() };

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
  if (info.state === "stopped" || info.state === "failed") {
    // Shown for a moment, then gone: the loaded set no longer has it.
    setTimeout(() => {
      if (state.runners.get(key)?.state === info.state) {
        state.runners.delete(key);
        renderRunners();
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
}

function addRequest(r, at) {
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
  const select = $("load-model");
  const chosen = select.value;
  select.replaceChildren(...names.map((m) => new Option(m, m)));
  if (chosen && names.includes(chosen)) select.value = chosen;
}

// The fleet changes at heartbeat pace (a quarter of the node TTL): polled, not streamed.
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
    for (const line of data.logs || []) addLog(line);
    showModels(data.models);
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
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      // SSE allows CRLF or LF line ends; one form makes the blank-line split simple.
      buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        handleBlock(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
      }
    }
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
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, cut).trim();
      buffer = buffer.slice(cut + 1);
      if (line) showPull(JSON.parse(line));
    }
  }
  refreshModels().catch(() => {});  // a pulled model is servable at once: offer it
};

connect();
refreshNodes();
