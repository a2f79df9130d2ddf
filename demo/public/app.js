// The demo page: one Socket.IO client per tab, and the cluster panel.
// `?node=node-2` picks the node this tab starts on (default: a random one).
"use strict";

/** Rows kept in the stream list (all offsets stay in `demo.offsets`). */
const STREAM_ROWS = 1000;
const $ = (id) => document.getElementById(id);

/** What this tab saw; also read by the browser test. */
const demo = (window.demo = {
  node: null,
  id: null,
  recovered: null,
  /** Missed packets the server sent back at the last restore. */
  replayed: null,
  received: 0,
  gaps: 0,
  duplicates: 0,
  /** Offsets in arrival order, this session and the sessions it recovered. */
  offsets: [],
  lastOffset: null,
  /** Between a disconnection and the next "welcome": what arrives is replayed. */
  awaitingWelcome: true,
  /** Connections so far (first one and reconnections). */
  welcomes: 0,
  offlineTimer: null,
});

let nodes = [];
let socket;

async function api(path, init) {
  const res = await fetch(path, init);
  if (!res.ok && res.status !== 202) throw new Error(`${path}: ${res.status}`);
  return res.json();
}

function text(id, value) {
  $(id).textContent = value;
}

function setConnection(state) {
  const el = $("connection");
  el.textContent = state;
  el.dataset.state = state.split(" ")[0];
}

// --- the stream --------------------------------------------------------------

function describe(kind, payload) {
  if (kind === "tick") return `tick #${payload.n}`;
  return `chat from ${payload.from}: ${payload.text}`;
}

function addRow(offset, kind, payload, replayed) {
  const li = document.createElement("li");
  li.dataset.offset = String(offset);
  li.dataset.node = payload.node;
  li.dataset.kind = kind;
  if (replayed) li.classList.add("replayed");
  li.innerHTML = `<span class="offset"></span><span class="origin"></span><span class="what"></span>`;
  li.children[0].textContent = `o${offset}`;
  li.children[1].textContent = payload.node;
  li.children[2].textContent = describe(kind, payload) + (replayed ? "  ↺ replayed" : "");
  const list = $("stream");
  list.prepend(li);
  while (list.children.length > STREAM_ROWS) list.lastElementChild.remove();
}

function addMarker(message) {
  const li = document.createElement("li");
  li.className = "marker";
  li.textContent = message;
  $("stream").prepend(li);
}

// Socket.IO hands the entry's offset ("o<n>") as the last argument of every logged event.
function onEvent(kind, payload, offsetText) {
  const offset = Number(String(offsetText).slice(1));
  if (demo.lastOffset !== null) {
    if (offset <= demo.lastOffset) demo.duplicates++;
    else if (offset > demo.lastOffset + 1) demo.gaps += offset - demo.lastOffset - 1;
  }
  demo.lastOffset = Math.max(demo.lastOffset ?? offset, offset);
  demo.received++;
  demo.offsets.push(offset);
  addRow(offset, kind, payload, demo.awaitingWelcome);
  text("received", demo.received);
  text("gaps", demo.gaps);
  text("duplicates", demo.duplicates);
}

// --- the connection ----------------------------------------------------------

function nodeByName(name) {
  return nodes.find((n) => n.name === name);
}

