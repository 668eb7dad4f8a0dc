"""ComfyUI's `comfy.clip_vision` import path. Packs (WAS Node Suite) import it at import time;
LatentGraph has no CLIP vision models yet (the CLIPVisionLoader node is not built), so loading
one raises a clear error instead of returning something that is not one."""
from __future__ import annotations

__all__ = ["load", "load_clipvision_from_sd"]


def _unsupported(*_args, **_kwargs):
    raise NotImplementedError("CLIP vision models (comfy.clip_vision) are not supported by LatentGraph yet")


load = load_clipvision_from_sd = _unsupported
