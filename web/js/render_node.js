// Drawing one node: body, title, sockets, widgets, images, run state and errors.

import { typeColor } from "./types.js";
import {
  FONT, TITLE_FONT, TITLE_H, collapsedWidth, fitText, inputPos, isReroute, layoutBody, outputPos, textWidth,
  unknownLines,
} from "./layout.js";
import { MODE_BYPASS, MODE_NEVER } from "./graph.js";

const BODY = "#2b2e36";
const TITLE = "#3a3f4d";
const TITLE_TEXT = "#e6e9f0";
const SLOT_TEXT = "#b7bdca";
const UNKNOWN_BODY = "#4a1e22";
const UNKNOWN_TITLE = "#9b2c33";
const ERROR = "#ff4d4d";
const RUNNING = "#4cd37a";
const SELECTED = "#f0f3fa";

function socket(ctx, x, y, type, connected, shape, lowDetail, error) {
  const color = typeColor(type);
  ctx.beginPath();
  if (shape === 6) ctx.rect(x - 4, y - 4, 8, 8);
  else ctx.arc(x, y, lowDetail ? 4 : 5, 0, Math.PI * 2);
  if (connected || lowDetail) {
    ctx.fillStyle = color;
    ctx.fill();
  } else {
    ctx.fillStyle = "#1b1d23";
    ctx.fill();
    ctx.lineWidth = 2;
    ctx.strokeStyle = color;
    ctx.stroke();
  }
  if (error) {
    ctx.beginPath();
    ctx.arc(x, y, 8, 0, Math.PI * 2);
    ctx.lineWidth = 2;
    ctx.strokeStyle = ERROR;
    ctx.stroke();
  }
}

function drawReroute(ctx, node, view) {
  const [x, y] = node.pos;
  const [w, h] = node.size;
  ctx.fillStyle = view.selected.has(node) ? "#4a5064" : "#353a47";
  ctx.beginPath();
  ctx.roundRect(x, y, w, h, h / 2);
  ctx.fill();
  const type = node.outputs[0]?.type ?? "*";
  socket(ctx, x + 2, y + h / 2, type, node.inputs[0]?.link != null, 0, view.lowDetail, false);
  socket(ctx, x + w - 2, y + h / 2, type, (node.outputs[0]?.links || []).length > 0, 0, view.lowDetail, false);
  if (view.selected.has(node)) {
    ctx.strokeStyle = SELECTED;
    ctx.lineWidth = 1.5;
    ctx.stroke();
  }
}

/** Fit an image into a box, keeping its aspect ratio. */
function drawImageFit(ctx, img, x, y, w, h) {
  if (!img || !img.complete || !img.naturalWidth || w < 4 || h < 4) return;
  const ratio = Math.min(w / img.naturalWidth, h / img.naturalHeight);
  const dw = img.naturalWidth * ratio;
  const dh = img.naturalHeight * ratio;
  ctx.drawImage(img, x + (w - dw) / 2, y + (h - dh) / 2, dw, dh);
}

function imageFor(node, view) {
  const state = view.run;
  const preview = state.previews.get(String(node.id));
  if (preview) return view.image(preview);
  const out = state.outputs.get(String(node.id));
  if (out && out.images && out.images.length) return view.image(out.images[out.images.length - 1].url);
  if (node.type === "LoadImage" || node.type === "LoadImageMask") {
    const w = node.widget("image");
    // only files the server listed (or we uploaded): a stale name would just be a 404
    if (w && w.value && w.choices.includes(w.value)) return view.image(view.inputImageUrl(String(w.value)));
  }
  return null;
}

