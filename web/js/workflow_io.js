// Workflows in and out: ComfyUI's UI format (version 0.4, and reading version 1), API-format
// prompts turned into a laid-out graph, and the files a person drops or opens.

import { Node, createNode } from "./graph.js";
import { fitToContent, minSize } from "./layout.js";
import { isControlValue } from "./node_defs.js";
import { updatePrimitive } from "./primitive.js";
import { readPngText } from "./png.js";

const NODE_KEYS = new Set(["id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
  "widgets_values", "title", "color", "bgcolor", "widgets_values_named"]);
const TOP_KEYS = new Set(["last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version",
  "state"]);

// ------------------------------------------------------------------------------------------
// Saving

function serializeNode(node, order) {
  const out = { ...structuredClone(node.extra) };
  out.id = node.id;
  out.type = node.type;
  out.pos = [node.pos[0], node.pos[1]];
  out.size = [node.size[0], node.size[1]];
  out.flags = { ...node.flags };
  out.order = order;
  out.mode = node.mode;
  out.inputs = node.inputs.map((i) => ({ ...i, link: i.link ?? null }));
  out.outputs = node.outputs.map((o, index) => ({ ...o, links: [...(o.links || [])], slot_index: index }));
  if (node.title !== node.defaultTitle) out.title = node.title;
  out.properties = { ...node.properties };
  if (node.widgets.length) out.widgets_values = node.widgets.map((w) => (w.value === undefined ? null : w.value));
  else if (node.rawWidgets !== null && node.rawWidgets !== undefined) out.widgets_values = structuredClone(node.rawWidgets);
  else out.widgets_values = [];
  if (node.color) out.color = node.color;
  if (node.bgcolor) out.bgcolor = node.bgcolor;
  return out;
}

/** The graph as a ComfyUI UI-format (0.4) workflow. */
export function serializeWorkflow(graph, ds) {
  const order = new Map(graph.executionOrder().map((n, i) => [n, i]));
  const links = [...graph.links.values()].sort((a, b) => a.id - b.id)
    .map((l) => [l.id, l.origin_id, l.origin_slot, l.target_id, l.target_slot, l.type]);
  const extra = { ...structuredClone(graph.extra) };
  if (ds) extra.ds = { scale: ds.scale, offset: [ds.offset[0], ds.offset[1]] };
  return {
    ...structuredClone(graph.meta),
    last_node_id: graph.lastNodeId,
    last_link_id: graph.lastLinkId,
    nodes: graph.nodes.map((n) => serializeNode(n, order.get(n))),
    links,
    groups: graph.groups.map((g) => structuredClone(g)),
    config: { ...graph.config },
    extra,
    version: 0.4,
  };
}

// ------------------------------------------------------------------------------------------
// Loading

function num(value, fallback = 0) {
  const n = Number(value);
  return Number.isFinite(n) ? n : fallback;
}

function pair(value, fallback) {
  if (Array.isArray(value)) return [num(value[0], fallback[0]), num(value[1], fallback[1])];
  if (value && typeof value === "object") return [num(value[0], fallback[0]), num(value[1], fallback[1])];
  return fallback.slice();
}

function nodeId(value) {
  if (typeof value === "number") return value;
  if (typeof value === "string" && /^-?\d+$/.test(value)) return Number(value);
  return value;
}

/** Positional widgets_values onto widgets, as ui_convert._read_positional reads them. */
function readWidgetValues(node, values) {
  if (values && !Array.isArray(values) && typeof values === "object") {
    for (const w of node.widgets) if (w.kind === "value" && w.name in values) w.value = values[w.name];
    return;
  }
  if (!Array.isArray(values)) return;
  let pos = 0;
  let controlSeen = false;
  for (const w of node.widgets) {
    const present = pos < values.length;
    if (w.kind === "control") {
      controlSeen = present && isControlValue(values[pos]);
      if (controlSeen) w.value = values[pos++];
    } else if (w.kind === "filter") {
      if (controlSeen && present) w.value = values[pos++];
    } else if (w.kind === "upload") {
      if (present) pos += 1;
    } else if (present) {
      w.value = values[pos++];
    }
  }
}

