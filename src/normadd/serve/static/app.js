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
    item.dataset.state = normality.state;
    const title = document.createElement("strong");
    title.textContent = `${normality.name} (strength ${normality.strength})`;
    const state = document.createElement("span");
    state.className = "state";
    state.textContent = normality.state === "active" && !normality.until ? "" : `${normality.state}` +
      (normality.until ? ` until ${normality.until}` : "");
    const phrases = document.createElement("div");
    phrases.className = "phrases";
    phrases.textContent = `${normality.phrases.join(", ")} · added by ${normality.added_by}`;
    const buttons = [];
    if (normality.state === "staged") {
      const activate = document.createElement("button");
      activate.type = "button";
      activate.className = "activate";
      activate.textContent = "Activate";
      activate.dataset.scope = "change";
      activate.addEventListener("click", () => activateNormality(normality.name));
      buttons.push(activate);
    }
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove";
    remove.textContent = "Remove";
    remove.dataset.scope = "change";
    remove.addEventListener("click", () => removeNormality(normality.name));
    buttons.push(remove);
    item.append(title, state, ...buttons, phrases);
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
  if (!allowed("change")) return previewNormality(); // Enter in the form, with a key that may only preview
  const body = {
    text: $("normality-text").value,
    strength: parseFloat($("normality-strength").value),
    why: $("normality-why").value,
    staged: $("normality-staged").checked,
  };
  if ($("normality-until").value.trim()) body.until = $("normality-until").value.trim();
  try {
    const added = await api(`/v1/lines/${line()}/normalities`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    $("normality-text").value = "";
    $("normality-why").value = "";
    $("normality-until").value = "";
    if (proposed(added)) {
      await refreshChanges();
      status(`proposed change #${added.id}: it applies when another person approves it`);
      return;
    }
    await refreshNormalities();
    status(`${added.state === "staged" ? "staged" : "added"} '${added.name}': ${added.phrases.join(", ")}`);
    if (lastImage) await inspect(lastImage);
  } catch (error) {
    status(error.message, true);
  }
}

async function activateNormality(name) {
  try {
    const activated = await api(`/v1/lines/${line()}/normalities/${encodeURIComponent(name)}/activate`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ why: $("normality-why").value }),
    });
    if (proposed(activated)) {
      await refreshChanges();
      status(`proposed change #${activated.id}: it applies when another person approves it`);
      return;
    }
    await refreshNormalities();
    status(`activated '${name}'`);
    if (lastImage) await inspect(lastImage);
  } catch (error) {
    status(error.message, true);
  }
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

function picture(row, base64, alt) {
  const td = document.createElement("td");
  if (base64) {
    const img = document.createElement("img");
    img.src = `data:image/png;base64,${base64}`;
    img.alt = alt;
    td.appendChild(img);
  }
  row.appendChild(td);
}

async function previewNormality() {
  const text = $("normality-text").value.trim();
  if (!text) return status("type a defect text (or a staged normality's name) to preview", true);
  const body = { text, recent: parseInt($("preview-recent").value, 10) || 100, why: $("normality-why").value };
  if ($("normality-strength").value !== "1") body.strength = parseFloat($("normality-strength").value);
  status(`previewing '${text}'…`);
  try {
    const report = await api(`/v1/lines/${line()}/normalities/preview`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    $("preview-panel").hidden = false;
    const decided = report.threshold === null ? ` — verdicts undecided: ${report.reason}` :
      ` (threshold ${report.threshold.toPrecision(4)})`;
    $("preview-summary").textContent =
      `'${report.name}' on ${report.parts} part(s): NG ${report.ng_before} → ${report.ng_after}, ` +
      `${report.flips.length} NG → OK${decided}. ${report.notes.map((n) => `${n}. `).join("")}Nothing was changed.`;
    const rows = $("preview-table").querySelector("tbody");
    rows.innerHTML = "";
    for (const part of report.flips) {
      const row = document.createElement("tr");
      row.className = "flip";
      picture(row, part.thumbnail, part.image);
      picture(row, part.suppression, `suppression on ${part.image}`);
      cell(row, part.score_before.toFixed(4));
      cell(row, part.score_after.toFixed(4));
      cell(row, `${part.verdict_before} → ${part.verdict_after}`, "verdict");
      cell(row, (part.combined_after ? "combined: " : "") + part.accepted_by_after.join(", "));
      row.firstChild.appendChild(document.createTextNode(part.image));
      rows.appendChild(row);
    }
    const shares = Object.keys(Object.assign({}, report.shares_before, report.shares_after)).sort();
    $("preview-shares").textContent = shares.length ? "parts each normality lets through (now → with it): " +
      shares.map((k) => `${k} ${report.shares_before[k] || 0} → ${report.shares_after[k] || 0}`).join(", ") : "";
    status(`previewed '${report.name}': ${report.flips.length} part(s) would pass`);
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
    showVerdict(result);
    status(`inspected ${result.filename}`);
  } catch (error) {
    status(error.message, true);
  }
}

// The OK/NG badge: the verdict after the active normalities, and what changed it.
function showVerdict(result) {
  const badge = $("verdict");
  const after = result.verdict_after;
  badge.hidden = false;
  badge.textContent = after === "undecided" ? "undecided" : after;
  badge.className = `badge ${after === "OK" ? "ok" : after === "NG" ? "ng" : "undecided"}`;
  badge.dataset.verdict = after;
  let detail = "";
  if (after === "undecided") {
    detail = result.verdict_reason;
  } else {
    detail = `before: ${result.verdict_before} (threshold ${Number(result.threshold).toFixed(4)})`;
    if (result.verdict_before === "NG" && after === "OK") {
      const names = result.accepted_by.join(result.accepted_combined ? " + " : ", ");
      detail += result.accepted_combined ? ` · accepted only together: ${names}` : ` · accepted by ${names}`;
    }
  }
  $("verdict-detail").textContent = detail;
}

$("connect").addEventListener("click", connect);
$("line").addEventListener("change", () => refreshNormalities().then(refreshChanges));
$("add-form").addEventListener("submit", addNormality);
$("preview-normality").addEventListener("click", previewNormality);
$("normality-strength").addEventListener("input", (e) => ($("strength-value").textContent = e.target.value));
$("image-file").addEventListener("change", (e) => e.target.files[0] && inspect(e.target.files[0]));
$("api-key").value = localStorage.getItem("normadd-api-key") || "";
if ($("api-key").value) connect();
