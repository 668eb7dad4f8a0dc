// Workflows saved on the server, in the user's `workflows/` folder (ComfyUI's userdata store, so
// ComfyUI's frontend lists the same files), and the side-panel tabs for them and for settings.

import { ApiError } from "./api.js";
import { askText, confirmAction } from "./dialog.js";
import { el } from "./dom.js";
import { SETTINGS } from "./settings.js";

export const FOLDER = "workflows";
const PATH_KEY = "lg.workflowPath";

/** "my flow" -> "workflows/my flow.json"; null for names the server would refuse anyway. */
export function workflowPath(name) {
  let clean = String(name || "").trim().replace(/\.json$/i, "");
  if (!clean || clean.split("/").some((part) => !part || part === "." || part === "..") || clean.includes("\\")) {
    return null;
  }
  return `${FOLDER}/${clean}.json`;
}

/** "workflows/a/b.json" -> "a/b" */
export function workflowName(path) {
  return String(path).replace(/^workflows\//, "").replace(/\.json$/i, "");
}

export class WorkflowLibrary {
  constructor(app) {
    this.app = app;
    this.files = []; // [{path (inside workflows/), size, modified}]
    this.loaded = false;
    this.path = null; // the saved workflow that is open, e.g. "workflows/x.json"
    try {
      this.path = localStorage.getItem(PATH_KEY);
    } catch {
      this.path = null;
    }
  }

  setPath(path) {
    this.path = path;
    try {
      if (path) localStorage.setItem(PATH_KEY, path);
      else localStorage.removeItem(PATH_KEY);
    } catch {
      // storage disabled: the name is only forgotten on reload
    }
    this.app.toolbar.setWorkflowName(path ? workflowName(path) : null);
  }

  async refresh() {
    try {
      const files = await this.app.api.listUserData(FOLDER);
      this.files = files.filter((f) => /\.json$/i.test(f.path)).sort((a, b) => a.path.localeCompare(b.path));
      this.loaded = true;
    } catch (err) {
      this.app.notify(`Cannot list the saved workflows: ${err.message}`, "error");
    }
  }

  /** Ctrl+S: back to the file it came from, else under a new name. */
  save() {
    return this.path ? this.write(this.path, true) : this.saveAs();
  }

  async saveAs() {
    const settings = this.app.settings;
    let name = this.path ? workflowName(this.path) : "workflow";
    if (settings.get("Comfy.PromptFilename")) {
      name = await askText("Save workflow", { label: "Name on the server", initial: name, confirm: "Save" });
      if (name === null) return false;
    }
    const path = workflowPath(name);
    if (!path) {
      this.app.notify(`"${name}" cannot be a workflow name`, "error");
      return false;
    }
    return this.write(path, false);
  }

  async write(path, overwrite) {
    const text = JSON.stringify(this.app.serialize());
    try {
      await this.app.api.storeUserData(path, text, { overwrite });
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 409)) {
        this.app.notify(`Cannot save: ${err.message}`, "error");
        return false;
      }
      if (!await confirmAction("Replace?", `A workflow named "${workflowName(path)}" exists. Replace it?`, "Replace")) {
        return false;
      }
      return this.write(path, true);
    }
    this.setPath(path);
    this.app.notify(`Saved ${workflowName(path)}`, "ok", 2000);
    await this.app.queuePanel.refresh();
    return true;
  }

  async open(path) {
    let doc;
    try {
      doc = await this.app.api.userData(path);
    } catch (err) {
      this.app.notify(`Cannot open ${workflowName(path)}: ${err.message}`, "error");
      return false;
    }
    if (!this.app.loadWorkflowData(doc, "server")) return false;
    this.setPath(path);
    return true;
  }

  async rename(path) {
    const name = await askText("Rename workflow", { initial: workflowName(path), confirm: "Rename" });
    const dest = name === null ? null : workflowPath(name);
    if (!dest || dest === path) return false;
    try {
      await this.app.api.moveUserData(path, dest, { overwrite: false });
    } catch (err) {
      this.app.notify(`Cannot rename: ${err.message}`, "error");
      return false;
    }
    if (this.path === path) this.setPath(dest);
    await this.app.queuePanel.refresh();
    return true;
  }

  async remove(path) {
    if (this.app.settings.get("Comfy.Workflow.ConfirmDelete")
      && !await confirmAction("Delete workflow", `Delete "${workflowName(path)}" from the server?`, "Delete")) {
      return false;
    }
    try {
      await this.app.api.deleteUserData(path);
    } catch (err) {
      this.app.notify(`Cannot delete: ${err.message}`, "error");
      return false;
    }
    if (this.path === path) this.setPath(null);
    await this.app.queuePanel.refresh();
    return true;
  }

  /** The Workflows tab of the side panel. */
  render(body) {
    const rows = this.files.map((f) => {
      const path = `${FOLDER}/${f.path}`;
      const when = new Date(f.modified * 1000).toLocaleString();
      return el("div", { class: `q-item workflow${path === this.path ? " current" : ""}`, "data-path": path },
        el("div", { class: "q-main", title: "Open", onclick: () => this.open(path) },
          el("div", { class: "q-title", text: workflowName(path) }),
          el("div", { class: "q-sub", text: `${when} · ${Math.max(1, Math.round(f.size / 1024))} KB` })),
        el("button", { class: "btn small", text: "Open", onclick: () => this.open(path) }),
        el("button", { class: "btn small", text: "Rename", onclick: () => this.rename(path) }),
        el("button", { class: "btn small danger", text: "Delete", onclick: () => this.remove(path) }));
    });
    body.replaceChildren(
      el("div", { class: "panel-actions" },
        el("button", { class: "btn small", text: "Save", title: "Save the open workflow (Ctrl+S)", onclick: () => this.save() }),
        el("button", { class: "btn small", text: "Save as…", onclick: () => this.saveAs() }),
        el("button", { class: "btn small", text: "Refresh", onclick: () => this.app.queuePanel.refresh() })),
      ...(rows.length ? rows : [el("div", { class: "q-empty", text: this.loaded ? "no saved workflows" : "…" })]));
  }
}

/** The Settings tab: each setting of settings.js, saved on the server as soon as it changes. */
export class SettingsView {
  constructor(app) {
    this.app = app;
  }

  async refresh() {
    await this.app.settings.load();
  }

  render(body) {
    const settings = this.app.settings;
    const rows = SETTINGS.map((spec) => {
      const input = spec.type === "boolean"
        ? el("input", { type: "checkbox", checked: settings.get(spec.id), id: `setting-${spec.id}` })
        : el("input", { type: "number", min: spec.min, max: spec.max, step: spec.step ?? 1, value: settings.get(spec.id),
          id: `setting-${spec.id}` });
      input.addEventListener("change", async () => {
        const number = Number(input.value);
        if (spec.type !== "boolean" && (!Number.isFinite(number) || number < spec.min || number > spec.max)) {
          this.app.notify(`${spec.label}: a number from ${spec.min} to ${spec.max}`, "warn");
          input.value = settings.get(spec.id);
          return;
        }
        const value = spec.type === "boolean" ? input.checked : number;
        try {
          await settings.set(spec.id, value);
        } catch (err) {
          this.app.notify(`Cannot save the setting: ${err.message}`, "error");
        }
      });
      return el("label", { class: "setting", for: `setting-${spec.id}` }, input, el("span", { text: spec.label }));
    });
    body.replaceChildren(el("div", { class: "q-section" }, el("h3", { text: "Settings (kept on the server)" }), ...rows));
  }
}
