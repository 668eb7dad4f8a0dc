// Widgets: the editable values drawn inside a node (numbers, combos, text, toggles, buttons).
//
// Each widget draws itself into a row of the node and answers a pointer press with a small
// handler object {move, up}; anything that needs the DOM (typing a value, picking from a
// list, choosing a file) goes through the `ui` services the canvas passes in.

import { CONTROL_MODES } from "./node_defs.js";
import { FONT, WIDGET_H, fitText, textWidth } from "./layout.js";
import { clamp } from "./dom.js";

const BG = "#1f2127";
const OUTLINE = "#4a4f5c";
const TEXT = "#dde1ea";
const LABEL = "#9aa1b2";
const ARROW = "#b8bfcc";
const RANDOM_MAX = 1125899906842624; // ComfyUI's cap for randomized seeds (2^50)

function roundRect(ctx, x, y, w, h, r) {
  ctx.beginPath();
  ctx.roundRect(x, y, w, h, r);
}

function decimals(step) {
  const text = String(step);
  if (text.includes("e-")) return Number(text.split("e-")[1]);
  const dot = text.indexOf(".");
  return dot < 0 ? 0 : text.length - dot - 1;
}

export class Widget {
  constructor(slot) {
    this.kind = slot.kind;
    this.name = slot.name;
    this.type = slot.type;
    this.options = slot.options || {};
    this.choices = slot.choices || [];
    this.target = slot.target;
    this.converted = false;
    this.value = this.defaultValue();
  }

  defaultValue() {
    if ("default" in this.options) return this.options.default;
    return undefined;
  }

  get label() {
    return this.options.label || this.name;
  }

  get flexible() {
    return false;
  }

  /** Only real inputs can become sockets; companions (seed control, upload) cannot. */
  get convertible() {
    return this.kind === "value";
  }

  height() {
    return WIDGET_H;
  }

  minWidth() {
    return textWidth(this.label) + 90;
  }

  displayValue() {
    return this.value === undefined || this.value === null ? "" : String(this.value);
  }

  drawFrame(ctx, x, y, w, h, lowDetail) {
    ctx.fillStyle = BG;
    roundRect(ctx, x, y, w, h, h / 2);
    ctx.fill();
    if (!lowDetail) {
      ctx.strokeStyle = OUTLINE;
      ctx.lineWidth = 1;
      ctx.stroke();
    }
  }

  drawLabelValue(ctx, x, y, w, h, pad = 12) {
    const mid = y + h / 2;
    ctx.font = FONT;
    ctx.textBaseline = "middle";
    const value = this.displayValue();
    const valueWidth = Math.min(textWidth(value), w * 0.62);
    ctx.fillStyle = LABEL;
    ctx.textAlign = "left";
    ctx.fillText(fitText(this.label, w - 2 * pad - valueWidth - 8), x + pad, mid);
    ctx.fillStyle = TEXT;
    ctx.textAlign = "right";
    ctx.fillText(fitText(value, w * 0.62), x + w - pad, mid);
  }

  drawArrows(ctx, x, y, w, h) {
    const mid = y + h / 2;
    ctx.fillStyle = ARROW;
    ctx.beginPath();
    ctx.moveTo(x + 13, mid - 4);
    ctx.lineTo(x + 7, mid);
    ctx.lineTo(x + 13, mid + 4);
    ctx.moveTo(x + w - 13, mid - 4);
    ctx.lineTo(x + w - 7, mid);
    ctx.lineTo(x + w - 13, mid + 4);
    ctx.fill();
  }

  draw(ctx, x, y, w, h, lowDetail) {
    this.drawFrame(ctx, x, y, w, h, lowDetail);
    if (!lowDetail) this.drawLabelValue(ctx, x, y, w, h);
  }

  pointerDown() {
    return null;
  }
}

export class NumberWidget extends Widget {
  get isInt() {
    return this.type === "INT";
  }

  get step() {
    const step = Number(this.options.step);
    if (step > 0) return step;
    return this.isInt ? 1 : 0.01;
  }

