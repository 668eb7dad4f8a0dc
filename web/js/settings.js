// The user's settings, kept on the server (GET/POST /api/settings, in user/<user>/comfy.settings.json),
// so they follow the user from browser to browser. Where ComfyUI's frontend has the same setting,
// its id is used, so both editors share it.

export const SETTINGS = [
  { id: "Comfy.PromptFilename", label: "Ask for a name when saving a new workflow", type: "boolean", default: true },
  { id: "Comfy.Workflow.ConfirmDelete", label: "Ask before deleting a saved workflow", type: "boolean", default: true },
  { id: "Comfy.Graph.ZoomSpeed", label: "Zoom per mouse-wheel step (1.01–2.5)", type: "number", default: 1.1,
    min: 1.01, max: 2.5, step: 0.01 },
  { id: "Comfy.QueueButton.BatchCountLimit", label: "Most prompts one click of Queue may add", type: "number",
    default: 100, min: 1, max: 1000 },
];

export class Settings extends EventTarget {
  constructor(api) {
    super();
    this.api = api;
    this.values = {};
  }

  /** Reads the server's settings; false (defaults in use) when the server cannot be asked. */
  async load() {
    try {
      const values = await this.api.settings();
      this.values = values && typeof values === "object" ? values : {};
      return true;
    } catch {
      this.values = {};
      return false;
    }
  }

  spec(id) {
    return SETTINGS.find((s) => s.id === id);
  }

  get(id) {
    const value = this.values[id];
    const spec = this.spec(id);
    if (value === undefined || value === null) return spec ? spec.default : undefined;
    if (spec && spec.type === "boolean") return value === true;
    if (spec && spec.type === "number") {
      const n = Number(value);
      return Number.isFinite(n) ? Math.min(spec.max ?? n, Math.max(spec.min ?? n, n)) : spec.default;
    }
    return value;
  }

  /** Changes a setting here at once and on the server; rejects when the server refuses it. */
  async set(id, value) {
    if (this.values[id] === value) return;
    this.values[id] = value;
    this.dispatchEvent(new CustomEvent("change", { detail: { id, value } }));
    await this.api.storeSetting(id, value);
  }
}
