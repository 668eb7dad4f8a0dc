// Mouse input on the canvas: select, move, resize, pan, zoom, box-select, connect sockets,
// drive widgets, and open the search box and context menus.

import { TITLE_H, inputPos, isReroute, nodeBounds, outputPos } from "./layout.js";
import { typesCompatible } from "./types.js";
import { closeMenus } from "./menu.js";
import { closeEditor } from "./editors.js";
import { minSize } from "./layout.js";

const DRAG_THRESHOLD = 4;

export class Interaction {
  constructor(app) {
    this.app = app;
    this.canvas = app.canvas;
    this.drag = null;
    this.lastPointer = [0, 0];
    const el = this.canvas.el;
    el.addEventListener("pointerdown", (e) => this.down(e));
    el.addEventListener("pointermove", (e) => this.move(e));
    el.addEventListener("pointerup", (e) => this.up(e));
    el.addEventListener("pointercancel", (e) => this.up(e, true));
    el.addEventListener("wheel", (e) => this.wheel(e), { passive: false });
    el.addEventListener("dblclick", (e) => this.dblclick(e));
    el.addEventListener("contextmenu", (e) => this.contextmenu(e));
  }

  get graph() {
    return this.app.graph;
  }

  /** The last pointer position over the canvas, in graph units (where pastes land). */
  get pointerGraphPos() {
    return this.canvas.toGraph(this.lastPointer[0], this.lastPointer[1]);
  }

  down(e) {
    closeMenus();
    closeEditor(true);
    if (this.app.search.isOpen) this.app.search.close();
    this.canvas.el.focus({ preventScroll: true });
    this.lastPointer = [e.clientX, e.clientY];
    if (this.drag) return;
    const [gx, gy] = this.canvas.toGraph(e.clientX, e.clientY);
    const base = { startX: e.clientX, startY: e.clientY, moved: false, pointerId: e.pointerId };
    if (e.button === 1 || (e.button === 0 && e.altKey && e.shiftKey)) {
      this.begin(e, { ...base, kind: "pan", offset: this.canvas.offset.slice() });
      return;
    }
    if (e.button !== 0) return;
    const node = this.canvas.nodeAt(gx, gy, 6);
    if (node) {
      this.downOnNode(e, base, node, gx, gy);
      return;
    }
    this.canvas.selectedGroup = null;
    const hit = this.canvas.groupAt(gx, gy);
    if (hit && (hit.title || hit.corner)) {
      this.canvas.selectedGroup = hit.group;
      if (hit.corner) {
        this.begin(e, { ...base, kind: "group-resize", group: hit.group, size: hit.group.bounding.slice(2) });
      } else {
        const nodes = this.canvas.nodesInGroup(hit.group);
        this.begin(e, { ...base, kind: "group-move", group: hit.group, start: hit.group.bounding.slice(0, 2),
          nodes: nodes.map((n) => [n, n.pos.slice()]) });
      }
      this.canvas.setDirty();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.shiftKey) {
      this.begin(e, { ...base, kind: "box", from: [gx, gy], additive: true });
      return;
    }
    this.begin(e, { ...base, kind: "pan", offset: this.canvas.offset.slice(), clearOnClick: true });
  }

