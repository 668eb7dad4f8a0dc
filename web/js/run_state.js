// What the server tells us about runs, keyed by node id: the running node, its progress,
// live previews, outputs and errors. Kept apart from the graph so undo and reloads of the
// same workflow keep showing results.

const EVENT_LOG = 400;

export class RunState extends EventTarget {
  constructor(api) {
    super();
    this.api = api;
    this.queueRemaining = 0;
    this.runningPrompt = null;
    this.runningNode = null;
    this.progress = null; // {node, value, max}
    this.previews = new Map(); // node id -> object URL
    this.outputs = new Map(); // node id -> {images: [{url, filename, subfolder, type}], text: [...]}
    this.errors = new Map(); // node id -> {messages: [...], inputs: Set, kind}
    this.generalErrors = [];
    this.events = []; // recent websocket events (type, node, prompt_id): read by tests and the status bar
    this.ownPrompts = new Set();
    this.promptNodes = 0;
    this.promptDone = new Set();
    api.addEventListener("message", (e) => this.onMessage(e.detail.type, e.detail.data));
    api.addEventListener("preview", (e) => this.onPreview(e.detail));
  }

  changed(kind) {
    this.dispatchEvent(new CustomEvent("change", { detail: kind }));
  }

  log(type, data) {
    this.events.push({ type, node: data?.node ?? data?.node_id ?? null, prompt_id: data?.prompt_id ?? null,
      value: data?.value, max: data?.max, t: performance.now() });
    if (this.events.length > EVENT_LOG) this.events.splice(0, this.events.length - EVENT_LOG);
  }

  onMessage(type, data) {
    this.log(type, data);
    switch (type) {
      case "status":
        this.queueRemaining = data?.status?.exec_info?.queue_remaining ?? 0;
        this.changed("queue");
        break;
      case "execution_start":
        this.runningPrompt = data.prompt_id;
        this.promptDone = new Set();
        this.clearErrors("execution");
        this.changed("start");
        break;
      case "execution_cached":
        for (const id of data.nodes || []) this.promptDone.add(String(id));
        this.changed("cached");
        break;
      case "executing":
        if (data.node === null || data.node === undefined) {
          if (this.runningNode) this.promptDone.add(this.runningNode);
          this.runningNode = null;
          this.progress = null;
          if (!data.prompt_id || data.prompt_id === this.runningPrompt) this.runningPrompt = null;
          this.changed("finished");
        } else {
          if (this.runningNode) this.promptDone.add(this.runningNode);
          this.runningNode = String(data.display_node ?? data.node);
          this.runningPrompt = data.prompt_id ?? this.runningPrompt;
          this.progress = null;
          this.changed("executing");
        }
        break;
      case "progress":
        this.progress = { node: String(data.node ?? this.runningNode), value: data.value, max: data.max };
        this.changed("progress");
        break;
      case "executed":
        this.setOutput(String(data.display_node ?? data.node), data.output || {}, data.prompt_id);
        break;
      case "execution_error":
        this.runningNode = null;
        this.progress = null;
        this.setExecutionError(data);
        break;
      case "execution_interrupted":
        this.runningNode = null;
        this.progress = null;
        this.changed("interrupted");
        break;
      case "execution_success":
        this.changed("success");
        break;
      default:
        break;
    }
  }

  resetRunning() {
    this.runningPrompt = null;
    this.runningNode = null;
    this.progress = null;
    this.changed("reset");
  }

  onPreview({ blob, meta }) {
    const node = String(meta?.display_node_id ?? meta?.node_id ?? this.runningNode ?? "");
    if (!node) return;
    const old = this.previews.get(node);
    if (old) URL.revokeObjectURL(old);
    this.previews.set(node, URL.createObjectURL(blob));
    this.log("preview", { node, prompt_id: meta?.prompt_id });
    this.changed("preview");
  }

  setOutput(node, output, promptId) {
    const images = (output.images || []).filter((i) => i && i.filename)
      .map((i) => ({ ...i, url: this.api.viewUrl(i) }));
    const entry = { images, text: Array.isArray(output.text) ? output.text : output.text ? [output.text] : [],
      promptId };
    this.outputs.set(node, entry);
    const preview = this.previews.get(node);
    if (preview) {
      URL.revokeObjectURL(preview);
      this.previews.delete(node);
    }
    this.dispatchEvent(new CustomEvent("output", { detail: { node, images, output } }));
    this.changed("output");
  }

  clearErrors(kind = null) {
    for (const [id, err] of [...this.errors]) if (!kind || err.kind === kind) this.errors.delete(id);
    if (!kind || kind === "validation") this.generalErrors = [];
    this.changed("errors");
  }

  /** The 400 body of POST /prompt: node_errors onto their nodes and inputs. */
  setValidationErrors(body) {
    this.clearErrors();
    const nodeErrors = body?.node_errors || {};
    for (const [id, entry] of Object.entries(nodeErrors)) {
      const messages = [];
      const inputs = new Set();
      for (const e of entry.errors || []) {
        const name = e.extra_info?.input_name;
        if (name) inputs.add(name);
        messages.push(e.details ? `${e.message}: ${e.details}` : e.message || e.type || "error");
      }
      this.errors.set(String(id), { messages, inputs, kind: "validation", classType: entry.class_type });
    }
    const err = body?.error;
    if (err && (!Object.keys(nodeErrors).length || err.type !== "prompt_outputs_failed_validation")) {
      this.generalErrors = [err.details ? `${err.message}: ${err.details}` : err.message || err.type];
    }
    this.changed("errors");
  }

  setExecutionError(data) {
    const id = data.node_id === null || data.node_id === undefined ? null : String(data.node_id);
    const message = `${data.exception_type || "Error"}: ${data.exception_message || ""}`.trim();
    if (id) this.errors.set(id, { messages: [message], inputs: new Set(), kind: "execution", classType: data.node_type });
    else this.generalErrors = [message];
    this.changed("errors");
    this.dispatchEvent(new CustomEvent("execution-error", { detail: { node: id, message, data } }));
  }
}
