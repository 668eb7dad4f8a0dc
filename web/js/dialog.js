// Small modal dialogs: ask for a line of text, or for a yes/no. Enter confirms, Escape cancels.

import { el, overlayRoot } from "./dom.js";

function modal(title, body, buttons) {
  return new Promise((resolve) => {
    const close = (value) => {
      document.removeEventListener("keydown", onKey, true);
      shade.remove();
      resolve(value);
    };
    const primary = buttons.find((b) => b.primary);
    const onKey = (e) => { // while open, the dialog has the keyboard: no editor shortcuts
      e.stopPropagation();
      if (e.key === "Escape" || e.key === "Enter") {
        e.preventDefault();
        close(e.key === "Enter" ? primary.value() : null);
      }
    };
    const box = el("div", { class: "dialog", role: "dialog", "aria-label": title },
      el("h3", { text: title }), ...body,
      el("div", { class: "dialog-buttons" }, ...buttons.map((b) => el("button", {
        class: `btn ${b.primary ? "primary" : ""}`, text: b.label, onclick: () => close(b.value()) }))));
    const shade = el("div", { class: "dialog-shade", onclick: (e) => e.target === shade && close(null) }, box);
    document.addEventListener("keydown", onKey, true);
    overlayRoot().append(shade);
  });
}

/** The text typed (trimmed), or null when cancelled or left empty. */
export function askText(title, { label = "", initial = "", confirm = "OK" } = {}) {
  const input = el("input", { type: "text", class: "dialog-input", value: initial, "aria-label": label || title });
  const result = modal(title, [label ? el("label", { text: label }) : null, input].filter(Boolean), [
    { label: "Cancel", value: () => null },
    { label: confirm, primary: true, value: () => input.value.trim() || null },
  ]);
  setTimeout(() => {
    input.focus();
    input.select();
  });
  return result;
}

/** true when confirmed. */
export async function confirmAction(title, message, confirm = "OK") {
  return (await modal(title, [el("p", { text: message })], [
    { label: "Cancel", value: () => false },
    { label: confirm, primary: true, value: () => true },
  ])) === true;
}
