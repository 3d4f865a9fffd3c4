// fashionops visual search page: upload/drag a photo -> /classify + /search; click a result -> browse by item_id.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { token: localStorage.getItem("fashionops_token") || "" };

function authHeaders() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

// POST/GET with the bearer token; on 401 ask for the token once and retry.
async function api(path, options = {}, retried = false) {
  const resp = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
  if (resp.status === 401 && !retried) {
    const token = window.prompt("This server needs an API token:");
    if (token) {
      state.token = token;
      localStorage.setItem("fashionops_token", token);
      // Images are plain <img> requests: they authenticate with the cookie.
      document.cookie = "fashionops_token=" + encodeURIComponent(token) + "; path=/; SameSite=Strict";
      return api(path, options, true);
    }
  }
  const body = await resp.json().catch(() => ({ detail: resp.statusText }));
  if (!resp.ok) throw new Error(body.detail || resp.statusText);
  return body;
}

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function pct(p) { return (100 * p).toFixed(1) + "%"; }

function renderPrediction(pred) {
  $("prediction").hidden = false;
  $("pred-label").textContent = pred.label;
  $("pred-prob").textContent = pct(pred.probability) + " confidence";
  const list = $("pred-top");
  list.replaceChildren();
  pred.top_labels.forEach((label, i) => {
    const p = pred.top_probabilities[i];
    const li = document.createElement("li");
    li.textContent = label + " " + pct(p);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = Math.max(2, Math.round(120 * p)) + "px";
    li.appendChild(bar);
    list.appendChild(li);
  });
  renderAttributes(pred.attributes || {});
}

// Every attribute a multi-attribute classifier tags (articleType, gender, baseColour, ...) with its
// confidence; made here, under the prediction, the first time. A single-head model tags one
// attribute, the label above, so the list stays hidden.
function renderAttributes(attributes) {
  let box = $("pred-attributes");
  if (!box) {
    box = document.createElement("div");
    box.id = "pred-attributes";
    const title = document.createElement("h2");
    title.textContent = "Attributes";
    box.append(title, document.createElement("dl"));
    $("prediction").appendChild(box);
  }
  const names = Object.keys(attributes);
  box.hidden = names.length < 2;
  const list = box.querySelector("dl");
  list.replaceChildren();
  for (const name of names) {
    const tag = attributes[name];
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.dataset.attribute = name;
    const value = document.createElement("strong");
    value.textContent = tag.label;
    const conf = document.createElement("span");
    conf.className = "muted";
    conf.textContent = " " + pct(tag.probability);
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = Math.max(2, Math.round(60 * tag.probability)) + "px";
    dd.append(value, conf, bar);
    list.append(dt, dd);
  }
}

function renderResults(data) {
  const grid = $("results");
  grid.replaceChildren();
  for (const item of data.results) {
    const card = document.createElement("button");
    card.type = "button";
    card.className = "card";
    card.dataset.itemId = item.id;
    const img = document.createElement("img");
    img.src = item.image_url;
    img.alt = item.name || "item " + item.id;
    img.loading = "lazy";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = item.name || "item " + item.id;
    const meta = document.createElement("span");
    meta.className = "meta";
    meta.textContent = [item.articleType, "#" + item.id, "d=" + item.distance.toFixed(3)].filter(Boolean).join(" · ");
    card.append(img, name, meta);
    card.addEventListener("click", () => browse(item.id, true));
    grid.appendChild(card);
  }
  setStatus(data.results.length + " similar items");
}

async function searchUpload(file) {
  $("query-item").hidden = true;
  const img = $("query-image");
  img.src = URL.createObjectURL(file);
  img.hidden = false;
  $("drop-hint").textContent = file.name + " — drop another photo to search again";
  setStatus("Searching…");
  const form = () => { const f = new FormData(); f.append("file", file); return f; };
  try {
    const [pred, found] = await Promise.all([
      api("/classify", { method: "POST", body: form() }),
      api("/search", { method: "POST", body: form() }),
    ]);
    renderPrediction(pred);
    $("results-title").textContent = "Similar items";
    renderResults(found);
    history.replaceState(null, "", "/");
  } catch (err) {
    $("prediction").hidden = true;
    $("results").replaceChildren();
    setStatus("Error: " + err.message, true);
  }
}

async function browse(itemId, push) {
  setStatus("Loading item " + itemId + "…");
  try {
    const found = await api("/search", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ item_id: Number(itemId) }),
    });
    const item = found.query.item;
    $("prediction").hidden = true;
    $("query-item").hidden = false;
    $("query-item-name").textContent = item.name || "item " + item.id;
    $("query-item-meta").textContent = [item.articleType, item.gender, item.baseColour, item.year, "#" + item.id]
      .filter(Boolean).join(" · ");
    const img = $("query-image");
    img.src = item.image_url;
    img.hidden = false;
    $("results-title").textContent = "Similar to " + (item.name || "item " + item.id);
    renderResults(found);
    if (push) history.pushState({ itemId }, "", "/?item_id=" + encodeURIComponent(itemId));
  } catch (err) {
    $("results").replaceChildren();
    setStatus("Error: " + err.message, true);
  }
}

async function showHealth() {
  try {
    const h = await fetch("/health").then((r) => r.json());
    const v = (m) => (!m || m.version === undefined ? "?" : /^\d+$/.test(String(m.version)) ? "v" + m.version : String(m.version));
    $("model-info").textContent = "classifier " + v(h.classifier) + " · index " + v(h.index) +
      (h.alias ? " · @" + h.alias : "") + " · " + h.items + " items · " + h.source;
  } catch (err) {
    $("model-info").textContent = "models unavailable";
  }
}

function setupUpload() {
  const zone = $("dropzone");
  const input = $("file-input");
  input.addEventListener("change", () => { if (input.files.length) searchUpload(input.files[0]); });
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
  for (const ev of ["dragenter", "dragover"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    zone.addEventListener(ev, (e) => { e.preventDefault(); zone.classList.remove("over"); });
  }
  zone.addEventListener("drop", (e) => {
    const file = e.dataTransfer.files[0];
    if (file) searchUpload(file);
  });
}

function fromLocation() {
  const id = new URLSearchParams(location.search).get("item_id");
  if (id) browse(id, false);
}

window.addEventListener("popstate", fromLocation);
setupUpload();
showHealth();
fromLocation();