  downOnNode(e, base, node, gx, gy) {
    const graph = this.graph;
    const socket = this.canvas.socketAt(gx, gy, node);
    if (socket) {
      this.beginLink(e, base, socket);
      return;
    }
    const [x, y] = node.pos;
    const collapsed = !!node.flags.collapsed;
    if (!isReroute(node) && Math.hypot(gx - (x + 14), gy - (y - TITLE_H / 2)) <= 9) {
      node.flags.collapsed = !collapsed;
      if (!node.flags.collapsed) delete node.flags.collapsed;
      this.app.commit("collapse");
      return;
    }
    const [bx, by, bw, bh] = nodeBounds(node);
    if (!collapsed && !isReroute(node) && !node.flags.pinned && gx >= bx + bw - 14 && gy >= by + bh - 14) {
      this.select(node, e);
      this.begin(e, { ...base, kind: "resize", node, size: node.size.slice() });
      return;
    }
    const hit = !collapsed && this.canvas.widgetAt(node, gx, gy);
    if (hit) {
      const rect = this.widgetClientRect(node, hit);
      const handler = hit.widget.pointerDown({ node, x: hit.x, y: hit.y, w: hit.w, h: hit.h, rect, clientX: e.clientX,
        clientY: e.clientY, ui: this.app.widgetUi });
      if (handler) {
        this.select(node, e);
        this.begin(e, { ...base, kind: "widget", handler, node });
        return;
      }
    }
    const wasSelected = this.canvas.selected.has(node);
    if (!wasSelected || e.shiftKey || e.ctrlKey || e.metaKey) this.select(node, e);
    graph.bringToFront(node);
    const nodes = [...this.canvas.selected];
    this.begin(e, { ...base, kind: "move", node, wasSelected, nodes: nodes.map((n) => [n, n.pos.slice()]) });
    this.canvas.setDirty();
  }

  widgetClientRect(node, hit) {
    const [cx, cy] = this.canvas.toClient(node.pos[0] + 10, node.pos[1] + hit.row.y);
    return { x: cx, y: cy, w: hit.w * this.canvas.scale, h: hit.h * this.canvas.scale };
  }

  beginLink(e, base, socket) {
    const { node, index, output } = socket;
    const graph = this.graph;
    if (output) {
      this.begin(e, { ...base, kind: "link", origin: node, oslot: index, type: graph.outputType(node, index) });
    } else {
      const input = node.inputs[index];
      const link = input.link != null ? graph.links.get(input.link) : null;
      const origin = link && graph.getNode(link.origin_id);
      if (origin) {
        // pick up the existing link and carry it from its origin
        graph.removeLink(link.id);
        this.begin(e, { ...base, kind: "link", origin, oslot: link.origin_slot, type: link.type, detached: true });
      } else {
        this.begin(e, { ...base, kind: "link", target: node, tslot: index, type: input.type, reverse: true });
      }
    }
    this.updateDragLink(e);
  }

  select(node, e) {
    const sel = this.canvas.selected;
    if (e && (e.ctrlKey || e.metaKey) && sel.has(node)) sel.delete(node);
    else if (e && (e.shiftKey || e.ctrlKey || e.metaKey)) sel.add(node);
    else {
      sel.clear();
      sel.add(node);
    }
    this.app.onSelectionChange();
    this.canvas.setDirty();
  }

  begin(e, drag) {
    this.drag = drag;
    try {
      this.canvas.el.setPointerCapture(e.pointerId);
    } catch {
      // synthetic pointers cannot be captured; dragging still works while over the canvas
    }
  }

  move(e) {
    this.lastPointer = [e.clientX, e.clientY];
    const drag = this.drag;
    if (!drag) {
      this.hover(e);
      return;
    }
    const dxScreen = e.clientX - drag.startX;
    const dyScreen = e.clientY - drag.startY;
    if (!drag.moved && Math.hypot(dxScreen, dyScreen) >= DRAG_THRESHOLD) drag.moved = true;
    const scale = this.canvas.scale;
    switch (drag.kind) {
      case "pan":
        this.canvas.offset = [drag.offset[0] + dxScreen / scale, drag.offset[1] + dyScreen / scale];
        break;
      case "move":
        if (!drag.moved) return;
        for (const [node, start] of drag.nodes) {
          if (!node.flags.pinned) node.pos = [start[0] + dxScreen / scale, start[1] + dyScreen / scale];
        }
        break;
      case "resize": {
        const [minW, minH] = minSize(drag.node);
        drag.node.size = [Math.max(minW, drag.size[0] + dxScreen / scale), Math.max(minH, drag.size[1] + dyScreen / scale)];
        break;
      }
      case "group-move":
        drag.group.bounding[0] = drag.start[0] + dxScreen / scale;
        drag.group.bounding[1] = drag.start[1] + dyScreen / scale;
        for (const [node, start] of drag.nodes) node.pos = [start[0] + dxScreen / scale, start[1] + dyScreen / scale];
        break;
      case "group-resize":
        drag.group.bounding[2] = Math.max(140, drag.size[0] + dxScreen / scale);
        drag.group.bounding[3] = Math.max(80, drag.size[1] + dyScreen / scale);
        break;
      case "box": {
        const [gx, gy] = this.canvas.toGraph(e.clientX, e.clientY);
        this.canvas.box = [drag.from[0], drag.from[1], gx, gy];
        break;
      }
      case "link":
        this.updateDragLink(e);
        break;
      case "widget":
        drag.handler.move({ dxScreen, dyScreen, clientX: e.clientX, clientY: e.clientY });
        break;
      default:
        break;
    }
    this.canvas.setDirty();
  }

