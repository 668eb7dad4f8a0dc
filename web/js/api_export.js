// UI workflow -> API prompt, in the browser. Follows graph/ui_convert.py step by step so the
// editor queues exactly what the server-side converter would compute from the saved file:
// widget values by position, links resolved through reroutes, primitives and bypassed nodes,
// muted nodes dropped. (Subgraphs are not edited here, so only the root level is converted.)

import { MODE_BYPASS, MODE_NEVER } from "./graph.js";
import { widgetPlan, isControlValue } from "./node_defs.js";
import { typesCompatible } from "./types.js";

const DROP = Symbol("drop");

class Origin {
  constructor(nodeId, slot) {
    this.nodeId = nodeId;
    this.slot = slot;
  }
}

class Literal {
  constructor(value) {
    this.value = value;
  }
}

function wrap(value) {
  return Array.isArray(value) ? { __value__: value } : value;
}

function idKey(value) {
  if (typeof value === "boolean") return null;
  if (typeof value === "number" && Number.isInteger(value)) return String(value);
  if (typeof value === "string" && value) return value;
  return null;
}

function mode(node) {
  return Number.isInteger(node.mode) ? node.mode : 0;
}

function inputName(entry) {
  const widget = entry.widget;
  if (widget && typeof widget === "object" && typeof widget.name === "string") return widget.name;
  return String(entry.name ?? "");
}

function defaultOf(slot) {
  if (slot.options && "default" in slot.options) return slot.options.default;
  return slot.choices.length ? slot.choices[0] : undefined;
}

function readWidgets(plan, values) {
  const named = {};
  if (values && typeof values === "object" && !Array.isArray(values)) {
    for (const slot of plan) {
      if (slot.kind !== "value") continue;
      const v = slot.name in values ? values[slot.name] : defaultOf(slot);
      if (v !== undefined) named[slot.name] = v;
    }
    return named;
  }
  const list = Array.isArray(values) ? values : [];
  let pos = 0;
  let controlSeen = false;
  for (const slot of plan) {
    const present = pos < list.length;
    if (slot.kind === "control") {
      controlSeen = present && isControlValue(list[pos]);
      if (controlSeen) pos += 1;
    } else if (slot.kind === "filter") {
      if (controlSeen && present) pos += 1;
    } else if (slot.kind === "upload") {
      if (present) pos += 1;
    } else {
      const v = present ? list[pos] : defaultOf(slot);
      if (present) pos += 1;
      if (v !== undefined) named[slot.name] = v;
    }
  }
  return named;
}

function executionOrder(nodes) {
  return nodes.map((node, index) => ({ node, index }))
    .sort((a, b) => {
      const oa = Number.isInteger(a.node.order) ? a.node.order : Infinity;
      const ob = Number.isInteger(b.node.order) ? b.node.order : Infinity;
      return oa === ob ? a.index - b.index : oa - ob;
    })
    .map((x) => x.node);
}

/**
 * The API prompt for a UI-format workflow, given /object_info. Throws an Error naming the
 * node or link when the workflow's structure is broken.
 */
export function workflowToApi(workflow, objectInfo) {
  const nodes = new Map();
  for (const node of workflow.nodes || []) nodes.set(idKey(node.id), node);
  const links = new Map();
  for (const entry of workflow.links || []) {
    if (!entry) continue;
    const f = Array.isArray(entry) ? entry
      : [entry.id, entry.origin_id, entry.origin_slot, entry.target_id, entry.target_slot, entry.type];
    links.set(idKey(f[0]), { id: idKey(f[0]), origin: idKey(f[1]), originSlot: f[2], target: idKey(f[3]),
      targetSlot: f[4], type: f[5] });
  }
  const plans = new Map();
  const planOf = (type) => {
    if (!plans.has(type)) plans.set(type, widgetPlan(objectInfo[type]));
    return plans.get(type);
  };
  const kind = (node) => {
    if (Object.prototype.hasOwnProperty.call(objectInfo, node.type)) return "real";
    if (node.type === "Reroute") return "reroute";
    if (node.type === "PrimitiveNode") return "primitive";
    if (node.type === "Note" || node.type === "MarkdownNote") return "note";
    return "unknown";
  };

  const follow = (linkId, where, seen) => {
    const link = linkId === null ? undefined : links.get(linkId);
    if (!link) throw new Error(`${where} uses link ${linkId}, which is not in the workflow's links`);
    const node = nodes.get(link.origin);
    if (!node) throw new Error(`link ${link.id} comes from node ${link.origin}, which does not exist`);
    const step = `${link.origin}|${link.originSlot}`;
    if (seen.has(step)) throw new Error(`link ${link.id}: the links through node ${link.origin} form a loop`);
    const next = new Set(seen).add(step);
    const k = kind(node);
    if (k === "primitive") {
      const values = node.widgets_values;
      return Array.isArray(values) && values.length ? new Literal(values[0]) : DROP;
    }
    if (k === "reroute") return through(link.origin, node, 0, next);
    if (k === "note" || mode(node) === MODE_NEVER) return DROP;
    if (mode(node) === MODE_BYPASS) {
      const index = bypassInput(node, link);
      return index === null ? DROP : through(link.origin, node, index, next);
    }
    return new Origin(link.origin, link.originSlot);
  };

  const through = (nodeIdKey, node, index, seen) => {
    const inputs = node.inputs || [];
    if (index >= inputs.length || inputs[index].link === null || inputs[index].link === undefined) return DROP;
    return follow(idKey(inputs[index].link), `node ${nodeIdKey} input '${inputName(inputs[index])}'`, seen);
  };

  const prompt = {};
  for (const node of executionOrder([...nodes.values()])) {
    const k = kind(node);
    if (k === "reroute" || k === "primitive" || k === "note") continue;
    if (mode(node) === MODE_NEVER || mode(node) === MODE_BYPASS) continue;
    const id = idKey(node.id);
    const info = objectInfo[node.type];
    const inputs = {};
    if (info && typeof info === "object") {
      for (const [name, value] of Object.entries(readWidgets(planOf(node.type), node.widgets_values))) {
        inputs[name] = wrap(value);
      }
    }
    for (const entry of node.inputs || []) {
      if (entry.link === null || entry.link === undefined) continue;
      const name = inputName(entry);
      const found = follow(idKey(entry.link), `node ${id} input '${name}'`, new Set());
      if (found === DROP) delete inputs[name];
      else if (found instanceof Origin) inputs[name] = [found.nodeId, found.slot];
      else if (found instanceof Literal) inputs[name] = wrap(found.value);
    }
    let title = node.type;
    if (typeof node.title === "string" && node.title) title = node.title;
    else if (info && info.display_name) title = info.display_name;
    prompt[id] = { inputs, class_type: node.type, _meta: { title } };
  }
  return prompt;
}

function bypassInput(node, link) {
  const outputs = node.outputs || [];
  const slot = link.originSlot;
  let outType = link.type;
  if (slot >= 0 && slot < outputs.length && outputs[slot] && outputs[slot].type) outType = outputs[slot].type;
  const inputs = node.inputs || [];
  const fits = (t) => outType !== null && outType !== undefined && t !== null && t !== undefined && typesCompatible(outType, t);
  if (slot >= 0 && slot < inputs.length && fits(inputs[slot].type)) return slot;
  const index = inputs.findIndex((entry) => fits(entry.type));
  return index < 0 ? null : index;
}
