// PolypIndex viewer: a query tracklet beside its matches. Vanilla JS, same-origin API calls
// only; with access control on, every call sends the key from the key field
// (sessionStorage) as `Authorization: Bearer`, images included (fetched as blobs).
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "polypindex.apiKey";
const viewer = (window.__viewer = { loadMs: null, searchMs: null, searchCompleteMs: null, searches: 0 });
const state = {
  health: null, procedures: [], procedureCache: new Map(), imageCache: new Map(),
  query: null, results: [], mapPoints: [],
};

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c != null) node.append(c instanceof Node ? c : String(c));
  return node;
}

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path, { method = "GET", body } = {}) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  let response;
  try { response = await fetch(path, init); } catch (e) { throw new ApiError(0, "network", `cannot reach the service: ${e.message}`); }
  if (response.ok) return response.json();
  throw await apiError(response);
}

async function apiError(response) {
  let code = "http_error", message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) ({ code, message } = body.error);
  } catch (_) { /* not the error body */ }
  if (response.status === 401) $("key-form").hidden = false;
  return new ApiError(response.status, code, message);
}

// An image endpoint as an object URL (fetched with the key; cached for the page's life).
function imageUrl(path) {
  if (!state.imageCache.has(path)) {
    state.imageCache.set(path, fetch(path, { headers: headers() }).then(async (r) => {
      if (!r.ok) throw await apiError(r);
      return URL.createObjectURL(await r.blob());
    }));
  }
  return state.imageCache.get(path);
}

function img(path, attrs = {}) {
  const node = el("img", { alt: attrs.alt || "", class: attrs.class });
  node.dataset.src = path;
  node.ready = imageUrl(path).then((url) => new Promise((resolve) => {
    node.onload = () => resolve(true);
    node.onerror = () => resolve(false);
    node.src = url;
  }), (err) => { node.title = err.message; node.classList.add("missing"); return false; });
  return node;
}

function showError(err) {
  const box = $("error");
  box.textContent = err instanceof ApiError ? `${err.message} (${err.code})` : String(err.message || err);
  box.hidden = false;
}
function clearError() { $("error").hidden = true; $("error").textContent = ""; }

const pct = (p) => `${Math.round(p * 100)}%`;
const frames = (t) => `frames ${t.start_frame}–${t.end_frame}`;
function predictionPart(task, p) {
  // a probe below min_probe_auroc (reliable: false) shows no class as a decision
  if (p.reliable === false) return `${task} not reliable (${pct(p.probability)} ${p.label.replace("_", "-")})`;
  return `${p.label.replace("_", "-")} ${pct(p.probability)}`;
}
function predictionText(predictions) {
  const parts = [];
  for (const task of ["size", "histology"]) {
    if (predictions && predictions[task]) parts.push(predictionPart(task, predictions[task]));
  }
  return parts.length ? parts.join(" · ") : "no predictions";
}

// A probability and a threshold printed so that the printed numbers compare as the
// numbers do (model.scoring.reid.format_pair): more decimals while they would print
// alike, never "p=0.13 < 0.13".
function formatPair(p, t, digits = 2) {
  let d = digits;
  while (d < 12 && p !== t) {
    const a = p.toFixed(d), b = t.toFixed(d);
    if (a !== b) return [a, b];
    d += 1;
  }
  return [p.toFixed(d), t.toFixed(d)];
}
const ANSWER_WORDS = { same: "same polyp", different: "different", uncertain: "uncertain" };
function decisionLabel(d) {
  const word = ANSWER_WORDS[d.answer] || "uncertain";
  const p = d.probability;
  if (p == null) return `${word} · no calibrated probability`;
  if (d.answer === "same" && d.same_threshold != null && p < 1) {
    const [a, b] = formatPair(p, d.same_threshold);
    return `${word} · p=${a} ≥ ${b}`;
  }
  if (d.answer === "different" && d.different_threshold != null) {
    const [a, b] = formatPair(p, d.different_threshold);
    return `${word} · p=${a} ≤ ${b}`;
  }
  if (d.answer === "uncertain" && d.same_threshold != null) {
    const [a, b] = formatPair(p, d.same_threshold);
    return `${word} · p=${a} (same needs ≥ ${b})`;
  }
  return `${word} · p=${p.toFixed(2)}`;
}

// -- start-up ------------------------------------------------------------------------------

async function start() {
  const t0 = performance.now();
  clearError();
  try {
    state.health = await api("/healthz");
    const h = state.health;
    $("status").textContent = h.encoder_version
      ? `encoder ${h.encoder_version} · ${h.index_size ?? "?"} vectors · ${h.status}`
      : `${h.status}: ${(h.reasons || []).join("; ")}`;
    if (h.auth === "keys") $("key-form").hidden = false;
    await Promise.all([loadProcedures(), loadMap()]);
    const fromHash = Number(new URLSearchParams(location.hash.slice(1)).get("q"));
    if (fromHash > 0) await setQueryId(fromHash, { search: true });
    else if (state.procedures.length) await selectProcedure(state.procedures[0].uid);
  } catch (err) {
    showError(err);
  }
  viewer.loadMs = performance.now() - t0;
  document.body.dataset.loaded = "1";
}

