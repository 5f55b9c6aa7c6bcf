// The normadd web page: plain JavaScript against the REST API (no build step, no CDN).
"use strict";

const $ = (id) => document.getElementById(id);
let lastImage = null; // the file last inspected, re-inspected after every change of normalities
let scopes = []; // of the connected key (GET /v1/me); the server enforces them, the page only hides what they forbid

function allowed(scope) {
  return scopes.includes(scope) || scopes.includes("admin");
}

function showAllowed(root = document) {
  // An element with data-scope="a b" is shown when the key has scope a or b.
  for (const element of root.querySelectorAll("[data-scope]")) {
    element.hidden = !element.dataset.scope.split(" ").some(allowed);
  }
}

function status(message, isError = false) {
  $("status").textContent = message;
  $("status").className = isError ? "error" : "";
}

async function api(path, options = {}) {
  const headers = Object.assign({ "X-API-Key": $("api-key").value }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (!response.ok) throw new Error(body.detail || `HTTP ${response.status}`);
  return body;
}

function line() {
  return encodeURIComponent($("line").value);
}

async function connect() {
  localStorage.setItem("normadd-api-key", $("api-key").value);
  try {
    const me = await api("/v1/me");
    scopes = me.scopes;
    $("who").textContent = `signed in as ${me.name} (${me.scopes.join(", ")})`;
    showAllowed();
    const lines = await api("/v1/lines");
    const select = $("line");
    const chosen = select.value;
    select.innerHTML = "";
    for (const item of lines) {
      const option = document.createElement("option");
      option.value = item.name;
      option.textContent = `${item.name} (${item.class_name}, ${item.backbone})`;
      select.appendChild(option);
    }
    if (chosen) select.value = chosen;
    await refreshNormalities();
    await refreshChanges();
    status(`connected: ${lines.length} line(s)`);
  } catch (error) {
    status(error.message, true);
  }
}

async function refreshNormalities() {
  const body = await api(`/v1/lines/${line()}/normalities`);
  const list = $("normalities");
  list.innerHTML = "";
  for (const normality of body.normalities) {
    const item = document.createElement("li");
    item.dataset.name = normality.name;
    const title = document.createElement("strong");
    title.textContent = `${normality.name} (strength ${normality.strength})`;
    const phrases = document.createElement("div");
    phrases.className = "phrases";
    phrases.textContent = `${normality.phrases.join(", ")} · added by ${normality.added_by}`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "Remove";
    remove.dataset.scope = "change";
    remove.addEventListener("click", () => removeNormality(normality.name));
    item.append(title, remove, phrases);
    list.appendChild(item);
  }
  if (!body.normalities.length) list.innerHTML = "<li class='none'>none: every defect counts as anomalous</li>";
  showAllowed(list);
}

async function refreshChanges() {
  if (!allowed("change") && !allowed("approve")) return;
  const body = await api(`/v1/lines/${line()}/changes`);
  const list = $("changes");
  list.innerHTML = "";
  for (const change of body.changes) {
    const item = document.createElement("li");
    item.dataset.id = change.id;
    const title = document.createElement("strong");
    title.textContent = `#${change.id} ${change.summary}`;
    const meta = document.createElement("div");
    meta.className = "meta";
    meta.textContent = `proposed by ${change.proposed_by}${change.why ? ` (${change.why})` : ""} · expires ${change.expires_at}`;
    item.append(title);
    for (const [label, decision] of [["Approve", "approve"], ["Reject", "reject"]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = label;
      button.className = decision;
      button.dataset.scope = "approve";
      button.addEventListener("click", () => decide(change.id, decision));
      item.append(button);
    }
    item.append(meta);
    list.appendChild(item);
  }
  if (!body.changes.length) list.innerHTML = "<li class='none'>no change waits for approval</li>";
  showAllowed(list);
}

async function decide(id, decision) {
  try {
    const decided = await api(`/v1/lines/${line()}/changes/${id}/${decision}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ why: $("decision-why").value }),
    });
    $("decision-why").value = "";
    await refreshNormalities();
    await refreshChanges();
    status(`change #${id} ${decided.status} by ${decided.decided_by}`);
    if (lastImage && decided.status === "approved") await inspect(lastImage);
  } catch (error) {
    status(error.message, true);
  }
}

function proposed(body) {
  // 202 from a line with approval required: the change waits for a second person.
  return body.status === "pending" && body.proposed_by !== undefined;
}

async function addNormality(event) {
  event.preventDefault();
  const body = {
    text: $("normality-text").value,
    strength: parseFloat($("normality-strength").value),
    why: $("normality-why").value,
  };
  try {
    const added = await api(`/v1/lines/${line()}/normalities`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    $("normality-text").value = "";
    $("normality-why").value = "";
    if (proposed(added)) {
      await refreshChanges();
      status(`proposed change #${added.id}: it applies when another person approves it`);
      return;
    }
    await refreshNormalities();
    status(`added '${added.name}': ${added.phrases.join(", ")}`);
    if (lastImage) await inspect(lastImage);
  } catch (error) {
    status(error.message, true);
  }
}

async function removeNormality(name) {
  try {
    const removed = await api(`/v1/lines/${line()}/normalities/${encodeURIComponent(name)}`, { method: "DELETE" });
    if (proposed(removed)) {
      await refreshChanges();
      status(`proposed change #${removed.id}: it applies when another person approves it`);
      return;
    }
    await refreshNormalities();
    status(`removed '${name}'`);
    if (lastImage) await inspect(lastImage);
  } catch (error) {
    status(error.message, true);
  }
}

async function inspect(file) {
  lastImage = file;
  const form = new FormData();
  form.append("images", file, file.name);
  status(`inspecting ${file.name}…`);
  try {
    const body = await api(`/v1/lines/${line()}/inspect?maps=true`, { method: "POST", body: form });
    const result = body.results[0];
    for (const kind of ["before", "suppression", "after"]) {
      $(`map-${kind}`).src = `data:image/png;base64,${result.maps[kind]}`;
    }
    const active = body.normalities.map((n) => n.name).join(", ") || "none";
    $("scores").textContent =
      `${result.filename}: score before ${result.score_before.toFixed(4)} → after ${result.score_after.toFixed(4)}` +
      ` (normalities: ${active})${body.random_weights ? " — RANDOM weights: maps are not meaningful" : ""}`;
    status(`inspected ${result.filename}`);
  } catch (error) {
    status(error.message, true);
  }
}

$("connect").addEventListener("click", connect);
$("line").addEventListener("change", () => refreshNormalities().then(refreshChanges));
$("add-form").addEventListener("submit", addNormality);
$("normality-strength").addEventListener("input", (e) => ($("strength-value").textContent = e.target.value));
$("image-file").addEventListener("change", (e) => e.target.files[0] && inspect(e.target.files[0]));
$("api-key").value = localStorage.getItem("normadd-api-key") || "";
if ($("api-key").value) connect();
