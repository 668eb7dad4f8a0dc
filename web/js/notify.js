// Toasts for short messages, and the list of errors after a failed queueing.

import { el, overlayRoot } from "./dom.js";

export class Notifier {
  constructor() {
    this.box = el("div", { class: "toasts", "aria-live": "polite" });
    overlayRoot().append(this.box);
    this.errorBox = null;
    this.history = [];
  }

  toast(message, kind = "info", ms = 4500) {
    this.history.push({ message, kind });
    if (this.history.length > 50) this.history.shift();
    const item = el("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : "status", text: message });
    this.box.append(item);
    while (this.box.children.length > 5) this.box.firstChild.remove();
    setTimeout(() => item.remove(), kind === "error" ? ms * 2 : ms);
  }

  /** entries: [{node (id or null), title, message}], clicking one calls onPick(node id). */
  showErrors(title, entries, onPick) {
    this.hideErrors();
    if (!entries.length) return;
    this.errorBox = el("div", { class: "error-list", role: "alert" },
      el("header", {}, el("span", { text: title }),
        el("button", { class: "btn small", text: "Close", onclick: () => this.hideErrors() })),
      ...entries.map((e) => el("div", { class: "err", onclick: () => e.node !== null && onPick(e.node) },
        e.node !== null ? el("span", { class: "where", text: `#${e.node} ${e.title}: ` }) : null, e.message)));
    overlayRoot().append(this.errorBox);
  }

  hideErrors() {
    if (this.errorBox) this.errorBox.remove();
    this.errorBox = null;
  }
}
