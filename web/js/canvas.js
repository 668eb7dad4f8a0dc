// The canvas view: pan/zoom transform, hit testing and drawing the whole graph on demand.
// Input handling lives in interaction.js; node drawing in render_node.js.

import { drawNode, drawNodeErrors } from "./render_node.js";
import { typeColor } from "./types.js";
import { TITLE_H, inputPos, isReroute, layoutBody, nodeBounds, outputPos } from "./layout.js";
import { clamp } from "./dom.js";

const BACKGROUND = "#1b1d23";
const GRID_MINOR = "rgba(255,255,255,0.035)";
const GRID_MAJOR = "rgba(255,255,255,0.075)";
const MIN_SCALE = 0.1;
const MAX_SCALE = 4;
const LOW_DETAIL_SCALE = 0.5;
const GROUP_TITLE_H = 34;

export class GraphCanvas {
  constructor(element, app) {
    this.el = element;
    this.ctx = element.getContext("2d");
    this.app = app;
    this.scale = 1;
    this.offset = [0, 0];
    this.selected = new Set();
    this.dragLink = null; // {from: [x, y], to: [x, y], type}
    this.box = null; // [x1, y1, x2, y2] in graph units
    this.hoverSocket = null;
    this.frameListeners = new Set();
    this.stats = { draws: 0, lastDrawMs: 0 };
    this.width = 0;
    this.height = 0;
    this.images = new Map();
    this.dirty = false;
    this.frame = this.frame.bind(this);
    new ResizeObserver(() => this.resize()).observe(element);
    this.resize();
  }

  get graph() {
    return this.app.graph;
  }

  resize() {
    const rect = this.el.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    this.width = rect.width;
    this.height = rect.height;
    this.el.width = Math.max(1, Math.round(rect.width * dpr));
    this.el.height = Math.max(1, Math.round(rect.height * dpr));
    this.setDirty();
  }

  // -- coordinates --------------------------------------------------------------------------
  toGraph(clientX, clientY) {
    const rect = this.el.getBoundingClientRect();
    return [(clientX - rect.left) / this.scale - this.offset[0], (clientY - rect.top) / this.scale - this.offset[1]];
  }

  toClient(gx, gy) {
    const rect = this.el.getBoundingClientRect();
    return [(gx + this.offset[0]) * this.scale + rect.left, (gy + this.offset[1]) * this.scale + rect.top];
  }

  get ds() {
    return { scale: this.scale, offset: [this.offset[0], this.offset[1]] };
  }

  setView(ds) {
    if (!ds) return;
    const scale = Number(ds.scale);
    this.scale = Number.isFinite(scale) && scale > 0 ? clamp(scale, MIN_SCALE, MAX_SCALE) : 1;
    const off = Array.isArray(ds.offset) ? ds.offset : [ds.offset?.[0], ds.offset?.[1]];
    this.offset = [Number(off[0]) || 0, Number(off[1]) || 0];
    this.setDirty();
  }

  zoomAt(factor, clientX, clientY) {
    const before = this.toGraph(clientX, clientY);
    this.scale = clamp(this.scale * factor, MIN_SCALE, MAX_SCALE);
    const after = this.toGraph(clientX, clientY);
    this.offset[0] += after[0] - before[0];
    this.offset[1] += after[1] - before[1];
    this.setDirty();
  }

  panBy(dx, dy) {
    this.offset[0] += dx / this.scale;
    this.offset[1] += dy / this.scale;
    this.setDirty();
  }

