// vaekit explore: the page. Every picture is decoded by the Python process behind /api/*;
// this script only draws the test points, follows the pointer and asks.
"use strict";

const PLANE = 380;          // canvas side in CSS pixels
const PICK_RADIUS = 6;      // a click this close to a test point picks it
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const page = { runs: [], hover: null, label: null, a: null, b: null, base: "zero", temperature: 1, seed: 0, extent: 5, pending: 0 };

const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k === "colour") e.style.background = v;   // CSSOM: the page's CSP refuses style attributes
    else e.setAttribute(k, v);
  }
  kids.forEach((k) => e.append(k));
  return e;
};

function busy(delta) {
  page.pending += delta;
  document.body.dataset.pending = String(page.pending);
}

async function api(path, body) {
  busy(1);
  try {
    const r = await fetch(path, body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const answer = await r.json();
    if (!r.ok) throw new Error(answer.error || r.statusText);
    return answer;
  } catch (e) {
    $("status").textContent = String(e.message || e);
    throw e;
  } finally {
    setTimeout(() => busy(-1), 0);   // after the caller's follow-up requests have started: 0 means the page is settled
  }
}

// One request in flight per key; while it runs only the newest wish waits (the pointer moves faster than decodes).
const lanes = new Map();
function latest(key, job) {
  const lane = lanes.get(key) || { running: false, next: null };
  lanes.set(key, lane);
  lane.next = job;
  if (lane.running) return;
  const drain = async () => {
    lane.running = true;
    while (lane.next) {
      const j = lane.next;
      lane.next = null;
      try { await j(); } catch (e) { /* shown in #status */ }
    }
    lane.running = false;
  };
  drain();
}

function withLabel(run, body) {
  return run.info.conditional ? { ...body, label: page.label ?? 0 } : body;
}

// ---------- a run with a continuous z: plane, pointer, pinned code, sliders, strip, samples
function continuousRun(run, k) {
  const info = run.info;
  const d = info.latent_dim;
  run.dims = d >= 2 ? [info.order[0], info.order[1]] : [0];
  run.z = new Array(d).fill(0);      // the pinned code
  run.baseCode = null;                // image A's code when the others are held there
  const box = $(`run-${k}`);
  const canvas = el("canvas", { class: "plane", id: `plane-${k}`, width: PLANE, height: PLANE });
  const pointer = el("img", { class: "big", id: `pointer-${k}`, alt: "decoded under the pointer" });
  const pinned = el("img", { class: "big", id: `pinned-${k}`, alt: "decoded at the pinned code" });
  const where = el("figcaption", { id: `where-${k}`, text: "move the pointer over the plane" });
  box.append(el("div", { class: "top" }, canvas, el("div", { class: "decoded" },
    el("figure", {}, pointer, where), el("figure", {}, pinned, el("figcaption", { text: "pinned (click)" })))));
  if (info.num_classes) {
    box.append(el("div", { class: "legend", id: `legend-${k}` }, `${info.label_name}:`,
      ...info.class_names.map((name, i) => el("span", {}, el("i", { colour: COLOURS[i % COLOURS.length] }), name))));
  }
  if (d > 2) {
    const pick = (axis) => {
      const s = el("select", { id: `dim-${axis}-${k}` });
      info.order.forEach((i) => s.append(el("option", { value: i, text: `z${i} (${info.usage_name} ${info.usage[i].toFixed(2)})` })));
      s.value = run.dims[axis];
      s.addEventListener("change", () => { run.dims[axis] = Number(s.value); loadPoints(run, k); });
      return s;
    };
    box.append(el("div", { class: "dims" }, "x ", pick(0), "y ", pick(1)));
  }
  run.canvas = canvas;
  run.pointer = pointer;
  run.pinned = pinned;
  box.append(el("h3", { text: `z, one slider per dimension, most used first (${info.usage_name} shown)` }));
  const sliders = el("div", { class: "sliders", id: `sliders-${k}` });
  run.sliders = new Map();
  info.order.forEach((i) => {
    const s = el("input", { type: "range", min: -page.extent, max: page.extent, step: 0.01, value: 0, class: `slider-${k}`, "data-dim": i });
    const out = el("output", { text: "0.00" });
    s.addEventListener("input", () => { run.z[i] = Number(s.value); out.textContent = Number(s.value).toFixed(2); decodePinned(run, k); drawPlane(run); });
    run.sliders.set(i, [s, out]);
    sliders.append(el("label", {}, `z${i} ${info.usage_name} ${info.usage[i].toFixed(2)}`, s, out));
  });
  box.append(sliders);
  box.append(el("h3", { text: "interpolation from image A to image B" }));
  box.append(el("div", { class: "strip", id: `strip-line-${k}` }), el("div", { class: "strip", id: `strip-circle-${k}` }));
  canvas.addEventListener("pointermove", hover);
  canvas.addEventListener("click", (ev) => click(ev, k));
  loadPoints(run, k);
  decodePinned(run, k);
}

const toPixel = (v) => (v / page.extent + 1) * PLANE / 2;
const toZ = (p) => (p / PLANE * 2 - 1) * page.extent;

async function loadPoints(run, k) {
  run.points = await api("/api/points", { run: k, dims: run.dims });
  drawPlane(run);
}

function pointY(run, n) {
  // a 1-D latent has no second axis: its points are spread up and down by index so they can be told apart
  return run.dims.length === 2 ? run.points.y[n] : toZ(((run.points.index[n] * 7919) % 997) / 997 * PLANE);
}

function drawPlane(run) {
  const c = run.canvas.getContext("2d");
  c.clearRect(0, 0, PLANE, PLANE);
  c.strokeStyle = "#ddd";
  for (let v = -Math.floor(page.extent); v <= page.extent; v += 1) {
    c.beginPath(); c.moveTo(toPixel(v), 0); c.lineTo(toPixel(v), PLANE); c.stroke();
    if (run.dims.length === 2) { c.beginPath(); c.moveTo(0, PLANE - toPixel(v)); c.lineTo(PLANE, PLANE - toPixel(v)); c.stroke(); }
  }
  const p = run.points;
  if (p) {
    for (let n = 0; n < p.x.length; n++) {
      c.fillStyle = p.label ? COLOURS[p.label[n] % COLOURS.length] : "#555";
      c.globalAlpha = 0.55;
      c.fillRect(toPixel(p.x[n]) - 1.5, PLANE - toPixel(pointY(run, n)) - 1.5, 3, 3);
    }
    c.globalAlpha = 1;
  }
  const mark = (index, text) => {
    const n = p ? p.index.indexOf(index) : -1;
    if (n < 0) return;
    const x = toPixel(p.x[n]), y = PLANE - toPixel(pointY(run, n));
    c.strokeStyle = "#000"; c.lineWidth = 2; c.beginPath(); c.arc(x, y, 6, 0, 2 * Math.PI); c.stroke(); c.lineWidth = 1;
    c.fillStyle = "#000"; c.font = "bold 12px sans-serif"; c.fillText(text, x + 8, y - 8);
  };
  if (page.a !== null) mark(page.a, "A");
  if (page.b !== null) mark(page.b, "B");
  if (page.hover) {   // the pointer, on every run's plane: the same z in each
    const [hx, hy] = [toPixel(page.hover[0]), PLANE - toPixel(run.dims.length === 2 ? page.hover[1] : 0)];
    c.strokeStyle = "#000"; c.beginPath(); c.moveTo(hx - 7, hy); c.lineTo(hx + 7, hy); c.moveTo(hx, hy - 7); c.lineTo(hx, hy + 7); c.stroke();
  }
  const zx = run.z[run.dims[0]], zy = run.dims.length === 2 ? run.z[run.dims[1]] : 0;
  c.strokeStyle = "#d00"; c.lineWidth = 2;
  c.strokeRect(toPixel(zx) - 5, PLANE - toPixel(zy) - 5, 10, 10);
  c.lineWidth = 1;
}

function codeAt(run, u, v) {
  const z = run.base === null ? new Array(run.info.latent_dim).fill(0) : run.base.slice();
  z[run.dims[0]] = u;
  if (run.dims.length === 2) z[run.dims[1]] = v;
  return z;
}

function planeXY(ev) {
  const r = ev.currentTarget.getBoundingClientRect();
  const px = (ev.clientX - r.left) * PLANE / r.width, py = (ev.clientY - r.top) * PLANE / r.height;
  return [px, py, toZ(px), toZ(PLANE - py)];
}

function hover(ev) {
  const [, , u, v] = planeXY(ev);
  page.hover = [u, v];
  page.runs.forEach((run, k) => {
    if (run.info.discrete) return;
    drawPlane(run);
    const z = codeAt(run, u, v);
    $(`where-${k}`).textContent = `under the pointer: z${run.dims[0]} = ${u.toFixed(2)}` +
      (run.dims.length === 2 ? `, z${run.dims[1]} = ${v.toFixed(2)}` : "");
    latest(`pointer-${k}`, async () => {
      const r = await api("/api/decode", withLabel(run, { run: k, z: [z] }));
      run.pointer.src = r.images[0];
    });
  });
}

function nearestPoint(run, px, py) {
  const p = run.points;
  if (!p) return null;
  let best = null, bestD = PICK_RADIUS * PICK_RADIUS;
  for (let n = 0; n < p.x.length; n++) {
    const dx = toPixel(p.x[n]) - px, dy = PLANE - toPixel(pointY(run, n)) - py;
    if (dx * dx + dy * dy <= bestD) { bestD = dx * dx + dy * dy; best = p.index[n]; }
  }
  return best;
}

async function click(ev, from) {
  const [px, py, u, v] = planeXY(ev);
  const picked = nearestPoint(page.runs[from], px, py);
  if (picked !== null) {
    if (page.a === null || page.b !== null) { setA(picked); setB(null); } else setB(picked);
    for (const [k, run] of page.runs.entries()) {
      await setBase(run, k);
      if (run.info.discrete) continue;
      const t = await api("/api/test", withLabel(run, { run: k, index: picked }));
      pin(run, k, t.z);
    }
  } else {
    page.runs.forEach((run, k) => { if (!run.info.discrete) pin(run, k, codeAt(run, u, v)); });
  }
  refreshAll();
}

function pin(run, k, z) {
  run.z = z.slice();
  for (const [i, [s, out]] of run.sliders) { s.value = run.z[i]; out.textContent = run.z[i].toFixed(2); }
  decodePinned(run, k);
  drawPlane(run);
}

function decodePinned(run, k) {
  const z = run.z.map((v) => Math.max(-1000, Math.min(1000, v)));
  latest(`pinned-${k}`, async () => {
    const r = await api("/api/decode", withLabel(run, { run: k, z: [z] }));
    run.pinned.src = r.images[0];
  });
}

async function strip(run, k) {
  const line = $(`strip-line-${k}`), circle = $(`strip-circle-${k}`);
  if (page.a === null || page.b === null || run.info.discrete) { line.replaceChildren(); circle.replaceChildren(); return; }
  const r = await api("/api/interpolate", withLabel(run, { run: k, a: page.a, b: page.b, steps: 10 }));
  const row = (images, title) => [el("span", { text: title, class: "caption" }), ...images.map((s) => el("img", { class: "tile", src: s }))];
  line.replaceChildren(...row(r.line, "line "));
  circle.replaceChildren(...(r.circle ? row(r.circle, "circle ") : []));
}

async function setBase(run, k) {
  run.base = null;
  if (page.base === "a" && page.a !== null && !run.info.discrete) {
    run.base = (await api("/api/test", withLabel(run, { run: k, index: page.a }))).z;
  }
}

// ---------- a VQ-VAE: the code grid of image A, each position re-drawn on a click
function discreteRun(run, k) {
  const box = $(`run-${k}`);
  box.append(el("div", { class: "top" },
    el("figure", {}, el("img", { class: "big", id: `image-${k}`, alt: "test image A" }), el("figcaption", { text: "image A" })),
    el("figure", {}, el("img", { class: "big", id: `recon-${k}`, alt: "decoded codes" }),
      el("figcaption", { text: "decoded from the codes (click a code to re-draw it)" }))));
  box.append(el("h3", { text: `codes of image A: ${run.info.code_grid.join(" x ")} indices into ${run.info.codebook_size}` }));
  box.append(el("table", { class: "codes", id: `codes-${k}` }));
}

async function showCodes(run, k) {
  if (page.a === null) return;
  const t = await api("/api/test", { run: k, index: page.a });
  $(`image-${k}`).src = t.image;
  $(`recon-${k}`).src = t.reconstruction;
  run.codes = t.codes;
  drawCodes(run, k, null);
}

function drawCodes(run, k, changed) {
  const [rows, cols] = run.info.code_grid;
  const table = $(`codes-${k}`);
  table.replaceChildren();
  for (let r = 0; r < rows; r++) {
    const tr = el("tr");
    for (let c = 0; c < cols; c++) {
      const m = r * cols + c;
      const td = el("td", { text: run.codes[m], "data-position": m, class: m === changed ? "changed" : "" });
      td.addEventListener("click", () => latest(`codes-${k}`, async () => {
        const r2 = await api("/api/redraw", { run: k, codes: run.codes, position: m, temperature: page.temperature, seed: ++page.seed });
        run.codes = r2.codes;
        $(`recon-${k}`).src = r2.image;
        drawCodes(run, k, m);
      }));
      tr.append(td);
    }
    table.append(tr);
  }
}

// ---------- what every run shows
async function samples(run, k) {
  const r = await api("/api/samples", withLabel(run, { run: k, n: 16, temperature: page.temperature, seed: page.seed }));
  $(`samples-${k}`).replaceChildren(...r.images.map((s) => el("img", { class: "tile", src: s })));
}

function refreshAll() {
  page.runs.forEach((run, k) => {
    if (run.info.discrete) { latest(`codes-${k}`, () => showCodes(run, k)); }
    else {
      latest(`strip-${k}`, () => strip(run, k));
      decodePinned(run, k);
      drawPlane(run);
    }
  });
}

function refreshSamples() {
  page.runs.forEach((run, k) => latest(`samples-${k}`, () => samples(run, k)));
}

function setA(i) { page.a = i; $("index-a").value = i === null ? "" : i; }
function setB(i) { page.b = i; $("index-b").value = i === null ? "" : i; }

async function start() {
  const info = await api("/api/info");
  page.extent = Math.max(...info.runs.map((r) => r.extent || 5));
  const classes = info.runs.find((r) => r.conditional);
  if (classes) {
    page.label = 0;
    const s = $("class");
    classes.class_names.forEach((name, i) => s.append(el("option", { value: i, text: name })));
    $("class-control").hidden = false;
    s.addEventListener("change", () => { page.label = Number(s.value); page.runs.forEach((run, k) => setBase(run, k)); refreshAll(); refreshSamples(); });
  }
  $("base-control").hidden = !info.runs.some((r) => r.latent_dim > 2);
  info.runs.forEach((runInfo, k) => {
    const run = { info: runInfo, base: null };
    page.runs.push(run);
    const box = el("section", { class: "run", id: `run-${k}` }, el("h2", { text: runInfo.describe }));
    $("runs").append(box);
    if (runInfo.discrete) discreteRun(run, k); else continuousRun(run, k);
    box.append(el("h3", { text: `samples: z ~ ${runInfo.prior}` }), el("div", { class: "samples", id: `samples-${k}` }));
  });
  const index = (input, set) => input.addEventListener("change", async () => {
    const v = input.value === "" ? null : Number(input.value);
    set(v);
    if (set === setA) for (const [k, run] of page.runs.entries()) await setBase(run, k);
    refreshAll();
  });
  index($("index-a"), setA);
  index($("index-b"), setB);
  $("base").addEventListener("change", async (ev) => {
    page.base = ev.target.value;
    for (const [k, run] of page.runs.entries()) await setBase(run, k);
  });
  $("temperature").addEventListener("input", (ev) => {
    page.temperature = Number(ev.target.value);
    $("temperature-value").textContent = page.temperature.toFixed(2);
    refreshSamples();
  });
  $("redraw-samples").addEventListener("click", () => { page.seed += 1; refreshSamples(); });
  if (info.runs.some((r) => r.discrete)) { setA(0); refreshAll(); }
  refreshSamples();
  document.body.dataset.ready = "1";
}

start();