function connect(node) {
  socket = io(node.url, { transports: ["websocket"], reconnectionDelay: 250, reconnectionDelayMax: 1000 });
  setConnection(`connecting to ${node.name}…`);
  socket.on("tick", (payload, offset) => onEvent("tick", payload, offset));
  socket.on("chat", (payload, offset) => onEvent("chat", payload, offset));
  // Sent by the node right after the connection (and after the replay of a restore).
  socket.on("welcome", (welcome) => {
    const freshAfterLoss = !welcome.recovered && demo.id !== null;
    demo.awaitingWelcome = false;
    demo.welcomes++;
    demo.node = welcome.node;
    demo.id = welcome.id;
    demo.recovered = welcome.recovered;
    demo.replayed = welcome.replayed;
    if (freshAfterLoss) {
      // A new session starts wherever the stream is now: that gap is not a loss of this session.
      demo.lastOffset = null;
      addMarker(`new session ${welcome.id} on ${welcome.node} (recovery refused: see the cluster panel)`);
    } else if (welcome.recovered) {
      addMarker(`recovered ${welcome.id} on ${welcome.node}: ${welcome.replayed} missed events replayed`);
    }
    text("node", welcome.node);
    $("sid").firstElementChild.textContent = welcome.id;
    text("recovered", String(welcome.recovered));
    $("recovered").dataset.value = String(welcome.recovered);
    text("replayed", welcome.recovered ? String(welcome.replayed) : "–");
    setConnection(`connected to ${welcome.node}`);
    renderMoveTargets();
  });
  socket.on("disconnect", (reason) => {
    demo.awaitingWelcome = true;
    if (!demo.offlineTimer) setConnection(`disconnected (${reason}), reconnecting…`);
  });
  socket.io.on("reconnect_attempt", () => {
    failOver();
    if (!demo.offlineTimer) setConnection("reconnecting…");
  });
}

// Like a load balancer: a tab whose node is down (crashed, not restarting) reconnects to one that is up.
function failOver() {
  const current = nodes.find((n) => n.url === socket.io.uri);
  if (!current || current.state !== "down") return;
  const up = nodes.filter((n) => n.state === "up" && n !== current);
  if (up.length > 0) socket.io.uri = up[Math.floor(Math.random() * up.length)].url;
}

function dropConnection() {
  if (socket.connected) socket.io.engine.close();
}

function moveTo(name) {
  const target = nodeByName(name);
  if (!target) return;
  // The manager reconnects to its `uri`: point it at the other node, then drop.
  socket.io.uri = target.url;
  setConnection(`moving to ${name}…`);
  if (socket.connected) socket.io.engine.close();
}

// Offline: no connection and no reconnection until the time is up or the button is pressed again.
function goOffline(seconds) {
  if (demo.offlineTimer) return;
  const until = Date.now() + seconds * 1000;
  socket.io.reconnection(false);
  if (socket.connected) socket.io.engine.close();
  $("offline").textContent = "Back online now";
  const tick = () => {
    const left = Math.ceil((until - Date.now()) / 1000);
    if (left > 0) {
      setConnection(`offline (${left} s left)`);
      demo.offlineTimer = setTimeout(tick, Math.min(250, until - Date.now()));
      return;
    }
    comeBack();
  };
  tick();
}

function comeBack() {
  clearTimeout(demo.offlineTimer);
  demo.offlineTimer = null;
  $("offline").textContent = "Go offline for";
  setConnection("reconnecting…");
  socket.io.reconnection(true);
  socket.connect();
}

// --- the cluster panel -------------------------------------------------------

function renderMoveTargets() {
  const select = $("move-target");
  const others = nodes.filter((n) => n.name !== demo.node).map((n) => n.name);
  if ([...select.options].map((o) => o.value).join() === others.join()) return;
  select.replaceChildren(...others.map((name) => new Option(name, name)));
}

function cell(row, value) {
  const td = row.insertCell();
  td.textContent = value;
  return td;
}

function ago(ms) {
  const seconds = Math.round(ms / 1000);
  return seconds < 90 ? `${seconds} s ago` : `${Math.round(seconds / 60)} min ago`;
}

// The pruner records its counts as JSON text.
function describePrune(lastPrune) {
  if (!lastPrune || lastPrune.finishedAgoMs === null) return "not yet";
  let counts = {};
  try {
    counts = JSON.parse(lastPrune.result ?? "{}");
  } catch {
    return `${ago(lastPrune.finishedAgoMs)}: ${lastPrune.result}`;
  }
  return `${ago(lastPrune.finishedAgoMs)}: removed ${counts.logEntries ?? 0} entries, ${counts.sessions ?? 0} sessions`;
}