function reconcileInputs(node, def, saved) {
  const widgetNames = new Set(def.plan.filter((s) => s.kind === "value").map((s) => s.name));
  const listed = saved.filter((s) => s && s.widget && widgetNames.has(s.widget.name));
  // Newer ComfyUI lists every widget as an input; an unlinked one is then just a widget.
  const listsAll = widgetNames.size > 0 && [...widgetNames].every((n) => listed.some((s) => s.widget.name === n));
  const inputs = [];
  for (const s of saved) {
    if (!s || typeof s !== "object") continue;
    if (s.widget && widgetNames.has(s.widget.name)) {
      if (s.link != null || !listsAll) {
        const widget = node.widget(s.widget.name);
        widget.converted = true;
        inputs.push({ ...s, type: def.widgetInputs[s.widget.name]?.type ?? s.type });
      }
      continue;
    }
    const socket = def.sockets.find((x) => x.name === s.name);
    if (!socket && def.widgetInputs[s.name]) continue; // a widget saved as a plain input: keep it a widget
    inputs.push({ ...s, type: socket ? socket.type : s.type });
  }
  for (const socket of def.sockets) {
    if (!inputs.some((i) => i.name === socket.name && !i.widget)) inputs.push({ name: socket.name, type: socket.type, link: null });
  }
  return inputs;
}

function reconcileOutputs(def, saved) {
  const outputs = saved.filter((o) => o && typeof o === "object").map((s, i) => {
    const { slot_index: _ignored, ...rest } = s;
    return { ...rest, name: s.name ?? def.outputs[i]?.name ?? "", type: def.outputs[i]?.type ?? s.type,
      links: Array.isArray(s.links) ? [...s.links] : [] };
  });
  for (let i = outputs.length; i < def.outputs.length; i++) {
    outputs.push({ name: def.outputs[i].name, type: def.outputs[i].type, links: [] });
  }
  return outputs;
}

/** A node object from its UI-format JSON (ids and links are the caller's business). */
export function nodeFromJson(raw, defs) {
  const def = defs.get(raw.type);
  const node = def ? createNode(def) : new Node(String(raw.type), null);
  node.id = nodeId(raw.id);
  node.pos = pair(raw.pos, [0, 0]);
  node.flags = raw.flags && typeof raw.flags === "object" ? { ...raw.flags } : {};
  node.mode = Number.isInteger(raw.mode) ? raw.mode : 0;
  node.order = raw.order;
  if (typeof raw.title === "string" && raw.title) node.title = raw.title;
  if (raw.properties && typeof raw.properties === "object") node.properties = { ...raw.properties };
  if (raw.color) node.color = raw.color;
  if (raw.bgcolor) node.bgcolor = raw.bgcolor;
  for (const [key, value] of Object.entries(raw)) if (!NODE_KEYS.has(key)) node.extra[key] = value;
  const savedInputs = Array.isArray(raw.inputs) ? raw.inputs : [];
  const savedOutputs = Array.isArray(raw.outputs) ? raw.outputs : [];
  if (!def) {
    node.inputs = savedInputs.map((i) => ({ ...i }));
    node.outputs = savedOutputs.map((o) => ({ ...o, links: Array.isArray(o.links) ? [...o.links] : [] }));
    node.rawWidgets = raw.widgets_values === undefined ? null : structuredClone(raw.widgets_values);
  } else if (def.name === "PrimitiveNode") {
    node.outputs = savedOutputs.length ? reconcileOutputs(def, savedOutputs.slice(0, 1)) : node.outputs;
    if (savedOutputs[0]?.type) node.outputs[0].type = savedOutputs[0].type;
    node.rawWidgets = Array.isArray(raw.widgets_values) ? structuredClone(raw.widgets_values) : null;
  } else {
    node.inputs = reconcileInputs(node, def, savedInputs);
    node.outputs = reconcileOutputs(def, savedOutputs);
    readWidgetValues(node, raw.widgets_values);
  }
  node.size = pair(raw.size, minSize(node));
  fitToContent(node);
  return node;
}

function linkEntries(wf) {
  const raw = Array.isArray(wf.links) ? wf.links : [];
  const out = [];
  for (const entry of raw) {
    if (Array.isArray(entry) && entry.length >= 5) {
      out.push({ id: num(entry[0]), origin_id: nodeId(entry[1]), origin_slot: num(entry[2]), target_id: nodeId(entry[3]),
        target_slot: num(entry[4]), type: entry[5] ?? "*" });
    } else if (entry && typeof entry === "object") {
      out.push({ id: num(entry.id), origin_id: nodeId(entry.origin_id), origin_slot: num(entry.origin_slot),
        target_id: nodeId(entry.target_id), target_slot: num(entry.target_slot), type: entry.type ?? "*" });
    }
  }
  return out;
}

