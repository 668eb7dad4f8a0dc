// The mask painter behind a Load Image node's "Open in MaskEditor": paint over the picture with
// a brush, take paint away with the eraser, and save. Saving follows ComfyUI's mask editor: the
// painting goes to POST /upload/mask as a PNG whose alpha is 255 minus the painted coverage, the
// server copies that alpha into the original image and writes input/clipspace/clipspace-mask-….png,
// and the node's image widget then names that file ("clipspace/<name> [input]"). LoadImage turns
// alpha back into MASK = 1 - alpha, so what was painted comes out as 1.

import { imageRef } from "./api.js";
import { clamp, el, overlayRoot } from "./dom.js";
import { fitToContent } from "./layout.js";

const IMAGE_NODES = new Set(["LoadImage", "LoadImageMask"]);
export const BRUSH_MIN = 1;
export const BRUSH_MAX = 100;
export const BRUSH_DEFAULT = 10; // ComfyUI's "Thickness" slider: 1..100, starts at 10
const BRUSH_STEP = 2; // "[" and "]" change the size by this much, as in ComfyUI
const MASK_RGB = "rgb(0, 0, 0)"; // only the alpha is saved; black is what ComfyUI shows
const SAVE_SUBFOLDER = "clipspace";
const SAVE_TYPE = "input";

/** The widget value ComfyUI writes for a saved file: "subfolder/name [type]". */
export function refValue({ filename, subfolder, type }) {
  return `${subfolder ? `${subfolder}/` : ""}${filename}${type ? ` [${type}]` : ""}`;
}

/** True when the node shows an image the painter can open (the same rule the node uses to draw it). */
export function maskEditable(node) {
  if (!node || !IMAGE_NODES.has(node.type) || node.unknown) return false;
  const widget = node.widget("image");
  return !!(widget && widget.value && widget.choices.includes(widget.value));
}

/**
 * Pixels whose alpha becomes 255 - alpha and whose colour becomes black. Applied to an image's
 * alpha it gives the painted coverage, and applied to the coverage it gives the alpha to save.
 */
export function invertAlpha(imageData) {
  const data = imageData.data;
  for (let i = 0; i < data.length; i += 4) {
    data[i] = 0;
    data[i + 1] = 0;
    data[i + 2] = 0;
    data[i + 3] = 255 - data[i + 3];
  }
  return imageData;
}

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`cannot load ${url}`));
    img.src = url;
  });
}

function canvasBlob(canvas) {
  return new Promise((resolve, reject) => {
    canvas.toBlob((blob) => (blob ? resolve(blob) : reject(new Error("the mask could not be encoded"))), "image/png");
  });
}

export class MaskEditor {
  constructor(app) {
    this.app = app;
    this.root = null;
    this.size = BRUSH_DEFAULT;
    this.tool = "brush";
    this.stroke = null;
    this.onKey = (e) => this.key(e);
    this.onResize = () => this.fit();
  }

  get isOpen() {
    return !!this.root;
  }

  async open(node) {
    if (this.isOpen) this.close();
    if (!maskEditable(node)) {
      this.app.notify("This node shows no image to paint a mask on", "warn");
      return false;
    }
    const value = String(node.widget("image").value);
    const ref = imageRef(value);
    const url = this.app.api.viewUrl(ref);
    let picture;
    let alpha;
    try {
      // the colours without the old mask, and the old mask on its own (ComfyUI's two views)
      [picture, alpha] = await Promise.all([loadImage(`${url}&channel=rgb`), loadImage(`${url}&channel=a`)]);
    } catch (err) {
      this.app.notify(`Cannot open ${ref.filename} in the mask editor: ${err.message}`, "error");
      return false;
    }
    this.node = node;
    this.ref = ref;
    this.build(picture);
    this.loadExistingMask(alpha);
    this.fit();
    window.addEventListener("keydown", this.onKey, true);
    window.addEventListener("resize", this.onResize);
    return true;
  }

