"""Built-in nodes: each module of this package lists its node classes in a module-level NODES."""
from __future__ import annotations

import importlib
import pkgutil


def builtin_modules() -> list[str]:
    """Every module in nodes/, in name order (so registration is stable); only those with NODES register."""
    return sorted(f"{__name__}.{info.name}" for info in pkgutil.iter_modules(__path__) if not info.ispkg)


def register_builtin_nodes(registry) -> None:
    """Register every built-in node under the python_module ComfyUI reports for it: "nodes" for
    its core file, "comfy_extras.nodes_..." for the rest (a node class sets `comfy_module`)."""
    for module_name in builtin_modules():
        module = importlib.import_module(module_name)
        for cls in getattr(module, "NODES", None) or ():
            registry.register_nodes([cls], python_module=vars(cls).get("comfy_module", "nodes"))
