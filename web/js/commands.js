// Editing commands: add, delete, connect, modes, collapse, groups, clone and paste.
// Each finishes with app.commit(), which redraws, records an undo step and saves.

import { createNode, MODE_ALWAYS, MODE_BYPASS, MODE_NEVER } from "./graph.js";
import { typesCompatible } from "./types.js";
import { nodeBounds, fitToContent } from "./layout.js";
import { nodeFromJson } from "./workflow_io.js";
import { updatePrimitive } from "./primitive.js";
import { editValue } from "./editors.js";

export class Commands {
  constructor(app) {
    this.app = app;
  }

  get graph() {
    return this.app.graph;
  }

  get canvas() {
    return this.app.canvas;
  }

  addNode(def, pos, { select = true, commit = true } = {}) {
    const node = createNode(def);
    node.pos = [Math.round(pos[0]), Math.round(pos[1])];
    this.graph.add(node);
    this.app.extensions?.nodeCreated(node);
    if (select) {
      this.canvas.selected.clear();
      this.canvas.selected.add(node);
      this.app.onSelectionChange();
    }
    if (commit) this.app.commit("add-node");
    return node;
  }

  deleteNodes(nodes) {
    if (!nodes.length) return;
    for (const node of nodes) {
      this.graph.remove(node);
      this.canvas.selected.delete(node);
    }
    this.app.onSelectionChange();
    this.app.commit("delete");
  }

  deleteSelected() {
    if (this.canvas.selectedGroup && !this.canvas.selected.size) {
      this.removeGroup(this.canvas.selectedGroup);
      return;
    }
    this.deleteNodes([...this.canvas.selected]);
  }

  /** Connect after checking the types; tells the person why when refused. */
  tryConnect(origin, oslot, target, tslot) {
    const check = this.graph.canConnect(origin, oslot, target, tslot);
    if (!check.ok) {
      this.app.refused(check.reason);
      this.app.commit("disconnect");
      return null;
    }
    const link = this.graph.connect(origin, oslot, target, tslot);
    this.app.commit("connect");
    return link;
  }

  /** Output dropped on a node body: the first free input that fits, else any that fits. */
  connectToNode(origin, oslot, target) {
    const type = this.graph.outputType(origin, oslot);
    const fits = target.inputs.map((input, i) => [input, i])
      .filter(([, i]) => this.graph.canConnect(origin, oslot, target, i).ok);
    const pick = fits.find(([input]) => input.link == null) || fits[0];
    if (pick) return this.tryConnect(origin, oslot, target, pick[1]);
    const widget = target.widgets.find((w) => w.convertible && !w.converted && typesCompatible(type, w.type));
    if (widget && origin.type !== "PrimitiveNode") {
      const slot = this.graph.convertWidgetToInput(target, widget);
      return this.tryConnect(origin, oslot, target, slot);
    }
    this.app.refused(`${target.title} has no input that takes ${type}`);
    this.app.commit("disconnect");
    return null;
  }

  /** An input dragged onto a node body: its first output that fits. */
  connectFromNode(origin, target, tslot) {
    const index = origin.outputs.findIndex((_, i) => this.graph.canConnect(origin, i, target, tslot).ok);
    if (index < 0) {
      this.app.refused(`${origin.title} has no output that fits ${target.inputs[tslot].type}`);
      return null;
    }
    return this.tryConnect(origin, index, target, tslot);
  }

  /** A link dropped on empty canvas: the search box, limited to nodes that fit. */
  openSearchForLink({ x, y, pos, origin, oslot, target, tslot, type, detached }) {
    const app = this.app;
    app.search.open({
      x, y,
      accepts: origin ? type : null,
      produces: target ? type : null,
      onPick: (def) => {
        const node = this.addNode(def, origin ? [pos[0], pos[1] - 20] : [pos[0] - 200, pos[1] - 20], { commit: false });
        if (origin) this.connectToNode(origin, oslot, node);
        else this.connectFromNode(node, target, tslot);
        app.commit("add-node");
      },
      onCancel: () => {
        if (detached) app.commit("disconnect");
      },
    });
  }

  setMode(nodes, mode) {
    if (!nodes.length) return;
    const all = nodes.every((n) => n.mode === mode);
    for (const node of nodes) node.mode = all ? MODE_ALWAYS : mode;
    this.app.commit("mode");
  }

  toggleBypass() {
    this.setMode([...this.canvas.selected], MODE_BYPASS);
  }

  toggleMute() {
    this.setMode([...this.canvas.selected], MODE_NEVER);
  }

  toggleCollapse(nodes = [...this.canvas.selected]) {
    for (const node of nodes) {
      if (node.flags.collapsed) delete node.flags.collapsed;
      else node.flags.collapsed = true;
    }
    this.app.commit("collapse");
  }

  togglePin(node) {
    if (node.flags.pinned) delete node.flags.pinned;
    else node.flags.pinned = true;
    this.app.commit("pin");
  }

  convertToInput(node, widget) {
    this.graph.convertWidgetToInput(node, widget);
    this.app.commit("convert");
  }

  convertToWidget(node, widget) {
    this.graph.convertInputToWidget(node, widget);
    this.app.commit("convert");
  }

  disconnectSocket(node, index, output) {
    if (output) for (const id of [...(node.outputs[index].links || [])]) this.graph.removeLink(id);
    else if (node.inputs[index].link != null) this.graph.removeLink(node.inputs[index].link);
    this.app.commit("disconnect");
  }

