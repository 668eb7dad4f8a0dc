// The editor: wires the model, canvas, panels and server together. window.lgApp is this
// object (tests read state through it; extensions reach the editor through it).

import { Api } from "./api.js";
import { Graph } from "./graph.js";
import { buildDefs } from "./node_defs.js";
import { GraphCanvas } from "./canvas.js";
import { Interaction } from "./interaction.js";
import { Commands } from "./commands.js";
import { GraphMenus } from "./graph_menus.js";
import { SearchBox } from "./search.js";
import { ContextMenu } from "./menu.js";
import { editValue } from "./editors.js";
import { RunState } from "./run_state.js";
import { Runner } from "./runner.js";
import { Toolbar } from "./toolbar.js";
import { QueuePanel } from "./queue_panel.js";
import { Settings } from "./settings.js";
import { SettingsView, WorkflowLibrary } from "./workflow_library.js";
import { Notifier } from "./notify.js";
import { UndoStack } from "./undo.js";
import { Uploads, fileWidget } from "./upload.js";
import { MaskEditor } from "./mask_editor.js";
import { Extensions } from "./extensions.js";
import { installShortcuts } from "./keys.js";
import { clipDocument, copyNodes, parseClipboard, storedClipboard } from "./clipboard.js";
import { serializeWorkflow, loadWorkflow, loadApiPrompt, readWorkflowFile, isUiWorkflow } from "./workflow_io.js";
import { workflowToApi } from "./api_export.js";
import { updatePrimitive } from "./primitive.js";
import { defaultWorkflow } from "./default_workflow.js";
import { debounce, download, typingInField } from "./dom.js";
import { fitToContent, inputPos, outputPos, layoutBody, TITLE_H } from "./layout.js";

const STORE_KEY = "lg.workflow";

class App {
  constructor() {
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.objectInfo = {};
    this.defs = new Map();
    this.lastRefusal = null;
    this.pendingPaste = null;
  }

  async start() {
    this.api = new Api();
    this.settings = new Settings(this.api);
    const settingsRead = this.settings.load();
    this.notifier = new Notifier();
    this.runState = new RunState(this.api);
    this.graph = new Graph();
    this.graph.onPrimitiveChange = (origin) => updatePrimitive(this.graph, origin);
    this.canvas = new GraphCanvas(document.getElementById("graph-canvas"), this);
    this.commands = new Commands(this);
    this.menus = new GraphMenus(this);
    this.search = new SearchBox(this);
    this.upload = new Uploads(this);
    this.maskEditor = new MaskEditor(this);
    this.extensions = new Extensions(this);
    this.runner = new Runner(this);
    this.undoStack = new UndoStack({
      snapshot: () => JSON.stringify(serializeWorkflow(this.graph, null)),
      restore: (text) => this.restoreSnapshot(text),
    });
    this.toolbar = new Toolbar(this, document.getElementById("toolbar"));
    this.settings.addEventListener("change", () => this.applySettings());
    this.queuePanel = new QueuePanel(this, document.getElementById("side-panel"));
    this.library = new WorkflowLibrary(this);
    this.queuePanel.addTab("workflows", "Workflows", this.library);
    this.queuePanel.addTab("settings", "Settings", new SettingsView(this));
    this.widgetUi = this.makeWidgetUi();
    this.interaction = new Interaction(this);
    this.persist = debounce(() => this.saveToBrowser(), 400);
    installShortcuts(this);
    this.installDropAndPaste();
    this.wireEvents();

    this.objectInfo = await this.fetchObjectInfo();
    this.defs = buildDefs(this.objectInfo);
    await settingsRead;
    this.applySettings();
    await this.extensions.load();
    this.openInitialWorkflow();
    this.undoStack.reset();
    this.api.connect();
    await this.extensions.call("setup");
    this.toolbar.update();
    this.queuePanel.refresh();
    this.resolveReady(true);
  }

