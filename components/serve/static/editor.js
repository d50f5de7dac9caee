// The web editor: a client of the HTTP API like any other. It keeps the maps as loaded and
// the list of edits (the JSON of `pix2pixhd edit`, brush strokes and fills as `add` edits
// with masks); every generation sends both to POST /v1/edit, where model/editing.py applies
// them and the model renders before / after. Undo drops the last edit. No model logic here:
// the browser only draws masks and shows the maps the server returns.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  classes: [],
  byId: new Map(),
  cls: 26, // the brush's class (car, when the model has it)
  original: null, // {label: Blob, instance: Blob} as opened
  width: 0,
  height: 0,
  edits: [], // {edit, mask: {name, blob} | null}
  confirmed: 0, // edits the server has applied
  label: null, // label ids after the confirmed edits (Uint8Array)
  instance: null, // instance ids after the confirmed edits (Uint16Array)
  view: null, // label ids shown: confirmed + strokes not yet generated
  selected: null,
  stroke: null,
  masks: 0,
  work: Promise.resolve(), // mask encodings in order
  busy: false,
};
window.editor = state;

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

// With `serve --token-file`, /v1/* need "Authorization: Bearer <token>". On a 401 the page
// asks for the token once (the login form), keeps it in this tab's sessionStorage and sends
// it as that header, as any API client does: no cookie, so no request forgery from other
// sites, and nothing on the server beyond the header check.
const TOKEN_KEY = "pix2pixhd-token";
let tokenPrompt = null; // one prompt for the requests that got 401 together

function askToken(message) {
  if (!tokenPrompt) {
    tokenPrompt = new Promise((resolve) => {
      const form = $("login");
      $("login-message").textContent = message;
      form.hidden = false;
      $("token").focus();
      form.addEventListener(
        "submit",
        (event) => {
          event.preventDefault();
          sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
          $("token").value = "";
          form.hidden = true;
          tokenPrompt = null;
          resolve();
        },
        { once: true },
      );
    });
  }
  return tokenPrompt;
}

async function api(path, options = {}) {
  let response;
  for (;;) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = new Headers(options.headers || {});
    if (token) headers.set("Authorization", `Bearer ${token}`);
    response = await fetch(path, { ...options, headers });
    if (response.status !== 401) break;
    sessionStorage.removeItem(TOKEN_KEY);
    await askToken(token ? "that token was refused: try again" : "this server needs its API token");
  }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      message = body.error || message;
    } catch (_) {}
    throw new Error(message);
  }
  return response;
}