function drawBodyExtras(ctx, node, view, layout) {
  const [x, y] = node.pos;
  const w = node.size[0];
  const lines = unknownLines(node);
  if (lines.length && !view.lowDetail) {
    ctx.font = FONT;
    ctx.fillStyle = "#f0b4b8";
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    lines.forEach((line, i) => ctx.fillText(fitText(line, w - 20), x + 10, y + layout.linesTop + 8 + i * 16));
  }
  const area = layout.image;
  if (area.h < 8) return;
  const img = imageFor(node, view);
  if (img) {
    drawImageFit(ctx, img, x + 6, y + area.y, w - 12, area.h);
    const out = view.run.outputs.get(String(node.id));
    if (out && out.images && out.images.length > 1 && !view.lowDetail) {
      ctx.font = FONT;
      ctx.fillStyle = SLOT_TEXT;
      ctx.textAlign = "right";
      ctx.fillText(`${out.images.length} images`, x + w - 8, y + area.y + 10);
    }
    return;
  }
  const out = view.run.outputs.get(String(node.id));
  if (out && out.text && out.text.length && !view.lowDetail) {
    ctx.font = FONT;
    ctx.fillStyle = TITLE_TEXT;
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    const max = Math.max(1, Math.floor(area.h / 15));
    const text = out.text.map(String).join("\n").split("\n").slice(0, max);
    text.forEach((line, i) => ctx.fillText(fitText(line, w - 16), x + 8, y + area.y + i * 15));
  }
}

function drawErrors(ctx, node, view, bounds) {
  const err = view.run.errors.get(String(node.id));
  if (!err || view.lowDetail) return;
  const messages = err.messages.slice(0, 6);
  ctx.font = FONT;
  const width = Math.min(420, Math.max(160, ...messages.map((m) => textWidth(m) + 16)));
  const [bx, by, , bh] = bounds;
  const top = by + bh + 6;
  ctx.fillStyle = "rgba(70, 14, 18, 0.95)";
  ctx.beginPath();
  ctx.roundRect(bx, top, width, messages.length * 16 + 8, 5);
  ctx.fill();
  ctx.strokeStyle = ERROR;
  ctx.lineWidth = 1;
  ctx.stroke();
  ctx.fillStyle = "#ffd6d6";
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  messages.forEach((m, i) => ctx.fillText(fitText(m, width - 14), bx + 7, top + 12 + i * 16));
}