  renameNode(node) {
    const [cx, cy] = this.canvas.toClient(node.pos[0] + 24, node.pos[1] - 28);
    editValue({ rect: { x: cx, y: cy, w: Math.max(160, (node.size[0] - 30) * this.canvas.scale), h: 24 },
      initial: node.title, onCommit: (text) => {
        const title = text.trim() || node.defaultTitle;
        if (title !== node.title) {
          node.title = title;
          fitToContent(node);
          this.app.commit("rename");
        }
      } });
  }

  // -- groups ---------------------------------------------------------------------------------
  addGroup(pos, title = "Group") {
    const group = { id: this.nextGroupId(), title, bounding: [Math.round(pos[0]), Math.round(pos[1]), 400, 260],
      color: "#3f789e", font_size: 24, flags: {} };
    this.graph.groups.push(group);
    this.app.commit("group");
    return group;
  }

  nextGroupId() {
    return this.graph.groups.reduce((m, g) => Math.max(m, Number(g.id) || 0), 0) + 1;
  }

  groupSelected() {
    const nodes = [...this.canvas.selected];
    if (!nodes.length) return null;
    let [x1, y1, x2, y2] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const node of nodes) {
      const [x, y, w, h] = nodeBounds(node);
      [x1, y1, x2, y2] = [Math.min(x1, x), Math.min(y1, y), Math.max(x2, x + w), Math.max(y2, y + h)];
    }
    const pad = 20;
    const group = { id: this.nextGroupId(), title: "Group",
      bounding: [x1 - pad, y1 - pad - 34, x2 - x1 + 2 * pad, y2 - y1 + 2 * pad + 34], color: "#3f789e", font_size: 24,
      flags: {} };
    this.graph.groups.push(group);
    this.app.commit("group");
    return group;
  }

  fitGroup(group) {
    const nodes = this.canvas.nodesInGroup(group);
    if (!nodes.length) return;
    const saved = new Set(this.canvas.selected);
    this.canvas.selected = new Set(nodes);
    this.graph.groups = this.graph.groups.filter((g) => g !== group);
    const fitted = this.groupSelected();
    Object.assign(fitted, { title: group.title, color: group.color, id: group.id });
    this.canvas.selected = saved;
    this.app.commit("group");
  }

  removeGroup(group) {
    this.graph.groups = this.graph.groups.filter((g) => g !== group);
    if (this.canvas.selectedGroup === group) this.canvas.selectedGroup = null;
    this.app.commit("group");
  }

  renameGroup(group) {
    const [cx, cy] = this.canvas.toClient(group.bounding[0] + 6, group.bounding[1] + 4);
    editValue({ rect: { x: cx, y: cy, w: Math.max(160, group.bounding[2] * this.canvas.scale - 12), h: 26 },
      initial: group.title, onCommit: (text) => {
        if (text !== group.title) {
          group.title = text;
          this.app.commit("group");
        }
      } });
  }

  // -- clone and paste --------------------------------------------------------------------------
  /** Add nodes from a clipboard document with their top-left at pos. */
  paste(doc, pos, { keepInputs = false } = {}) {
    if (!doc || !doc.nodes.length) return [];
    const graph = this.graph;
    const minX = Math.min(...doc.nodes.map((n) => (Array.isArray(n.pos) ? n.pos[0] : 0)));
    const minY = Math.min(...doc.nodes.map((n) => (Array.isArray(n.pos) ? n.pos[1] : 0)));
    const idMap = new Map();
    const slotIn = new Map();
    const slotOut = new Map();
    const added = [];
    for (const raw of doc.nodes) {
      const node = nodeFromJson(raw, this.app.defs);
      node.inputs.forEach((input, i) => { if (input.link != null) slotIn.set(`${raw.id}|${input.link}`, i); input.link = null; });
      node.outputs.forEach((o, i) => { (o.links || []).forEach((id) => slotOut.set(`${raw.id}|${id}`, i)); o.links = []; });
      node.id = null;
      node.pos = [pos[0] + node.pos[0] - minX, pos[1] + node.pos[1] - minY];
      graph.add(node);
      idMap.set(raw.id, node);
      added.push(node);
    }
    for (const [id, o, os, t, ts] of doc.links || []) {
      const origin = idMap.get(o);
      const target = idMap.get(t);
      const oslot = slotOut.get(`${o}|${id}`) ?? os;
      const tslot = slotIn.get(`${t}|${id}`) ?? ts;
      if (origin && target && origin.outputs[oslot] && target.inputs[tslot]) graph.connect(origin, oslot, target, tslot);
    }
    if (keepInputs) {
      for (const [id, o, os, t, ts] of doc.external || []) {
        const origin = graph.getNode(o);
        const target = idMap.get(t);
        const tslot = slotIn.get(`${t}|${id}`) ?? ts;
        if (origin && !added.includes(origin) && target && target.inputs[tslot] && origin.outputs[os]
          && graph.canConnect(origin, os, target, tslot).ok) graph.connect(origin, os, target, tslot);
      }
    }
    for (const node of added) if (node.type === "PrimitiveNode") updatePrimitive(graph, node);
    this.canvas.selected = new Set(added);
    this.app.onSelectionChange();
    this.app.commit("paste");
    return added;
  }
}
