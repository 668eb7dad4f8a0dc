// The graph model: nodes, links and groups, and the rules for connecting them.
// Nothing here draws or touches the DOM.

import { typesCompatible } from "./types.js";
import { makeWidget } from "./widgets.js";
import { fitToContent, minSize, REROUTE_SIZE, isReroute } from "./layout.js";

export const MODE_ALWAYS = 0;
export const MODE_NEVER = 2;
export const MODE_BYPASS = 4;

export class Node {
  constructor(type, def) {
    this.id = null;
    this.type = type;
    this.def = def || null; // null: a class the server does not know
    this.title = def ? def.displayName : type;
    this.pos = [0, 0];
    this.size = [0, 0];
    this.flags = {};
    this.mode = MODE_ALWAYS;
    this.order = 0;
    this.inputs = [];
    this.outputs = [];
    this.widgets = [];
    this.properties = {};
    this.color = undefined;
    this.bgcolor = undefined;
    this.rawWidgets = null; // unknown nodes keep their saved widgets_values verbatim
    this.showsImage = false;
    this.extra = {}; // keys of a loaded node we do not interpret, written back on save
  }

  get unknown() {
    return !this.def;
  }

  get virtual() {
    return !!(this.def && this.def.virtual);
  }

  get defaultTitle() {
    return this.def ? this.def.displayName : this.type;
  }

  widget(name) {
    return this.widgets.find((w) => w.name === name && w.kind === "value");
  }

  inputIndex(name) {
    return this.inputs.findIndex((i) => i.name === name);
  }
}

/** A new node of a known class, with default sockets, widget values and size. */
export function createNode(def) {
  const node = new Node(def.name, def);
  node.inputs = def.sockets.map((s) => ({ name: s.name, type: s.type, link: null }));
  node.outputs = def.outputs.map((o) => ({ name: o.name, type: o.type, links: [], ...(o.isList ? { shape: 6 } : {}) }));
  node.widgets = def.plan.map(makeWidget);
  node.properties = { "Node name for S&R": def.name };
  // nodes that show an image get room for it from the start
  if (def.name === "LoadImage" || def.name === "LoadImageMask"
    || (def.outputNode && def.sockets.some((s) => s.type === "IMAGE"))) node.showsImage = true;
  if (isReroute(node)) {
    node.size = REROUTE_SIZE.slice();
    node.properties = { showOutputText: false, horizontal: false };
  } else {
    node.size = minSize(node);
  }
  if (def.name === "Note" || def.name === "MarkdownNote") {
    node.color = "#432";
    node.bgcolor = "#653";
    node.size = [320, 140];
  }
  return node;
}

export class Graph extends EventTarget {
  constructor() {
    super();
    this.clear();
  }

  clear() {
    this.nodes = [];
    this.byId = new Map();
    this.links = new Map();
    this.groups = [];
    this.lastNodeId = 0;
    this.lastLinkId = 0;
    this.extra = {};
    this.config = {};
    this.meta = {}; // top-level keys of a loaded workflow kept for the next save
  }

  getNode(id) {
    return this.byId.get(Number(id)) ?? this.byId.get(id);
  }

  /** Adds a node; keeps node.id when it is free (loading), else assigns the next id. */
  add(node) {
    if (node.id === null || node.id === undefined || this.byId.has(node.id)) node.id = ++this.lastNodeId;
    else if (typeof node.id === "number") this.lastNodeId = Math.max(this.lastNodeId, node.id);
    this.nodes.push(node);
    this.byId.set(node.id, node);
    return node;
  }

  remove(node) {
    for (let i = 0; i < node.inputs.length; i++) if (node.inputs[i].link != null) this.removeLink(node.inputs[i].link);
    for (const out of node.outputs) for (const id of [...(out.links || [])]) this.removeLink(id);
    this.nodes = this.nodes.filter((n) => n !== node);
    this.byId.delete(node.id);
  }

  bringToFront(node) {
    const i = this.nodes.indexOf(node);
    if (i >= 0 && i !== this.nodes.length - 1) {
      this.nodes.splice(i, 1);
      this.nodes.push(node);
    }
  }

  /** The type that really flows out of an output: reroutes pass on what comes in. */
  outputType(node, slot, depth = 0) {
    const out = node.outputs[slot];
    if (!out) return null;
    if (isReroute(node) && depth < 64) {
      const link = this.links.get(node.inputs[0]?.link);
      if (link) {
        const origin = this.getNode(link.origin_id);
        if (origin) return this.outputType(origin, link.origin_slot, depth + 1);
      }
      return "*";
    }
    return out.type;
  }

  /** Types the links leaving a reroute are feeding (what a new incoming link must fit). */
  downstreamTypes(node, depth = 0) {
    const types = [];
    for (const id of node.outputs[0]?.links || []) {
      const link = this.links.get(id);
      const target = link && this.getNode(link.target_id);
      if (!target) continue;
      if (isReroute(target) && depth < 64) types.push(...this.downstreamTypes(target, depth + 1));
      else if (target.inputs[link.target_slot]) types.push(target.inputs[link.target_slot].type);
    }
    return types;
  }

