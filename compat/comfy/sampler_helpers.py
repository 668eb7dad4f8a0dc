"""ComfyUI's `comfy.sampler_helpers`: what CFGGuider uses to prepare a sampling run."""
from __future__ import annotations

from diffusion.ksampler import (
    cleanup_models,
    convert_cond,
    estimate_memory,
    get_additional_models,
    get_additional_models_from_model_options,
    get_hooks_from_cond,
    get_models_from_cond,
    prepare_mask,
    prepare_model_patcher,
    prepare_sampling,
)


def cleanup_additional_models(models) -> None:
    for m in models:
        if hasattr(m, "cleanup"):
            m.cleanup()


__all__ = ["cleanup_additional_models", "cleanup_models", "convert_cond", "estimate_memory",
           "get_additional_models", "get_additional_models_from_model_options", "get_hooks_from_cond",
           "get_models_from_cond",
           "prepare_mask", "prepare_model_patcher", "prepare_sampling"]
