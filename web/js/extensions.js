// Custom nodes' web extensions: every URL from GET /extensions is imported as an ES module.
// A module may register hooks through /scripts/app.js (registerExtension), as ComfyUI
// extensions do: init(app), setup(app), nodeCreated(node, app), loadedGraphNode(node, app).

export class Extensions {
  constructor(app) {
    this.app = app;
    this.registered = [];
    this.loaded = [];
    this.failed = [];
    globalThis.__lgExtensionQueue ||= [];
  }

  register(extension) {
    if (!extension || typeof extension !== "object") return;
    this.registered.push(extension);
  }

  drainQueue() {
    const queue = globalThis.__lgExtensionQueue;
    while (queue.length) this.register(queue.shift());
  }

  async load() {
    let urls = [];
    try {
      urls = await this.app.api.extensions();
    } catch (err) {
      console.warn("cannot list extensions:", err.message);
      return;
    }
    await Promise.all((Array.isArray(urls) ? urls : []).map(async (url) => {
      try {
        await import(url);
        this.loaded.push(url);
      } catch (err) {
        this.failed.push({ url, error: String(err && err.message ? err.message : err) });
        console.warn(`extension ${url} failed to load:`, err);
      }
    }));
    this.drainQueue();
    await this.call("init");
  }

  async call(hook, ...args) {
    this.drainQueue();
    for (const ext of this.registered) {
      if (typeof ext[hook] !== "function") continue;
      try {
        await ext[hook](...args, this.app);
      } catch (err) {
        console.warn(`extension ${ext.name || "?"}: ${hook} failed:`, err);
      }
    }
  }

  nodeCreated(node) {
    this.drainQueue();
    for (const ext of this.registered) {
      if (typeof ext.nodeCreated !== "function") continue;
      try {
        ext.nodeCreated(node, this.app);
      } catch (err) {
        console.warn(`extension ${ext.name || "?"}: nodeCreated failed:`, err);
      }
    }
  }
}
