"""The one holder of process-wide state: the runtime that ComfyUI's module-level plugin API answers for.

ComfyUI's plugin API is made of module-level functions and singletons (`folder_paths.get_full_path`,
`comfy.model_management.get_torch_device`, `server.PromptServer.instance`, ...), so a plugin can only
reach the engine through process-wide state. That state lives here and nowhere else: the modules in
compat/ (ComfyUI's import names) read it through `bound()`, and the engine binds its runtime once at
start (`bind`). Engine code never reads it; it passes its objects explicitly.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

COMPAT_DIR = Path(__file__).resolve().parent.parent / "compat"

_runtime: Any = None


def ensure_importable() -> None:
    """Put compat/ (ComfyUI's module names) on sys.path, ahead of any installed copy of it."""
    path = str(COMPAT_DIR)
    if path not in sys.path:
        sys.path.insert(1 if sys.path and sys.path[0] == "" else 0, path)


def bind(runtime: Any) -> None:
    """Make `runtime` the one that ComfyUI's module-level API answers for (the latest bind wins)."""
    global _runtime
    _runtime = runtime


def bound() -> Any:
    if _runtime is None:
        raise RuntimeError("ComfyUI's plugin API was used before LatentGraph's runtime started "
                           "(app.compat.bind was never called)")
    return _runtime


def is_bound() -> bool:
    return _runtime is not None
