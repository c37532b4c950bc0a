"""The explorer's one HTML page (plain HTML, CSS and JavaScript; no build step, no CDN)."""

PAGE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>visionlens explorer</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#fff;padding:.6em 1em;display:flex;gap:1.5em;align-items:center}
header button{background:none;border:0;color:#cfd8dc;font-size:1em;cursor:pointer;padding:.3em .6em}
header button.on{color:#fff;border-bottom:2px solid #80cbc4}
section{padding:1em;display:none}section.on{display:block}
.controls{display:grid;grid-template-columns:max-content 1fr;gap:.5em 1em;max-width:60em;align-items:center}
.controls select{max-width:26em}
#methods label{margin-right:1em;white-space:nowrap}
.error{color:#b71c1c;font-family:monospace;margin:.6em 0;min-height:1.2em;white-space:pre-line}
.note{color:#555;font-size:.9em}
.busy{color:#555}
.cards{display:flex;flex-wrap:wrap;gap:1em;margin-top:1em}
.card{background:#fff;border:1px solid #ddd;padding:.6em;width:244px}
.card h3{font-size:.95em;margin:0 0 .4em}
.stack{position:relative;width:224px;height:224px}
.stack img{position:absolute;left:0;top:0;width:224px;height:224px}
.bar{height:10px;width:224px;margin-top:.3em}
.ends{display:flex;justify-content:space-between;width:224px;font-size:.75em}
.card a{font-size:.85em;margin-right:.8em}
#preview{max-width:160px;max-height:160px;border:1px solid #ccc}
table.top td{padding:0 .6em 0 0}
iframe{width:100%;height:55vh;border:1px solid #ccc;background:#fff}
.scores-row{display:flex;gap:1.5em;align-items:flex-start}
table.scores{border-collapse:collapse;font-size:.85em;background:#fff}
table.scores th{cursor:pointer;background:#eceff1}table.scores td,table.scores th{border:1px solid #ddd;padding:.2em .5em}
table.scores tr.picked td{background:#e0f2f1}
#curves{background:#fff;border:1px solid #ddd}
#job{background:#fff8e1;border-bottom:1px solid #ffe082;padding:.4em 1em;display:flex;gap:1em;align-items:center}
#job[hidden]{display:none}
.warnings{color:#8d6e00;font-family:monospace;font-size:.85em;white-space:pre-line}
.card.pair{width:470px}.pair-stacks{display:flex;gap:6px}
.match h4{margin:.8em 0 .2em;font-size:.95em}
#sim-gallery{min-width:18em}#sim-top{width:5em;justify-self:start}
#sim-matches{display:flex;flex-wrap:wrap;gap:0 1.5em}
#record-maps .card{width:180px}#record-maps .stack,#record-maps .stack img{width:160px;height:160px}
#record-maps .bar,#record-maps .ends{width:160px}
</style></head>
<body>
<header><strong>visionlens explorer</strong>
<button data-view="explain" class="on">Explain</button><button data-view="flow">Flow</button>
<button data-view="similarity">Similarity</button><button data-view="results">Results</button></header>
<div id="job" hidden><span id="job-state"></span><progress id="job-progress" value="0" max="1"></progress>
<button id="job-cancel">Cancel</button></div>
<section id="explain" class="on">
<div class="controls">
<span>Images</span><span><input type="file" id="upload" accept="image/*" multiple> or
<select id="picked"><option value="">pick an image</option></select>
<span id="note" class="note"></span>
<img id="preview" alt="" hidden></span>
<span>Model</span><select id="model"></select>
<span>Layer</span><select id="layer"></select>
<span>Target</span><span><select id="target"><option value="">predicted class</option></select>
or class name / index <input id="target-text" size="18"></span>
<span>Methods</span><span id="methods"></span>
<span>Colormap</span><select id="cmap"><option>viridis</option><option>inferno</option><option>magma</option><option>jet</option><option>rdbu</option><option>coolwarm</option></select>
<span>Opacity</span><span><input type="range" id="opacity" min="0" max="1" step="0.05" value="0.5"> <span id="opacity-value">0.50</span></span>
<span></span><span><button id="run">Explain</button> <span id="status" class="busy"></span></span>
</div>
<div id="error" class="error"></div>
<div id="warnings" class="warnings"></div>
<table class="top" id="top5"></table>
<div class="cards" id="maps"></div>
<p id="downloads"></p>
</section>
<section id="flow">
<div class="controls">
<span>Image</span><span>the image chosen in Explain</span>
<span>Model</span><select id="flow-model"></select>
<span>Method</span><select id="flow-method"></select>
<span></span><span><button id="flow-run">Compute flow</button> <span id="flow-status" class="busy"></span></span>
<span>Block</span><span><input type="range" id="flow-slider" min="0" max="0" value="0" disabled>
<strong id="flow-layer"></strong> <button id="flow-play" disabled>play</button></span>
</div>
<div id="flow-error" class="error"></div>
<div id="flow-warnings" class="warnings"></div>
<div class="stack"><img id="flow-view" alt="" hidden><img id="flow-heat" alt="" hidden style="opacity:.5"></div>
</section>
<section id="similarity">
<div class="controls">
<span>Compare</span><span><label><input type="radio" name="sim-mode" value="pair" checked> two images</label>
<label><input type="radio" name="sim-mode" value="gallery"> a query against a gallery</label></span>
<span>Image A (query)</span><select id="sim-a"><option value="">pick an image (uploads too)</option></select>
<span class="sim-pair">Image B</span><select id="sim-b" class="sim-pair"><option value="">pick an image</option></select>
<span class="sim-gallery" hidden>Gallery</span><span class="sim-gallery" hidden><select id="sim-gallery" multiple size="5"></select>
<small>none selected: every image of the images folder</small></span>
<span class="sim-gallery" hidden>Top</span><input id="sim-top" class="sim-gallery" type="number" min="1" max="10" value="3" hidden>
<span>Model</span><select id="sim-model"></select>
<span>Methods</span><span id="sim-methods"></span>
<span>Metric</span><select id="sim-metric"><option>cosine</option><option>euclidean</option></select>
<span></span><span><button id="sim-run">Compare</button> <span id="sim-status" class="busy"></span></span>
</div>
<div id="sim-error" class="error"></div>
<p id="sim-score"></p>
<div class="cards" id="sim-maps"></div>
<div id="sim-matches"></div>
</section>
<section id="results">
<div class="controls"><span>Report card</span><select id="runs"><option value="">choose a results folder</option></select></div>
<div id="results-error" class="error"></div>
<iframe id="report" title="report card"></iframe>
<h3>Per-image scores <small>(click a column to sort, a row for its maps and curves)</small></h3>
<div class="scores-row"><table id="scores" class="scores"></table>
<div><div class="cards" id="record-maps"></div><p id="record-note" class="busy"></p>
<svg id="curves" width="360" height="220" viewBox="0 0 360 220" role="img" aria-label="deletion and insertion curves"></svg></div></div>
</section>
<script>
const $ = (id) => document.getElementById(id);
const esc = (text) => String(text).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
const state = {image: null, token: null, flow: null, timer: null, job: null, long: new Set()};
function show(view) {
  document.querySelectorAll("section").forEach(s => s.classList.toggle("on", s.id === view));
  document.querySelectorAll("header button").forEach(b => b.classList.toggle("on", b.dataset.view === view));
}
document.querySelectorAll("header button").forEach(b => b.onclick = () => show(b.dataset.view));
async function api(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({error: "the server sent no JSON (HTTP " + response.status + ")"}));
  if (!response.ok) throw new Error(body.error || ("HTTP " + response.status));
  return body;
}
const post = (url, data) => api(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(data)});
function fail(box, err) { $(box).textContent = "error: " + err.message; }
function option(select, value, text) { const o = document.createElement("option"); o.value = value; o.textContent = text; select.append(o); return o; }
function imageOption(ref, text) { for (const s of ["picked", "sim-a", "sim-b", "sim-gallery"]) option($(s), ref, text); }

async function init() {
  const info = await api("/api/info");
  for (const m of info.models) for (const s of ["model", "flow-model", "sim-model"]) option($(s), m.name, m.name);
  for (const name of info.similarity_methods) {
    const label = document.createElement("label");
    label.innerHTML = `<input type="checkbox" value="${esc(name)}"${name === "sfam" ? " checked" : ""}> ${esc(name)}`;
    $("sim-methods").append(label);
  }
  for (const m of info.methods) {
    if (m.long) state.long.add(m.name);
    if (m.kind === "flow") option($("flow-method"), m.name, m.name);
    const label = document.createElement("label"); label.title = m.summary;
    label.innerHTML = `<input type="checkbox" value="${esc(m.name)}"${m.name === "gradcam" ? " checked" : ""}> ${esc(m.name)}`;
    $("methods").append(label);
  }
  const vit = info.models.find(m => m.name.includes("vit")); if (vit) $("flow-model").value = vit.name;
  if (info.images) for (const name of await api("/api/images")) imageOption("file:" + name, name);
  if (info.images_total > info.images_listed)
    $("note").textContent = `The list shows the first ${info.images_listed} of the ${info.images_total} images in the folder (sorted by name).`;
  if (info.results) for (const run of await api("/api/results")) option($("runs"), run, run);
  await loadLayers();
}
async function loadLayers() {
  const select = $("layer"); select.textContent = "";
  const model = $("model").value;
  const info = await api("/api/info");
  const fallback = info.models.find(m => m.name === model).layer;
  option(select, "", `model default (${fallback})`);
  for (const l of await api("/api/layers?model=" + encodeURIComponent(model)))
    if (l.shape) option(select, l.name, `${l.name}  [${l.shape.join("×")}]`);
}
$("model").onchange = () => loadLayers().then(predict).catch(e => fail("error", e));

async function chooseImage(ref) {
  state.image = ref; $("preview").src = previewUrl(ref); $("preview").hidden = false; $("error").textContent = "";
  await predict();
}
async function predict() {
  if (!state.image) return;
  const top = await post("/api/predict", {model: $("model").value, image: state.image});
  const select = $("target"); select.textContent = ""; option(select, "", "predicted class");
  for (const c of top) option(select, String(c.index), `${c.name} (${c.index}) ${(100 * c.probability).toFixed(1)} %`);
  $("top5").innerHTML = top.map(c => `<tr><td>${esc(c.name)}</td><td>${(100 * c.probability).toFixed(1)} %</td></tr>`).join("");
}
const previews = {};  // upload ref -> the browser's own copy of the file
$("upload").onchange = async () => {
  $("error").textContent = "";
  let first = null; const errors = [];  // one line per file refused, shown after the first upload is chosen
  for (const file of $("upload").files) {
    const form = new FormData(); form.append("file", file);
    try {
      const up = await api("/api/upload", {method: "POST", body: form});
      previews[up.image] = URL.createObjectURL(file);
      imageOption(up.image, "uploaded: " + file.name);
      first = first || up.image;
    } catch (e) { errors.push(`${file.name}: ${e.message}`); }
  }
  if (first) { $("picked").value = first; await chooseImage(first).catch(e => errors.push(e.message)); }
  if (errors.length) $("error").textContent = errors.map(e => "error: " + e).join("\n");
};
$("picked").onchange = () => { if ($("picked").value) chooseImage($("picked").value).catch(e => fail("error", e)); };
function previewUrl(ref) {
  return ref.startsWith("upload:") ? previews[ref] : "/files/images/" + ref.slice(5).split("/").map(encodeURIComponent).join("/");
}
function opacity() { return Number($("opacity").value); }
$("opacity").oninput = () => {
  $("opacity-value").textContent = opacity().toFixed(2);
  document.querySelectorAll("#maps img.heat").forEach(img => img.style.opacity = opacity());
  document.querySelectorAll("#maps a.png").forEach(a => a.href = pngUrl(a.dataset.method));
};
const pngUrl = (method) => `/api/result/${state.token}/map.png?method=${encodeURIComponent(method)}&alpha=${opacity()}`;
function card(view, m) {
  const div = document.createElement("div"); div.className = "card";
  div.innerHTML = `<h3></h3><div class="stack"><img class="view" alt="view"><img class="heat" alt="map"></div>
    <div class="bar"></div><div class="ends"></div><a class="png" download>PNG</a>`;
  div.querySelector("h3").textContent = `${m.method} @ ${m.layer}`;
  div.querySelector("img.view").src = view;
  const heat = div.querySelector("img.heat"); heat.src = m.heat; heat.style.opacity = opacity(); heat.dataset.method = m.method;
  div.querySelector(".bar").style.background = m.gradient;
  div.querySelector(".ends").innerHTML = m.labels.map(t => `<span>${t}</span>`).join("");
  const a = div.querySelector("a.png"); a.dataset.method = m.method; a.href = pngUrl(m.method);
  return div;
}
$("run").onclick = async () => {
  $("error").textContent = ""; $("warnings").textContent = "";
  if (!state.image) { $("error").textContent = "error: upload an image or pick one first"; return; }
  const methods = [...document.querySelectorAll("#methods input:checked")].map(i => i.value);
  const target = $("target-text").value.trim() || $("target").value || null;
  $("status").textContent = "computing…"; $("run").disabled = true;
  try {
    const r = await compute({model: $("model").value, image: state.image, methods,
      layer: $("layer").value || null, target, cmap: $("cmap").value});
    state.token = r.token; $("warnings").textContent = r.warnings.join("\n");
    $("maps").textContent = "";
    for (const m of r.maps) $("maps").append(card(r.view, m));
    $("downloads").innerHTML = `explained: ${r.target ? `${esc(r.target.name)} (${r.target.index})` : "no class (an embedding)"} · <a id="npz" download href="/api/result/${r.token}/maps.npz">all maps (NPZ)</a>`;
  } catch (e) { fail("error", e); }
  finally { $("status").textContent = ""; $("run").disabled = false; }
};

const pause = (ms) => new Promise(resolve => setTimeout(resolve, ms));
async function compute(body) {  // long methods run as a job: progress and Cancel above the views
  if (!body.methods.some(m => state.long.has(m.split("@")[0]))) return await post("/api/explain", body);
  let job = await post("/api/jobs", body);
  showJob(job);
  while (job.state === "queued" || job.state === "running") {
    await pause(250);
    job = await api("/api/jobs/" + job.id);
    showJob(job);
  }
  if (job.state === "done") return job.result;
  throw new Error(job.state === "cancelled" ? "cancelled" : job.error);
}
function showJob(job) {
  state.job = job; $("job").hidden = false;
  const passes = job.passes_expected ? `, forward pass ${job.passes} of about ${job.passes_expected}`
    : job.passes ? `, forward pass ${job.passes}` : "";
  const running = `running ${job.step} (method ${Math.min(job.done + 1, job.total)} of ${job.total}${passes}), ${job.elapsed_s.toFixed(0)} s`;
  $("job-state").textContent = (job.state === "running" ? running : `${job.label}: ` + (job.state === "queued" ? "queued (waiting for the device)" : job.state))
    + (job.cancelling ? ", cancelling…" : "");
  const bar = $("job-progress"), within = job.passes_expected ? Math.min(job.passes / job.passes_expected, 0.99) : 0;
  bar.max = job.total;
  if (job.state === "running" && !job.passes_expected && job.done === 0) bar.removeAttribute("value");  // unknown: indeterminate
  else bar.value = job.done + within;
  $("job-cancel").disabled = job.cancelling || !(job.state === "queued" || job.state === "running");
}
$("job-cancel").onclick = () => { if (state.job) post(`/api/jobs/${state.job.id}/cancel`, {}).then(showJob).catch(e => fail("error", e)); };

function showBlock(i) {
  const frame = state.flow.flow[i];
  $("flow-heat").src = frame.heat; $("flow-layer").textContent = `${frame.layer} (${i + 1}/${state.flow.flow.length})`;
}
$("flow-run").onclick = async () => {
  $("flow-error").textContent = ""; $("flow-warnings").textContent = "";
  if (!state.image) { $("flow-error").textContent = "error: upload an image or pick one in Explain first"; return; }
  $("flow-status").textContent = "computing…";
  try {
    const r = await compute({model: $("flow-model").value, image: state.image, methods: [$("flow-method").value]});
    state.flow = r.maps[0]; $("flow-warnings").textContent = r.warnings.join("\n");
    if (!state.flow.flow) throw new Error(`${state.flow.method} gives no flow`);
    $("flow-view").src = r.view; $("flow-view").hidden = false; $("flow-heat").hidden = false;
    const slider = $("flow-slider"); slider.max = state.flow.flow.length - 1; slider.value = slider.max; slider.disabled = false;
    $("flow-play").disabled = false; showBlock(Number(slider.value));
  } catch (e) { fail("flow-error", e); }
  finally { $("flow-status").textContent = ""; }
};
$("flow-slider").oninput = () => showBlock(Number($("flow-slider").value));
$("flow-play").onclick = () => {
  if (state.timer) { clearInterval(state.timer); state.timer = null; $("flow-play").textContent = "play"; return; }
  $("flow-play").textContent = "stop";
  state.timer = setInterval(() => {
    const slider = $("flow-slider"); slider.value = (Number(slider.value) + 1) % (Number(slider.max) + 1);
    showBlock(Number(slider.value));
  }, 600);
};
$("runs").onchange = async () => {
  const run = $("runs").value;
  $("report").src = run ? "/files/results/" + run.split("/").map(encodeURIComponent).join("/") + "/index.html" : "about:blank";
  $("scores").textContent = ""; $("curves").textContent = ""; $("results-error").textContent = ""; $("record-maps").textContent = "";
  if (!run) return;
  try { state.scores = await api("/api/scores?run=" + encodeURIComponent(run)); state.sort = null; scoreTable(); }
  catch (e) { fail("results-error", e); }
};
function scoreColumns() {
  const metrics = [...new Set(state.scores.flatMap(r => Object.keys(r.metrics || {})))];
  return ["image", "model", "method", "label", "predicted", ...metrics.map(m => "metric:" + m)];
}
const cell = (row, col) => col.startsWith("metric:") ? (row.metrics || {})[col.slice(7)] : row[col];
function scoreTable() {
  const cols = scoreColumns(), table = $("scores");
  const rows = [...state.scores];
  if (state.sort) rows.sort((a, b) => {
    const x = cell(a, state.sort.col), y = cell(b, state.sort.col);
    return (x > y ? 1 : x < y ? -1 : 0) * state.sort.dir;
  });
  table.textContent = "";
  const head = table.insertRow();
  for (const col of cols) {
    const th = document.createElement("th"); th.dataset.col = col;
    th.textContent = col.replace("metric:", "") + (state.sort && state.sort.col === col ? (state.sort.dir > 0 ? " ▲" : " ▼") : "");
    th.onclick = () => { state.sort = {col, dir: state.sort && state.sort.col === col ? -state.sort.dir : 1}; scoreTable(); };
    head.append(th);
  }
  for (const r of rows) {
    const tr = table.insertRow();
    for (const col of cols) { const v = cell(r, col); tr.insertCell().textContent = typeof v === "number" && !Number.isInteger(v) ? v.toFixed(3) : (v ?? ""); }
    tr.onclick = () => { table.querySelectorAll("tr.picked").forEach(t => t.classList.remove("picked")); tr.classList.add("picked"); drawCurves(r); recordMaps(r); };
  }
}
function drawCurves(r) {
  const svg = $("curves"), colours = ["#c62828", "#1565c0", "#2e7d32", "#6a1b9a"];
  const curves = Object.entries(r.curves || {});
  let parts = `<text x="8" y="14" font-size="11">${esc(r.image)} · ${esc(r.method)}</text>`
    + `<line x1="30" y1="200" x2="350" y2="200" stroke="#999"/><line x1="30" y1="20" x2="30" y2="200" stroke="#999"/>`;
  curves.forEach(([name, ys], k) => {
    const pts = ys.map((y, i) => `${(30 + 320 * i / Math.max(ys.length - 1, 1)).toFixed(1)},${(200 - 180 * y).toFixed(1)}`).join(" ");
    parts += `<polyline class="curve" data-name="${esc(name)}" fill="none" stroke="${colours[k % 4]}" stroke-width="1.5" points="${pts}"/>`
      + `<text x="260" y="${120 + 14 * k}" font-size="11" fill="${colours[k % 4]}">${esc(name)}</text>`;
  });
  if (!curves.length) parts += `<text x="40" y="110" font-size="12">no curves for this record</text>`;
  svg.innerHTML = parts;
}
async function recordMaps(r) {
  const box = $("record-maps"), run = $("runs").value;
  box.textContent = ""; $("record-note").textContent = "computing the maps…"; $("results-error").textContent = "";
  try {
    const res = await api(`/api/record-maps?run=${encodeURIComponent(run)}&image=${encodeURIComponent(r.image)}&model=${encodeURIComponent(r.model)}`);
    for (const m of res.maps) box.append(mapCard(res.view, m, `${m.method} @ ${m.layer}`));
    $("record-note").textContent = `${res.image} · ${res.model}: maps computed again from the run's model and data`;
  } catch (e) { $("record-note").textContent = ""; fail("results-error", e); }
}
function mapCard(view, m, title) {
  const div = document.createElement("div"); div.className = "card";
  div.innerHTML = `<h3></h3><div class="stack"><img class="view" alt="view"><img class="heat" alt="map" style="opacity:.5"></div>
    <div class="bar"></div><div class="ends"></div>`;
  div.querySelector("h3").textContent = title;
  div.querySelector("img.view").src = view; div.querySelector("img.heat").src = m.heat;
  div.querySelector(".bar").style.background = m.gradient;
  div.querySelector(".ends").innerHTML = m.labels.map(t => `<span>${t}</span>`).join("");
  return div;
}
function pairCard(viewA, viewB, m, title) {
  const div = document.createElement("div"); div.className = "card pair";
  div.innerHTML = `<h3></h3><div class="pair-stacks"><div class="stack"><img class="view" alt="A"><img class="heat a" alt="map A" style="opacity:.5"></div>
    <div class="stack"><img class="view" alt="B"><img class="heat b" alt="map B" style="opacity:.5"></div></div>
    <div class="bar" style="width:454px"></div><div class="ends" style="width:454px"></div>`;
  div.querySelector("h3").textContent = title;
  const [a, b] = div.querySelectorAll("img.view"); a.src = viewA; b.src = viewB;
  div.querySelector("img.heat.a").src = m.query; div.querySelector("img.heat.b").src = m.match;
  div.querySelector(".bar").style.background = m.gradient;
  div.querySelector(".ends").innerHTML = m.labels.map(t => `<span>${t}</span>`).join("");
  return div;
}
const simMode = () => document.querySelector("input[name=sim-mode]:checked").value;
document.querySelectorAll("input[name=sim-mode]").forEach(r => r.onchange = () => {
  document.querySelectorAll(".sim-pair").forEach(e => e.hidden = simMode() !== "pair");
  document.querySelectorAll(".sim-gallery").forEach(e => e.hidden = simMode() !== "gallery");
});
$("sim-run").onclick = async () => {
  $("sim-error").textContent = ""; $("sim-score").textContent = ""; $("sim-maps").textContent = ""; $("sim-matches").textContent = "";
  const pair = simMode() === "pair";
  if (!$("sim-a").value || (pair && !$("sim-b").value)) { $("sim-error").textContent = "error: pick " + (pair ? "both images" : "a query image"); return; }
  const methods = [...document.querySelectorAll("#sim-methods input:checked")].map(i => i.value);
  const picked = [...$("sim-gallery").selectedOptions].map(o => o.value);
  const body = {model: $("sim-model").value, a: $("sim-a").value, methods, metric: $("sim-metric").value, cmap: $("cmap").value,
    b: pair ? $("sim-b").value : null, gallery: !pair && picked.length ? picked : null, top: Number($("sim-top").value)};
  $("sim-status").textContent = "computing…"; $("sim-run").disabled = true;
  try {
    const r = await post("/api/similarity", body);
    if (r.mode === "pair") {
      $("sim-score").textContent = `${r.metric} similarity ${r.score.toFixed(4)}`;
      for (const m of r.maps) $("sim-maps").append(pairCard(r.views[0], r.views[1], m, `${m.method} @ ${m.layer}: A | B`));
    } else {
      $("sim-score").textContent = `top ${r.matches.length} of ${r.gallery} gallery images (${r.metric})`
        + (r.excluded_query ? "; the query itself is left out" : "");
      for (const match of r.matches) {
        const div = document.createElement("div"); div.className = "match";
        const name = match.image.replace(/^(file|upload):/, "");
        div.innerHTML = `<h4>#${match.rank} ${esc(name)} · score <span class="score">${match.score.toFixed(4)}</span></h4><div class="cards"></div>`;
        for (const m of match.maps) div.querySelector(".cards").append(pairCard(r.query_view, match.view, m, `${m.method}: query | match`));
        $("sim-matches").append(div);
      }
    }
  } catch (e) { fail("sim-error", e); }
  finally { $("sim-status").textContent = ""; $("sim-run").disabled = false; }
};
init().catch(e => fail("error", e));
</script></body></html>
"""
