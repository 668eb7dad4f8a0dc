// Node definitions from /object_info: sockets, outputs and the widget plan of every node class.
//
// The widget plan is the order widgets are created in, which is the order of a UI save's
// positional widgets_values. It must agree with graph/ui_convert.py's _widget_plan, or saved
// files would map values to the wrong inputs.

export const WIDGET_TYPES = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);
export const CONTROL_MODES = ["fixed", "increment", "decrement", "randomize"];
const CONTROL_VALUES = new Set([...CONTROL_MODES, "increment-wrap"]);
const LEGACY_SEED_INPUTS = new Set(["seed", "noise_seed"]);
const UPLOAD_OPTIONS = ["image_upload", "video_upload", "animated_image_upload"];

export function isControlValue(value) {
  return typeof value === "string" && CONTROL_VALUES.has(value);
}

/** [kind, options] of an INPUT_TYPES entry such as ["INT", {default: 1}] or [["a", "b"]]. */
export function splitSpec(spec) {
  if (!Array.isArray(spec) || spec.length === 0) return [null, {}];
  const options = spec.length > 1 && spec[1] && typeof spec[1] === "object" && !Array.isArray(spec[1]) ? spec[1] : {};
  return [spec[0], options];
}

function isCombo(kind) {
  return Array.isArray(kind) || kind === "COMBO";
}

/** True when the input is drawn as a widget rather than a socket. */
export function isWidgetSpec(spec) {
  const [kind, options] = splitSpec(spec);
  return (isCombo(kind) || WIDGET_TYPES.has(kind)) && !options.forceInput;
}

function inputOrder(info, section, specs) {
  const order = info.input_order && Array.isArray(info.input_order[section]) ? info.input_order[section] : [];
  const names = order.filter((n) => Object.prototype.hasOwnProperty.call(specs, n));
  for (const n of Object.keys(specs)) if (!names.includes(n)) names.push(n);
  return names;
}

function widgetsFor(name, spec, section) {
  const [kind, options] = splitSpec(spec);
  if (!isWidgetSpec(spec)) return [];
  const combo = isCombo(kind);
  const choices = Array.isArray(kind) ? kind.slice() : Array.isArray(options.options) ? options.options.slice() : [];
  const type = combo ? "COMBO" : kind;
  const slots = [{ kind: "value", name, type, options, choices, section }];
  if (options.control_after_generate || (kind === "INT" && LEGACY_SEED_INPUTS.has(name))) {
    const initial = typeof options.control_after_generate === "string" && isControlValue(options.control_after_generate)
      ? options.control_after_generate : "randomize";
    slots.push({ kind: "control", name: "control_after_generate", type: "COMBO", options: { default: initial },
      choices: CONTROL_MODES.slice(), target: name });
    if (combo) slots.push({ kind: "filter", name: "control_filter_list", type: "STRING", options: { default: "" },
      choices: [], target: name });
  }
  return slots;
}

function isUpload(spec) {
  const [, options] = splitSpec(spec);
  return UPLOAD_OPTIONS.some((key) => options[key]);
}

/** The widgets a node class gets, in creation order (same as ui_convert._widget_plan). */
export function widgetPlan(info) {
  const plan = [];
  const declared = info && typeof info.input === "object" && info.input ? info.input : {};
  for (const section of ["required", "optional"]) {
    const specs = declared[section] && typeof declared[section] === "object" ? declared[section] : {};
    for (const name of inputOrder(info, section, specs)) plan.push(...widgetsFor(name, specs[name], section));
    if (section === "required" && Object.values(specs).some(isUpload)) {
      const target = Object.keys(specs).find((n) => isUpload(specs[n]));
      plan.push({ kind: "upload", name: "upload", type: "BUTTON", options: { default: "image" }, choices: [], target });
    }
  }
  return plan;
}

/** A node class as the editor uses it. */
export class NodeDef {
  constructor(name, info, virtual = false) {
    this.name = name;
    this.info = info;
    this.virtual = virtual;
    this.displayName = info.display_name || name;
    this.category = info.category || "";
    this.description = info.description || "";
    this.outputNode = !!info.output_node;
    this.deprecated = !!info.deprecated;
    this.plan = widgetPlan(info);
    this.sockets = [];
    this.widgetInputs = {};
    const declared = info.input || {};
    for (const section of ["required", "optional"]) {
      const specs = declared[section] || {};
      for (const inputName of inputOrder(info, section, specs)) {
        const [kind, options] = splitSpec(specs[inputName]);
        if (isWidgetSpec(specs[inputName])) {
          this.widgetInputs[inputName] = { type: isCombo(kind) ? "COMBO" : kind, options };
        } else {
          this.sockets.push({ name: inputName, type: isCombo(kind) ? "COMBO" : kind ?? "*", optional: section === "optional",
            tooltip: options.tooltip });
        }
      }
    }
    const types = Array.isArray(info.output) ? info.output : [];
    const names = Array.isArray(info.output_name) ? info.output_name : [];
    const lists = Array.isArray(info.output_is_list) ? info.output_is_list : [];
    this.outputs = types.map((type, i) => ({ name: names[i] || (Array.isArray(type) ? "COMBO" : type),
      type: Array.isArray(type) ? "COMBO" : type, isList: !!lists[i] }));
    this.searchText = `${name} ${this.displayName} ${this.category}`.toLowerCase();
  }

  /** Can a link of `type` feed this node (a socket, or a widget that could become one)? */
  acceptsType(type, compatible) {
    return this.sockets.some((s) => compatible(type, s.type))
      || Object.values(this.widgetInputs).some((w) => compatible(type, w.type));
  }

  producesType(type, compatible) {
    return this.outputs.some((o) => compatible(o.type, type));
  }
}

// Frontend-only nodes: they never reach the server; ui_convert resolves them away.
export const VIRTUAL_INFO = {
  Reroute: {
    display_name: "Reroute", category: "utils", description: "Passes a link through, to tidy the wiring.",
    input: { required: { "": ["*"] } }, output: ["*"], output_name: [""],
  },
  PrimitiveNode: {
    display_name: "Primitive", category: "utils",
    description: "Holds one widget value and feeds it to widget inputs of other nodes.",
    input: {}, output: ["*"], output_name: ["connect to widget input"],
  },
  Note: {
    display_name: "Note", category: "utils", description: "A text note; not part of the prompt.",
    input: { required: { text: ["STRING", { multiline: true, default: "" }] } }, output: [],
  },
  MarkdownNote: {
    display_name: "Markdown Note", category: "utils", description: "A text note; not part of the prompt.",
    input: { required: { text: ["STRING", { multiline: true, default: "" }] } }, output: [],
  },
};

/** Map of class name -> NodeDef: the server's classes plus our virtual ones it does not define. */
export function buildDefs(objectInfo) {
  const defs = new Map();
  for (const [name, info] of Object.entries(objectInfo || {})) {
    if (info && typeof info === "object") defs.set(name, new NodeDef(name, info));
  }
  for (const [name, info] of Object.entries(VIRTUAL_INFO)) {
    if (!defs.has(name)) defs.set(name, new NodeDef(name, info, true));
  }
  return defs;
}