async function loadProcedures() {
  const version = state.health && state.health.encoder_version;
  const all = [];
  for (let offset = 0; offset !== null && all.length < 5000;) {
    const q = new URLSearchParams({ limit: "500", offset: String(offset) });
    if (version) q.set("encoder_version", version);
    const page = await api(`/procedures?${q}`);
    all.push(...page.procedures);
    offset = page.next_offset;
  }
  state.procedures = all;
  const select = $("procedure");
  select.replaceChildren(...all.map((p) => el("option", { value: p.uid }, `${p.uid} (${p.n_tracklets})`)));
}

async function procedure(uid) {
  if (!state.procedureCache.has(uid)) {
    state.procedureCache.set(uid, api(`/procedures/${encodeURIComponent(uid)}`).catch((e) => {
      state.procedureCache.delete(uid); throw e;
    }));
  }
  return state.procedureCache.get(uid);
}

async function selectProcedure(uid) {
  $("procedure").value = uid;
  const detail = await procedure(uid);
  renderTimeline($("procedure-tracklets"), detail, state.query && state.query.id, new Set());
  return detail;
}

// -- timelines -----------------------------------------------------------------------------

// The tracklet's polyp entity (when the service grouped its procedure): other bars are
// coloured by it, in tones that are neither the query's blue nor the matches' orange.
function entityOf(tracklet) { return tracklet.entity_id; }
const ENTITY_COLOURS = ["#7fb58a", "#a48ac2", "#6fb7c4", "#c9a36b", "#d48fb4", "#98a86a", "#8d9bc2", "#c98a7f"];

// Lanes for bars that overlap in time (tracklets arrive sorted by start frame).
function lanes(tracklets, most) {
  const ends = [];
  return tracklets.map((t) => {
    let lane = ends.findIndex((end) => end < t.start_frame);
    if (lane < 0) lane = ends.length < most ? ends.length : ends.indexOf(Math.min(...ends));
    ends[lane] = t.end_frame;
    return lane;
  });
}

function renderTimeline(container, detail, queryId, matches) {
  const first = detail.first_frame ?? 0, last = detail.last_frame ?? 1;
  const span = Math.max(1, last - first);
  const lane = lanes(detail.tracklets, 6), laneHeight = 9;
  container.style.height = `${(Math.max(0, ...lane) + 1) * laneHeight + 6}px`;
  container.replaceChildren(...detail.tracklets.map((t, i) => {
    const left = ((t.start_frame - first) / span) * 100;
    const width = Math.max(0.6, ((t.end_frame - t.start_frame) / span) * 100);
    const cls = ["bar", t.tracklet_id === queryId ? "query" : "", matches.has(t.tracklet_id) ? "match" : ""].join(" ");
    const entity = entityOf(t);
    const style = `left:${left}%;width:${width}%;top:${3 + lane[i] * laneHeight}px;height:${laneHeight - 2}px` + (entity != null && !cls.includes("match") && t.tracklet_id !== queryId
      ? `;background:${ENTITY_COLOURS[entity % ENTITY_COLOURS.length]}` : "");
    return el("div", {
      class: cls, style, "data-id": t.tracklet_id,
      title: `#${t.tracklet_id} ${t.key}\n${frames(t)}${entity != null ? `\nentity ${entity}` : ""}\n${predictionText(t.predictions)}`,
      onclick: () => setQueryId(t.tracklet_id, { search: true }).catch(showError),
    });
  }));
}

async function renderTimelines() {
  const box = $("timelines");
  const q = state.query;
  const uids = [];
  if (q && q.record) uids.push(q.record.procedure_uid);
  for (const r of state.results) if (!uids.includes(r.procedure_uid) && uids.length < 5) uids.push(r.procedure_uid);
  const matches = new Set(state.results.map((r) => r.tracklet_id));
  const details = await Promise.all(uids.map((uid) => procedure(uid)));
  box.replaceChildren(...details.map((d) => {
    const line = el("div", { class: "timeline" });
    renderTimeline(line, d, q && q.id, matches);
    const label = d.procedure.uid === (q && q.record && q.record.procedure_uid) ? `${d.procedure.uid} (query)` : d.procedure.uid;
    return el("div", { class: "row" }, el("span", { class: "uid", title: d.procedure.uid }, label), line);
  }));
}

// -- the query -----------------------------------------------------------------------------