  get precision() {
    const round = Number(this.options.round);
    if (round > 0) return decimals(round);
    return this.isInt ? 0 : Math.max(decimals(this.step), 1);
  }

  defaultValue() {
    if ("default" in this.options) return this.options.default;
    const min = Number.isFinite(this.options.min) ? this.options.min : 0;
    return Math.max(0, min);
  }

  minWidth() {
    return textWidth(this.label) + textWidth(this.displayValue()) + 70;
  }

  normalize(value) {
    let v = Number(value);
    if (!Number.isFinite(v)) return this.value;
    if (this.isInt) {
      v = Math.round(v);
      const step = this.step;
      if (step > 1) {
        const base = Number.isFinite(this.options.min) ? this.options.min : 0;
        v = base + Math.round((v - base) / step) * step;
      }
    } else {
      const round = Number(this.options.round) > 0 ? Number(this.options.round) : 0;
      if (round) v = Math.round(v / round) * round;
      v = Number(v.toFixed(Math.min(10, Math.max(this.precision, round ? decimals(round) : 0))));
    }
    if (Number.isFinite(this.options.min)) v = Math.max(this.options.min, v);
    if (Number.isFinite(this.options.max)) v = Math.min(this.options.max, v);
    return v;
  }

  setValue(value) {
    this.value = this.normalize(value);
  }

  displayValue() {
    const v = Number(this.value);
    if (!Number.isFinite(v)) return String(this.value ?? "");
    if (this.options.display === "color" && this.isInt) return "#" + v.toString(16).padStart(6, "0");
    return this.isInt ? String(v) : v.toFixed(this.precision);
  }

  draw(ctx, x, y, w, h, lowDetail) {
    this.drawFrame(ctx, x, y, w, h, lowDetail);
    if (lowDetail) return;
    this.drawArrows(ctx, x, y, w, h);
    if (this.options.display === "color" && this.isInt) {
      ctx.fillStyle = this.displayValue();
      ctx.fillRect(x + w - 34, y + 5, 12, h - 10);
      this.drawLabelValueShifted(ctx, x, y, w, h);
      return;
    }
    this.drawLabelValue(ctx, x, y, w, h, 20);
  }

  drawLabelValueShifted(ctx, x, y, w, h) {
    this.drawLabelValue(ctx, x, y, w - 20, h, 20);
  }

  pointerDown(e) {
    const start = Number(this.value);
    let moved = false;
    return {
      move: (m) => {
        if (!moved && Math.abs(m.dxScreen) < 4) return;
        moved = true;
        this.setValue(start + Math.round(m.dxScreen / 3) * this.step);
        e.ui.redraw();
      },
      up: () => {
        if (moved) {
          e.ui.changed(e.node, this);
        } else if (e.x < 22) {
          this.setValue(Number(this.value) - this.step);
          e.ui.changed(e.node, this);
        } else if (e.x > e.w - 22) {
          this.setValue(Number(this.value) + this.step);
          e.ui.changed(e.node, this);
        } else {
          e.ui.editValue({ node: e.node, widget: this, rect: e.rect, initial: this.displayValue(), numeric: true,
            onCommit: (text) => {
              let parsed = Number(text);
              if (this.options.display === "color" && /^#?[0-9a-f]{6}$/i.test(text.trim())) {
                parsed = parseInt(text.trim().replace("#", ""), 16);
              }
              if (text.trim() !== "" && Number.isFinite(parsed)) {
                this.setValue(parsed);
                e.ui.changed(e.node, this);
              }
            } });
        }
      },
    };
  }
}

export class ComboWidget extends Widget {
  defaultValue() {
    if ("default" in this.options) return this.options.default;
    return this.choices.length ? this.choices[0] : undefined;
  }

  minWidth() {
    const longest = this.choices.slice(0, 50).reduce((m, c) => Math.max(m, textWidth(String(c))), 0);
    return textWidth(this.label) + Math.min(longest, 200) + 70;
  }