  async fetchObjectInfo() {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.api.objectInfo();
      } catch (err) {
        if (attempt === 0) this.notify("Waiting for the server…", "warn");
        this.toolbar.setConnection("disconnected");
        await new Promise((r) => setTimeout(r, Math.min(4000, 250 * 2 ** attempt)));
      }
    }
  }

  openInitialWorkflow() {
    let stored = null;
    try {
      stored = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
    } catch {
      stored = null;
    }
    if (stored && isUiWorkflow(stored)) {
      try {
        this.loadWorkflowData(stored, "browser", { quiet: true, record: false });
        this.library.setPath(this.library.path); // the saved workflow it was, if any
        return;
      } catch (err) {
        this.notify(`The workflow kept in this browser could not be opened: ${err.message}`, "warn");
      }
    }
    this.loadWorkflowData(defaultWorkflow(this.objectInfo), "default", { quiet: true, record: false });
  }

  applySettings() {
    this.toolbar.batch.max = this.settings.get("Comfy.QueueButton.BatchCountLimit");
  }

  /** The graph now holds another document than the saved workflow that was open. */
  leaveSavedWorkflow() {
    if (this.library.path) this.library.setPath(null);
  }

  wireEvents() {
    this.api.addEventListener("connection", (e) => this.toolbar.setConnection(e.detail));
    this.api.addEventListener("reconnected", () => this.onReconnected());
    this.api.addEventListener("message", (e) => {
      const ext = globalThis.__lgExtensionApi;
      if (ext) ext.dispatchEvent(new CustomEvent(e.detail.type, { detail: e.detail.data }));
    });
    this.runState.addEventListener("change", (e) => {
      this.canvas.setDirty();
      this.toolbar.update();
      if (["finished", "success", "queue", "start", "interrupted", "errors"].includes(e.detail)) this.queuePanel.refreshSoon();
      if (e.detail === "preview") this.growForImage(this.runState.runningNode);
    });
    this.runState.addEventListener("output", (e) => {
      if (e.detail.images.length) this.growForImage(e.detail.node);
    });
    this.runState.addEventListener("execution-error", (e) => {
      this.notify(`Execution failed${e.detail.node ? ` in node #${e.detail.node}` : ""}: ${e.detail.message}`, "error");
      this.showErrorList("Execution failed");
    });
    window.addEventListener("beforeunload", () => this.saveToBrowser());
  }

  growForImage(nodeId) {
    const node = nodeId ? this.graph.getNode(nodeId) : null;
    if (!node || node.showsImage) return;
    node.showsImage = true;
    fitToContent(node);
    this.canvas.setDirty();
    this.persist();
  }

  async onReconnected() {
    // what was running may have died with the server; its greeting says if it still runs
    this.runState.resetRunning();
    this.notify("Reconnected to the server", "ok", 2500);
    await this.refreshDefinitions({ quiet: true });
    this.queuePanel.refresh();
  }

  /** Reload /object_info (the R key, the Refresh button): node types of packs installed since,
   * and the files now in the model folders and input/ in every list. Values are kept. */
  async refreshDefinitions({ quiet = false } = {}) {
    let info;
    try {
      info = await this.api.objectInfo();
    } catch (err) {
      if (!quiet) this.notify(`Cannot refresh the node definitions: ${err.message}`, "error");
      return false;
    }
    const changed = JSON.stringify(info) !== JSON.stringify(this.objectInfo);
    if (changed) {
      this.objectInfo = info;
      this.defs = buildDefs(info);
      this.restoreSnapshot(JSON.stringify(serializeWorkflow(this.graph, null)));
    }
    if (!quiet) this.notify(changed ? "Refreshed node definitions and model lists" : "Node definitions and model lists are up to date", "ok", 2500);
    return changed;
  }

  /** A toast naming input files the workflow's Load Image nodes want that the server lacks. */
  reportMissingInputs() {
    const missing = new Set();
    for (const node of this.graph.nodes) {
      const widget = fileWidget(node);
      if (!widget) continue;
      if (typeof widget.value === "string" && widget.value && !widget.choices.includes(widget.value)) missing.add(widget.value);
    }
    if (missing.size) {
      this.notify(`Not in the server's input folder: ${[...missing].join(", ")}. Upload it with the Load Image node's `
        + `"choose file to upload" or drop it on the node.`, "warn", 8000);
    }
  }

  /** Errors of the previous document (marks on nodes, the error list) do not belong to the next one. */
  clearRunErrors() {
    this.runState.clearErrors();
    this.notifier.hideErrors();
  }

  // -- change tracking ------------------------------------------------------------------------
  commit(reason, { undo = true } = {}) {
    this.canvas.setDirty();
    if (undo) this.undoStack.record();
    this.persist();
    this.toolbar.update();
    this.lastCommit = reason;
  }

  viewChanged() {
    this.persist();
  }

  saveToBrowser() {
    try {
      localStorage.setItem(STORE_KEY, JSON.stringify(this.serialize()));
    } catch {
      // storage full or disabled: nothing to keep
    }
  }

  undo() {
    if (this.undoStack.undo()) this.commit("undo", { undo: false });
  }

  redo() {
    if (this.undoStack.redo()) this.commit("redo", { undo: false });
  }

  restoreSnapshot(text) {
    const selected = new Set([...this.canvas.selected].map((n) => n.id));
    loadWorkflow(this.graph, JSON.parse(text), this.defs);
    this.afterLoad();
    this.canvas.selected = new Set(this.graph.nodes.filter((n) => selected.has(n.id)));
    this.canvas.setDirty();
  }

  afterLoad() {
    for (const node of this.graph.nodes) {
      const out = this.runState.outputs.get(String(node.id));
      if ((out && out.images.length) || this.runState.previews.has(String(node.id))) node.showsImage = true;
    }
  }

  onSelectionChange() {
    this.canvas.setDirty();
  }

  selectAll() {
    this.canvas.selected = new Set(this.graph.nodes);
    this.onSelectionChange();
  }

  selectedImageNode() {
    return [...this.canvas.selected].find((n) => n.type === "LoadImage" || n.type === "LoadImageMask") || null;
  }

  notify(message, kind = "info", ms) {
    this.notifier.toast(message, kind, ms);
  }

  refused(reason) {
    this.lastRefusal = reason;
    this.notify(`Not connected: ${reason}`, "warn", 3000);
  }

  // -- workflows ------------------------------------------------------------------------------
  serialize() {
    return serializeWorkflow(this.graph, this.canvas.ds);
  }

  buildPrompt() {
    const workflow = this.serialize();
    return { prompt: workflowToApi(workflow, this.objectInfo), workflow };
  }

  exportApi() {
    return this.buildPrompt().prompt;
  }

  loadWorkflowData(workflow, source = "file", { quiet = false, record = true } = {}) {
    if (!workflow || !isUiWorkflow(workflow)) {
      this.notify("This is not a UI-format workflow", "error");
      return false;
    }
    const warnings = loadWorkflow(this.graph, workflow, this.defs);
    if (source !== "browser" && source !== "server") this.leaveSavedWorkflow();
    this.afterLoad();
    this.canvas.selected.clear();
    this.clearRunErrors();
    const ds = workflow.extra && workflow.extra.ds;
    if (ds && ds.offset) this.canvas.setView(ds);
    if (!ds || !ds.offset || !this.canvas.anyNodeVisible()) this.canvas.fitView();
    for (const node of this.graph.nodes) this.extensions.call("loadedGraphNode", node);
    const missing = [...new Set(this.graph.nodes.filter((n) => n.unknown).map((n) => n.type))];
    if (missing.length && (!quiet || source !== "browser")) {
      this.notify(`Node types not installed (shown in red, values kept): ${missing.join(", ")}`, "warn", 6000);
    }
    if (!quiet) this.reportMissingInputs();
    if (warnings.length && !quiet) console.warn("workflow loaded with warnings:", warnings);
    if (record) this.commit(`load-${source}`);
    else {
      this.canvas.setDirty();
      this.persist();
    }
    return true;
  }

  loadDefault() {
    this.loadWorkflowData(defaultWorkflow(this.objectInfo), "default");
  }

  clearGraph() {
    this.leaveSavedWorkflow();
    this.graph.clear();
    this.canvas.selected.clear();
    this.clearRunErrors();
    this.canvas.setView({ scale: 1, offset: [0, 0] });
    this.commit("clear");
  }

  loadPrompt(prompt) {
    loadApiPrompt(this.graph, prompt, this.defs);
    this.leaveSavedWorkflow();
    this.afterLoad();
    this.canvas.selected.clear();
    this.clearRunErrors();
    this.canvas.fitView();
    this.reportMissingInputs();
    this.commit("load-prompt");
  }

  /** A .json or .png from the Open button or a drop; images without a workflow go to LoadImage. */
  async openFile(file, pos = null) {
    let found;
    try {
      found = await readWorkflowFile(file);
    } catch (err) {
      this.notify(`Cannot open ${file.name}: ${err.message}`, "error");
      return;
    }
    if (found.kind === "workflow") this.loadWorkflowData(found.data, "file");
    else if (found.kind === "prompt") this.loadPrompt(found.data);
    else if (found.kind === "image") await this.imageToNewNode(file, pos);
    else this.notify(`${file.name}: not a workflow, prompt or image`, "warn");
  }

  async imageToNewNode(file, pos) {
    const def = this.defs.get("LoadImage");
    if (!def) {
      this.notify("There is no LoadImage node to put the image in", "warn");
      return null;
    }
    const at = pos || this.interaction.pointerGraphPos;
    const node = this.commands.addNode(def, at, { commit: false });
    await this.upload.uploadTo(node, file);
    return node;
  }

  saveWorkflowFile() {
    download("workflow.json", JSON.stringify(this.serialize(), null, 2));
  }

  exportApiFile() {
    try {
      download("workflow_api.json", JSON.stringify(this.exportApi(), null, 2));
    } catch (err) {
      this.notify(`Cannot export: ${err.message}`, "error");
    }
  }

  // -- running --------------------------------------------------------------------------------
  queue(count = 1, options = {}) {
    this.notifier.hideErrors();
    return this.runner.queue(count, options);
  }

  async interrupt(promptId = null) {
    try {
      await this.api.interrupt(promptId || this.runState.runningPrompt);
    } catch (err) {
      this.notify(`Cannot interrupt: ${err.message}`, "error");
    }
  }

  showErrorList(title = "The prompt failed validation") {
    const entries = [];
    for (const [id, err] of this.runState.errors) {
      const node = this.graph.getNode(id);
      for (const message of err.messages) entries.push({ node: id, title: node ? node.title : err.classType || "", message });
    }
    for (const message of this.runState.generalErrors) entries.push({ node: null, title: "", message });
    this.notifier.showErrors(title, entries, (id) => {
      const node = this.graph.getNode(id);
      if (!node) return;
      this.canvas.selected = new Set([node]);
      this.canvas.centerOn(node);
    });
  }

  // -- clipboard ------------------------------------------------------------------------------
  copySelection() {
    const ids = [...this.canvas.selected].map((n) => n.id);
    if (!ids.length) return null;
    return copyNodes(serializeWorkflow(this.graph, null), ids);
  }

  cloneSelection() {
    const nodes = [...this.canvas.selected];
    if (!nodes.length) return;
    const doc = clipDocument(serializeWorkflow(this.graph, null), nodes.map((n) => n.id));
    const x = Math.min(...nodes.map((n) => n.pos[0]));
    const y = Math.min(...nodes.map((n) => n.pos[1]));
    this.commands.paste(doc, [x + 30, y + 30]);
  }

  pasteAt(pos, keepInputs = false, doc = null) {
    const clip = doc || storedClipboard();
    if (!clip) return [];
    return this.commands.paste(clip, pos, { keepInputs });
  }

  /** Ctrl+V: wait a moment for the browser's paste event (it may carry an image). */
  schedulePaste(keepInputs) {
    this.pendingPaste = { keepInputs };
    setTimeout(() => {
      if (!this.pendingPaste) return;
      const pending = this.pendingPaste;
      this.pendingPaste = null;
      this.pasteAt(this.interaction.pointerGraphPos, pending.keepInputs);
    }, 80);
  }

  installDropAndPaste() {
    const stage = document.getElementById("stage");
    const hasFiles = (e) => e.dataTransfer && [...(e.dataTransfer.types || [])].includes("Files");
    stage.addEventListener("dragover", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
      stage.classList.add("drop-target");
    });
    stage.addEventListener("dragleave", () => stage.classList.remove("drop-target"));
    stage.addEventListener("drop", async (e) => {
      stage.classList.remove("drop-target");
      const file = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
      if (!file) return;
      e.preventDefault();
      const pos = this.canvas.toGraph(e.clientX, e.clientY);
      const node = this.canvas.nodeAt(pos[0], pos[1]);
      if (node && node.widget("image") && (node.type === "LoadImage" || node.type === "LoadImageMask")
        && (file.type || "").startsWith("image/")) {
        await this.upload.uploadTo(node, file);
        return;
      }
      await this.openFile(file, pos);
    });
    document.addEventListener("paste", async (e) => {
      if (typingInField(e.target)) return;
      const pending = this.pendingPaste;
      this.pendingPaste = null;
      const data = e.clipboardData;
      const image = data && [...data.files].find((f) => (f.type || "").startsWith("image/"));
      e.preventDefault();
      if (image) {
        const node = this.selectedImageNode();
        if (node) await this.upload.uploadTo(node, image);
        else await this.imageToNewNode(image, null);
        return;
      }
      const doc = parseClipboard(data ? data.getData("text/plain") : "");
      this.pasteAt(this.interaction.pointerGraphPos, pending ? pending.keepInputs : false, doc);
    });
  }

  // -- widgets' services ----------------------------------------------------------------------
  makeWidgetUi() {
    return {
      redraw: () => this.canvas.setDirty(),
      changed: (node, widget) => {
        this.clearInputError(node, widget.name);
        if (widget.name === "image" && (node.type === "LoadImage" || node.type === "LoadImageMask")) node.showsImage = true;
        this.commit("widget");
      },
      editValue: (options) => editValue({ ...options, fontSize: Math.max(11, Math.min(18, 12 * this.canvas.scale)) }),
      pickChoice: ({ x, y, choices, widget, onPick }) => new ContextMenu(
        choices.map((c) => ({ label: String(c), checked: c === widget.value, action: () => onPick(c) })),
        { x, y, filter: choices.length > 10 }),
      upload: (node) => this.upload.pick(node),
    };
  }

  clearInputError(node, name) {
    const err = this.runState.errors.get(String(node.id));
    if (!err || !err.inputs.has(name)) return;
    err.inputs.delete(name);
    if (!err.inputs.size && err.kind === "validation") this.runState.errors.delete(String(node.id));
    this.canvas.setDirty();
  }

  renameNode(node) {
    this.commands.renameNode(node);
  }

  renameGroup(group) {
    this.commands.renameGroup(group);
  }

  addNode(def, pos) {
    return this.commands.addNode(def, pos);
  }

  tryConnect(origin, oslot, target, tslot) {
    return this.commands.tryConnect(origin, oslot, target, tslot);
  }

  connectToNode(origin, oslot, target) {
    return this.commands.connectToNode(origin, oslot, target);
  }

  connectFromNode(origin, target, tslot) {
    return this.commands.connectFromNode(origin, target, tslot);
  }

  openSearchForLink(options) {
    return this.commands.openSearchForLink(options);
  }

  // -- read-only helpers for tests and extensions --------------------------------------------
  summary() {
    return {
      nodes: this.graph.nodes.map((n) => ({
        id: n.id, type: n.type, title: n.title, unknown: n.unknown, mode: n.mode, collapsed: !!n.flags.collapsed,
        pos: n.pos.slice(), size: n.size.slice(),
        widgets: Object.fromEntries(n.widgets.filter((w) => w.kind === "value" || w.kind === "control")
          .map((w) => [w.kind === "control" ? `${w.target}:control` : w.name, w.value])),
        converted: n.widgets.filter((w) => w.converted).map((w) => w.name),
        inputs: n.inputs.map((i) => ({ name: i.name, type: i.type, link: i.link })),
        outputs: n.outputs.map((o) => ({ name: o.name, type: o.type, links: [...(o.links || [])] })),
      })),
      links: [...this.graph.links.values()].map((l) => ({ ...l })),
      groups: this.graph.groups.map((g) => ({ title: g.title, bounding: g.bounding.slice() })),
      selected: [...this.canvas.selected].map((n) => n.id),
    };
  }

  /** Client coordinates of a socket's centre. */
  socketClientPos(nodeId, kind, slot) {
    const node = this.graph.getNode(nodeId);
    const [gx, gy] = kind === "output" ? outputPos(node, slot) : inputPos(node, slot);
    return this.canvas.toClient(gx, gy);
  }

  /** Client rectangle of a visible widget row: {x, y, w, h}. */
  widgetClientRect(nodeId, name) {
    const node = this.graph.getNode(nodeId);
    const row = layoutBody(node).rows.find((r) => r.widget.name === name);
    if (!row) return null;
    const [x, y] = this.canvas.toClient(node.pos[0] + 10, node.pos[1] + row.y);
    return { x, y, w: (node.size[0] - 20) * this.canvas.scale, h: row.h * this.canvas.scale };
  }

  /** Client point in the middle of a node's title bar. */
  titleClientPos(nodeId) {
    const node = this.graph.getNode(nodeId);
    return this.canvas.toClient(node.pos[0] + Math.min(node.size[0] / 2, 120), node.pos[1] - TITLE_H / 2);
  }
}

const app = new App();
window.lgApp = app;
app.start().catch((err) => {
  console.error("the editor failed to start:", err);
  app.rejectReady(err);
});
