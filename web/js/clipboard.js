// Copy and paste of nodes, within a tab and across tabs: the copied nodes (UI-format JSON) go
// to localStorage and, where the browser allows, to the system clipboard as text.

const KEY = "lg.clipboard";
const MARK = "latentgraph/nodes";

/** The selected nodes and the links among them, as a clipboard document. */
export function clipDocument(serialized, selectedIds) {
  const ids = new Set(selectedIds);
  const nodes = serialized.nodes.filter((n) => ids.has(n.id));
  const links = serialized.links.filter((l) => ids.has(l[1]) && ids.has(l[3]));
  // inputs fed from outside the selection: kept so Ctrl+Shift+V can reconnect them
  const external = serialized.links.filter((l) => !ids.has(l[1]) && ids.has(l[3]));
  return { kind: MARK, nodes, links, external };
}

/** Put the selected nodes on the clipboard (localStorage, and the system clipboard if allowed). */
export function copyNodes(serialized, selectedIds) {
  const doc = clipDocument(serialized, selectedIds);
  const text = JSON.stringify(doc);
  try {
    localStorage.setItem(KEY, text);
  } catch {
    // storage full or disabled: the in-memory copy below still works in this tab
  }
  copyNodes.last = text;
  if (navigator.clipboard && window.isSecureContext) navigator.clipboard.writeText(text).catch(() => {});
  return doc;
}

export function parseClipboard(text) {
  try {
    const doc = JSON.parse(text);
    return doc && doc.kind === MARK && Array.isArray(doc.nodes) ? doc : null;
  } catch {
    return null;
  }
}

export function storedClipboard() {
  let text = null;
  try {
    text = localStorage.getItem(KEY);
  } catch {
    text = null;
  }
  return parseClipboard(text || copyNodes.last || "");
}
