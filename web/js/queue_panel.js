// The side panel: the queue (running, pending, finished prompts), a gallery of outputs, and the
// tabs other modules add (saved workflows, settings).

import { el, debounce } from "./dom.js";

function shortId(id) {
  return String(id).slice(0, 8);
}

function firstImage(outputs) {
  for (const out of Object.values(outputs || {})) {
    const images = out && Array.isArray(out.images) ? out.images : [];
    if (images.length && images[0].filename) return images[0];
  }
  return null;
}

export class QueuePanel {
  constructor(app, root) {
    this.app = app;
    this.root = root;
    this.tab = "queue";
    this.gallery = []; // [{url, filename, subfolder, type}] newest first
    this.data = { running: [], pending: [], history: [] };
    this.refreshSoon = debounce(() => this.refreshQueue(), 150);
    this.views = new Map(); // tab -> {button, view: {render(body), refresh()}} of added tabs
    this.tabs = el("div", { class: "tabs" },
      this.queueTab = el("button", { text: "Queue", class: "active", onclick: () => this.show("queue") }),
      this.galleryTab = el("button", { text: "Gallery", onclick: () => this.show("gallery") }));
    this.body = el("div", { class: "panel-body" });
    root.append(this.tabs, this.body);
    app.runState.addEventListener("output", (e) => this.addImages(e.detail.images));
  }

  get visible() {
    return !this.root.hidden;
  }

  /** A tab whose `view` draws into the panel body (render(body)) and reloads its data (refresh()). */
  addTab(tab, label, view) {
    const button = el("button", { text: label, "data-tab": tab, onclick: () => this.show(tab) });
    this.tabs.append(button);
    this.views.set(tab, { button, view });
  }

  toggle(force) {
    this.root.hidden = force === undefined ? !this.root.hidden : !force;
    this.app.canvas.resize();
    if (this.visible) this.refresh();
  }

  show(tab) {
    this.tab = tab;
    this.queueTab.classList.toggle("active", tab === "queue");
    this.galleryTab.classList.toggle("active", tab === "gallery");
    for (const [key, { button }] of this.views) button.classList.toggle("active", key === tab);
    this.toggle(true);
    this.render();
  }

  addImages(images) {
    let added = false;
    for (const image of [...images].reverse()) {
      if (!image.url || this.gallery.some((g) => g.url === image.url)) continue;
      this.gallery.unshift(image);
      added = true;
    }
    this.gallery.splice(200);
    if (added && this.visible && this.tab === "gallery") this.render();
  }

  async refresh() {
    const added = this.views.get(this.tab);
    if (!added) return this.refreshQueue();
    await added.view.refresh();
    if (this.visible && this.tab === added.button.dataset.tab) this.render();
  }

  async refreshQueue() {
    const api = this.app.api;
    try {
      const [queue, history] = await Promise.all([api.queue(), api.history(50)]);
      this.data.running = queue.queue_running || [];
      this.data.pending = (queue.queue_pending || []).slice().sort((a, b) => a[0] - b[0]);
      this.data.history = Object.entries(history || {}).map(([id, entry]) => ({ id, ...entry })).reverse();
      if (!this.gallery.length) {
        for (const entry of this.data.history.slice().reverse()) {
          for (const out of Object.values(entry.outputs || {})) {
            this.addImages((out.images || []).filter((i) => i.filename).map((i) => ({ ...i, url: api.viewUrl(i) })));
          }
        }
      }
    } catch {
      return; // server away: the connection status already says so
    }
    if (this.visible && !this.views.has(this.tab)) this.render();
  }

  render() {
    const added = this.views.get(this.tab);
    if (added) added.view.render(this.body);
    else if (this.tab === "gallery") this.renderGallery();
    else this.renderQueue();
  }

  renderQueue() {
    const app = this.app;
    const { running, pending, history } = this.data;
    const item = (cls, title, sub, actions, thumb = null) => el("div", { class: `q-item ${cls}` },
      thumb, el("div", { class: "q-main" }, el("div", { class: "q-title", text: title }), el("div", { class: "q-sub", text: sub })),
      ...actions);
    const section = (name, items, empty) => el("div", { class: "q-section" }, el("h3", { text: name }),
      ...(items.length ? items : [el("div", { class: "q-empty", text: empty })]));
    const runningItems = running.map((q) => item("running", `#${q[0]} · ${shortId(q[1])}`,
      `${Object.keys(q[2] || {}).length} nodes · running`,
      [el("button", { class: "btn small danger", text: "Cancel", title: "Interrupt", onclick: () => app.interrupt(q[1]) })]));
    const pendingItems = pending.map((q) => item("pending", `#${q[0]} · ${shortId(q[1])}`,
      `${Object.keys(q[2] || {}).length} nodes · pending`,
      [el("button", { class: "btn small danger", text: "Cancel", title: "Remove from the queue",
        onclick: async () => {
          await app.api.deletePending([q[1]]).catch((e) => app.notify(e.message, "error"));
          this.refresh();
        } })]));
    const historyItems = history.map((h) => {
      const status = h.status?.status_str || "done";
      const image = firstImage(h.outputs);
      const thumb = image ? el("img", { src: app.api.viewUrl(image), alt: "", loading: "lazy" }) : null;
      const workflow = h.prompt?.[3]?.extra_pnginfo?.workflow;
      return item(status === "error" ? "error" : "done", `#${h.prompt?.[0] ?? ""} · ${shortId(h.id)}`,
        `${status} · ${Object.keys(h.outputs || {}).length} outputs`,
        [el("button", { class: "btn small", text: "Load", disabled: !workflow, title: "Load this prompt's workflow",
          onclick: () => app.loadWorkflowData(workflow, "history") }),
        el("button", { class: "btn small danger", text: "Delete", onclick: async () => {
          await app.api.deleteHistory([h.id]).catch((e) => app.notify(e.message, "error"));
          this.refresh();
        } })], thumb);
    });
    this.body.replaceChildren(
      el("div", { class: "panel-actions" },
        el("button", { class: "btn small", id: "queue-refresh", text: "Refresh queue",
          title: "Reload the queue and history from the server (node definitions and model lists: R)",
          onclick: () => this.refresh() }),
        el("button", { class: "btn small danger", text: "Clear pending", onclick: async () => {
          await app.api.clearPending().catch((e) => app.notify(e.message, "error"));
          this.refresh();
        } }),
        el("button", { class: "btn small danger", text: "Clear history", onclick: async () => {
          await app.api.clearHistory().catch((e) => app.notify(e.message, "error"));
          this.refresh();
        } })),
      section("Running", runningItems, "nothing running"),
      section("Pending", pendingItems, "nothing queued"),
      section("History", historyItems, "no finished prompts"));
  }

  renderGallery() {
    const grid = el("div", { class: "gallery" }, ...this.gallery.map((image) => el("img", {
      src: image.url, alt: image.filename, title: image.filename, loading: "lazy",
      onclick: () => this.lightbox(image.url) })));
    this.body.replaceChildren(this.gallery.length ? grid : el("div", { class: "q-empty", text: "no images yet" }));
  }

  lightbox(url) {
    const box = el("div", { class: "lightbox", onclick: () => box.remove() }, el("img", { src: url, alt: "" }));
    document.body.append(box);
  }
}
