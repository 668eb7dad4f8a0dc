"""The node registry: every node type the engine knows, built-in or from a plugin."""
from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from graph.contract import NodeType

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackFailure:
    """A custom-node pack that could not be imported."""

    name: str
    path: str
    error: str


class NodeRegistry:
    """Maps class_type names to NodeTypes.

    `env` is handed to declarative nodes (folders and other services); classic plugin nodes
    never see it. Built-in names cannot be overridden by plugins; between plugins the later wins.
    """

    def __init__(self, env: Any = None):
        self.env = env
        self._types: dict[str, NodeType] = {}
        self._builtin: set[str] = set()
        self.failed_packs: list[PackFailure] = []
        self.web_directories: dict[str, str] = {}

    def register(self, name: str, cls: type, display_name: str | None = None,
                 python_module: str = "nodes", builtin: bool = False) -> bool:
        """Add one node class; returns False when a plugin tries to replace a built-in."""
        if name in self._builtin and not builtin:
            log.warning("custom node %s from %s ignored: a built-in node has that name", name, python_module)
            return False
        self._types[name] = NodeType(name, cls, display_name, python_module, self.env)
        if builtin:
            self._builtin.add(name)
        return True

    def register_mappings(self, classes: Mapping[str, type], display_names: Mapping[str, str] | None = None,
                          python_module: str = "nodes", builtin: bool = False) -> list[str]:
        display_names = display_names or {}
        return [name for name, cls in classes.items()
                if self.register(name, cls, display_names.get(name), python_module, builtin)]

    def register_nodes(self, classes: Iterable[type], python_module: str, builtin: bool = True) -> None:
        """Register declarative nodes under their class names."""
        for cls in classes:
            self.register(cls.__name__, cls, None, python_module, builtin)

    def get(self, name: str) -> NodeType | None:
        return self._types.get(name) if isinstance(name, str) else None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._types

    def names(self) -> list[str]:
        return list(self._types)

    def describe(self, name: str) -> dict:
        node = self.get(name)
        return {name: node.describe()} if node else {}

    def describe_all(self) -> dict[str, dict]:
        """The /object_info document. A node whose INPUT_TYPES raises is left out and logged."""
        out = {}
        for name, node in self._types.items():
            try:
                out[name] = node.describe()
            except Exception as exc:  # a plugin's bug must not take the whole list down
                log.error("cannot describe node %s: %s", name, exc)
        return out

    def unknown_type_message(self, class_type: Any) -> str:
        sentences = [f"Node type {class_type!r} is not registered."]
        close = self.close_names(class_type) if isinstance(class_type, str) else []
        if close:
            sentences.append(f"Did you mean {' or '.join(repr(n) for n in close)}?")
        if self.failed_packs:
            packs = "; ".join(f"{f.name} ({f.error})" for f in self.failed_packs)
            sentences.append(f"These custom node packs failed to import and may have provided it: {packs}")
        else:
            folders = getattr(self.env, "folders", None)
            where = f" into {folders.custom_nodes_dirs[0]}" if folders is not None else ""
            sentences.append(f"If it comes from a custom-node pack, that pack is missing: install it{where} "
                             "and restart.")
        return " ".join(sentences)

    def close_names(self, class_type: str, limit: int = 3) -> list[str]:
        """Registered class names close to a misspelt one, matched by class and display name."""
        by_key: dict[str, str] = {}
        for name, node in self._types.items():
            by_key.setdefault(name.lower(), name)
            if isinstance(node.display_name, str):
                by_key.setdefault(node.display_name.lower(), name)
        found: list[str] = []
        for key in difflib.get_close_matches(class_type.lower(), by_key, n=limit * 2, cutoff=0.75):
            if by_key[key] not in found:
                found.append(by_key[key])
        return found[:limit]
