// dissect-kernels paint: pick a concept, paint a region, add or remove the concept there.
// Talks only to this server's JSON API; every text from it is set with textContent.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const brush = $("brush"), ctx = brush.getContext("2d");
  const SIZE = 448;                                   // the brush canvas' own pixels
  const state = { info: null, seed: 0, edits: [], drawing: false, last: null, busy: false };
  brush.width = SIZE; brush.height = SIZE;

  function status(text, error) {
    $("status").textContent = text;
    $("status").className = error ? "error" : "";
  }

  function setBusy(busy) {
    state.busy = busy;
    document.body.dataset.busy = busy ? "1" : "0";
    for (const id of ["add", "remove", "undo", "reset", "load", "random"]) $(id).disabled = busy;
  }

  async function api(path, body) {
    const init = body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    const response = await fetch(path, init);
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (!response.ok) throw new Error((data && data.error) || ("HTTP " + response.status));
    return data;
  }

  function showImage(data, original) {
    $("image").src = data.image;
    if (original) $("original").src = data.image;
    document.body.dataset.renders = String(Number(document.body.dataset.renders) + 1);
  }

  function currentConcept() {
    return state.info.concepts.find((c) => c.name === $("concept").value);
  }

  function describeConcept() {
    const c = currentConcept();
    if (!c) return;
    $("units").value = c.units.join(", ");
    const how = c.source === "ace" ? "ranked by causal effect (ACE) in the run"
                                   : "dissection detectors labelled with it, best IoU first";
    $("concept-info").textContent = c.units.length + " units, " + how + ".";
  }

  function parseUnits() {
    const parts = $("units").value.split(/[\s,]+/).filter((s) => s.length);
    if (!parts.length || parts.some((s) => !/^\d{1,9}$/.test(s))) {
      throw new Error("units must be whole numbers separated by commas");
    }
    return parts.map(Number);
  }

  // The painted region at the layer's grid: each cell's painted fraction, in [0, 1].
  function maskAtGrid() {
    const [h, w] = state.info.grid;
    const alpha = ctx.getImageData(0, 0, SIZE, SIZE).data;
    const mask = [];
    let any = false;
    for (let i = 0; i < h; i++) {
      const row = [];
      const y0 = Math.floor(i * SIZE / h), y1 = Math.floor((i + 1) * SIZE / h);
      for (let j = 0; j < w; j++) {
        const x0 = Math.floor(j * SIZE / w), x1 = Math.floor((j + 1) * SIZE / w);
        let hit = 0;
        for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) if (alpha[(y * SIZE + x) * 4 + 3] > 0) hit++;
        const v = Math.round(100 * hit / ((y1 - y0) * (x1 - x0))) / 100;
        any = any || v > 0;
        row.push(v);
      }
      mask.push(row);
    }
    return any ? mask : null;
  }

  function listEdits() {
    const list = $("edits");
    list.replaceChildren();
    for (const e of state.edits) {
      const li = document.createElement("li");
      li.textContent = (e.mode === "add" ? "add " : "remove ") + (e.concept || "units") + " (units " + e.units.join(", ") + ")";
      list.appendChild(li);
    }
  }

  async function render(note) {
    setBusy(true);
    try {
      const data = state.edits.length
        ? await api("/api/paint", { seed: state.seed, edits: state.edits })
        : await api("/api/sample?seed=" + state.seed);
      showImage(data, false);
      status(note + (data.ms !== undefined ? " (regenerated in " + data.ms + " ms)." : "."));
      return true;
    } catch (err) {
      status(err.message, true);
      return false;
    } finally {
      setBusy(false);
    }
  }

  async function loadSample(seed) {
    state.seed = seed; state.edits = []; listEdits();
    ctx.clearRect(0, 0, SIZE, SIZE);
    setBusy(true);
    try {
      showImage(await api("/api/sample?seed=" + seed), true);
      status("Sample " + seed + ".");
    } catch (err) {
      status(err.message, true);
    } finally {
      setBusy(false);
    }
  }

  async function apply(mode) {
    if (state.busy || !state.info) return;
    const mask = maskAtGrid();
    if (!mask) { status("Paint a region on the image first.", true); return; }
    let units;
    try { units = parseUnits(); } catch (err) { status(err.message, true); return; }
    const edit = { mode: mode, mask: mask, units: units };
    if ($("concept").value) edit.concept = $("concept").value;
    state.edits.push(edit);
    if (await render((mode === "add" ? "Added " : "Removed ") + (edit.concept || "the units"))) {
      ctx.clearRect(0, 0, SIZE, SIZE);
    } else {
      state.edits.pop();
    }
    listEdits();
  }

  function point(ev) {
    const r = brush.getBoundingClientRect();
    return [(ev.clientX - r.left) * SIZE / r.width, (ev.clientY - r.top) * SIZE / r.height];
  }

  function stroke(from, to) {
    ctx.strokeStyle = "rgb(255, 0, 200)";              // shown at half opacity (paint.css)
    ctx.lineWidth = Number($("size").value); ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(from[0], from[1]); ctx.lineTo(to[0], to[1]); ctx.stroke();
  }

  brush.addEventListener("pointerdown", (ev) => {
    state.drawing = true; state.last = point(ev);
    brush.setPointerCapture(ev.pointerId);
    stroke(state.last, state.last);
  });
  brush.addEventListener("pointermove", (ev) => {
    if (!state.drawing) return;
    const p = point(ev); stroke(state.last, p); state.last = p;
  });
  for (const type of ["pointerup", "pointercancel"]) brush.addEventListener(type, () => { state.drawing = false; });

  $("add").addEventListener("click", () => apply("add"));
  $("remove").addEventListener("click", () => apply("remove"));
  $("clear").addEventListener("click", () => ctx.clearRect(0, 0, SIZE, SIZE));
  $("concept").addEventListener("change", describeConcept);
  $("undo").addEventListener("click", () => {
    if (state.busy || !state.edits.length) return;
    state.edits.pop(); listEdits(); render("Undone");
  });
  $("reset").addEventListener("click", () => { if (!state.busy) loadSample(state.seed); });
  $("load").addEventListener("click", () => {
    const v = $("seed").value.trim();
    if (!/^\d{1,10}$/.test(v) || Number(v) > state.info.max_sample) {
      status("The sample number must be a whole number in [0, " + state.info.max_sample + "].", true);
      return;
    }
    loadSample(Number(v));
  });
  $("random").addEventListener("click", () => {
    const seed = Math.floor(Math.random() * 100000);
    $("seed").value = String(seed); loadSample(seed);
  });

  async function start() {
    try {
      state.info = await api("/api/concepts");
    } catch (err) {
      status("Cannot read the run's concepts: " + err.message, true);
      return;
    }
    const info = state.info;
    $("run-info").textContent = info.layer + " · " + info.units + " units · grid " +
      info.grid.join("×") + " · images " + info.image.join("×");
    for (const c of info.concepts) {
      const opt = document.createElement("option");
      opt.value = c.name; opt.textContent = c.name + (c.source === "ace" ? " (ACE)" : "");
      $("concept").appendChild(opt);
    }
    if (!info.concepts.length) status("This run labels no unit with a concept; type unit numbers to paint.", true);
    describeConcept();
    await loadSample(0);
  }
  start();
})();
