// The top bar: queue controls, workflow file actions, undo/redo, run and connection status.

import { el } from "./dom.js";
import { MODE_ALWAYS } from "./graph.js";

export class Toolbar {
  constructor(app, root) {
    this.app = app;
    this.batch = el("input", { type: "number", id: "batch-count", min: 1, max: 100, value: 1, title: "Batch count" });
    this.workflowName = el("span", { class: "status workflow-name", id: "workflow-name", title: "The saved workflow that is open" });
    this.queueButton = el("button", { class: "btn primary", id: "queue-button", title: "Queue (Ctrl+Enter)",
      text: "Queue", onclick: () => app.queue(this.batchCount) });
    this.cancelButton = el("button", { class: "btn danger", id: "cancel-button", title: "Interrupt the running prompt",
      text: "Cancel", onclick: () => app.interrupt() });
    this.openInput = el("input", { type: "file", id: "lg-open-input", hidden: true,
      accept: ".json,.png,application/json,image/png", onchange: () => this.onOpen() });
    this.undoButton = el("button", { class: "btn", id: "undo-button", text: "Undo", title: "Undo (Ctrl+Z)",
      onclick: () => app.undo() });
    this.redoButton = el("button", { class: "btn", id: "redo-button", text: "Redo", title: "Redo (Ctrl+Y)",
      onclick: () => app.redo() });
    this.progressBar = el("div");
    this.progress = el("div", { class: "run-progress", title: "Run progress" }, this.progressBar);
    this.queueInfo = el("span", { class: "status", id: "queue-info", text: "Queue: 0" });
    this.statusText = el("span", { text: "connecting" });
    this.status = el("span", { class: "status", id: "connection-status" }, el("span", { class: "dot" }), this.statusText);
    root.append(
      el("span", { class: "brand", text: "LatentGraph" }),
      this.queueButton,
      el("label", { class: "status", title: "How many times to queue" }, "×", this.batch),
      this.cancelButton,
      el("span", { class: "sep" }),
      el("button", { class: "btn", id: "new-button", text: "New", title: "Empty workflow", onclick: () => app.clearGraph() }),
      el("button", { class: "btn", id: "default-button", text: "Default", title: "The default text-to-image workflow",
        onclick: () => app.loadDefault() }),
      el("button", { class: "btn", id: "open-button", text: "Open", title: "Open a workflow .json or .png (Ctrl+O)",
        onclick: () => this.open() }),
      el("button", { class: "btn", id: "save-button", text: "Save", title: "Save the workflow on the server (Ctrl+S)",
        onclick: () => app.library.save() }),
      el("button", { class: "btn", id: "download-button", text: "Download", title: "Download the workflow as a .json file",
        onclick: () => app.saveWorkflowFile() }),
      el("button", { class: "btn", id: "export-button", text: "Export API", title: "Save the API-format prompt",
        onclick: () => app.exportApiFile() }),
      el("button", { class: "btn", id: "refresh-button", text: "Refresh",
        title: "Reload node definitions and model lists: files added to the model folders or input/ appear (R)",
        onclick: () => app.refreshDefinitions() }),
      el("span", { class: "sep" }),
      this.undoButton,
      this.redoButton,
      this.workflowName,
      el("span", { class: "spacer" }),
      this.progress,
      this.queueInfo,
      this.status,
      el("button", { class: "btn", id: "workflows-button", text: "Workflows", title: "Workflows saved on the server",
        onclick: () => app.queuePanel.show("workflows") }),
      el("button", { class: "btn", id: "settings-button", text: "Settings", onclick: () => app.queuePanel.show("settings") }),
      el("button", { class: "btn", id: "panel-button", text: "Queue ▸", title: "Queue, history and gallery",
        onclick: () => app.queuePanel.toggle() }),
      this.openInput,
    );
  }

  get batchCount() {
    const n = Math.round(Number(this.batch.value));
    return Number.isFinite(n) && n > 0 ? Math.min(n, this.app.settings.get("Comfy.QueueButton.BatchCountLimit")) : 1;
  }

  open() {
    this.openInput.value = "";
    this.openInput.click();
  }

  async onOpen() {
    const file = this.openInput.files && this.openInput.files[0];
    if (file) await this.app.openFile(file);
  }

  setWorkflowName(name) {
    this.workflowName.textContent = name || "";
  }

  setConnection(state) {
    this.status.className = `status ${state === "connecting" ? "reconnecting" : state}`;
    this.statusText.textContent = state;
  }

  update() {
    const app = this.app;
    const run = app.runState;
    this.queueInfo.textContent = `Queue: ${run.queueRemaining}`;
    this.cancelButton.disabled = !run.runningPrompt && !run.runningNode;
    this.undoButton.disabled = !app.undoStack.canUndo;
    this.redoButton.disabled = !app.undoStack.canRedo;
    let fraction = 0;
    if (run.runningPrompt) {
      const total = Math.max(1, app.graph.nodes.filter((n) => !n.virtual && n.mode === MODE_ALWAYS).length);
      const step = run.progress && run.progress.max ? run.progress.value / run.progress.max : 0;
      fraction = Math.min(1, (run.promptDone.size + step) / total);
    }
    this.progressBar.style.width = `${Math.round(fraction * 100)}%`;
  }
}
