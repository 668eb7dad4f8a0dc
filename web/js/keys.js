// Keyboard shortcuts (ignored while typing in a field).

import { typingInField } from "./dom.js";
import { menusOpen } from "./menu.js";

export function installShortcuts(app) {
  document.addEventListener("keydown", (e) => {
    if (typingInField(e.target) || menusOpen() || app.search.isOpen) return;
    const mod = e.ctrlKey || e.metaKey;
    const key = e.key.toLowerCase();
    let handled = true;
    if (mod && e.key === "Enter") app.queue(app.toolbar.batchCount, { front: e.shiftKey });
    else if (mod && key === "z" && !e.shiftKey) app.undo();
    else if (mod && (key === "y" || (key === "z" && e.shiftKey))) app.redo();
    else if (mod && key === "c") app.copySelection();
    else if (mod && key === "x") {
      app.copySelection();
      app.commands.deleteSelected();
    } else if (mod && key === "v") {
      app.schedulePaste(e.shiftKey); // not prevented: the browser's paste event may carry an image
      handled = false;
    } else if (mod && key === "a") app.selectAll();
    else if (mod && key === "b") app.commands.toggleBypass();
    else if (mod && key === "m") app.commands.toggleMute();
    else if (mod && key === "g") app.commands.groupSelected();
    else if (mod && key === "s") app.library.save();
    else if (mod && key === "o") app.toolbar.open();
    else if (e.altKey && key === "c") app.commands.toggleCollapse();
    else if (!mod && !e.altKey && key === "r") app.refreshDefinitions();
    else if (!mod && (e.key === "Delete" || e.key === "Backspace")) app.commands.deleteSelected();
    else if (!mod && e.key === ".") app.canvas.fitView(app.canvas.selected.size ? [...app.canvas.selected] : undefined);
    else if (e.key === "Escape") {
      app.canvas.selected.clear();
      app.onSelectionChange();
    } else handled = false;
    if (handled) e.preventDefault();
  });
}