  hover(e) {
    const [gx, gy] = this.canvas.toGraph(e.clientX, e.clientY);
    const node = this.canvas.nodeAt(gx, gy, 6);
    let cursor = "default";
    if (node) {
      if (this.canvas.socketAt(gx, gy, node)) cursor = "crosshair";
      else {
        const [bx, by, bw, bh] = nodeBounds(node);
        if (!node.flags.collapsed && gx >= bx + bw - 14 && gy >= by + bh - 14) cursor = "nwse-resize";
        else if (this.canvas.widgetAt(node, gx, gy)) cursor = "pointer";
        else cursor = "move";
      }
    } else {
      const hit = this.canvas.groupAt(gx, gy);
      if (hit && hit.corner) cursor = "nwse-resize";
      else if (hit && hit.title) cursor = "move";
    }
    if (this.canvas.el.style.cursor !== cursor) this.canvas.el.style.cursor = cursor;
  }

  updateDragLink(e) {
    const drag = this.drag;
    const [gx, gy] = this.canvas.toGraph(e.clientX, e.clientY);
    const from = drag.reverse ? inputPos(drag.target, drag.tslot) : outputPos(drag.origin, drag.oslot);
    this.canvas.dragLink = { from, to: [gx, gy], type: drag.type, reverse: !!drag.reverse };
  }

  up(e, cancelled = false) {
    const drag = this.drag;
    if (!drag) return;
    this.drag = null;
    try {
      this.canvas.el.releasePointerCapture(drag.pointerId);
    } catch {
      // not captured
    }
    const [gx, gy] = this.canvas.toGraph(e.clientX, e.clientY);
    switch (drag.kind) {
      case "pan":
        if (!drag.moved && drag.clearOnClick) {
          this.canvas.selected.clear();
          this.app.onSelectionChange();
        } else if (drag.moved) this.app.viewChanged();
        break;
      case "move":
        if (drag.moved) this.app.commit("move");
        else if (drag.wasSelected && !(e.shiftKey || e.ctrlKey || e.metaKey)) this.select(drag.node, null);
        break;
      case "resize":
      case "group-move":
      case "group-resize":
        if (drag.moved) this.app.commit(drag.kind);
        break;
      case "box":
        this.finishBox(drag, gx, gy);
        break;
      case "widget":
        drag.handler.up({ moved: drag.moved, cancelled });
        break;
      case "link":
        this.canvas.dragLink = null;
        if (!cancelled) this.finishLink(drag, e, gx, gy);
        else if (drag.detached) this.app.commit("disconnect");
        break;
      default:
        break;
    }
    this.canvas.box = null;
    this.canvas.setDirty();
  }

