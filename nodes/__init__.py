"""Built-in nodes: each module of this package lists its node classes in a module-level NODES.

This package also sits on ComfyUI's module name `nodes`, so plugins find what they import from
ComfyUI's nodes.py: every built-in node class under its ComfyUI name (`nodes.KSampler`,
`from nodes import CLIPTextEncode, VAEDecode`), MAX_RESOLUTION, common_ksampler,
NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, EXTENSION_WEB_DIRS, LOADED_MODULE_DIRS,
interrupt_processing and before_node_execution. The class names are read lazily, so importing
the package stays cheap and registration never depends on import order.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import MutableMapping
from typing import Any, Iterator


def builtin_modules() -> list[str]:
    """Every module in nodes/, in name order (so registration is stable); only those with NODES register."""
    return sorted(f"{__name__}.{info.name}" for info in pkgutil.iter_modules(__path__) if not info.ispkg)


def builtin_classes() -> dict[str, type]:
    """Every built-in node class by its registered (ComfyUI) name."""
    if not _classes:
        for module_name in builtin_modules():
            for cls in getattr(importlib.import_module(module_name), "NODES", None) or ():
                _classes[cls.__name__] = cls
    return dict(_classes)


_classes: dict[str, type] = {}


def register_builtin_nodes(registry) -> None:
    """Register every built-in node under the python_module ComfyUI reports for it: "nodes" for
    its core file, "comfy_extras.nodes_..." for the rest (a node class sets `comfy_module`)."""
    for module_name in builtin_modules():
        module = importlib.import_module(module_name)
        for cls in getattr(module, "NODES", None) or ():
            registry.register_nodes([cls], python_module=vars(cls).get("comfy_module", "nodes"))


# ---------------------------------------------------------------------------------------------
# ComfyUI's module-level names. Those about "the" engine read the runtime bound at start.


def _runtime():
    from app import compat
    return compat.bound()


class _NodeClasses(MutableMapping):
    """NODE_CLASS_MAPPINGS: every registered node (built-in and plugins') by name, read live, as
    ComfyUI's dict holds them all once packs have loaded. Setting a name registers a plugin node."""

    def _registry(self):
        return _runtime().registry

    def __getitem__(self, name: str) -> type:
        node = self._registry().get(name)
        if node is None:
            raise KeyError(name)
        return node.cls

    def __setitem__(self, name: str, cls: type) -> None:
        self._registry().register(name, cls, python_module=getattr(cls, "RELATIVE_PYTHON_MODULE", "custom_nodes"))

    def __delitem__(self, name: str) -> None:
        raise TypeError("node types cannot be removed from a running engine")

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry().names())

    def __len__(self) -> int:
        return len(self._registry().names())


class _DisplayNames(_NodeClasses):
    """NODE_DISPLAY_NAME_MAPPINGS: the display name of every registered node."""

    def __getitem__(self, name: str) -> str:
        node = self._registry().get(name)
        if node is None:
            raise KeyError(name)
        return node.display_name

    def __setitem__(self, name: str, display_name: str) -> None:
        node = self._registry().get(name)
        if node is None:
            raise KeyError(f"no node {name!r} to name")
        node.display_name = display_name


NODE_CLASS_MAPPINGS: MutableMapping = _NodeClasses()
NODE_DISPLAY_NAME_MAPPINGS: MutableMapping = _DisplayNames()


def interrupt_processing(value: bool = True) -> None:
    """Ask the running prompt to stop (ComfyUI's nodes.interrupt_processing); False withdraws it."""
    flag = _runtime().executor.interrupt_flag
    flag.set() if value else flag.clear()


def before_node_execution() -> None:
    """Raise if the running prompt was interrupted (ComfyUI calls this between nodes)."""
    from graph.context import throw_if_interrupted
    throw_if_interrupted()


def get_module_name(module_path: str) -> str:
    """A pack's name from its path: the folder name, or a file's name without .py."""
    base = os.path.basename(os.path.normpath(module_path))
    return os.path.splitext(base)[0] if os.path.isfile(module_path) else base


_LIVE = {
    "EXTENSION_WEB_DIRS": lambda: _runtime().registry.web_directories,
    "LOADED_MODULE_DIRS": lambda: {p.name: p.path for p in _runtime().packs if p.ok},
}
_ELSEWHERE = {"MAX_RESOLUTION": "nodes.image", "common_ksampler": "nodes.sampling"}


def __getattr__(name: str) -> Any:
    if name in _LIVE:
        return _LIVE[name]()
    if name in _ELSEWHERE:
        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    if not name.startswith("_"):
        cls = builtin_classes().get(name)
        if cls is not None:
            return cls
    raise AttributeError(f"module 'nodes' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LIVE) | set(_ELSEWHERE) | set(builtin_classes()))
