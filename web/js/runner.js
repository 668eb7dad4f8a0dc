// Queueing: export the graph, POST it with the workflow attached, show validation errors,
// and apply each control_after_generate widget after every queued prompt (as ComfyUI does).

import { applyControl } from "./widgets.js";
import { ApiError } from "./api.js";

/** Step every seed-style control in the graph; true when any value changed. */
export function applyControls(graph) {
  let changed = false;
  for (const node of graph.nodes) {
    for (let i = 0; i < node.widgets.length; i++) {
      const control = node.widgets[i];
      if (control.kind !== "control") continue;
      const target = node.widgets.find((w) => w.kind === "value" && w.name === control.target)
        || node.widgets[i - 1];
      const filter = node.widgets[i + 1] && node.widgets[i + 1].kind === "filter" ? node.widgets[i + 1] : null;
      if (applyControl(control, target, filter)) changed = true;
    }
  }
  return changed;
}

export class Runner {
  constructor(app) {
    this.app = app;
    this.busy = false;
  }

  /** Queue the graph `count` times; returns the prompt ids that were accepted. */
  async queue(count = 1, { front = false } = {}) {
    const app = this.app;
    if (this.busy) return [];
    this.busy = true;
    const ids = [];
    // Cleared before posting, not after the answer: a prompt that fails fast can report its
    // execution_error on the websocket before POST /prompt returns.
    app.runState.clearErrors();
    try {
      for (let i = 0; i < Math.max(1, count); i++) {
        let prompt;
        let workflow;
        try {
          ({ prompt, workflow } = app.buildPrompt());
        } catch (err) {
          app.notify(`Cannot build the prompt: ${err.message}`, "error");
          break;
        }
        try {
          const result = await app.api.queuePrompt(prompt, { workflow, front });
          ids.push(result.prompt_id);
          app.runState.ownPrompts.add(result.prompt_id);
          if (result.node_errors && Object.keys(result.node_errors).length) {
            app.runState.setValidationErrors({ node_errors: result.node_errors });
            app.notify("Some outputs failed validation and were left out; see the marked nodes.", "warn");
          }
        } catch (err) {
          if (err instanceof ApiError && err.status === 400 && err.body) {
            app.runState.setValidationErrors(err.body);
            app.showErrorList();
          } else {
            app.notify(`Queueing failed: ${err.message}`, "error");
          }
          break;
        }
        if (applyControls(app.graph)) app.commit("control-after-generate", { undo: false });
      }
    } finally {
      this.busy = false;
      app.queuePanel?.refreshSoon();
    }
    return ids;
  }
}
