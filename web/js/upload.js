// Images into LoadImage nodes: the upload button, files dropped on a node, pasted images.

import { el } from "./dom.js";
import { fitToContent } from "./layout.js";

export class Uploads {
  constructor(app) {
    this.app = app;
    this.target = null;
    // one hidden file input, reused (tests drive it with set_input_files)
    this.input = el("input", { type: "file", id: "lg-upload-input", accept: "image/*", hidden: true,
      onchange: () => this.onPicked() });
    document.body.append(this.input);
  }

  /** Open the file picker for a LoadImage node. */
  pick(node) {
    this.target = node;
    this.input.value = "";
    this.input.click();
  }

  async onPicked() {
    const file = this.input.files && this.input.files[0];
    const node = this.target || this.app.selectedImageNode();
    if (file && node) await this.uploadTo(node, file);
  }

  /** Upload a file and make it the node's image. Other nodes that name a file of that name the
   * server lacks (an example workflow opened before its picture was uploaded) get it too. */
  async uploadTo(node, file) {
    const app = this.app;
    let result;
    try {
      result = await app.api.uploadImage(file);
    } catch (err) {
      app.notify(`Upload failed: ${err.message}`, "error");
      return null;
    }
    const name = result.subfolder ? `${result.subfolder}/${result.name}` : result.name;
    const value = result.type && result.type !== "input" ? `${name} [${result.type}]` : name;
    const waiting = app.graph.nodes.filter((n) => {
      const w = fileWidget(n);
      return n !== node && w && w.value === file.name && !w.choices.includes(file.name);
    });
    for (const target of [node, ...waiting]) {
      const widget = fileWidget(target);
      if (!widget) continue;
      if (!widget.choices.includes(value)) widget.choices.push(value);
      widget.value = value;
      target.showsImage = true;
      fitToContent(target);
    }
    app.commit("upload");
    app.notify(`Uploaded ${result.name}` + (waiting.length ? ` (also set in ${waiting.length} more node(s))` : ""), "ok");
    return value;
  }
}

/** The widget an upload button fills (Load Image's image), or null for other nodes. */
export function fileWidget(node) {
  const button = node.widgets.find((w) => w.kind === "upload");
  return button ? node.widget(button.target) : null;
}
