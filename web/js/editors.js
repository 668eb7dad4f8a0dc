// The one-at-a-time text editor laid over the canvas: typing a number, editing a text widget,
// renaming a node or group. Enter (Ctrl+Enter for multi-line) commits, Escape cancels,
// clicking elsewhere commits.

import { el, overlayRoot } from "./dom.js";

let current = null;

export function closeEditor(commit = true) {
  if (!current) return;
  const editor = current;
  current = null;
  editor.element.remove();
  if (commit) editor.onCommit(editor.element.value);
  else if (editor.onCancel) editor.onCancel();
}

export function editorOpen() {
  return !!current;
}

/**
 * editValue({rect: {x, y, w, h} (client px), initial, multiline, numeric, fontSize, onCommit, onCancel})
 */
export function editValue({ rect, initial, multiline = false, numeric = false, fontSize = 13, onCommit, onCancel }) {
  closeEditor(true);
  const element = multiline
    ? el("textarea", { class: "value-editor", spellcheck: false })
    : el("input", { class: "value-editor", type: "text", spellcheck: false, inputmode: numeric ? "decimal" : "text" });
  element.value = initial ?? "";
  Object.assign(element.style, {
    left: `${Math.round(rect.x)}px`, top: `${Math.round(rect.y)}px`, width: `${Math.max(60, Math.round(rect.w))}px`,
    height: `${Math.max(22, Math.round(rect.h))}px`, fontSize: `${fontSize}px`,
  });
  current = { element, onCommit, onCancel };
  element.addEventListener("keydown", (event) => {
    event.stopPropagation();
    if (event.key === "Escape") {
      event.preventDefault();
      closeEditor(false);
    } else if (event.key === "Enter" && (!multiline || event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      closeEditor(true);
    }
  });
  element.addEventListener("blur", () => {
    if (current && current.element === element) closeEditor(true);
  });
  overlayRoot().append(element);
  element.focus();
  if (!multiline) element.select();
  return element;
}
