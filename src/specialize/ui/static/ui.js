// specialize dashboard: the live training curve, the playground and the new-run form.
// Plain JavaScript, no library and no build step. Text from the server or a model is only ever set with
// textContent, never parsed as HTML. Calls to /v1 carry the signed-in key as a bearer token (kept in this tab's
// sessionStorage by the sign-in page); calls to /ui/api carry the session cookie.
"use strict";

const KEY = "specialize.key";
const FINISHED = new Set(["succeeded", "failed", "cancelled", "completed"]);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text = "") {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== "") node.textContent = text;
  return node;
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: "Bearer " + key } : {};
}

// A call to the server's OpenAI API; rejects with the API's own error message.
async function api(path, { method = "GET", json, body } = {}) {
  const headers = authHeaders();
  if (json !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: json !== undefined ? JSON.stringify(json) : body });
  let payload = null;
  try { payload = await response.json(); } catch (_) { payload = null; }
  if (!response.ok) {
    const message = (payload && payload.error && payload.error.message) || (payload && payload.detail)
      || `${response.status} ${response.statusText}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return payload;
}

async function dashboard(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
  return response.json();
}

// ---- live training curve -------------------------------------------------------------------------------------

function drawCurve(svg, points) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const W = 720, H = 260, left = 56, right = 16, top = 24, bottom = 36;
  const train = points.filter((p) => typeof p.loss === "number").map((p) => [p.step, p.loss]);
  const valid = points.filter((p) => typeof p.validation_loss === "number").map((p) => [p.step, p.validation_loss]);
  svg.dataset.points = String(train.length);
  svg.dataset.lastStep = String(points.length ? points[points.length - 1].step : 0);
  if (!train.length && !valid.length) {
    svg.appendChild(el("svg:text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "no training step logged yet"));
    return;
  }
  const all = train.concat(valid);
  const maxStep = Math.max(1, ...all.map((p) => p[0]));
  let lo = Math.min(...all.map((p) => p[1])), hi = Math.max(...all.map((p) => p[1]));
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const x = (s) => left + (s / maxStep) * (W - left - right);
  const y = (v) => top + (1 - (v - lo) / (hi - lo)) * (H - top - bottom);
  for (let i = 0; i <= 4; i++) {
    const v = lo + (i / 4) * (hi - lo);
    svg.appendChild(el("svg:path", { d: `M${left} ${y(v)}H${W - right}`, class: "gridline" }));
    svg.appendChild(el("svg:text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, v.toFixed(3)));
  }
  svg.appendChild(el("svg:text", { x: W - right, y: H - 8, "text-anchor": "end", class: "axis" }, `step ${maxStep}`));
  svg.appendChild(el("svg:text", { x: left, y: H - 8, class: "axis" }, "0"));
  const line = (pts) => pts.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)} ${y(p[1]).toFixed(1)}`).join("");
  if (train.length) svg.appendChild(el("svg:path", { d: line(train), class: "train", "data-series": "loss" }));
  if (valid.length) {
    if (valid.length > 1) svg.appendChild(el("svg:path", { d: line(valid), class: "validation" }));
    for (const p of valid) svg.appendChild(el("svg:circle", { cx: x(p[0]), cy: y(p[1]), r: 3.5, class: "validation" }));
  }
  svg.appendChild(el("svg:text", { x: left + 8, y: 14, class: "legend" }, "— training loss"));
  if (valid.length) svg.appendChild(el("svg:text", { x: left + 130, y: 14, class: "legend validation-label" }, "- - validation loss"));
}

// Polls the registry's training metrics of a run and redraws; stops once the run is no longer running.
function liveCurve(box, src, onStatus) {
  const svg = box.querySelector("svg");
  const note = box.querySelector(".curve-note");
  const every = Number(box.dataset.interval || 1000);
  let previous = box.dataset.status || "";
  async function tick() {
    let data;
    try {
      data = await dashboard(src);
    } catch (error) {
      note.textContent = "Could not read the training metrics: " + error.message;
      setTimeout(tick, every * 3);
      return;
    }
    drawCurve(svg, data.points);
    const last = data.points[data.points.length - 1];
    note.textContent = last ? `step ${last.step}` + (typeof last.loss === "number" ? `, training loss ${last.loss.toFixed(4)}` : "") : "";
    box.dataset.status = data.status;
    if (onStatus) onStatus(data.status, previous);
    if (data.status === "running" || data.status === "queued") setTimeout(tick, every);
    previous = data.status;
  }
  tick();
}