  build(picture) {
    const width = picture.naturalWidth;
    const height = picture.naturalHeight;
    this.picture = el("canvas", { class: "me-layer me-picture", width, height });
    this.picture.getContext("2d").drawImage(picture, 0, 0);
    this.mask = el("canvas", { class: "me-layer me-mask", width, height });
    this.maskCtx = this.mask.getContext("2d", { willReadFrequently: true });
    this.cursor = el("div", { class: "me-cursor", hidden: true });
    this.stage = el("div", { class: "me-stage", oncontextmenu: (e) => e.preventDefault() },
      this.picture, this.mask, this.cursor);
    this.mask.addEventListener("pointerdown", (e) => this.pointerDown(e));
    this.mask.addEventListener("pointermove", (e) => this.pointerMove(e));
    this.mask.addEventListener("pointerup", (e) => this.pointerUp(e));
    this.mask.addEventListener("pointercancel", (e) => this.pointerUp(e));
    this.mask.addEventListener("pointerleave", () => { this.cursor.hidden = true; });

    this.sizeInput = el("input", { type: "range", class: "me-size", min: BRUSH_MIN, max: BRUSH_MAX, step: 1,
      value: this.size, "aria-label": "Thickness", oninput: () => this.setSize(this.sizeInput.value) });
    this.sizeText = el("span", { class: "me-size-value", text: String(this.size) });
    this.toolButtons = {
      brush: el("button", { class: "btn me-brush", text: "Brush", title: "Paint the mask (left button)",
        onclick: () => this.setTool("brush") }),
      eraser: el("button", { class: "btn me-eraser", text: "Eraser", title: "Erase the mask (or right button)",
        onclick: () => this.setTool("eraser") }),
    };
    this.saveButton = el("button", { class: "btn primary me-save", text: "Save", onclick: () => this.save() });
    const bar = el("div", { class: "me-bar" },
      el("span", { class: "me-title", text: `Mask editor — ${this.ref.filename}` }),
      this.toolButtons.brush, this.toolButtons.eraser,
      el("label", { class: "me-size-label" }, "Thickness", this.sizeInput, this.sizeText),
      el("button", { class: "btn me-invert", text: "Invert", onclick: () => this.invert() }),
      el("button", { class: "btn me-clear", text: "Clear", onclick: () => this.clear() }),
      el("span", { class: "spacer" }),
      el("button", { class: "btn me-cancel", text: "Cancel", onclick: () => this.close() }),
      this.saveButton);
    this.root = el("div", { class: "mask-editor", role: "dialog", "aria-label": "Mask editor" }, bar, this.stage);
    // first in the overlay layer, so toasts (a failed save) and menus still show above it
    overlayRoot().prepend(this.root);
    this.setTool(this.tool);
  }

  loadExistingMask(alpha) {
    const { width, height } = this.mask;
    const scratch = el("canvas", { width, height });
    const ctx = scratch.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(alpha, 0, 0, width, height);
    this.maskCtx.putImageData(invertAlpha(ctx.getImageData(0, 0, width, height)), 0, 0);
  }

  close() {
    if (!this.root) return;
    window.removeEventListener("keydown", this.onKey, true);
    window.removeEventListener("resize", this.onResize);
    this.root.remove();
    this.root = null;
    this.stroke = null;
    this.node = null;
  }

  /** Fit the picture into the stage, keeping its aspect ratio; both layers share the box. */
  fit() {
    if (!this.root) return;
    const box = this.stage.getBoundingClientRect();
    const { width, height } = this.mask;
    const scale = Math.max(0.01, Math.min((box.width - 24) / width, (box.height - 24) / height));
    this.scale = scale;
    const w = width * scale;
    const h = height * scale;
    for (const layer of [this.picture, this.mask]) {
      Object.assign(layer.style, { width: `${w}px`, height: `${h}px`, left: `${(box.width - w) / 2}px`,
        top: `${(box.height - h) / 2}px` });
    }
    // enlarged small images stay sharp-edged, so what is painted is where it lands
    this.stage.classList.toggle("pixelated", scale > 2);
    this.updateCursorSize();
  }

  setTool(tool) {
    this.tool = tool;
    for (const [name, button] of Object.entries(this.toolButtons)) button.classList.toggle("active", name === tool);
  }

  setSize(value) {
    const size = clamp(Math.round(Number(value)) || BRUSH_DEFAULT, BRUSH_MIN, BRUSH_MAX);
    this.size = size;
    if (!this.root) return;
    this.sizeInput.value = String(size);
    this.sizeText.textContent = String(size);
    this.updateCursorSize();
  }

  updateCursorSize() {
    const d = 2 * this.size * (this.scale || 1);
    Object.assign(this.cursor.style, { width: `${d}px`, height: `${d}px` });
  }

  /** Client coordinates to mask pixels. */
  toImage(e) {
    const rect = this.mask.getBoundingClientRect();
    return [(e.clientX - rect.left) * (this.mask.width / rect.width),
      (e.clientY - rect.top) * (this.mask.height / rect.height)];
  }

