// The rollout console: reads the flags over the API's WebSocket, changes them through the
// flag endpoints. The token stays in this tab's session storage.
"use strict";

const TOKEN_KEY = "streamspace-console-token";
let socket = null;

function $(id) { return document.getElementById(id); }

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function say(text, isError) {
  const message = $("message");
  message.textContent = text;
  message.className = isError ? "error" : "";
}

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = "status " + kind;
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function expired(at) { return at && Date.parse(at) <= Date.now(); }

function renderFlags(state) {
  const body = document.querySelector("#flags tbody");
  body.replaceChildren();
  for (const flag of state.flags) {
    const row = document.createElement("tr");
    row.dataset.type = flag.type;
    cell(row, flag.type, "type");
    cell(row, flag.mode, "mode mode-" + flag.mode);
    cell(row, flag.percent, "percent");
    cell(row, flag.source, "source");
    cell(row, flag.baseline ? flag.baseline.mode + "/" + flag.baseline.percent : "none", "baseline");
    const over = flag.override;
    if (over) {
      const gone = expired(over.expiresAt);
      cell(row, over.mode + "/" + over.percent + " by " + (over.setBy || "?") + ": " + (over.reason || "")
        + (gone ? " (expired)" : ""), "override" + (gone ? " expired" : ""));
      cell(row, over.expiresAt || "never", "expires");
    } else {
      cell(row, "none", "override");
      cell(row, "", "expires");
    }
    const owned = flag.owned || {};
    cell(row, (owned.controller || 0) + " / " + (owned.legacy || 0) + " / " + (owned.shadowed || 0), "owned");
    const flips = cell(row, "", "flips-cell");
    const list = document.createElement("ul");
    list.className = "flips";
    for (const flip of flag.flips || []) {
      const item = document.createElement("li");
      item.textContent = (flip.time || "") + " " + (flip.reason || "") + ": " + (flip.note || "");
      list.appendChild(item);
    }
    flips.appendChild(list);
    const actions = cell(row, "", "actions");
    if (over) {
      const clear = document.createElement("button");
      clear.className = "clear";
      clear.dataset.type = flag.type;
      clear.textContent = "Clear override";
      clear.addEventListener("click", () => clearOverride(flag.type));
      actions.appendChild(clear);
    }
    body.appendChild(row);
  }
  const shadow = $("shadow");
  shadow.replaceChildren();
  for (const difference of state.shadowDifferences || []) {
    const item = document.createElement("li");
    item.textContent = (difference.time || "") + " " + difference.object + ": " + (difference.note || "");
    shadow.appendChild(item);
  }
  if (!shadow.children.length) {
    const item = document.createElement("li");
    item.className = "empty";
    item.textContent = "none reported";
    shadow.appendChild(item);
  }
  if (state.errors && state.errors.length) say(state.errors.join("; "), true);
}

function connect() {
  if (socket) { socket.onclose = null; socket.close(); }
  if (!token()) { setStatus("no token", "down"); return; }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(scheme + "//" + location.host + "/api/v1/ws/flags?token=" + encodeURIComponent(token()));
  setStatus("connecting", "");
  socket.onopen = () => setStatus("live", "live");
  socket.onmessage = (event) => renderFlags(JSON.parse(event.data));
  socket.onclose = () => {
    setStatus("disconnected (check the token: the console needs an operator's)", "down");
    setTimeout(connect, 3000);
  };
}

async function call(method, path, body) {
  const response = await fetch("/api/v1" + path, {
    method,
    headers: { "Authorization": "Bearer " + token(), "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let parsed = null;
  try { parsed = JSON.parse(text); } catch (_) { parsed = null; }
  if (!response.ok) {
    throw new Error(response.status + " " + ((parsed && (parsed.message || parsed.error)) || text));
  }
  return parsed;
}

async function setOverride(event) {
  event.preventDefault();
  const type = $("override-type").value;
  const body = {
    mode: $("override-mode").value,
    percent: Number($("override-percent").value),
    ttl: $("override-ttl").value,
    reason: $("override-reason").value,
  };
  try {
    await call("PUT", "/flags/" + type + "/override", body);
    say("override of " + type + " set: " + body.mode + " for " + body.ttl, false);
  } catch (error) {
    say("setting the override of " + type + " failed: " + error.message, true);
  }
}

async function clearOverride(type) {
  try {
    await call("DELETE", "/flags/" + type + "/override");
    say("override of " + type + " cleared", false);
  } catch (error) {
    say("clearing the override of " + type + " failed: " + error.message, true);
  }
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  $("token").value = "";
  connect();
});
$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  if (socket) { socket.onclose = null; socket.close(); }
  document.querySelector("#flags tbody").replaceChildren();
  setStatus("not connected", "down");
});
$("override").addEventListener("submit", setOverride);
connect();