  finishBox(drag, gx, gy) {
    const [x1, y1] = drag.from;
    const [lx, hx] = [Math.min(x1, gx), Math.max(x1, gx)];
    const [ly, hy] = [Math.min(y1, gy), Math.max(y1, gy)];
    if (!drag.additive) this.canvas.selected.clear();
    for (const node of this.graph.nodes) {
      const [x, y, w, h] = nodeBounds(node);
      if (x < hx && x + w > lx && y < hy && y + h > ly) this.canvas.selected.add(node);
    }
    this.app.onSelectionChange();
  }

  finishLink(drag, e, gx, gy) {
    const app = this.app;
    if (!drag.moved && !drag.detached) return;
    const socket = this.canvas.socketAt(gx, gy);
    if (!drag.reverse) {
      if (socket && !socket.output) {
        app.tryConnect(drag.origin, drag.oslot, socket.node, socket.index);
        return;
      }
      const node = this.canvas.nodeAt(gx, gy, 4);
      if (node) {
        const hit = !node.flags.collapsed && this.canvas.widgetAt(node, gx, gy);
        if (hit && hit.widget.convertible && typesCompatible(drag.type, hit.widget.type) && node !== drag.origin) {
          const slot = this.graph.convertWidgetToInput(node, hit.widget);
          if (app.tryConnect(drag.origin, drag.oslot, node, slot)) return;
          this.graph.convertInputToWidget(node, hit.widget);
          return;
        }
        app.connectToNode(drag.origin, drag.oslot, node);
        return;
      }
      app.openSearchForLink({ x: e.clientX, y: e.clientY, pos: [gx, gy], origin: drag.origin, oslot: drag.oslot,
        type: drag.type, detached: drag.detached });
      return;
    }
    if (socket && socket.output) {
      app.tryConnect(socket.node, socket.index, drag.target, drag.tslot);
      return;
    }
    const node = this.canvas.nodeAt(gx, gy, 4);
    if (node) {
      app.connectFromNode(node, drag.target, drag.tslot);
      return;
    }
    app.openSearchForLink({ x: e.clientX, y: e.clientY, pos: [gx, gy], target: drag.target, tslot: drag.tslot,
      type: drag.type });
  }

  wheel(e) {
    e.preventDefault();
    if (this.app.search.isOpen) return;
    closeEditor(true);
    const delta = e.deltaMode === 1 ? e.deltaY * 16 : e.deltaY;
    // the zoom-speed setting is the factor per wheel notch (deltaY 100), as in ComfyUI's canvas
    this.canvas.zoomAt(this.app.settings.get("Comfy.Graph.ZoomSpeed") ** (-delta / 100), e.clientX, e.clientY);
    this.app.viewChanged();
  }

  dblclick(e) {
    const [gx, gy] = this.canvas.toGraph(e.clientX, e.clientY);
    const node = this.canvas.nodeAt(gx, gy, 6);
    if (node) {
      if (!isReroute(node) && gy < node.pos[1] && gy >= node.pos[1] - TITLE_H) this.app.renameNode(node);
      return;
    }
    const hit = this.canvas.groupAt(gx, gy);
    if (hit && hit.title) {
      this.app.renameGroup(hit.group);
      return;
    }
    this.app.search.open({ x: e.clientX, y: e.clientY, onPick: (def) => this.app.addNode(def, [gx, gy]) });
  }

  contextmenu(e) {
    e.preventDefault();
    const [gx, gy] = this.canvas.toGraph(e.clientX, e.clientY);
    const node = this.canvas.nodeAt(gx, gy, 6);
    if (node) {
      if (!this.canvas.selected.has(node)) this.select(node, null);
      const hit = this.canvas.widgetAt(node, gx, gy);
      const socket = this.canvas.socketAt(gx, gy, node);
      this.app.menus.nodeMenu(node, e.clientX, e.clientY, { widget: hit ? hit.widget : null, socket });
      return;
    }
    const hit = this.canvas.groupAt(gx, gy);
    if (hit) {
      this.app.menus.groupMenu(hit.group, e.clientX, e.clientY);
      return;
    }
    this.app.menus.canvasMenu(e.clientX, e.clientY, [gx, gy]);
  }
}
