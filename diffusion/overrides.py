"""Where the engine looks up functions that ComfyUI plugins may replace.

Plugins written for ComfyUI monkeypatch module attributes (`comfy.samplers.sampling_function = f`,
`comfy.lora.calculate_weight = g`, `comfy.model_management.load_models_gpu = h`) and expect
every later call, including the built-in nodes', to go through the replacement. The compat
modules in compat/comfy/ expose our functions under those names; the engine calls such a
function through `comfy_function(module, name, ours)`, which returns the attribute as it is
now when that compat module has been imported (by a plugin or a node) and `ours` otherwise.
"""
from __future__ import annotations

import sys
from typing import Callable


def comfy_function(module: str, name: str, ours: Callable) -> Callable:
    mod = sys.modules.get(module)
    if mod is None:
        return ours
    found = getattr(mod, name, None)
    return ours if found is None else found
