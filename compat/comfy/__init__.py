"""ComfyUI's `comfy` package, for plugins: the parts of its Python API that LatentGraph provides,
each a real implementation over the running engine (see docs/plugins.md).

`import comfy` then `comfy.samplers` works as in ComfyUI (where nodes.py has imported the
submodules already): a submodule is imported on first attribute access.
"""
from __future__ import annotations

import importlib


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module 'comfy' has no attribute {name!r}") from None