  draw(ctx, x, y, w, h, lowDetail) {
    this.drawFrame(ctx, x, y, w, h, lowDetail);
    if (lowDetail) return;
    this.drawArrows(ctx, x, y, w, h);
    this.drawLabelValue(ctx, x, y, w, h, 20);
  }

  cycle(delta) {
    if (!this.choices.length) return;
    const index = this.choices.indexOf(this.value);
    const next = index < 0 ? 0 : clamp(index + delta, 0, this.choices.length - 1);
    this.value = this.choices[next];
  }

  pointerDown(e) {
    return {
      move: () => {},
      up: () => {
        if (e.x < 22 || e.x > e.w - 22) {
          this.cycle(e.x < 22 ? -1 : 1);
          e.ui.changed(e.node, this);
          return;
        }
        e.ui.pickChoice({ node: e.node, widget: this, x: e.clientX, y: e.clientY, choices: this.choices,
          onPick: (value) => {
            this.value = value;
            e.ui.changed(e.node, this);
          } });
      },
    };
  }
}

export class TextWidget extends Widget {
  defaultValue() {
    return "default" in this.options ? this.options.default : "";
  }

  get multiline() {
    return !!this.options.multiline;
  }

  get flexible() {
    return this.multiline;
  }

  minWidth() {
    return this.multiline ? 200 : textWidth(this.label) + 110;
  }

  wrapped(width) {
    const text = String(this.value ?? "");
    const key = `${width}|${text}`;
    if (this._wrapKey === key) return this._wrapLines;
    const lines = [];
    for (const para of text.split("\n")) {
      if (lines.length > 200) break;
      let line = "";
      for (const word of para.split(/(\s+)/)) {
        const candidate = line + word;
        if (line && textWidth(candidate) > width) {
          lines.push(line);
          line = word.trimStart();
          while (textWidth(line) > width && line.length > 1) {
            let cut = line.length - 1;
            while (cut > 1 && textWidth(line.slice(0, cut)) > width) cut -= 1;
            lines.push(line.slice(0, cut));
            line = line.slice(cut);
          }
        } else {
          line = candidate;
        }
      }
      lines.push(line);
    }
    this._wrapKey = key;
    this._wrapLines = lines;
    return lines;
  }

  draw(ctx, x, y, w, h, lowDetail) {
    if (!this.multiline) {
      super.draw(ctx, x, y, w, h, lowDetail);
      return;
    }
    ctx.fillStyle = BG;
    roundRect(ctx, x, y, w, h, 6);
    ctx.fill();
    if (lowDetail) return;
    ctx.strokeStyle = OUTLINE;
    ctx.lineWidth = 1;
    ctx.stroke();
    ctx.save();
    ctx.beginPath();
    ctx.rect(x + 2, y + 2, w - 4, h - 4);
    ctx.clip();
    ctx.font = FONT;
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    const text = String(this.value ?? "");
    if (!text) {
      ctx.fillStyle = LABEL;
      ctx.fillText(this.options.placeholder || this.label, x + 6, y + 5);
    } else {
      ctx.fillStyle = TEXT;
      const lines = this.wrapped(Math.max(20, w - 12));
      const max = Math.floor((h - 8) / 15);
      for (let i = 0; i < Math.min(lines.length, max); i++) ctx.fillText(lines[i], x + 6, y + 5 + i * 15);
    }
    ctx.restore();
  }

  pointerDown(e) {
    return {
      move: () => {},
      up: () => {
        e.ui.editValue({ node: e.node, widget: this, rect: e.rect, initial: String(this.value ?? ""),
          multiline: this.multiline,
          onCommit: (text) => {
            if (text !== this.value) {
              this.value = text;
              e.ui.changed(e.node, this);
            }
          } });
      },
    };
  }
}

export class ToggleWidget extends Widget {
  defaultValue() {
    return "default" in this.options ? !!this.options.default : false;
  }

  displayValue() {
    return this.value ? this.options.label_on || "true" : this.options.label_off || "false";
  }

