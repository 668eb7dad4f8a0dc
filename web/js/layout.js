// Geometry of a node: where its title, sockets, widgets and image area are, in graph units.
//
// As in ComfyUI's saves, node.pos is the top-left corner of the body and the title bar sits
// above it, so positions and sizes from ComfyUI files look the same here.

export const TITLE_H = 30;
export const SLOT_H = 20;
export const WIDGET_H = 22;
export const WIDGET_GAP = 4;
export const MULTILINE_MIN = 64;
export const IMAGE_MIN = 140;
export const FONT = "12px sans-serif";
export const TITLE_FONT = "bold 13px sans-serif";
export const REROUTE_SIZE = [75, 26];

let measureCtx = null;
const widthCache = new Map();

export function textWidth(text, font = FONT) {
  const key = font + "\u0000" + text;
  let width = widthCache.get(key);
  if (width === undefined) {
    measureCtx ||= document.createElement("canvas").getContext("2d");
    measureCtx.font = font;
    width = measureCtx.measureText(text).width;
    if (widthCache.size > 20000) widthCache.clear();
    widthCache.set(key, width);
  }
  return width;
}

const fitCache = new Map();

/** The text shortened with an ellipsis to fit maxWidth. */
export function fitText(text, maxWidth, font = FONT) {
  text = String(text);
  if (maxWidth <= 0) return "";
  if (textWidth(text, font) <= maxWidth) return text;
  const key = `${font}\u0000${Math.round(maxWidth)}\u0000${text}`;
  let fitted = fitCache.get(key);
  if (fitted === undefined) {
    let lo = 0;
    let hi = text.length;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (textWidth(text.slice(0, mid) + "…", font) <= maxWidth) lo = mid;
      else hi = mid - 1;
    }
    fitted = lo > 0 ? text.slice(0, lo) + "…" : "";
    if (fitCache.size > 5000) fitCache.clear();
    fitCache.set(key, fitted);
  }
  return fitted;
}

export function isReroute(node) {
  return node.type === "Reroute";
}

export function collapsedWidth(node) {
  return Math.max(80, textWidth(node.title || node.type, TITLE_FONT) + 44);
}

/** [x, y, w, h] of the whole node, title bar included. */
export function nodeBounds(node) {
  if (isReroute(node)) return [node.pos[0], node.pos[1], node.size[0], node.size[1]];
  if (node.flags.collapsed) return [node.pos[0], node.pos[1] - TITLE_H, collapsedWidth(node), TITLE_H];
  return [node.pos[0], node.pos[1] - TITLE_H, node.size[0], node.size[1] + TITLE_H];
}

export function slotRows(node) {
  return Math.max(node.inputs.length, node.outputs.length);
}

export function inputPos(node, index) {
  if (isReroute(node)) return [node.pos[0], node.pos[1] + node.size[1] / 2];
  if (node.flags.collapsed) return [node.pos[0], node.pos[1] - TITLE_H / 2];
  return [node.pos[0] + 10, node.pos[1] + (index + 0.7) * SLOT_H];
}

export function outputPos(node, index) {
  if (isReroute(node)) return [node.pos[0] + node.size[0], node.pos[1] + node.size[1] / 2];
  if (node.flags.collapsed) return [node.pos[0] + collapsedWidth(node), node.pos[1] - TITLE_H / 2];
  return [node.pos[0] + node.size[0] - 10, node.pos[1] + (index + 0.7) * SLOT_H];
}

export function visibleWidgets(node) {
  return node.widgets.filter((w) => !w.converted);
}

/** Extra read-only lines an unknown node shows for its saved widget values. */
export function unknownLines(node) {
  if (node.def || node.rawWidgets == null) return [];
  const values = Array.isArray(node.rawWidgets) ? node.rawWidgets
    : Object.entries(node.rawWidgets).map(([k, v]) => `${k}: ${JSON.stringify(v)}`);
  return values.map((v) => (typeof v === "string" ? v : JSON.stringify(v)).replace(/\s+/g, " "));
}

/**
 * Widget rows and the image area, relative to node.pos. Multi-line text widgets stretch to
 * fill the body unless the node shows an image, which then gets the room instead.
 */
export function layoutBody(node) {
  const key = `${node.size[0]}|${node.size[1]}|${node.widgets.length}|${node.inputs.length}|${node.outputs.length}|`
    + `${node.widgets.map((w) => (w.converted ? 1 : 0)).join("")}|${node.showsImage ? 1 : 0}`;
  if (node._layout && node._layout.key === key) return node._layout;
  const top = slotRows(node) * SLOT_H + 6;
  const widgets = visibleWidgets(node);
  const extra = unknownLines(node).length;
  let fixed = 0;
  let flexCount = 0;
  for (const w of widgets) {
    if (w.flexible) flexCount += 1;
    else fixed += w.height() + WIDGET_GAP;
  }
  const available = node.size[1] - top - fixed - extra * 16 - 6;
  let flexHeight = MULTILINE_MIN;
  if (flexCount && !node.showsImage) flexHeight = Math.max(MULTILINE_MIN, available / flexCount - WIDGET_GAP);
  const rows = [];
  let y = top;
  for (const w of widgets) {
    const h = w.flexible ? flexHeight : w.height();
    rows.push({ widget: w, y, h });
    y += h + WIDGET_GAP;
  }
  const linesTop = y;
  y += extra * 16;
  const image = { y: y + 2, h: Math.max(0, node.size[1] - y - 6) };
  node._layout = { key, rows, linesTop, image, widgetsBottom: y };
  return node._layout;
}

/** The smallest body that shows every socket, widget and label. */
export function minSize(node) {
  if (isReroute(node)) return REROUTE_SIZE.slice();
  let width = textWidth(node.title || node.type, TITLE_FONT) + 50;
  for (let i = 0; i < slotRows(node); i++) {
    const inName = node.inputs[i] ? textWidth(node.inputs[i].label || node.inputs[i].name || "") : 0;
    const outName = node.outputs[i] ? textWidth(node.outputs[i].label || node.outputs[i].name || "") : 0;
    width = Math.max(width, inName + outName + 60);
  }
  const widgets = visibleWidgets(node);
  let height = slotRows(node) * SLOT_H + 6;
  for (const w of widgets) {
    width = Math.max(width, w.minWidth());
    height += (w.flexible ? MULTILINE_MIN : w.height()) + WIDGET_GAP;
  }
  height += unknownLines(node).length * 16;
  if (node.showsImage) height += IMAGE_MIN;
  return [Math.ceil(Math.max(width, widgets.length ? 200 : 120)), Math.ceil(Math.max(height + 4, SLOT_H + 6))];
}

/** Grow (never shrink) a node to its minimum size. */
export function fitToContent(node) {
  const [w, h] = minSize(node);
  node.size[0] = Math.max(node.size[0] || 0, w);
  node.size[1] = Math.max(node.size[1] || 0, h);
}
