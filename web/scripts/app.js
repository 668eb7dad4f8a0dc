// For custom node web extensions written against ComfyUI's module layout:
//   import { app } from "../../scripts/app.js";  app.registerExtension({name, setup(app) {...}})
// This is a small facade over the LatentGraph editor, not ComfyUI's app object.

globalThis.__lgExtensionQueue ||= [];

export const app = {
  registerExtension(extension) {
    const editor = globalThis.lgApp;
    if (editor && editor.extensions) editor.extensions.register(extension);
    else globalThis.__lgExtensionQueue.push(extension);
  },
  get graph() {
    return globalThis.lgApp ? globalThis.lgApp.graph : null;
  },
  get editor() {
    return globalThis.lgApp || null;
  },
  queuePrompt(batchCount = 1) {
    return globalThis.lgApp ? globalThis.lgApp.queue(batchCount) : Promise.resolve([]);
  },
};
