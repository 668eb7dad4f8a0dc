"""ComfyUI's `comfy.controlnet`: the CONTROL_NET objects (ControlBase, ControlNet) and their loaders.
Loading goes through the runtime's model-lifetime service."""
from __future__ import annotations

from pathlib import Path

from diffusion.checkpoint import read_state_dict
from diffusion.controlnet import (ControlBase, ControlNet, StrengthType, broadcast_image_to, is_shuffle_file,
                                  load_controlnet_state_dict as _from_state_dict)
from diffusion.controlnet import load_controlnet as _load


def _service():
    from app import compat
    return compat.bound().env.models


def _options():
    service = _service()
    return dict(device=service.unet_offload_device(), dtype=service.unet_dtype(),
                load_device=service.get_torch_device(), manager=service)


def _unet_of(model):
    """The UNet weights a diff ControlNet adds to: the MODEL's as patched (loaded first)."""
    if model is None:
        return None
    from diffusion.model_management import load_models_gpu
    load_models_gpu([model])
    return model.model.diffusion_model


def load_controlnet(ckpt_path, model=None, model_options=None):
    return _load(Path(ckpt_path), _unet_of(model), **_options())


def load_controlnet_state_dict(state_dict, model=None, model_options=None):
    return _from_state_dict(dict(state_dict), _unet_of(model), **_options())


__all__ = ["ControlBase", "ControlNet", "StrengthType", "broadcast_image_to", "is_shuffle_file", "load_controlnet",
           "load_controlnet_state_dict", "read_state_dict"]
