// The normadd web page: plain JavaScript against the REST API (no build step, no CDN).
"use strict";

const $ = (id) => document.getElementById(id);
let lastImage = null; // the file last inspected, re-inspected after every change of normalities

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
    remove.addEventListener("click", () => removeNormality(normality.name));
    item.append(title, remove, phrases);
    list.appendChild(item);
  }
  if (!body.normalities.length) list.innerHTML = "<li class='none'>none: every defect counts as anomalous</li>";
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
    await refreshNormalities();
    status(`added '${added.name}': ${added.phrases.join(", ")}`);
    if (lastImage) await inspect(lastImage);
  } catch (error) {
    status(error.message, true);
  }
}

async function removeNormality(name) {
  try {
    await api(`/v1/lines/${line()}/normalities/${encodeURIComponent(name)}`, { method: "DELETE" });
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
$("line").addEventListener("change", refreshNormalities);
$("add-form").addEventListener("submit", addNormality);
$("normality-strength").addEventListener("input", (e) => ($("strength-value").textContent = e.target.value));
$("image-file").addEventListener("change", (e) => e.target.files[0] && inspect(e.target.files[0]));
$("api-key").value = localStorage.getItem("normadd-api-key") || "";
if ($("api-key").value) connect();
