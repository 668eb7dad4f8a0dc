// Context menus with nested submenus and an optional filter box.
// items: [{label, action, submenu: items | () => items, disabled, checked, separator, title}]

import { el, overlayRoot } from "./dom.js";

const open = [];

function onOutsidePointer(event) {
  if (!open.length) return;
  if (open.some((menu) => menu.root.contains(event.target))) return;
  closeMenus();
}

function onKey(event) {
  if (event.key === "Escape" && open.length) {
    closeMenus();
    event.stopPropagation();
  }
}

document.addEventListener("pointerdown", onOutsidePointer, true);
document.addEventListener("keydown", onKey, true);

export function closeMenus() {
  while (open.length) open.pop().root.remove();
}

export function menusOpen() {
  return open.length > 0;
}

export class ContextMenu {
  constructor(items, { x, y, filter = false, title = null, parent = null } = {}) {
    this.parent = parent;
    this.child = null;
    this.items = items;
    this.root = el("div", { class: "ctx-menu", role: "menu" });
    if (title) this.root.append(el("div", { class: "title", text: title }));
    if (filter || items.length > 20) {
      this.filter = el("input", { class: "filter", placeholder: "Filter", spellcheck: false,
        oninput: () => this.applyFilter(), onkeydown: (e) => this.filterKey(e) });
      this.root.append(this.filter);
    }
    this.list = el("div");
    this.root.append(this.list);
    this.render(items);
    overlayRoot().append(this.root);
    open.push(this);
    this.place(x, y);
    if (this.filter) this.filter.focus();
  }

  render(items) {
    this.list.replaceChildren();
    this.rows = [];
    for (const item of items) {
      if (item.separator) {
        this.list.append(el("div", { class: "sepline" }));
        continue;
      }
      if (item.title) {
        this.list.append(el("div", { class: "title", text: item.label }));
        continue;
      }
      const classes = ["item"];
      if (item.submenu) classes.push("sub");
      if (item.disabled) classes.push("disabled");
      if (item.checked) classes.push("checked");
      const row = el("div", { class: classes.join(" "), role: "menuitem", text: item.label });
      row.addEventListener("pointerenter", () => this.hover(item, row));
      row.addEventListener("click", (e) => {
        e.stopPropagation();
        this.activate(item, row);
      });
      this.rows.push({ item, row });
      this.list.append(row);
    }
  }

  place(x, y) {
    const rect = this.root.getBoundingClientRect();
    const left = Math.max(4, Math.min(x, window.innerWidth - rect.width - 4));
    const top = Math.max(4, Math.min(y, window.innerHeight - rect.height - 4));
    this.root.style.left = `${left}px`;
    this.root.style.top = `${top}px`;
  }

  closeChild() {
    if (!this.child) return;
    this.child.closeChild();
    this.child.root.remove();
    const i = open.indexOf(this.child);
    if (i >= 0) open.splice(i, 1);
    this.child = null;
  }

  hover(item, row) {
    for (const r of this.rows) r.row.classList.toggle("hover", r.row === row && !!item.submenu);
    if (this.child && this.child.owner === item) return;
    this.closeChild();
    if (item.submenu && !item.disabled) this.openSub(item, row);
  }

  openSub(item, row) {
    const items = typeof item.submenu === "function" ? item.submenu() : item.submenu;
    const rect = row.getBoundingClientRect();
    this.child = new ContextMenu(items, { x: rect.right - 2, y: rect.top - 4, parent: this });
    this.child.owner = item;
    if (rect.right + this.child.root.offsetWidth > window.innerWidth) {
      this.child.place(rect.left - this.child.root.offsetWidth + 2, rect.top - 4);
    }
  }

  activate(item, row) {
    if (item.disabled) return;
    if (item.submenu) {
      this.hover(item, row);
      return;
    }
    closeMenus();
    if (item.action) item.action();
  }

  applyFilter() {
    const text = this.filter.value.trim().toLowerCase();
    let first = true;
    for (const { item, row } of this.rows) {
      const show = !text || String(item.label).toLowerCase().includes(text);
      row.hidden = !show;
      row.classList.toggle("hover", show && first && !!text);
      if (show) first = false;
    }
  }

  filterKey(event) {
    const visible = this.rows.filter((r) => !r.row.hidden);
    const current = visible.findIndex((r) => r.row.classList.contains("hover"));
    if (event.key === "Enter") {
      const pick = visible[Math.max(0, current)];
      if (pick) this.activate(pick.item, pick.row);
      event.preventDefault();
    } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      const next = visible[(current + (event.key === "ArrowDown" ? 1 : -1) + visible.length) % visible.length];
      for (const r of visible) r.row.classList.toggle("hover", r === next);
      next?.row.scrollIntoView({ block: "nearest" });
      event.preventDefault();
    }
  }
}

/** Category tree of node definitions as nested menu items. */
export function categoryItems(defs, onPick) {
  const root = { children: new Map(), nodes: [] };
  for (const def of defs) {
    if (def.deprecated) continue;
    let level = root;
    for (const part of (def.category || "other").split("/").filter(Boolean)) {
      if (!level.children.has(part)) level.children.set(part, { children: new Map(), nodes: [] });
      level = level.children.get(part);
    }
    level.nodes.push(def);
  }
  const build = (level) => [
    ...[...level.children.entries()].sort((a, b) => a[0].localeCompare(b[0]))
      .map(([name, child]) => ({ label: name, submenu: () => build(child) })),
    ...level.nodes.sort((a, b) => a.displayName.localeCompare(b.displayName))
      .map((def) => ({ label: def.displayName, action: () => onPick(def) })),
  ];
  return build(root);
}