function base64Bytes(text) {
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function tool() {
  return document.querySelector("input[name=tool]:checked").value;
}

// ---- drawing ---------------------------------------------------------------------------

function draw() {
  const canvas = $("label-canvas");
  if (!state.view) return;
  canvas.width = state.width;
  canvas.height = state.height;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(state.width, state.height);
  const px = image.data;
  for (let i = 0; i < state.view.length; i++) {
    const c = state.byId.get(state.view[i]);
    const rgb = c ? c.color : [0, 0, 0];
    const lit = state.selected !== null && state.instance[i] === state.selected;
    for (let k = 0; k < 3; k++) px[4 * i + k] = lit ? (rgb[k] + 255) >> 1 : rgb[k];
    px[4 * i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

function mapPoint(event) {
  const rect = $("label-canvas").getBoundingClientRect();
  const x = Math.floor(((event.clientX - rect.left) * state.width) / rect.width);
  const y = Math.floor(((event.clientY - rect.top) * state.height) / rect.height);
  return [Math.min(Math.max(x, 0), state.width - 1), Math.min(Math.max(y, 0), state.height - 1)];
}

function stamp(mask, cls, [cx, cy]) {
  const r = Math.max(0, Math.floor($("brush-size").value / 2));
  for (let y = Math.max(0, cy - r); y <= Math.min(state.height - 1, cy + r); y++) {
    for (let x = Math.max(0, cx - r); x <= Math.min(state.width - 1, cx + r); x++) {
      if ((x - cx) ** 2 + (y - cy) ** 2 <= r * r) {
        mask[y * state.width + x] = 255;
        state.view[y * state.width + x] = cls;
      }
    }
  }
}

function line(mask, cls, [x0, y0], [x1, y1]) {
  const steps = Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0), 1);
  for (let s = 1; s <= steps; s++) {
    stamp(mask, cls, [Math.round(x0 + ((x1 - x0) * s) / steps), Math.round(y0 + ((y1 - y0) * s) / steps)]);
  }
}

function floodMask([x, y], cls) {
  const w = state.width, h = state.height, view = state.view;
  const target = view[y * w + x];
  const mask = new Uint8Array(w * h);
  if (target === cls) return null;
  const stack = [y * w + x];
  mask[y * w + x] = 255;
  while (stack.length) {
    const i = stack.pop();
    const px = i % w, py = (i - px) / w;
    for (const [nx, ny] of [[px - 1, py], [px + 1, py], [px, py - 1], [px, py + 1]]) {
      const j = ny * w + nx;
      if (nx >= 0 && ny >= 0 && nx < w && ny < h && !mask[j] && view[j] === target) {
        mask[j] = 255;
        stack.push(j);
      }
    }
  }
  for (let i = 0; i < mask.length; i++) if (mask[i]) view[i] = cls;
  return mask;
}

// ---- edits -----------------------------------------------------------------------------

function addMaskEdit(mask, cls) {
  const name = `mask${++state.masks}`;
  const entry = { edit: { op: "add", mask: name, label: cls }, mask: { name, blob: null } };
  state.edits.push(entry);
  state.work = state.work.then(async () => {
    entry.mask.blob = await PNG.encodeGray8(state.width, state.height, mask);
  });
  setStatus(`${state.edits.length - state.confirmed} edit(s) not generated yet: press Generate`);
  if ($("auto").checked) generate();
}

function instanceEdit(edit) {
  state.edits.push({ edit, mask: null });
  state.selected = null;
  $("selection").hidden = true;
  generate();
}

async function generate() {
  if (!state.original || state.busy) return;
  state.busy = true;
  $("generate").disabled = true;
  setStatus("generating…");
  try {
    await state.work;
    const form = new FormData();
    form.append("label", state.original.label, "label.png");
    form.append("instance", state.original.instance, "instance.png");
    form.append("edits", JSON.stringify({ edits: state.edits.map((e) => e.edit) }));
    for (const e of state.edits) if (e.mask) form.append(e.mask.name, e.mask.blob, `${e.mask.name}.png`);
    form.append("seed", $("seed").value || "0");
    form.append("samples", $("samples").value || "0");
    const result = await (await api("/v1/edit", { method: "POST", body: form })).json();
    const label = await PNG.decode(base64Bytes(result.label));
    const instance = await PNG.decode(base64Bytes(result.instance));
    Object.assign(state, {
      width: label.width,
      height: label.height,
      label: label.data,
      instance: instance.data,
      view: label.data.slice(),
      confirmed: state.edits.length,
    });
    $("result").src = `data:image/png;base64,${result.after}`;
    $("samples-row").replaceChildren(
      ...result.samples.map((png, k) => {
        const img = document.createElement("img");
        img.src = `data:image/png;base64,${png}`;
        img.alt = `sample ${k + 1}`;
        return img;
      }),
    );
    $("edit-log").replaceChildren(
      ...result.log.map((text) => Object.assign(document.createElement("li"), { textContent: text })),
    );
    draw();
    setStatus(`done: ${state.edits.length} edit(s)`);
  } catch (err) {
    // the server refused the newest edits: drop them, keep the last good state
    state.edits.length = state.confirmed;
    if (state.label) state.view = state.label.slice();
    draw();
    setStatus(err.message, true);
  } finally {
    state.busy = false;
    $("generate").disabled = false;
  }
}

async function openMaps(label, instance) {
  state.original = { label, instance };
  Object.assign(state, { edits: [], confirmed: 0, selected: null, label: null, view: null });
  $("selection").hidden = true;
  await generate();
}

// ---- selection -------------------------------------------------------------------------

async function select(point) {
  if (state.edits.length > state.confirmed) await generate();
  const id = state.instance[point[1] * state.width + point[0]];
  const cls = id >= 1000 ? Math.floor(id / 1000) : id;
  const info = state.byId.get(cls);
  state.selected = id;
  $("selection-name").textContent = `instance ${id} (${info ? info.name : cls})`;
  $("selection-class").value = String(cls);
  const clusters = info ? info.clusters : 0;
  $("selection-cluster").replaceChildren(
    ...Array.from({ length: clusters }, (_, k) => new Option(`cluster ${k}`, String(k))),
  );
  for (const id of ["selection-cluster", "selection-style", "selection-random"]) $(id).disabled = clusters === 0;
  $("selection").hidden = false;
  draw();
}

// ---- set-up ----------------------------------------------------------------------------

function choose(cls) {
  state.cls = cls;
  for (const b of document.querySelectorAll("#palette button")) b.classList.toggle("active", b.dataset.id === String(cls));
  if (tool() === "erase" || tool() === "select") $("tool-brush").checked = true;
}

async function init() {
  state.classes = await (await api("/v1/classes")).json();
  state.byId = new Map(state.classes.map((c) => [c.id, c]));
  if (!state.byId.has(state.cls)) state.cls = state.classes[state.classes.length - 1].id;
  $("palette").replaceChildren(
    ...state.classes.map((c) => {
      const b = document.createElement("button");
      b.id = `class-${c.id}`;
      b.dataset.id = String(c.id);
      b.title = `${c.name} (id ${c.id})`;
      const swatch = Object.assign(document.createElement("span"), { className: "swatch" });
      swatch.style.background = `rgb(${c.color.join(",")})`;
      b.append(swatch, c.name);
      b.addEventListener("click", () => choose(c.id));
      return b;
    }),
  );
  $("selection-class").replaceChildren(...state.classes.map((c) => new Option(c.name, String(c.id))));
  choose(state.cls);
  const health = await (await api("/healthz")).json();
  $("model-info").textContent = `${health.model} (${health.version})`;
  const samples = await (await api("/v1/samples")).json();
  $("sample-select").replaceChildren(...samples.map((s) => new Option(s, s)));
  $("open-sample").disabled = samples.length === 0;

  $("open-sample").addEventListener("click", async () => {
    const name = $("sample-select").value;
    const [label, instance] = await Promise.all(
      ["label", "instance"].map(async (role) => (await api(`/v1/samples/${name}/${role}`)).blob()),
    );
    await openMaps(label, instance);
  });
  $("open-upload").addEventListener("click", () => {
    const [label, instance] = [$("upload-label").files[0], $("upload-instance").files[0]];
    if (!label || !instance) return setStatus("choose a label map and an instance map (PNG)", true);
    openMaps(label, instance);
  });
  $("generate").addEventListener("click", generate);
  $("undo").addEventListener("click", () => {
    if (!state.edits.length) return;
    state.edits.length -= 1;
    state.confirmed = Math.min(state.confirmed, state.edits.length);
    state.selected = null;
    $("selection").hidden = true;
    generate();
  });
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "z") $("undo").click();
  });
  $("selection-relabel").addEventListener("click", () =>
    instanceEdit({ op: "relabel", instance: state.selected, to: Number($("selection-class").value) }),
  );
  $("selection-remove").addEventListener("click", () => instanceEdit({ op: "remove", instance: state.selected }));
  $("selection-style").addEventListener("click", () =>
    instanceEdit({ op: "style", instance: state.selected, cluster: Number($("selection-cluster").value) }),
  );
  $("selection-random").addEventListener("click", () => {
    const n = $("selection-cluster").options.length;
    instanceEdit({ op: "style", instance: state.selected, cluster: Math.floor(Math.random() * n) });
  });

  const canvas = $("label-canvas");
  canvas.addEventListener("pointerdown", (event) => {
    if (!state.view || state.busy) return;
    const point = mapPoint(event);
    const t = tool();
    if (t === "select") return void select(point);
    if (t === "fill") {
      const mask = floodMask(point, state.cls);
      draw();
      if (mask) addMaskEdit(mask, state.cls);
      return;
    }
    const cls = t === "erase" ? 0 : state.cls; // erase paints 'unlabeled' (id 0)
    state.stroke = { mask: new Uint8Array(state.width * state.height), cls, last: point };
    stamp(state.stroke.mask, cls, point);
    canvas.setPointerCapture(event.pointerId);
    draw();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!state.stroke) return;
    const point = mapPoint(event);
    line(state.stroke.mask, state.stroke.cls, state.stroke.last, point);
    state.stroke.last = point;
    draw();
  });
  const finish = () => {
    if (!state.stroke) return;
    const { mask, cls } = state.stroke;
    state.stroke = null;
    addMaskEdit(mask, cls);
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  setStatus(samples.length ? "open a sample or upload maps" : "upload a label map and an instance map");
}

init().catch((err) => setStatus(err.message, true));