  /** {ok, reason}: ComfyUI's type rule plus the reroute and primitive rules. */
  canConnect(origin, oslot, target, tslot) {
    const output = origin.outputs[oslot];
    const input = target.inputs[tslot];
    if (!output || !input) return { ok: false, reason: "no such socket" };
    if (origin === target) return { ok: false, reason: "a node cannot feed itself" };
    const outType = this.outputType(origin, oslot);
    if (origin.type === "PrimitiveNode" && !origin.unknown) {
      if (!input.widget) return { ok: false, reason: "a Primitive only connects to widget inputs" };
      const current = output.links?.length ? output.type : "*";
      if (current !== "*" && current !== input.type) {
        return { ok: false, reason: `this Primitive holds ${current}, not ${input.type}` };
      }
      return { ok: true };
    }
    if (isReroute(target)) {
      for (const t of this.downstreamTypes(target)) {
        if (!typesCompatible(outType, t)) return { ok: false, reason: `${outType} does not fit ${t} after the reroute` };
      }
      return { ok: true };
    }
    if (!typesCompatible(outType, input.type)) {
      return { ok: false, reason: `cannot connect ${outType} to ${input.type}` };
    }
    return { ok: true };
  }

  /** Makes the link (replacing what fed the input); no type check: call canConnect first. */
  connect(origin, oslot, target, tslot, id = null) {
    const input = target.inputs[tslot];
    if (input.link != null) this.removeLink(input.link);
    const linkId = id ?? ++this.lastLinkId;
    this.lastLinkId = Math.max(this.lastLinkId, linkId);
    const type = this.outputType(origin, oslot) ?? origin.outputs[oslot].type;
    const link = { id: linkId, origin_id: origin.id, origin_slot: oslot, target_id: target.id, target_slot: tslot,
      type: type === "*" && input.type !== "*" ? input.type : type };
    this.links.set(linkId, link);
    (origin.outputs[oslot].links ||= []).push(linkId);
    input.link = linkId;
    this.afterConnectionChange(origin, target, link);
    return link;
  }

  removeLink(id) {
    const link = this.links.get(id);
    if (!link) return;
    this.links.delete(id);
    const origin = this.getNode(link.origin_id);
    const target = this.getNode(link.target_id);
    const out = origin?.outputs[link.origin_slot];
    if (out && out.links) out.links = out.links.filter((l) => l !== id);
    const input = target?.inputs[link.target_slot];
    if (input && input.link === id) input.link = null;
    if (origin) this.afterConnectionChange(origin, target, null);
  }

  /** Keep reroute and primitive outputs typed by what flows through them. */
  afterConnectionChange(origin, target, link) {
    if (target && isReroute(target)) this.retypeReroute(target);
    if (isReroute(origin)) this.retypeReroute(origin);
    if (origin.type === "PrimitiveNode" && this.onPrimitiveChange) this.onPrimitiveChange(origin, target, link);
  }

  retypeReroute(node, depth = 0) {
    const type = this.outputType(node, 0);
    const shown = type === "*" ? (this.downstreamTypes(node)[0] ?? "*") : type;
    node.outputs[0].type = shown;
    if (depth > 64) return;
    for (const id of node.outputs[0].links || []) {
      const link = this.links.get(id);
      if (!link) continue;
      if (type !== "*") link.type = type;
      const next = this.getNode(link.target_id);
      if (next && isReroute(next)) this.retypeReroute(next, depth + 1);
    }
  }

  /** Removes input `index`, renumbering the links of the inputs after it. */
  removeInput(node, index) {
    const input = node.inputs[index];
    if (!input) return;
    if (input.link != null) this.removeLink(input.link);
    node.inputs.splice(index, 1);
    for (let i = index; i < node.inputs.length; i++) {
      const link = this.links.get(node.inputs[i].link);
      if (link) link.target_slot = i;
    }
  }

  /** Turns a widget into an input socket (ComfyUI's "convert to input"). */
  convertWidgetToInput(node, widget) {
    if (!widget.convertible || widget.converted) return -1;
    widget.converted = true;
    node.inputs.push({ name: widget.name, type: widget.type, link: null, widget: { name: widget.name } });
    fitToContent(node);
    return node.inputs.length - 1;
  }

  convertInputToWidget(node, widget) {
    const index = node.inputs.findIndex((i) => i.widget && i.widget.name === widget.name);
    if (index >= 0) this.removeInput(node, index);
    widget.converted = false;
    fitToContent(node);
  }

  /** Nodes in dependency order (each after the nodes it takes links from); ties by id. */
  executionOrder() {
    const indegree = new Map();
    const next = new Map();
    for (const node of this.nodes) {
      indegree.set(node, 0);
      next.set(node, []);
    }
    for (const link of this.links.values()) {
      const a = this.getNode(link.origin_id);
      const b = this.getNode(link.target_id);
      if (!a || !b || a === b) continue;
      indegree.set(b, indegree.get(b) + 1);
      next.get(a).push(b);
    }
    const ready = this.nodes.filter((n) => indegree.get(n) === 0).sort((a, b) => a.id - b.id);
    const order = [];
    const placed = new Set();
    while (ready.length) {
      const node = ready.shift();
      order.push(node);
      placed.add(node);
      for (const b of next.get(node)) {
        indegree.set(b, indegree.get(b) - 1);
        if (indegree.get(b) === 0) ready.push(b);
      }
    }
    for (const node of this.nodes) if (!placed.has(node)) order.push(node); // cycles
    return order;
  }
}