async function setQueryId(id, { search = false } = {}) {
  clearError();
  const record = await api(`/tracklets/${id}`);
  state.query = { kind: "id", id, record };
  history.replaceState(null, "", `#q=${id}`);
  if ($("procedure").value !== record.procedure_uid) $("procedure").value = record.procedure_uid;
  $("frame").value = record.start_frame;
  selectProcedure(record.procedure_uid).catch(showError);
  renderQueryCard();
  window.indexMap.setHighlights(id, []);
  if (search) await runSearch();
}

function renderQueryCard() {
  const q = state.query, card = $("query-card");
  card.hidden = false;
  if (q.kind === "id") {
    const r = q.record;
    const strip = img(`/tracklets/${r.tracklet_id}/strip?frames=6&height=96`, { class: "strip", alt: `frames of tracklet ${r.tracklet_id}` });
    strip.ready.then((ok) => {
      if (!ok && r.thumbnail_url) strip.replaceWith(img(r.thumbnail_url, { class: "strip", alt: "thumbnail" }));
    });
    card.replaceChildren(
      el("div", { class: "strip-box" }, strip),
      el("div", { class: "meta", id: "query-meta" },
        el("div", {}, el("strong", {}, `Query #${r.tracklet_id}`)),
        el("div", {}, r.procedure_uid), el("div", {}, `${r.key} · ${frames(r)}`),
        el("div", {}, predictionText(r.predictions)),
        r.identity_label ? el("div", { class: "muted" }, `annotated identity ${r.identity_label}`) : null),
    );
  } else {
    card.replaceChildren(
      el("div", { class: "strip-box upload-strip" }, q.canvases),
      el("div", { class: "meta", id: "query-meta" }, el("strong", {}, "Query: uploaded frames"), el("div", {}, `${q.frames.length} frame(s), box [${q.frames[0].bbox.join(", ")}]`)),
    );
  }
}

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

async function uploadQuery() {
  const files = [...$("upload-files").files];
  if (!files.length) throw new Error("choose one or more frame images first");
  const bbox = ["box-x", "box-y", "box-w", "box-h"].map((id) => Number($(id).value));
  const urls = await Promise.all(files.map(readDataUrl));
  const canvases = await Promise.all(urls.slice(0, 8).map((url) => new Promise((resolve) => {
    const image = new Image();
    image.onload = () => {
      const c = el("canvas", { width: image.naturalWidth, height: image.naturalHeight });
      const ctx = c.getContext("2d");
      ctx.drawImage(image, 0, 0);
      ctx.strokeStyle = "#3cdc3c"; ctx.lineWidth = Math.max(1, image.naturalHeight / 60);
      ctx.strokeRect(bbox[0], bbox[1], bbox[2], bbox[3]);
      resolve(c);
    };
    image.onerror = () => resolve(el("span", { class: "muted" }, "not an image"));
    image.src = url;
  })));
  state.query = { kind: "frames", frames: urls.map((image_b64) => ({ image_b64, bbox })), canvases };
  history.replaceState(null, "", "#");
  renderQueryCard();
  window.indexMap.setHighlights(null, []);
}

// -- search --------------------------------------------------------------------------------

function queryInput() {
  const q = state.query;
  return q.kind === "id" ? { tracklet_id: q.id } : { frames: q.frames };
}

async function runSearch() {
  if (!$("upload-form").hidden) await uploadQuery();
  else if (!state.query) throw new Error("pick a query first: a procedure's tracklet, or upload frames");
  clearError();
  const t0 = performance.now();
  const body = { query: queryInput(), k: Number($("k").value) || 8 };
  if (state.query.kind === "id" && $("exclude-own").checked) body.exclude_same_procedure = true;
  if ($("only-diminutive").checked) body.predicted_size = "diminutive";
  if ($("histology").value) body.predicted_histology = $("histology").value;
  $("search-info").textContent = "searching…";
  let response;
  try {
    response = await api("/search", { method: "POST", body });
  } catch (err) {
    $("search-info").textContent = "";
    throw err;
  }
  state.results = response.results;
  const cards = state.results.map(card);
  $("results").replaceChildren(...cards);
  if (!cards.length) $("results").append(el("p", { class: "muted" }, "no match under these filters"));
  viewer.searchMs = performance.now() - t0;
  window.indexMap.setHighlights(state.query.kind === "id" ? state.query.id : null, state.results.map((r) => r.tracklet_id));
  await Promise.all(cards.map((c) => c.querySelector("img").ready));
  viewer.searchCompleteMs = performance.now() - t0;
  viewer.searches += 1;
  $("search-info").textContent = `${state.results.length} of k=${body.k} · ${Math.round(viewer.searchCompleteMs)} ms`;
  document.body.dataset.searches = String(viewer.searches);
  renderTimelines().catch(showError);
}