export function drawNode(ctx, node, view) {
  if (isReroute(node) && !node.unknown) {
    drawReroute(ctx, node, view);
    return;
  }
  const lowDetail = view.lowDetail;
  const [x, y] = node.pos;
  const collapsed = !!node.flags.collapsed;
  const w = collapsed ? collapsedWidth(node) : node.size[0];
  const h = collapsed ? 0 : node.size[1];
  const id = String(node.id);
  const run = view.run;
  const err = run.errors.get(id);
  const muted = node.mode === MODE_NEVER;
  const bypassed = node.mode === MODE_BYPASS;
  if (muted) ctx.globalAlpha = 0.4;

  // body and title bar
  const bodyColor = node.unknown ? UNKNOWN_BODY : node.bgcolor || BODY;
  const titleColor = node.unknown ? UNKNOWN_TITLE : node.color || TITLE;
  ctx.beginPath();
  ctx.roundRect(x, y - TITLE_H, w, h + TITLE_H, 8);
  ctx.fillStyle = collapsed ? titleColor : bodyColor;
  ctx.fill();
  if (!collapsed) {
    ctx.beginPath();
    ctx.roundRect(x, y - TITLE_H, w, TITLE_H, [8, 8, 0, 0]);
    ctx.fillStyle = titleColor;
    ctx.fill();
  }
  if (bypassed) {
    ctx.beginPath();
    ctx.roundRect(x, y - TITLE_H, w, h + TITLE_H, 8);
    ctx.fillStyle = "rgba(160, 70, 220, 0.38)";
    ctx.fill();
  }

  const showText = view.scale >= 0.3;
  if (showText) {
    ctx.fillStyle = node.unknown ? "#ffb3b8" : "#8f96a8";
    ctx.beginPath();
    ctx.arc(x + 14, y - TITLE_H / 2, 5, 0, Math.PI * 2);
    ctx.fill();
    ctx.font = TITLE_FONT;
    ctx.fillStyle = TITLE_TEXT;
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    let title = node.title || node.type;
    if (node.unknown) title += " (missing)";
    if (bypassed) title += " [bypassed]";
    ctx.fillText(fitText(title, w - 34, TITLE_FONT), x + 26, y - TITLE_H / 2 + 1);
  }

  // progress bar of the running node
  const progress = run.progress;
  if (progress && progress.node === id && progress.max > 0 && !collapsed) {
    ctx.fillStyle = "rgba(0,0,0,0.35)";
    ctx.fillRect(x + 2, y - 4, w - 4, 4);
    ctx.fillStyle = RUNNING;
    ctx.fillRect(x + 2, y - 4, (w - 4) * Math.min(1, progress.value / progress.max), 4);
  }

  if (!collapsed) {
    const errInputs = err ? err.inputs : null;
    // sockets
    for (let i = 0; i < node.inputs.length; i++) {
      const input = node.inputs[i];
      const [sx, sy] = inputPos(node, i);
      const name = input.widget ? input.widget.name : input.name;
      const bad = !!(errInputs && errInputs.has(name));
      socket(ctx, sx, sy, input.type, input.link != null, input.shape, lowDetail, bad);
      if (!lowDetail) {
        ctx.font = FONT;
        ctx.fillStyle = bad ? ERROR : SLOT_TEXT;
        ctx.textAlign = "left";
        ctx.textBaseline = "middle";
        ctx.fillText(fitText(input.label || input.name, w / 2 - 14), sx + 10, sy);
      }
    }
    for (let i = 0; i < node.outputs.length; i++) {
      const output = node.outputs[i];
      const [sx, sy] = outputPos(node, i);
      socket(ctx, sx, sy, output.type, (output.links || []).length > 0, output.shape, lowDetail, false);
      if (!lowDetail) {
        ctx.font = FONT;
        ctx.fillStyle = SLOT_TEXT;
        ctx.textAlign = "right";
        ctx.textBaseline = "middle";
        ctx.fillText(fitText(output.label || output.name, w / 2 - 14), sx - 10, sy);
      }
    }
    // widgets and images
    const layout = layoutBody(node);
    if (!lowDetail || view.scale >= 0.25) {
      for (const row of layout.rows) {
        row.widget.draw(ctx, x + 10, y + row.y, w - 20, row.h, lowDetail);
        if (errInputs && errInputs.has(row.widget.name) && row.widget.kind === "value") {
          ctx.beginPath();
          ctx.roundRect(x + 9, y + row.y - 1, w - 18, row.h + 2, row.h / 2);
          ctx.strokeStyle = ERROR;
          ctx.lineWidth = 2;
          ctx.stroke();
        }
      }
    }
    drawBodyExtras(ctx, node, view, layout);
  }

  // outlines: error > running > selected
  const outline = err ? ERROR : run.runningNode === id ? RUNNING : view.selected.has(node) ? SELECTED : null;
  if (outline) {
    ctx.beginPath();
    ctx.roundRect(x - 2, y - TITLE_H - 2, w + 4, h + TITLE_H + 4, 10);
    ctx.strokeStyle = outline;
    ctx.lineWidth = outline === SELECTED ? 1.5 : 3;
    ctx.stroke();
  }
  ctx.globalAlpha = 1;
}

/** Error messages under a node; drawn after every node so none covers them. */
export function drawNodeErrors(ctx, node, view) {
  if (!view.run.errors.has(String(node.id))) return;
  const collapsed = !!node.flags.collapsed;
  const w = collapsed ? collapsedWidth(node) : node.size[0];
  const h = collapsed ? 0 : node.size[1];
  drawErrors(ctx, node, view, [node.pos[0], node.pos[1] - TITLE_H, w, h + TITLE_H]);
}
