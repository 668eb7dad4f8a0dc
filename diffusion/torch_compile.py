"""torch.compile for a MODEL (ComfyUI's comfy_api.torch_helpers.set_torch_compile_wrapper).

The chosen submodules of the diffusion model (the UNet, "diffusion_model", by default) are
compiled once, lazily: torch.compile returns at once and traces on the first call. An
apply_model wrapper swaps the compiled modules in for the duration of each call and back
afterwards, so the shared network and its state dict keys stay as they were for every other
user of the checkpoint, and weight patches applied to the originals are what the compiled module
runs with (it holds the same parameters).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .model_patcher import get_attr, set_attr
from .patcher_extension import WrappersMP

COMPILE_KEY = "torch.compile"
TORCH_COMPILE_KWARGS = "torch_compile_kwargs"


def apply_torch_compile_factory(compiled_module_dict: dict[str, Callable]) -> Callable:
    """An apply_model wrapper running the call with `compiled_module_dict`'s modules swapped in."""

    def apply_torch_compile_wrapper(executor, *args, **kwargs):
        originals = {}
        try:
            for key, module in compiled_module_dict.items():
                originals[key] = get_attr(executor.class_obj, key)
                set_attr(executor.class_obj, key, module)
            return executor(*args, **kwargs)
        finally:
            for key, module in originals.items():
                set_attr(executor.class_obj, key, module)

    return apply_torch_compile_wrapper


def set_torch_compile_wrapper(model, backend: str, options: dict | None = None, mode: str | None = None,
                              fullgraph: bool = False, dynamic: bool | None = None, keys=("diffusion_model",),
                              *args, **kwargs) -> None:
    """Compile `keys` of `model` (a ModelPatcher) with `backend` and run them at sampling time,
    replacing any earlier torch.compile wrapper of this MODEL."""
    model.remove_wrappers_with_key(WrappersMP.APPLY_MODEL, COMPILE_KEY)
    keys = list(keys) or ["diffusion_model"]
    compile_kwargs = {"backend": backend, "options": options, "mode": mode, "fullgraph": fullgraph,
                      "dynamic": dynamic}
    compiled = {key: torch.compile(model=model.get_model_object(key), **compile_kwargs) for key in keys}
    model.add_wrapper_with_key(WrappersMP.APPLY_MODEL, COMPILE_KEY, apply_torch_compile_factory(compiled))
    model.model_options[TORCH_COMPILE_KWARGS] = compile_kwargs


__all__ = ["COMPILE_KEY", "TORCH_COMPILE_KWARGS", "apply_torch_compile_factory", "set_torch_compile_wrapper"]
