"""ComfyUI's `comfy_extras` package for plugins: each `comfy_extras.nodes_*` module holds our node
classes that ComfyUI keeps in that module (a built-in node names it in `comfy_module`), under
ComfyUI's names, plus its NODE_CLASS_MAPPINGS. A module of that name written out here (for
names that are not nodes) is imported as usual and gets its node classes the same way.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType


def node_classes(module_name: str) -> dict[str, type]:
    """Our built-in node classes that ComfyUI keeps in `module_name`, by name."""
    from nodes import builtin_classes
    return {name: cls for name, cls in builtin_classes().items() if vars(cls).get("comfy_module") == module_name}


def fill(module: ModuleType) -> None:
    """Give a comfy_extras module its node classes and NODE_CLASS_MAPPINGS."""
    classes = node_classes(module.__name__)
    for name, cls in classes.items():
        setattr(module, name, cls)
    module.NODE_CLASS_MAPPINGS = {**classes, **getattr(module, "NODE_CLASS_MAPPINGS", {})}


class _NodeModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes `comfy_extras.<name>` for every module our built-in nodes name in comfy_module."""

    def find_spec(self, fullname, path, target=None):
        if fullname.startswith(__name__ + ".") and fullname.count(".") == 1 and node_classes(fullname):
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module: ModuleType) -> None:
        module.__doc__ = f"ComfyUI's {module.__name__}: LatentGraph's node classes under ComfyUI's names."
        fill(module)


# After the path finder, so written-out modules win.
if not any(isinstance(f, _NodeModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_NodeModuleFinder())