/** True for a UI-format save (0.4 or version 1), as ui_convert.is_ui_workflow. */
export function isUiWorkflow(doc) {
  return !!doc && typeof doc === "object" && Array.isArray(doc.nodes)
    && ("links" in doc || "state" in doc || doc.version === 1);
}

/** Replace the graph's contents with a UI-format workflow. Returns a list of warnings. */
export function loadWorkflow(graph, wf, defs) {
  if (!isUiWorkflow(wf)) throw new Error("this is not a UI-format workflow (no nodes and links)");
  const warnings = [];
  graph.clear();
  for (const [key, value] of Object.entries(wf)) if (!TOP_KEYS.has(key)) graph.meta[key] = structuredClone(value);
  graph.extra = wf.extra && typeof wf.extra === "object" ? structuredClone(wf.extra) : {};
  graph.config = wf.config && typeof wf.config === "object" ? { ...wf.config } : {};
  const inputSlots = new Map();
  const outputSlots = new Map();
  for (const raw of wf.nodes) {
    if (!raw || typeof raw !== "object" || raw.type === undefined) continue;
    const node = nodeFromJson(raw, defs);
    if (graph.byId.has(node.id)) {
      warnings.push(`node id ${node.id} is used twice; the second copy got a new id`);
      node.id = null;
    }
    graph.add(node);
    if (node.unknown) warnings.push(`node ${node.id}: unknown type ${node.type}`);
    node.inputs.forEach((input, i) => { if (input.link != null) inputSlots.set(`${node.id}|${input.link}`, i); });
    node.outputs.forEach((o, i) => (o.links || []).forEach((id) => outputSlots.set(`${node.id}|${id}`, i)));
    node.inputs.forEach((input) => { input.link = null; });
    node.outputs.forEach((o) => { o.links = []; });
  }
  const state = wf.state && typeof wf.state === "object" ? wf.state : {};
  graph.lastNodeId = Math.max(graph.lastNodeId, num(wf.last_node_id ?? state.lastNodeId, 0));
  for (const link of linkEntries(wf)) {
    const origin = graph.getNode(link.origin_id);
    const target = graph.getNode(link.target_id);
    if (!origin || !target) {
      warnings.push(`link ${link.id} joins a node that is not in the workflow; dropped`);
      continue;
    }
    const oslot = outputSlots.get(`${origin.id}|${link.id}`) ?? link.origin_slot;
    const tslot = inputSlots.get(`${target.id}|${link.id}`) ?? link.target_slot;
    if (!origin.outputs[oslot] || !target.inputs[tslot] || graph.links.has(link.id)) {
      warnings.push(`link ${link.id} points at a socket that does not exist; dropped`);
      continue;
    }
    graph.links.set(link.id, { ...link, origin_slot: oslot, target_slot: tslot });
    origin.outputs[oslot].links.push(link.id);
    target.inputs[tslot].link = link.id;
  }
  graph.lastLinkId = Math.max(num(wf.last_link_id ?? state.lastLinkId, 0), ...[...graph.links.keys(), 0]);
  for (const node of graph.nodes) {
    if (node.type === "Reroute" && !node.unknown) graph.retypeReroute(node);
    if (node.type === "PrimitiveNode") updatePrimitive(graph, node);
  }
  graph.groups = (Array.isArray(wf.groups) ? wf.groups : []).filter((g) => g && Array.isArray(g.bounding))
    .map((g) => structuredClone(g));
  return warnings;
}

// ------------------------------------------------------------------------------------------
// API-format prompts: build a graph and lay it out in columns by depth.

function unwrap(value) {
  if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length === 1 && "__value__" in value) {
    return value.__value__;
  }
  return value;
}

function isLink(value) {
  return Array.isArray(value) && value.length === 2 && (typeof value[0] === "string" || typeof value[0] === "number")
    && Number.isInteger(value[1]);
}

export function isApiPrompt(doc) {
  return !!doc && typeof doc === "object" && !Array.isArray(doc) && Object.keys(doc).length > 0
    && Object.values(doc).every((n) => n && typeof n === "object" && typeof n.class_type === "string");
}

