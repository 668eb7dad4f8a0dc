// The right-click menus of the canvas, of a node and of a group.

import { ContextMenu, categoryItems } from "./menu.js";
import { MODE_ALWAYS, MODE_BYPASS, MODE_NEVER } from "./graph.js";
import { fitToContent, minSize } from "./layout.js";
import { storedClipboard } from "./clipboard.js";
import { maskEditable } from "./mask_editor.js";

const COLORS = [
  ["default", null, null],
  ["red", "#322", "#533"],
  ["brown", "#332922", "#593930"],
  ["green", "#232", "#353"],
  ["blue", "#223", "#335"],
  ["pale blue", "#2a363b", "#3f5159"],
  ["cyan", "#233", "#355"],
  ["purple", "#323", "#535"],
  ["yellow", "#432", "#653"],
  ["black", "#222", "#000"],
];

export class GraphMenus {
  constructor(app) {
    this.app = app;
  }

  canvasMenu(x, y, pos) {
    const app = this.app;
    const cmd = app.commands;
    const selected = [...app.canvas.selected];
    const items = [
      { label: "Add Node", submenu: () => categoryItems([...app.defs.values()], (def) => cmd.addNode(def, pos)) },
      { label: "Search nodes…", action: () => app.search.open({ x, y, onPick: (def) => cmd.addNode(def, pos) }) },
      { label: "Add Group", action: () => cmd.addGroup(pos) },
    ];
    if (selected.length) {
      items.push({ label: "Add Group For Selected Nodes", action: () => cmd.groupSelected() });
    }
    items.push({ separator: true });
    items.push({ label: "Paste", disabled: !storedClipboard(), action: () => app.pasteAt(pos, false) });
    items.push({ label: "Paste With Input Links", disabled: !storedClipboard(), action: () => app.pasteAt(pos, true) });
    items.push({ separator: true });
    items.push({ label: "Fit View", action: () => app.canvas.fitView() });
    items.push({ label: "Select All", action: () => app.selectAll() });
    items.push({ separator: true });
    items.push({ label: "Load Default Workflow", action: () => app.loadDefault() });
    items.push({ label: "Clear Workflow", action: () => app.clearGraph() });
    return new ContextMenu(items, { x, y });
  }

  nodeMenu(node, x, y, { widget = null, socket = null } = {}) {
    const app = this.app;
    const cmd = app.commands;
    const selected = app.canvas.selected.has(node) ? [...app.canvas.selected] : [node];
    const items = [{ title: true, label: node.title }];
    if (widget && widget.convertible && !widget.converted) {
      items.push({ label: `Convert ${widget.name} to input`, action: () => cmd.convertToInput(node, widget) });
    }
    if (socket) {
      const entry = socket.output ? node.outputs[socket.index] : node.inputs[socket.index];
      const linked = socket.output ? (entry.links || []).length > 0 : entry.link != null;
      if (linked) items.push({ label: `Disconnect ${entry.name || "link"}`, action: () => cmd.disconnectSocket(node, socket.index, socket.output) });
      if (!socket.output && entry.widget) {
        const w = node.widget(entry.widget.name);
        if (w) items.push({ label: `Convert ${w.name} to widget`, action: () => cmd.convertToWidget(node, w) });
      }
    }
    items.push({ label: "Rename", action: () => cmd.renameNode(node) });
    items.push({ label: "Mode", submenu: [
      { label: "Always", checked: node.mode === MODE_ALWAYS, action: () => cmd.setMode(selected, MODE_ALWAYS) },
      { label: "Never (mute)", checked: node.mode === MODE_NEVER, action: () => cmd.setMode(selected, MODE_NEVER) },
      { label: "Bypass", checked: node.mode === MODE_BYPASS, action: () => cmd.setMode(selected, MODE_BYPASS) },
    ] });
    items.push({ label: node.mode === MODE_BYPASS ? "Remove Bypass" : "Bypass", action: () => cmd.setMode(selected, MODE_BYPASS) });
    items.push({ label: node.flags.collapsed ? "Expand" : "Collapse", action: () => cmd.toggleCollapse(selected) });
    items.push({ label: node.flags.pinned ? "Unpin" : "Pin", action: () => cmd.togglePin(node) });
    items.push({ label: "Resize To Content", action: () => {
      node.size = minSize(node);
      fitToContent(node);
      app.commit("resize");
    } });
    const toInput = node.widgets.filter((w) => w.convertible && !w.converted);
    const toWidget = node.widgets.filter((w) => w.converted);
    if (toInput.length) {
      items.push({ label: "Convert Widget to Input", submenu: toInput.map((w) => ({ label: `Convert ${w.name} to input`,
        action: () => cmd.convertToInput(node, w) })) });
    }
    if (toWidget.length) {
      items.push({ label: "Convert Input to Widget", submenu: toWidget.map((w) => ({ label: `Convert ${w.name} to widget`,
        action: () => cmd.convertToWidget(node, w) })) });
    }
    if (node.type === "LoadImage" || node.type === "LoadImageMask") {
      items.push({ label: "Upload Image…", action: () => app.upload.pick(node) });
    }
    if (maskEditable(node)) items.push({ label: "Open in MaskEditor", action: () => app.maskEditor.open(node) });
    const out = app.runState.outputs.get(String(node.id));
    if (out && out.images.length) {
      items.push({ label: "Open Image", action: () => window.open(out.images[out.images.length - 1].url, "_blank") });
    }
    items.push({ label: "Colors", submenu: COLORS.map(([label, color, bgcolor]) => ({ label, action: () => {
      for (const n of selected) {
        if (color) [n.color, n.bgcolor] = [color, bgcolor];
        else [n.color, n.bgcolor] = [undefined, undefined];
      }
      app.commit("color");
    } })) });
    items.push({ separator: true });
    items.push({ label: "Copy", action: () => app.copySelection() });
    items.push({ label: "Clone", action: () => app.cloneSelection() });
    items.push({ label: "Remove", action: () => cmd.deleteNodes(selected) });
    return new ContextMenu(items, { x, y });
  }

  groupMenu(group, x, y) {
    const app = this.app;
    const cmd = app.commands;
    const items = [
      { title: true, label: group.title || "Group" },
      { label: "Edit Title", action: () => cmd.renameGroup(group) },
      { label: "Color", submenu: COLORS.slice(1).map(([label, , bg]) => ({ label, action: () => {
        group.color = bg;
        app.commit("group");
      } })) },
      { label: "Fit Group To Nodes", action: () => cmd.fitGroup(group) },
      { label: "Select Nodes", action: () => {
        app.canvas.selected = new Set(app.canvas.nodesInGroup(group));
        app.onSelectionChange();
        app.canvas.setDirty();
      } },
      { separator: true },
      { label: "Remove Group", action: () => cmd.removeGroup(group) },
    ];
    return new ContextMenu(items, { x, y });
  }
}