function card(r) {
  const entity = r.entity_id != null ? ` · entity ${r.entity_id}` : "";
  return el("article", { class: "card", "data-id": r.tracklet_id, onclick: () => setQueryId(r.tracklet_id, { search: true }).catch(showError) },
    img(`/tracklets/${r.tracklet_id}/thumbnail`, { alt: `tracklet ${r.tracklet_id}` }),
    el("div", {}, el("span", { class: "score" }, r.score.toFixed(3)), el("span", { class: "id" }, `#${r.tracklet_id}`)),
    decisionBox(r),
    el("div", { title: r.procedure_uid }, r.procedure_uid.length > 24 ? `…${r.procedure_uid.slice(-23)}` : r.procedure_uid),
    el("div", { class: "muted" }, `${frames(r)}${entity}`),
    el("div", {}, predictionText(r.predictions)));
}

function decisionBox(r) {
  // each hit carries the decision on (query, hit): no /reid per card
  const d = r.decision;
  if (!d) return el("div", { class: "decision muted" }, "no decision");
  const cls = { same: "same", different: "diff", uncertain: "uncertain" }[d.answer] || "uncertain";
  const why = d.reason ? `${d.context}: ${d.reason}` : d.context;
  return el("div", { class: `decision ${cls}`, "data-answer": d.answer, "data-context": d.context, title: why }, decisionLabel(d));
}

// -- the map -------------------------------------------------------------------------------

async function loadMap(method = $("map-method").value) {
  const m = await api(`/index/map?limit=2000&method=${method}`);
  state.mapPoints = m.points;
  $("map-method").replaceChildren(...m.methods.map((x) => el("option", { value: x, selected: x === m.method }, x.toUpperCase())));
  $("map-info").textContent = `${m.method.toUpperCase()} · ${m.sampled} of ${m.total}`;
  window.indexMap.setPoints(m.points);
  renderLegend();
}

function renderLegend() {
  const entries = window.indexMap.legend();
  const spans = entries.slice(0, 40).map(([k, c]) => el("span", { style: `--c:${c}` }, k));
  if (entries.length > 40) spans.push(el("span", { class: "muted" }, `+${entries.length - 40} more`));
  $("legend").replaceChildren(...spans);
}

function hover(p, x, y) {
  const tip = $("map-tip");
  if (!p) { tip.hidden = true; return; }
  const image = img(`/tracklets/${p.tracklet_id}/thumbnail`, { alt: "" });
  const labels = Object.values(p.predictions || {}).join(", ");
  tip.replaceChildren(el("div", {}, image, el("div", {}, `#${p.tracklet_id} ${p.procedure_uid}`), labels ? el("div", { class: "muted" }, labels) : null));
  tip.style.left = `${Math.min(x + 12, 290)}px`;
  tip.style.top = `${Math.max(0, y - 60)}px`;
  tip.hidden = false;
}

// -- wiring --------------------------------------------------------------------------------

function tab(which) {
  const indexed = which === "indexed";
  $("tab-indexed").setAttribute("aria-selected", String(indexed));
  $("tab-upload").setAttribute("aria-selected", String(!indexed));
  $("indexed-form").hidden = !indexed;
  $("upload-form").hidden = indexed;
  $("exclude-own").disabled = !indexed;
  if (!indexed) state.query = null;
}

function wire() {
  window.indexMap = new window.IndexMapView($("map"), {
    onHover: hover,
    onPick: (p) => setQueryId(p.tracklet_id, { search: true }).catch(showError),
  });
  $("tab-indexed").onclick = () => tab("indexed");
  $("tab-upload").onclick = () => tab("upload");
  $("procedure").onchange = (e) => selectProcedure(e.target.value).catch(showError);
  $("frame").onchange = async () => {
    try {
      const detail = await procedure($("procedure").value);
      const f = Number($("frame").value);
      const dist = (t) => (f < t.start_frame ? t.start_frame - f : f > t.end_frame ? f - t.end_frame : 0);
      const best = [...detail.tracklets].sort((a, b) => dist(a) - dist(b))[0];
      if (best) await setQueryId(best.tracklet_id, { search: true });
    } catch (err) { showError(err); }
  };
  $("upload-files").onchange = () => { state.query = null; };
  $("search").onclick = () => runSearch().catch(showError);
  $("colour-by").onchange = (e) => { window.indexMap.colourBy = e.target.value; window.indexMap.draw(); renderLegend(); };
  $("map-method").onchange = (e) => loadMap(e.target.value).catch(showError);
  $("key-form").onsubmit = (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    state.imageCache.clear(); state.procedureCache.clear();
    start();
  };
  if (sessionStorage.getItem(KEY_STORAGE)) $("key-form").hidden = false;
}

wire();
start();
