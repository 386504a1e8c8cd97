// The 2-D index map on a canvas: points coloured by a key, the query and its matches
// ringed, hover reports the nearest point, click picks it. No dependencies.
"use strict";

const PALETTE = ["#1769aa", "#e8731c", "#2e9e5b", "#c23b5a", "#7b52ab", "#8c6d31", "#d4a017",
  "#17a2b8", "#6c757d", "#e377c2", "#4b8f29", "#a05195", "#2f4b7c", "#ff7c43", "#665191",
  "#00876c", "#d45087", "#5f9ed1", "#b8860b", "#3d3d3d"];
const LABEL_COLOURS = { diminutive: "#2e9e5b", non_diminutive: "#c23b5a", adenoma: "#c23b5a",
  non_adenoma: "#2e9e5b", none: "#b8bec6" };

function colourFor(value, index) {
  if (value in LABEL_COLOURS) return LABEL_COLOURS[value];
  return PALETTE[index % PALETTE.length];
}

class IndexMapView {
  constructor(canvas, { onHover, onPick }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.points = [];
    this.colourBy = "procedure";
    this.query = null;
    this.matches = new Set();
    this.onHover = onHover;
    this.onPick = onPick;
    this.hovered = null;
    canvas.addEventListener("mousemove", (e) => this._move(e));
    canvas.addEventListener("mouseleave", () => { this.hovered = null; this.onHover(null); this.draw(); });
    canvas.addEventListener("click", (e) => {
      const p = this.pointAt(e.offsetX, e.offsetY);
      if (p) this.onPick(p);
    });
  }

  setPoints(points) { this.points = points; this.draw(); }

  setHighlights(query, matches) { this.query = query; this.matches = new Set(matches); this.draw(); }

  // key of a point under the current colouring
  keyOf(p) {
    if (this.colourBy === "procedure") return p.procedure_uid;
    if (this.colourBy === "entity") return p.entity_id == null ? "none" : `${p.procedure_uid}#${p.entity_id}`;
    return (p.predictions && p.predictions[this.colourBy]) || "none";
  }

  legend() {
    const keys = [...new Set(this.points.map((p) => this.keyOf(p)))].sort();
    return keys.map((k, i) => [k, colourFor(k, i)]);
  }

  // canvas pixel position of a point (coordinates are in [-1, 1])
  position(p) {
    const w = this.canvas.width, h = this.canvas.height, pad = 12;
    return [pad + (p.x + 1) / 2 * (w - 2 * pad), pad + (1 - (p.y + 1) / 2) * (h - 2 * pad)];
  }

  // the point nearest to a mouse position (CSS pixels), within 8 px
  pointAt(cssX, cssY) {
    const sx = this.canvas.width / this.canvas.clientWidth, sy = this.canvas.height / this.canvas.clientHeight;
    const x = cssX * sx, y = cssY * sy;
    let best = null, bestD = 64 * sx * sx;
    for (const p of this.points) {
      const [px, py] = this.position(p);
      const d = (px - x) ** 2 + (py - y) ** 2;
      if (d < bestD) { best = p; bestD = d; }
    }
    return best;
  }

  // CSS-pixel position of a point (for tests and the tooltip)
  cssPosition(p) {
    const [x, y] = this.position(p);
    return [x * this.canvas.clientWidth / this.canvas.width, y * this.canvas.clientHeight / this.canvas.height];
  }

  _move(e) {
    const p = this.pointAt(e.offsetX, e.offsetY);
    if (p !== this.hovered) { this.hovered = p; this.draw(); }
    this.onHover(p, e.offsetX, e.offsetY);
  }

  draw() {
    const { ctx, canvas } = this;
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const colours = new Map(this.legend());
    const dim = this.query != null;
    for (const p of this.points) {
      const [x, y] = this.position(p);
      ctx.globalAlpha = dim && p.tracklet_id !== this.query && !this.matches.has(p.tracklet_id) ? 0.45 : 0.95;
      ctx.fillStyle = colours.get(this.keyOf(p));
      ctx.beginPath(); ctx.arc(x, y, 3.2, 0, 2 * Math.PI); ctx.fill();
    }
    ctx.globalAlpha = 1;
    for (const p of this.points) {
      const isQuery = p.tracklet_id === this.query, isMatch = this.matches.has(p.tracklet_id);
      if (!isQuery && !isMatch && p !== this.hovered) continue;
      const [x, y] = this.position(p);
      ctx.lineWidth = isQuery ? 3 : 2;
      ctx.strokeStyle = isQuery ? "#0b3a60" : isMatch ? "#e8731c" : "#000";
      ctx.beginPath(); ctx.arc(x, y, isQuery ? 8 : 6, 0, 2 * Math.PI); ctx.stroke();
    }
  }
}

window.IndexMapView = IndexMapView;
window.colourFor = colourFor;
