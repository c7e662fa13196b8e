// The console's only script: CSRF header on fetches, upload with progress, the live loss chart, the playground.
"use strict";
const csrfToken = () => document.querySelector('meta[name="csrf-token"]').content;

function setupUpload() {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const bar = document.getElementById("upload-progress");
  const errorBox = document.getElementById("upload-error");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    bar.hidden = false;
    const request = new XMLHttpRequest();
    request.open("POST", form.dataset.upload);
    request.setRequestHeader("X-CSRF-Token", csrfToken());
    request.setRequestHeader("Accept", "application/json");
    request.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = (100 * e.loaded) / e.total; };
    request.onload = () => {
      const body = JSON.parse(request.responseText || "{}");
      if (request.status === 200) { window.location = body.url; return; }
      errorBox.textContent = `${body.service || "console"}: ${body.error || request.status}` +
        (body.request_id ? ` (request id ${body.request_id})` : "");
      errorBox.hidden = false;
    };
    request.send(new FormData(form));
  });
}

// A small SVG line chart: training loss (line) and validation loss (line with dots) against the step.
function drawChart(svg, train, validation) {
  const all = train.concat(validation);
  if (!all.length) return;
  document.getElementById("chart-empty").hidden = true;
  const W = 640, H = 260, left = 44, bottom = 24, top = 10, right = 10;
  const maxStep = Math.max(1, ...all.map((p) => p[0]));
  const lo = Math.min(...all.map((p) => p[1])), hi = Math.max(...all.map((p) => p[1]));
  const span = hi - lo || 1;
  const x = (s) => left + ((W - left - right) * s) / maxStep;
  const y = (v) => top + (H - top - bottom) * (1 - (v - lo) / span);
  const path = (pts) => pts.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
  let out = `<line class="axis" x1="${left}" y1="${H - bottom}" x2="${W - right}" y2="${H - bottom}"/>`;
  out += `<line class="axis" x1="${left}" y1="${top}" x2="${left}" y2="${H - bottom}"/>`;
  out += `<text x="2" y="${top + 10}">${hi.toFixed(3)}</text><text x="2" y="${H - bottom}">${lo.toFixed(3)}</text>`;
  out += `<text x="${W - right - 60}" y="${H - 6}">step ${maxStep}</text>`;
  out += `<path class="train" d="${path(train)}"/><path class="validation" d="${path(validation)}"/>`;
  out += validation.map((p) => `<circle cx="${x(p[0])}" cy="${y(p[1])}" r="3" fill="#e04f16"/>`).join("");
  svg.innerHTML = out;
}

function setupJobChart() {
  const svg = document.getElementById("loss-chart");
  if (!svg) return;
  const train = [], validation = [];
  const log = document.getElementById("job-log");
  // The stream replays the job's whole history first, so a reload redraws the chart from the start.
  const source = new EventSource(svg.dataset.events);
  source.addEventListener("job", (message) => {
    const event = JSON.parse(message.data);
    const m = event.metrics;
    if (event.kind === "train_step" && "loss" in m) {
      train.push([m.step || train.length, m.loss]);
      document.getElementById("job-step").textContent = m.step;
      if (m.tokens_per_second) document.getElementById("job-tps").textContent = m.tokens_per_second.toFixed(0);
      if (m.eta_seconds !== undefined) document.getElementById("job-eta").textContent = `${Math.round(m.eta_seconds)} s`;
    } else if (event.kind === "validation" && "validation_loss" in m) {
      validation.push([m.step || 0, m.validation_loss]);
    } else if (event.kind === "state") {
      const state = document.getElementById("job-state");
      state.textContent = event.state;
      state.className = `state ${event.state}`;
    }
    if (event.message) log.textContent += `${event.message}\n`;
    drawChart(svg, train, validation);
  });
  source.addEventListener("end", () => source.close());
  source.addEventListener("failure", (message) => {
    const body = JSON.parse(message.data);
    log.textContent += `stream failed: ${body.error} (request id ${body.request_id}); reconnecting\n`;
  });
}