  moveCursor(e) {
    const stage = this.stage.getBoundingClientRect();
    this.cursor.hidden = false;
    const d = 2 * this.size * this.scale;
    Object.assign(this.cursor.style, { left: `${e.clientX - stage.left - d / 2}px`,
      top: `${e.clientY - stage.top - d / 2}px` });
  }

  pointerDown(e) {
    if (e.button !== 0 && e.button !== 2) return;
    e.preventDefault();
    this.mask.setPointerCapture(e.pointerId);
    const erase = e.button === 2 || this.tool === "eraser";
    const at = this.toImage(e);
    this.stroke = { id: e.pointerId, erase, last: at };
    this.paint(at, at, erase);
  }

  pointerMove(e) {
    this.moveCursor(e);
    const stroke = this.stroke;
    if (!stroke || stroke.id !== e.pointerId) return;
    // coalesced events keep fast strokes continuous where the browser batches moves
    const events = typeof e.getCoalescedEvents === "function" ? e.getCoalescedEvents() : [];
    for (const event of events.length ? events : [e]) {
      const at = this.toImage(event);
      this.paint(stroke.last, at, stroke.erase);
      stroke.last = at;
    }
  }

  pointerUp(e) {
    if (this.stroke && this.stroke.id === e.pointerId) this.stroke = null;
  }

  /** A round-ended segment of the brush's width (a dot when from equals to). */
  paint(from, to, erase) {
    const ctx = this.maskCtx;
    ctx.save();
    ctx.globalCompositeOperation = erase ? "destination-out" : "source-over";
    ctx.fillStyle = MASK_RGB;
    ctx.strokeStyle = MASK_RGB;
    ctx.beginPath();
    ctx.arc(to[0], to[1], this.size, 0, Math.PI * 2);
    ctx.fill();
    if (from[0] !== to[0] || from[1] !== to[1]) {
      ctx.lineWidth = 2 * this.size;
      ctx.lineCap = "round";
      ctx.beginPath();
      ctx.moveTo(from[0], from[1]);
      ctx.lineTo(to[0], to[1]);
      ctx.stroke();
    }
    ctx.restore();
  }

  clear() {
    this.maskCtx.clearRect(0, 0, this.mask.width, this.mask.height);
  }

  invert() {
    const { width, height } = this.mask;
    this.maskCtx.putImageData(invertAlpha(this.maskCtx.getImageData(0, 0, width, height)), 0, 0);
  }

  key(e) {
    // the graph's shortcuts (delete, undo, paste…) must not act behind the dialog
    e.stopPropagation();
    if (e.key === "Escape") this.close();
    else if (e.key === "]") this.setSize(this.size + BRUSH_STEP);
    else if (e.key === "[") this.setSize(this.size - BRUSH_STEP);
    else if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) this.save();
    else return;
    e.preventDefault();
  }

  /** The upload: black pixels whose alpha is what the image's alpha should become. */
  async maskPng() {
    const { width, height } = this.mask;
    const out = el("canvas", { width, height });
    out.getContext("2d").putImageData(invertAlpha(this.maskCtx.getImageData(0, 0, width, height)), 0, 0);
    return canvasBlob(out);
  }

  async save() {
    if (!this.root || this.saving) return null;
    const node = this.node;
    this.saving = true;
    this.saveButton.disabled = true;
    this.saveButton.textContent = "Saving…";
    let result;
    try {
      const form = new FormData();
      form.append("image", await this.maskPng(), `clipspace-mask-${performance.now()}.png`);
      form.append("original_ref", JSON.stringify(this.ref));
      form.append("type", SAVE_TYPE);
      form.append("subfolder", SAVE_SUBFOLDER);
      result = await this.app.api.request("/upload/mask", { method: "POST", body: form });
    } catch (err) {
      this.app.notify(`Saving the mask failed: ${err.message}`, "error");
      return null;
    } finally {
      this.saving = false;
      if (this.root) {
        this.saveButton.disabled = false;
        this.saveButton.textContent = "Save";
      }
    }
    const value = refValue({ filename: result.name, subfolder: result.subfolder ?? SAVE_SUBFOLDER,
      type: result.type || SAVE_TYPE });
    this.close();
    this.pointNodeAt(node, value);
    return value;
  }

  pointNodeAt(node, value) {
    const widget = node.widget("image");
    if (!widget) return;
    if (!widget.choices.includes(value)) widget.choices.push(value);
    widget.value = value;
    node.showsImage = true;
    fitToContent(node);
    this.app.commit("mask-editor");
    this.app.notify(`Mask saved as ${value}`, "ok");
  }
}
