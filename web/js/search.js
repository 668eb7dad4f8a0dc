// The add-node search box: fuzzy matching over class names, display names and categories,
// optionally limited to nodes that accept (or produce) a given socket type.

import { el, overlayRoot } from "./dom.js";
import { typesCompatible } from "./types.js";

const LIMIT = 60;

/** Score how well one query token matches a field; 0 = no match. */
function tokenScore(token, field) {
  if (!field) return 0;
  if (field === token) return 100;
  if (field.startsWith(token)) return 80;
  const at = field.indexOf(token);
  if (at > 0) return /[\s_/\-.()]/.test(field[at - 1]) ? 60 : 45;
  // subsequence: every character in order, fewer gaps score higher
  let pos = -1;
  let gaps = 0;
  for (const ch of token) {
    const next = field.indexOf(ch, pos + 1);
    if (next < 0) return 0;
    if (pos >= 0 && next > pos + 1) gaps += 1;
    pos = next;
  }
  return Math.max(5, 30 - gaps * 4);
}

/** Defs matching the query, best first. */
export function rankDefs(defs, query) {
  const tokens = query.toLowerCase().split(/\s+/).filter(Boolean);
  if (!tokens.length) {
    return defs.slice().sort((a, b) => a.category.localeCompare(b.category) || a.displayName.localeCompare(b.displayName));
  }
  const compact = tokens.join("");
  const squash = (text) => text.toLowerCase().replace(/[^a-z0-9]+/g, "");
  const scored = [];
  for (const def of defs) {
    const fields = [def.displayName.toLowerCase(), def.name.toLowerCase(), def.category.toLowerCase()];
    // the whole query as one run of characters ("empty image" -> EmptyImage) beats scattered words
    let total = 0;
    for (const name of [squash(def.displayName), squash(def.name)]) {
      if (name === compact) total = Math.max(total, 120);
      else if (name.startsWith(compact)) total = Math.max(total, 60);
      else if (name.includes(compact)) total = Math.max(total, 40);
    }
    let ok = true;
    for (const token of tokens) {
      const best = Math.max(tokenScore(token, fields[0]) * 1.1, tokenScore(token, fields[1]), tokenScore(token, fields[2]) * 0.6);
      if (best <= 0) {
        ok = false;
        break;
      }
      total += best;
    }
    if (ok) scored.push({ def, score: total - (def.deprecated ? 30 : 0) });
  }
  scored.sort((a, b) => b.score - a.score || a.def.displayName.length - b.def.displayName.length);
  return scored.map((s) => s.def);
}

function highlight(text, query) {
  const lower = text.toLowerCase();
  const spans = [];
  for (const token of query.toLowerCase().split(/\s+/).filter(Boolean)) {
    const at = lower.indexOf(token);
    if (at >= 0) spans.push([at, at + token.length]);
  }
  spans.sort((a, b) => a[0] - b[0]);
  const parts = [];
  let pos = 0;
  for (const [start, end] of spans) {
    if (start < pos) continue;
    parts.push(text.slice(pos, start), el("b", { text: text.slice(start, end) }));
    pos = end;
  }
  parts.push(text.slice(pos));
  return parts;
}

export class SearchBox {
  constructor(app) {
    this.app = app;
    this.root = null;
  }

  get isOpen() {
    return !!this.root;
  }

  /**
   * open({x, y, accepts?: type, produces?: type, onPick(def), onCancel()})
   * x, y: client coordinates for the box.
   */
  open({ x, y, accepts = null, produces = null, onPick, onCancel = null }) {
    this.close();
    this.onPick = onPick;
    this.onCancel = onCancel;
    let defs = [...this.app.defs.values()];
    if (accepts) defs = defs.filter((d) => d.acceptsType(accepts, typesCompatible));
    if (produces) defs = defs.filter((d) => d.producesType(produces, typesCompatible));
    this.defs = defs;
    this.input = el("input", { type: "text", placeholder: "Search nodes…", spellcheck: false, autocomplete: "off",
      oninput: () => this.refresh(), onkeydown: (e) => this.key(e) });
    this.list = el("ul", { role: "listbox" });
    const note = accepts ? `Nodes that take ${accepts}` : produces ? `Nodes that give ${produces}` : null;
    this.root = el("div", { class: "search-box", role: "dialog" }, this.input,
      note ? el("div", { class: "filter-note", text: note }) : null, this.list);
    overlayRoot().append(this.root);
    const left = Math.max(4, Math.min(x - 20, window.innerWidth - 390));
    const top = Math.max(4, Math.min(y - 20, window.innerHeight - 420));
    Object.assign(this.root.style, { left: `${left}px`, top: `${top}px` });
    this.outside = (e) => {
      if (this.root && !this.root.contains(e.target)) this.cancel();
    };
    setTimeout(() => document.addEventListener("pointerdown", this.outside, true));
    this.refresh();
    this.input.focus();
  }

  refresh() {
    const query = this.input.value.trim();
    this.results = rankDefs(this.defs, query).slice(0, LIMIT);
    this.active = 0;
    this.list.replaceChildren(...this.results.map((def, i) => {
      const li = el("li", { role: "option", "data-type": def.name },
        el("span", {}, ...highlight(def.displayName, query)),
        def.displayName !== def.name ? el("span", { class: "name", text: def.name }) : null,
        el("span", { class: "cat", text: def.category }));
      li.addEventListener("pointerdown", (e) => {
        e.preventDefault();
        this.pick(i);
      });
      // only a real mouse movement picks an entry, not the list appearing under a resting pointer
      li.addEventListener("pointermove", (e) => {
        if ((e.movementX || e.movementY) && this.active !== i) this.setActive(i);
      });
      return li;
    }));
    this.setActive(0);
  }

  setActive(index) {
    this.active = index;
    [...this.list.children].forEach((li, i) => li.classList.toggle("active", i === index));
    this.list.children[index]?.scrollIntoView({ block: "nearest" });
  }

  key(event) {
    if (event.key === "ArrowDown") this.setActive(Math.min(this.active + 1, this.results.length - 1));
    else if (event.key === "ArrowUp") this.setActive(Math.max(this.active - 1, 0));
    else if (event.key === "Enter") this.pick(this.active);
    else if (event.key === "Escape") this.cancel();
    else return;
    event.preventDefault();
    event.stopPropagation();
  }

  pick(index) {
    const def = this.results[index];
    const onPick = this.onPick;
    this.onCancel = null;
    this.close();
    if (def && onPick) onPick(def);
  }

  cancel() {
    const onCancel = this.onCancel;
    this.close();
    if (onCancel) onCancel();
  }

  close() {
    if (!this.root) return;
    document.removeEventListener("pointerdown", this.outside, true);
    this.root.remove();
    this.root = null;
    this.app.canvas?.el.focus();
  }
}