function renderCluster(cluster) {
  nodes = cluster.nodes;
  const nodeRows = $("nodes").tBodies[0];
  nodeRows.replaceChildren();
  for (const node of cluster.nodes) {
    const row = nodeRows.insertRow();
    row.dataset.node = node.name;
    row.dataset.state = node.state;
    if (node.name === demo.node) row.classList.add("mine");
    cell(row, node.name);
    const address = cell(row, node.url.replace("http://", ""));
    // Each node serves its own Prometheus metrics (its counters are per process).
    const metrics = document.createElement("a");
    metrics.className = "metrics";
    metrics.href = `${node.url}/metrics`;
    metrics.target = "_blank";
    metrics.textContent = "metrics";
    address.append(" ", metrics);
    cell(row, node.state).className = `state ${node.state}`;
    cell(row, node.sockets);
    cell(row, node.restarts);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "restart";
    button.textContent = node.state === "down" ? "start" : "restart";
    button.disabled = node.state !== "up" && node.state !== "down";
    button.addEventListener("click", () => restartNode(node.name));
    row.insertCell().append(button);
  }

  const nsRows = $("namespaces").tBodies[0];
  nsRows.replaceChildren();
  const status = cluster.status;
  if (status && status.namespaces) {
    for (const ns of status.namespaces) {
      const row = nsRows.insertRow();
      cell(row, ns.name);
      cell(row, `o${ns.head}`);
      cell(row, ns.oldest ? `${ns.entries} (o${ns.oldest.offset}…o${ns.head})` : "0");
      cell(row, ns.sessions);
    }
    text("last-prune", describePrune(status.lastPrune));
  } else if (status && status.error) {
    text("last-prune", `database: ${status.error}`);
  }

  const r = cluster.recoveries;
  text("recoveries", `${r.succeeded} succeeded, ${r.replayed} missed events replayed`);
  text("refusals", r.refused === 0 ? "none" : r.reasons.map((g) => `${g.count} × ${g.latest}`).join("; "));
  text("database", cluster.database ?? "–");
  $("errors").replaceChildren(...cluster.errors.map((e) => Object.assign(document.createElement("li"), { textContent: e })));
  renderMoveTargets();
}

async function refreshCluster() {
  try {
    renderCluster(await api("/api/cluster"));
  } catch {
    // The demo is stopping or restarting; the next refresh will tell.
  }
}

// The tab moves to another node first (as a load balancer would), then its node is SIGKILLed.
async function crashNode(name) {
  const others = nodes.filter((n) => n.name !== name && n.state === "up");
  if (others.length > 0) socket.io.uri = others[Math.floor(Math.random() * others.length)].url;
  await api(`/api/nodes/${encodeURIComponent(name)}/crash`, { method: "POST" });
  await refreshCluster();
}

async function restartNode(name) {
  await api(`/api/nodes/${encodeURIComponent(name)}/restart`, { method: "POST" });
  await refreshCluster();
}

// --- start -------------------------------------------------------------------

async function main() {
  const cluster = await api("/api/cluster");
  renderCluster(cluster);
  const wanted = new URLSearchParams(location.search).get("node");
  const node = nodeByName(wanted) ?? nodes[Math.floor(Math.random() * nodes.length)];
  connect(node);
  setInterval(refreshCluster, 1000);

  $("drop").addEventListener("click", dropConnection);
  $("move").addEventListener("click", () => moveTo($("move-target").value));
  $("restart-mine").addEventListener("click", () => demo.node && restartNode(demo.node));
  $("emit-worker").addEventListener("click", () => api("/api/emit/worker", { method: "POST" }).catch(() => {}));
  $("emit-rollback").addEventListener("click", () => api("/api/emit/rollback", { method: "POST" }).catch(() => {}));
  $("crash-mine").addEventListener("click", () => demo.node && crashNode(demo.node));
  $("offline").addEventListener("click", () => {
    if (demo.offlineTimer) comeBack();
    else goOffline(Math.max(1, Math.min(120, Number($("offline-seconds").value) || 5)));
  });
  $("chat").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("chat-text");
    if (input.value.trim()) socket.emit("chat", input.value);
    input.value = "";
  });
}

main().catch((err) => setConnection(`could not start: ${err.message}`));
