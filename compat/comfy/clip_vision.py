"""ComfyUI's `comfy.clip_vision`: CLIP vision towers (ViT-L/14, ViT-H/14, ViT-bigG/14) as
diffusion.clip_vision holds them (ClipVisionModel, the encode output, ComfyUI's preprocessing and
key conversion); loading goes through the runtime's model-lifetime service."""
from __future__ import annotations

from diffusion.checkpoint import read_state_dict
from diffusion.clip_vision import ClipVisionModel, clip_preprocess, to_transformers_layout
from diffusion.clip_vision import ClipVisionOutput as Output
from diffusion.clip_vision import load_clip_vision_state_dict as _load_state_dict

__all__ = ["ClipVisionModel", "Output", "clip_preprocess", "convert_to_transformers", "load", "load_clipvision_from_sd"]


def _service():
    from app import compat
    return compat.bound().env.models


def convert_to_transformers(sd, prefix):
    """The tower under `prefix` in transformers' layout (OpenCLIP keys converted)."""
    return to_transformers_layout(sd, prefix)


def load_clipvision_from_sd(sd, prefix="", convert_keys=False):
    return _load_state_dict(sd, _service(), prefix=prefix)


def load(ckpt_path):
    """CLIP_VISION of a file (CLIPVisionLoader's); the file is read before the runtime is asked for."""
    sd = read_state_dict(ckpt_path)
    return _load_state_dict(sd, _service(), ckpt_path)