async function streamChat(model, messages, form, box) {
  box.innerHTML = `<h3>${model}</h3>`;
  const text = document.createElement("div");
  box.appendChild(text);
  const reply = await fetch("/api/playground/chat", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
    body: JSON.stringify({
      model, messages, temperature: Number(form.temperature.value), max_tokens: Number(form.max_tokens.value),
    }),
  });
  if (!reply.ok) { text.textContent = `console: ${reply.status} ${await reply.text()}`; return; }
  const reader = reply.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let failed = false;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const blocks = buffer.split("\n\n");
    buffer = blocks.pop();
    for (const block of blocks) {
      const data = block.split("\n").find((line) => line.startsWith("data: "));
      if (!data || data === "data: [DONE]") continue;
      const body = JSON.parse(data.slice(6));
      if (block.startsWith("event: error")) {
        failed = true;
        text.textContent += `\n[${body.error} · request id ${body.request_id}]`;
        continue;
      }
      const delta = body.choices && body.choices[0].delta;
      if (delta && delta.content) text.textContent += delta.content;
    }
  }
  if (!failed) offerToSave(box, messages, text.textContent);
}

// Admins get a form under each finished answer: the exchange (answer editable) becomes a dataset row.
function offerToSave(box, messages, answer) {
  const template = document.getElementById("save-row-template");
  if (!template || !answer) return;
  const form = template.content.firstElementChild.cloneNode(true);
  form.answer.value = answer;
  const nameLabel = form.querySelector(".new-name");
  const showName = () => { nameLabel.hidden = form.dataset_id.value !== ""; };
  form.dataset_id.addEventListener("change", showName);
  showName();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const result = form.querySelector(".save-result");
    const reply = await fetch("/api/playground/training-rows", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "application/json", "X-CSRF-Token": csrfToken() },
      body: JSON.stringify({
        dataset_id: form.dataset_id.value, name: form.name.value,
        messages: messages.concat([{ role: "assistant", content: form.answer.value }]),
      }),
    });
    const body = await reply.json();
    if (reply.ok) {
      result.className = "save-result saved";
      result.innerHTML = "";
      const link = document.createElement("a");
      link.href = body.url;
      link.textContent = `Saved: dataset ${body.name} (${body.id}), ${body.rows} rows`;
      result.appendChild(link);
    } else {
      result.className = "save-result error";
      result.textContent = `${body.service || "console"}: ${body.error}` + (body.request_id ? ` (request id ${body.request_id})` : "");
    }
  });
  box.appendChild(form);
}

function setupPlayground() {
  const form = document.getElementById("chat-form");
  if (!form) return;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const messages = [];
    if (form.system.value) messages.push({ role: "system", content: form.system.value });
    messages.push({ role: "user", content: form.message.value });
    const second = document.getElementById("answer-b");
    second.hidden = !form.side_by_side.checked;
    streamChat(form.model_a.value, messages, form, document.getElementById("answer-a"));
    if (form.side_by_side.checked) streamChat(form.model_b.value, messages, form, second);
  });
}

// Prepare and training forms: the equivalent ftctl command and pipeline YAML follow the inputs; the server
// builds both from the job spec, so the page never disagrees with the CLI.
function setupEquivalents() {
  for (const form of document.querySelectorAll("form[data-equivalents]")) {
    const command = form.querySelector(".equivalent-command");
    const yaml = form.querySelector(".equivalent-yaml");
    const errorBox = form.querySelector(".equivalent-error");
    let timer = null;
    const refresh = async () => {
      const fields = new URLSearchParams(new FormData(form));
      fields.delete("csrf_token");
      const reply = await fetch(`${form.dataset.equivalents}?${fields}`, { headers: { Accept: "application/json" } });
      const body = await reply.json();
      errorBox.hidden = reply.ok;
      if (!reply.ok) { errorBox.textContent = body.error; return; }
      command.textContent = body.command;
      yaml.textContent = body.yaml;
    };
    form.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(refresh, 300); });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setupUpload(); setupJobChart(); setupPlayground(); setupEquivalents();
});