  draw(ctx, x, y, w, h, lowDetail) {
    this.drawFrame(ctx, x, y, w, h, lowDetail);
    if (lowDetail) return;
    const mid = y + h / 2;
    ctx.fillStyle = this.value ? "#7fb3ff" : "#5a6070";
    ctx.beginPath();
    ctx.arc(x + w - 14, mid, 5, 0, Math.PI * 2);
    ctx.fill();
    this.drawLabelValue(ctx, x, y, w - 14, h);
  }

  pointerDown(e) {
    return {
      move: () => {},
      up: () => {
        this.value = !this.value;
        e.ui.changed(e.node, this);
      },
    };
  }
}

export class ButtonWidget extends Widget {
  defaultValue() {
    return "default" in this.options ? this.options.default : null;
  }

  get label() {
    return this.kind === "upload" ? "choose file to upload" : this.name;
  }

  draw(ctx, x, y, w, h, lowDetail) {
    ctx.fillStyle = "#2b3242";
    roundRect(ctx, x, y, w, h, 5);
    ctx.fill();
    if (lowDetail) return;
    ctx.strokeStyle = OUTLINE;
    ctx.stroke();
    ctx.fillStyle = TEXT;
    ctx.font = FONT;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(fitText(this.label, w - 10), x + w / 2, y + h / 2);
  }

  pointerDown(e) {
    return {
      move: () => {},
      up: () => {
        if (this.kind === "upload") e.ui.upload(e.node, this.target);
      },
    };
  }
}

/** The widget object for one entry of a node class's widget plan. */
export function makeWidget(slot) {
  if (slot.kind === "upload") return new ButtonWidget(slot);
  if (slot.kind === "control") return new ComboWidget({ ...slot, choices: CONTROL_MODES.slice() });
  if (slot.type === "INT" || slot.type === "FLOAT") return new NumberWidget(slot);
  if (slot.type === "BOOLEAN") return new ToggleWidget(slot);
  if (slot.type === "COMBO") return new ComboWidget(slot);
  return new TextWidget(slot);
}

/**
 * Apply a control_after_generate widget to the value it controls, as ComfyUI does after each
 * queueing: fixed keeps it, increment/decrement step it, randomize draws a new one.
 */
export function applyControl(control, target, filter) {
  const mode = control.value;
  if (!target || mode === "fixed" || !mode) return false;
  if (target instanceof ComboWidget) {
    let choices = target.choices;
    const pattern = filter && filter.value ? String(filter.value) : "";
    if (pattern) {
      let test;
      try {
        const m = pattern.match(/^\/(.*)\/([a-z]*)$/);
        const re = m ? new RegExp(m[1], m[2]) : null;
        test = re ? (c) => re.test(c) : (c) => String(c).toLowerCase().includes(pattern.toLowerCase());
      } catch {
        test = (c) => String(c).toLowerCase().includes(pattern.toLowerCase());
      }
      choices = choices.filter(test);
    }
    if (!choices.length) return false;
    const index = choices.indexOf(target.value);
    let next = index;
    if (mode === "increment") next = Math.min(index + 1, choices.length - 1);
    else if (mode === "increment-wrap") next = (index + 1) % choices.length;
    else if (mode === "decrement") next = Math.max(index - 1, 0);
    else if (mode === "randomize") next = Math.floor(Math.random() * choices.length);
    target.value = choices[Math.max(0, next)];
    return true;
  }
  if (!(target instanceof NumberWidget)) return false;
  const opts = target.options;
  const min = Number.isFinite(opts.min) ? opts.min : 0;
  const max = Number.isFinite(opts.max) ? opts.max : RANDOM_MAX;
  const current = Number(target.value) || 0;
  if (mode === "increment") target.setValue(current + target.step);
  else if (mode === "increment-wrap") target.setValue(current + target.step > max ? min : current + target.step);
  else if (mode === "decrement") target.setValue(current - target.step);
  else if (mode === "randomize") {
    const hi = Math.min(max, RANDOM_MAX);
    const lo = Math.max(min, -RANDOM_MAX);
    const steps = Math.floor((hi - lo) / target.step);
    target.setValue(lo + Math.floor(Math.random() * (steps + 1)) * target.step);
  }
  return true;
}
