// PrimitiveNode: a frontend-only node holding one widget value that it feeds to the widget
// inputs it is linked to. It takes the shape of the first widget it is connected to.

import { makeWidget } from "./widgets.js";
import { fitToContent } from "./layout.js";
import { isControlValue } from "./node_defs.js";

function targetWidget(graph, node) {
  for (const id of node.outputs[0]?.links || []) {
    const link = graph.links.get(id);
    const target = link && graph.getNode(link.target_id);
    const input = target && target.inputs[link.target_slot];
    if (input && input.widget) {
      const widget = target.widget(input.widget.name);
      if (widget) return widget;
    }
  }
  return null;
}

/** Rebuild a primitive's widget from what its output is linked to. */
export function updatePrimitive(graph, node) {
  if (node.type !== "PrimitiveNode" || node.unknown || !node.outputs[0]) return;
  const out = node.outputs[0];
  const source = targetWidget(graph, node);
  if (!source) {
    if (!(out.links || []).length && node.widgets.length) {
      node.widgets = [];
      out.type = "*";
      out.name = "connect to widget input";
      delete out.widget;
    }
    return;
  }
  if (node.widgets.length && node.widgets[0].name === source.name && node.widgets[0].type === source.type) return;
  const value = makeWidget({ kind: "value", name: source.name, type: source.type, options: source.options,
    choices: source.choices });
  value.value = source.value;
  const widgets = [value];
  if (source.type === "INT" || source.type === "FLOAT" || source.type === "COMBO") {
    widgets.push(makeWidget({ kind: "control", name: "control_after_generate", type: "COMBO",
      options: { default: "fixed" }, target: source.name }));
  }
  const saved = node.rawWidgets;
  if (Array.isArray(saved) && saved.length) {
    value.value = saved[0];
    if (widgets[1] && isControlValue(saved[1])) widgets[1].value = saved[1];
  }
  node.rawWidgets = null;
  node.widgets = widgets;
  out.type = source.type;
  out.name = source.type;
  out.widget = { name: source.name };
  fitToContent(node);
}