/** Replace the graph with the nodes of an API-format prompt, laid out left to right. */
export function loadApiPrompt(graph, prompt, defs) {
  graph.clear();
  const warnings = [];
  const ids = new Map();
  const entries = Object.entries(prompt);
  const used = new Set(entries.map(([k]) => k).filter((k) => /^\d+$/.test(k)).map(Number));
  let next = Math.max(0, ...used) + 1;
  for (const [key] of entries) ids.set(key, /^\d+$/.test(key) ? Number(key) : next++);
  const depth = new Map();
  const depthOf = (key, seen = new Set()) => {
    if (depth.has(key)) return depth.get(key);
    if (seen.has(key) || !prompt[key]) return 0;
    seen.add(key);
    let d = 0;
    for (const value of Object.values(prompt[key].inputs || {})) {
      if (isLink(value) && prompt[String(value[0])]) d = Math.max(d, depthOf(String(value[0]), seen) + 1);
    }
    depth.set(key, d);
    return d;
  };
  const columns = new Map();
  for (const [key, entry] of entries) {
    const def = defs.get(entry.class_type);
    const node = def ? createNode(def) : new Node(entry.class_type, null);
    node.id = ids.get(key);
    if (entry._meta && typeof entry._meta.title === "string" && entry._meta.title) node.title = entry._meta.title;
    const literals = {};
    for (const [name, value] of Object.entries(entry.inputs || {})) {
      if (isLink(value)) continue;
      const widget = node.widget(name);
      if (widget) widget.value = unwrap(value);
      else literals[name] = unwrap(value);
    }
    if (!def) {
      node.rawWidgets = literals;
      warnings.push(`node ${key}: unknown type ${entry.class_type}`);
    }
    graph.add(node);
    const d = depthOf(key);
    const col = columns.get(d) || [];
    col.push(node);
    columns.set(d, col);
  }
  for (const [key, entry] of entries) {
    const target = graph.getNode(ids.get(key));
    for (const [name, value] of Object.entries(entry.inputs || {})) {
      if (!isLink(value)) continue;
      const origin = graph.getNode(ids.get(String(value[0])));
      if (!origin) {
        warnings.push(`node ${key} input ${name}: links to missing node ${value[0]}`);
        continue;
      }
      while (origin.outputs.length <= value[1]) origin.outputs.push({ name: "*", type: "*", links: [] });
      let slot = target.inputs.findIndex((i) => i.name === name);
      if (slot < 0) {
        const widget = target.widget(name);
        if (widget) slot = graph.convertWidgetToInput(target, widget);
        else {
          target.inputs.push({ name, type: origin.outputs[value[1]].type, link: null });
          slot = target.inputs.length - 1;
        }
      }
      graph.connect(origin, value[1], target, slot);
    }
  }
  for (const [d, col] of [...columns.entries()].sort((a, b) => a[0] - b[0])) {
    let y = 40;
    for (const node of col) {
      fitToContent(node);
      node.pos = [40 + d * 380, y + 30];
      y += node.size[1] + 70;
    }
  }
  return warnings;
}

// ------------------------------------------------------------------------------------------
// Files: .json (UI or API) and .png (tEXt "workflow", else "prompt").

/** {kind: "workflow"|"prompt"|"image"|"none", data} for a dropped or opened file. */
export async function readWorkflowFile(file) {
  const name = (file.name || "").toLowerCase();
  if (file.type === "application/json" || name.endsWith(".json")) {
    const doc = JSON.parse(await file.text());
    if (isUiWorkflow(doc)) return { kind: "workflow", data: doc };
    if (doc && isApiPrompt(doc.prompt)) return { kind: "prompt", data: doc.prompt };
    if (isApiPrompt(doc)) return { kind: "prompt", data: doc };
    throw new Error(`${file.name}: neither a UI workflow nor an API prompt`);
  }
  if (file.type === "image/png" || name.endsWith(".png")) {
    const chunks = readPngText(await file.arrayBuffer());
    for (const [key, kind, check] of [["workflow", "workflow", isUiWorkflow], ["prompt", "prompt", isApiPrompt]]) {
      if (chunks[key]) {
        try {
          const doc = JSON.parse(chunks[key]);
          if (check(doc)) return { kind, data: doc };
        } catch {
          // not JSON: fall through to the next chunk
        }
      }
    }
    return { kind: "image", data: file };
  }
  if ((file.type || "").startsWith("image/")) return { kind: "image", data: file };
  return { kind: "none", data: null };
}