  /** Frame the given nodes (all when omitted) in the view. */
  fitView(nodes = this.graph.nodes) {
    if (!nodes.length || !this.width) {
      this.setView({ scale: 1, offset: [0, 0] });
      return;
    }
    let [x1, y1, x2, y2] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const node of nodes) {
      const [x, y, w, h] = nodeBounds(node);
      x1 = Math.min(x1, x);
      y1 = Math.min(y1, y);
      x2 = Math.max(x2, x + w);
      y2 = Math.max(y2, y + h);
    }
    const margin = 60;
    const scale = clamp(Math.min(this.width / (x2 - x1 + 2 * margin), this.height / (y2 - y1 + 2 * margin)), MIN_SCALE, 1);
    this.scale = scale;
    this.offset = [-x1 + (this.width / scale - (x2 - x1)) / 2, -y1 + (this.height / scale - (y2 - y1)) / 2];
    this.setDirty();
  }

  anyNodeVisible() {
    const [vx, vy, vw, vh] = [-this.offset[0], -this.offset[1], this.width / this.scale, this.height / this.scale];
    return this.graph.nodes.some((n) => {
      const [x, y, w, h] = nodeBounds(n);
      return x < vx + vw && x + w > vx && y < vy + vh && y + h > vy;
    });
  }

  centerOn(node) {
    const [x, y, w, h] = nodeBounds(node);
    this.offset = [this.width / this.scale / 2 - (x + w / 2), this.height / this.scale / 2 - (y + h / 2)];
    this.setDirty();
  }

  // -- hit testing --------------------------------------------------------------------------
  nodeAt(gx, gy, margin = 0) {
    const nodes = this.graph.nodes;
    for (let i = nodes.length - 1; i >= 0; i--) {
      const [x, y, w, h] = nodeBounds(nodes[i]);
      if (gx >= x - margin && gx <= x + w + margin && gy >= y - margin && gy <= y + h + margin) return nodes[i];
    }
    return null;
  }

  /** {node, index, output: bool} of a socket within reach of the point. */
  socketAt(gx, gy, node = null) {
    const radius = Math.max(10, 8 / this.scale);
    const candidates = node ? [node] : this.graph.nodes.slice().reverse();
    for (const n of candidates) {
      const [x, y, w, h] = nodeBounds(n);
      if (gx < x - radius || gx > x + w + radius || gy < y - radius || gy > y + h + radius) continue;
      if (n.flags.collapsed && !isReroute(n)) continue;
      for (let i = 0; i < n.outputs.length; i++) {
        const [sx, sy] = outputPos(n, i);
        if (Math.abs(gx - sx) <= radius && Math.abs(gy - sy) <= radius * 0.8) return { node: n, index: i, output: true };
      }
      for (let i = 0; i < n.inputs.length; i++) {
        const [sx, sy] = inputPos(n, i);
        const reach = isReroute(n) ? radius : Math.max(radius, 40);
        if (gx >= sx - radius && gx <= sx + reach && Math.abs(gy - sy) <= radius * 0.8) return { node: n, index: i, output: false };
      }
      if (node) break;
    }
    return null;
  }

  /** The widget row under a point of a node, with the row's geometry. */
  widgetAt(node, gx, gy) {
    if (node.flags.collapsed || isReroute(node)) return null;
    const layout = layoutBody(node);
    const lx = gx - node.pos[0];
    const ly = gy - node.pos[1];
    if (lx < 6 || lx > node.size[0] - 6) return null;
    for (const row of layout.rows) {
      if (ly >= row.y && ly <= row.y + row.h) return { widget: row.widget, x: lx - 10, y: ly - row.y, w: node.size[0] - 20, h: row.h, row };
    }
    return null;
  }

  groupAt(gx, gy) {
    for (let i = this.graph.groups.length - 1; i >= 0; i--) {
      const g = this.graph.groups[i];
      const [x, y, w, h] = g.bounding;
      if (gx >= x && gx <= x + w && gy >= y && gy <= y + h) {
        const corner = gx >= x + w - 14 && gy >= y + h - 14;
        const title = gy <= y + GROUP_TITLE_H;
        return { group: g, corner, title };
      }
    }
    return null;
  }

  nodesInGroup(group) {
    const [x, y, w, h] = group.bounding;
    return this.graph.nodes.filter((n) => {
      const [nx, ny, nw, nh] = nodeBounds(n);
      return nx >= x && ny >= y && nx + nw <= x + w && ny + nh <= y + h;
    });
  }

  // -- drawing ------------------------------------------------------------------------------
  setDirty() {
    if (!this.dirty) {
      this.dirty = true;
      requestAnimationFrame(this.frame);
    }
  }

  frame(time) {
    this.dirty = false;
    const start = performance.now();
    this.draw();
    this.stats.lastDrawMs = performance.now() - start;
    this.stats.draws += 1;
    for (const listener of this.frameListeners) listener(time, this.stats.lastDrawMs);
  }

  image(url) {
    let img = this.images.get(url);
    if (!img) {
      img = new Image();
      img.onload = () => this.setDirty();
      img.onerror = () => {};
      img.src = url;
      if (this.images.size > 400) this.images.delete(this.images.keys().next().value);
      this.images.set(url, img);
    }
    return img;
  }

  draw() {
    const ctx = this.ctx;
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = BACKGROUND;
    ctx.fillRect(0, 0, this.width, this.height);
    this.drawGrid(ctx);
    const s = this.scale * dpr;
    ctx.setTransform(s, 0, 0, s, this.offset[0] * s, this.offset[1] * s);
    const view = {
      scale: this.scale, lowDetail: this.scale < LOW_DETAIL_SCALE, selected: this.selected, run: this.app.runState,
      image: (url) => this.image(url), inputImageUrl: (name) => this.app.api.inputImageUrl(name),
    };
    const vx = -this.offset[0];
    const vy = -this.offset[1];
    const vw = this.width / this.scale;
    const vh = this.height / this.scale;
    this.drawGroups(ctx, vx, vy, vw, vh);
    this.drawLinks(ctx, vx, vy, vw, vh);
    const errored = [];
    for (const node of this.graph.nodes) {
      const [x, y, w, h] = nodeBounds(node);
      if (x > vx + vw || y > vy + vh || x + w < vx || y + h < vy - 20) continue;
      drawNode(ctx, node, view);
      if (view.run.errors.size && view.run.errors.has(String(node.id))) errored.push(node);
    }
    for (const node of errored) drawNodeErrors(ctx, node, view);
    if (this.dragLink) this.drawDragLink(ctx);
    if (this.box) {
      const [x1, y1, x2, y2] = this.box;
      ctx.fillStyle = "rgba(91,156,246,0.12)";
      ctx.strokeStyle = "rgba(91,156,246,0.9)";
      ctx.lineWidth = 1 / this.scale;
      ctx.fillRect(Math.min(x1, x2), Math.min(y1, y2), Math.abs(x2 - x1), Math.abs(y2 - y1));
      ctx.strokeRect(Math.min(x1, x2), Math.min(y1, y2), Math.abs(x2 - x1), Math.abs(y2 - y1));
    }
  }

  drawGrid(ctx) {
    const step = 20 * this.scale;
    const lines = (spacing, color) => {
      if (spacing < 7) return;
      const ox = ((this.offset[0] * this.scale) % spacing + spacing) % spacing;
      const oy = ((this.offset[1] * this.scale) % spacing + spacing) % spacing;
      ctx.beginPath();
      for (let x = ox; x < this.width; x += spacing) {
        ctx.moveTo(Math.round(x) + 0.5, 0);
        ctx.lineTo(Math.round(x) + 0.5, this.height);
      }
      for (let y = oy; y < this.height; y += spacing) {
        ctx.moveTo(0, Math.round(y) + 0.5);
        ctx.lineTo(this.width, Math.round(y) + 0.5);
      }
      ctx.strokeStyle = color;
      ctx.lineWidth = 1;
      ctx.stroke();
    };
    lines(step, GRID_MINOR);
    lines(step * 5, GRID_MAJOR);
  }

  drawGroups(ctx, vx, vy, vw, vh) {
    for (const g of this.graph.groups) {
      const [x, y, w, h] = g.bounding;
      if (x > vx + vw || y > vy + vh || x + w < vx || y + h < vy) continue;
      const color = g.color || "#3f789e";
      ctx.globalAlpha = 0.22;
      ctx.fillStyle = color;
      ctx.fillRect(x, y, w, h);
      ctx.globalAlpha = 0.5;
      ctx.fillRect(x, y, w, GROUP_TITLE_H);
      ctx.globalAlpha = 1;
      ctx.strokeStyle = color;
      ctx.lineWidth = 1.5;
      ctx.strokeRect(x, y, w, h);
      ctx.beginPath();
      ctx.moveTo(x + w - 12, y + h);
      ctx.lineTo(x + w, y + h - 12);
      ctx.lineTo(x + w, y + h);
      ctx.fillStyle = color;
      ctx.fill();
      if (this.scale >= 0.3) {
        ctx.font = `${g.font_size || 22}px sans-serif`;
        ctx.fillStyle = "#e8ecf4";
        ctx.textAlign = "left";
        ctx.textBaseline = "middle";
        ctx.fillText(g.title || "Group", x + 10, y + GROUP_TITLE_H / 2);
      }
      if (this.selectedGroup === g) {
        ctx.strokeStyle = "#f0f3fa";
        ctx.lineWidth = 1.5;
        ctx.strokeRect(x - 2, y - 2, w + 4, h + 4);
      }
    }
  }

  linkEnds(link) {
    const origin = this.graph.getNode(link.origin_id);
    const target = this.graph.getNode(link.target_id);
    if (!origin || !target) return null;
    return [outputPos(origin, link.origin_slot), inputPos(target, link.target_slot)];
  }

  drawLinks(ctx, vx, vy, vw, vh) {
    const byColor = new Map();
    for (const link of this.graph.links.values()) {
      const ends = this.linkEnds(link);
      if (!ends) continue;
      const [[x1, y1], [x2, y2]] = ends;
      const bend = Math.max(30, Math.abs(x2 - x1) * 0.5);
      if (Math.max(x1, x2) + bend < vx || Math.min(x1, x2) - bend > vx + vw
        || Math.max(y1, y2) < vy || Math.min(y1, y2) > vy + vh) continue;
      const color = typeColor(link.type);
      let list = byColor.get(color);
      if (!list) byColor.set(color, (list = []));
      list.push(x1, y1, x2, y2, bend);
    }
    ctx.lineWidth = this.scale < LOW_DETAIL_SCALE ? 2 / this.scale : 3;
    for (const [color, list] of byColor) {
      ctx.beginPath();
      for (let i = 0; i < list.length; i += 5) {
        const [x1, y1, x2, y2, bend] = [list[i], list[i + 1], list[i + 2], list[i + 3], list[i + 4]];
        ctx.moveTo(x1, y1);
        ctx.bezierCurveTo(x1 + bend, y1, x2 - bend, y2, x2, y2);
      }
      ctx.strokeStyle = color;
      ctx.stroke();
    }
  }

  drawDragLink(ctx) {
    const { from, to, type, reverse } = this.dragLink;
    const [a, b] = reverse ? [to, from] : [from, to];
    const bend = Math.max(30, Math.abs(b[0] - a[0]) * 0.5);
    ctx.beginPath();
    ctx.moveTo(a[0], a[1]);
    ctx.bezierCurveTo(a[0] + bend, a[1], b[0] - bend, b[1], b[0], b[1]);
    ctx.strokeStyle = typeColor(type);
    ctx.lineWidth = 3;
    ctx.setLineDash([8, 5]);
    ctx.stroke();
    ctx.setLineDash([]);
  }
}

export { TITLE_H, GROUP_TITLE_H };