function runPage() {
  const box = document.querySelector(".live-curve");
  if (!box) return;
  liveCurve(box, box.dataset.src, (status, previous) => {
    for (const badge of document.querySelectorAll("[data-run-status]")) {
      badge.textContent = status;
      badge.className = "status status-" + status;
    }
    // A run that finishes while its page is open: reload once, for its evaluation.
    if (previous === "running" && status !== "running" && box.dataset.reload === "on-finish") location.reload();
  });
}

// ---- sign-in and sign-out --------------------------------------------------------------------------------------

function loginPage() {
  if (document.querySelector("[data-clear-key]")) sessionStorage.removeItem(KEY);
  const form = document.querySelector("form[data-testid=login-form]");
  form.addEventListener("submit", () => {
    const input = form.querySelector("input[name=key]");
    if (input) sessionStorage.setItem(KEY, input.value.trim());
  });
}

// ---- playground -------------------------------------------------------------------------------------------------

function keyNeeded(root) {
  return document.body.dataset.auth === "on" && !sessionStorage.getItem(KEY);
}

function askForKey(root, then) {
  const form = root.querySelector(".key-needed");
  form.hidden = false;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, form.querySelector("input[name=key]").value.trim());
    form.hidden = true;
    then();
  });
}

async function playground(root) {
  const error = root.querySelector(".pg-error");
  const sides = [...root.querySelectorAll(".pg-side")].map((section) => ({
    name: section.dataset.side, select: section.querySelector("select"), log: section.querySelector(".pg-log"), history: [],
  }));
  let models;
  try {
    models = (await api("/v1/models")).data.map((m) => m.id);
  } catch (e) {
    if (e.status === 401) { sessionStorage.removeItem(KEY); askForKey(root, () => playground(root)); return; }
    error.hidden = false; error.textContent = "Could not list the served models: " + e.message; return;
  }
  for (const side of sides) {
    const wanted = root.dataset[side.name];
    const ids = models.includes(wanted) ? models : [wanted, ...models];
    side.select.replaceChildren(...ids.map((id) => el("option", { value: id }, id)));
    side.select.value = wanted;
    side.select.addEventListener("change", () => { side.history = []; side.log.replaceChildren(); });
  }
  const form = root.querySelector(".pg-input");
  const settings = root.querySelector(".pg-settings");
  root.querySelector(".pg-clear").addEventListener("click", () => sides.forEach((s) => { s.history = []; s.log.replaceChildren(); }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const box = form.querySelector("textarea");
    const text = box.value.trim();
    if (!text) return;
    box.value = "";
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    await Promise.all(sides.map((side) => ask(side, text, settings)));
    button.disabled = false;
  });
  root.dataset.ready = "true";
}

async function ask(side, text, settings) {
  side.history.push({ role: "user", content: text });
  side.log.appendChild(el("div", { class: "msg user" }, text));
  const reply = el("div", { class: "msg assistant pending", "data-testid": "reply-" + side.name }, "…");
  side.log.appendChild(reply);
  const started = performance.now();
  try {
    const body = await api("/v1/chat/completions", {
      method: "POST",
      json: {
        model: side.select.value,
        messages: side.history,
        max_tokens: Number(settings.querySelector("[name=max_tokens]").value) || 64,
        temperature: Number(settings.querySelector("[name=temperature]").value) || 0,
      },
    });
    const answer = body.choices[0].message.content;
    side.history.push({ role: "assistant", content: answer });
    reply.textContent = answer === "" ? "(empty answer)" : answer;
    reply.classList.remove("pending");
    reply.dataset.answer = answer;
    reply.dataset.requestId = body.id;
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    reply.appendChild(el("span", { class: "meta" }, `${body.usage.completion_tokens} tokens, ${seconds} s, ${body.choices[0].finish_reason}`));
  } catch (e) {
    side.history.pop();
    reply.textContent = e.message;
    reply.className = "msg failed";
  }
}

// ---- new run ----------------------------------------------------------------------------------------------------

async function upload(file) {
  const form = new FormData();
  form.append("purpose", "fine-tune");
  form.append("file", file, file.name);
  return api("/v1/files", { method: "POST", body: form });
}

function hyperparameters(form) {
  const out = {};
  for (const name of ["n_epochs", "batch_size", "learning_rate_multiplier"]) {
    const raw = form.elements[name].value.trim();
    if (raw && raw !== "auto") out[name] = Number(raw);
  }
  return out;
}

