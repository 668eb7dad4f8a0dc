"""ComfyUI's `comfy.hooks`: hook groups, weight hooks and keyframe schedules, and the
conditioning helpers of the hooks nodes. They are the engine's own (diffusion/hooks.py); the
MODEL / CLIP patchers and the sampler apply them (see docs/hooks.md)."""
from diffusion.hooks import *
from diffusion.hooks import __all__ as _engine_all
from diffusion.hooks import _combine_hooks_from_values, _HookRef  # noqa: F401

__all__ = list(_engine_all) + ["_HookRef"]