async function newRunPage() {
  const form = document.querySelector("form.new-run");
  const error = form.querySelector(".error");
  const root = document.querySelector("main");
  if (keyNeeded(root)) {
    error.hidden = false;
    error.textContent = "This tab does not hold your API key: sign out and in again to start runs from here.";
  }
  try {
    const bases = (await api("/v1/models")).data.filter((m) => m.owned_by === "base").map((m) => m.id);
    if (bases.length) form.elements.model.replaceChildren(...bases.map((id) => el("option", { value: id }, id)));
  } catch (_) { /* the server's own base model stays the one choice */ }
  listJobs();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      button.textContent = "Uploading…";
      const training = await upload(form.elements.training_file.files[0]);
      const validationFile = form.elements.validation_file.files[0];
      const validation = validationFile ? await upload(validationFile) : null;
      button.textContent = "Starting…";
      const type = form.elements.method.value;
      const request = {
        model: form.elements.model.value,
        training_file: training.id,
        method: { type, [type]: { hyperparameters: hyperparameters(form) } },
      };
      if (validation) request.validation_file = validation.id;
      if (form.elements.suffix.value.trim()) request.suffix = form.elements.suffix.value.trim();
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", json: request });
      watchJob(job);
      listJobs();
    } catch (e) {
      error.hidden = false;
      error.textContent = e.message;
    } finally {
      button.disabled = false;
      button.textContent = "Upload and start";
    }
  });
}

async function listJobs() {
  const body = document.querySelector("table.jobs tbody");
  try {
    const jobs = (await api("/v1/fine_tuning/jobs?limit=20")).data;
    body.replaceChildren(...jobs.map((job) => {
      const row = el("tr");
      const cell = el("td");
      const link = el("a", { href: "#" }, job.id);
      link.addEventListener("click", (event) => { event.preventDefault(); watchJob(job); });
      cell.appendChild(link);
      row.append(cell, el("td", {}, job.status), el("td", {}, job.fine_tuned_model || ""),
        el("td", {}, new Date(job.created_at * 1000).toLocaleString()));
      return row;
    }));
  } catch (_) { body.replaceChildren(); }
}

let watching = null;

function watchJob(job) {
  const section = document.querySelector("section.job");
  section.hidden = false;
  watching = job.id;
  section.querySelector(".job-id").textContent = job.id;
  const status = section.querySelector(".job-status");
  const links = section.querySelector(".job-links");
  const events = section.querySelector(".events");
  const curve = section.querySelector(".live-curve");
  links.replaceChildren();
  events.replaceChildren();
  curve.hidden = true;
  const cancel = section.querySelector("button.cancel");
  cancel.onclick = async () => { try { await api(`/v1/fine_tuning/jobs/${job.id}/cancel`, { method: "POST" }); } catch (_) { } };
  let run = null;
  let shown = null;
  async function tick() {
    if (watching !== job.id) return;
    try {
      job = await api(`/v1/fine_tuning/jobs/${job.id}`);
      if (job.status !== shown) { shown = job.status; listJobs(); }
      status.textContent = job.status;
      status.className = "status job-status status-" + job.status;
      const listed = (await api(`/v1/fine_tuning/jobs/${job.id}/events?limit=1000`)).data;
      events.replaceChildren(...listed.slice(0, 12).map((e) => el("li", {}, e.message)));
      if (!run) {
        const found = (await dashboard(`/ui/api/runs?name=${encodeURIComponent(job.id)}`)).runs;
        if (found.length) {
          run = found[found.length - 1].id;
          links.appendChild(el("a", { href: `/ui/runs/${encodeURIComponent(run)}`, "data-testid": "job-run-link" }, "run " + run));
          curve.hidden = false;
          liveCurve(curve, `/ui/api/runs/${encodeURIComponent(run)}/metrics`);
        }
      }
      if (job.status === "succeeded" && job.fine_tuned_model && !links.querySelector(".try")) {
        links.appendChild(el("a", { class: "try", href: `/ui/playground?right=${encodeURIComponent(job.fine_tuned_model)}` }, " Try it in the playground"));
      }
      cancel.hidden = FINISHED.has(job.status);
      if (FINISHED.has(job.status)) return;
    } catch (e) {
      status.textContent = e.message;
    }
    setTimeout(tick, 1000);
  }
  tick();
}

// ---- every page -------------------------------------------------------------------------------------------------

function runsPage() {
  const form = document.querySelector("form[data-testid=compare-form]");
  if (!form) return;
  const button = form.querySelector(".compare-button");
  const update = () => { button.disabled = form.querySelectorAll("input[name=run]:checked").length < 2; };
  form.addEventListener("change", update);
  update();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form.sign-out")) {
    form.addEventListener("submit", () => sessionStorage.removeItem(KEY));
  }
  const page = document.body.dataset.page;
  if (page === "login") loginPage();
  if (page === "run") runPage();
  if (page === "runs") runsPage();
  if (page === "new") newRunPage();
  if (page === "playground") {
    const root = document.querySelector(".playground");
    if (keyNeeded(root)) askForKey(root, () => playground(root));
    else playground(root);
  }
});
