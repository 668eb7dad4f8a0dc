"""ComfyUI's `comfy.sd`: loading checkpoints, diffusion models and LoRAs as MODEL / CLIP / VAE, and
those classes. Everything loads through the runtime's model-lifetime service, like our loader
nodes (the same MODEL, CLIP and VAE objects; see diffusion/handles.py)."""
from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path

import torch

from diffusion import handles as _handles
from diffusion.checkpoint import load_vae, read_state_dict
from diffusion.lora import load_lora_for_models as _load_lora_for_models

log = logging.getLogger(__name__)

CLIP = _handles.CLIP


class CLIPType(Enum):
    STABLE_DIFFUSION = 1
    STABLE_CASCADE = 2
    SD3 = 3
    STABLE_AUDIO = 4
    HUNYUAN_DIT = 5
    FLUX = 6
    MOCHI = 7
    LTXV = 8
    HUNYUAN_VIDEO = 9
    PIXART = 10
    COSMOS = 11
    LUMINA2 = 12
    WAN = 13
    HIDREAM = 14
    CHROMA = 15
    ACE = 16
    OMNIGEN2 = 17
    QWEN_IMAGE = 18
    HUNYUAN_IMAGE = 19


def _service():
    from app import compat
    return compat.bound().env.models


def _embedding_dirs(embedding_directory) -> list[Path]:
    if embedding_directory is None:
        return []
    if isinstance(embedding_directory, (str, Path)):
        return [Path(embedding_directory)]
    return [Path(d) for d in embedding_directory]


class _ComfyConstructed(type):
    """isinstance(x, comfy.sd.VAE) holds for every VAE the engine made, not only this subclass's."""

    def __instancecheck__(cls, obj) -> bool:
        if cls.__name__ == "VAE" and cls.__module__ == __name__:
            return isinstance(obj, _handles.VAE)
        return type.__instancecheck__(cls, obj)


class VAE(_handles.VAE, metaclass=_ComfyConstructed):
    """ComfyUI's constructor: VAE(sd=state_dict) (original-layout KL autoencoder weights, with or
    without the first_stage_model. prefix), on the runtime's VAE device and dtype."""

    def __init__(self, sd=None, device=None, config=None, dtype=None, metadata=None):
        if sd is None:
            raise ValueError("comfy.sd.VAE needs the VAE's state dict (sd=...)")
        service = _service()
        dtype = dtype or service.vae_dtype()
        model = load_vae(dict(sd), service.vae_offload_device(), dtype)
        service.register(model, name="VAE")
        super().__init__(model, device or service.vae_device(), dtype, service.vae_offload_device(), service)


def load_checkpoint_guess_config(ckpt_path, output_vae=True, output_clip=True, output_clipvision=False,
                                 embedding_directory=None, output_model=True, model_options=None,
                                 te_model_options=None):
    """(MODEL, CLIP, VAE, CLIP_VISION) of a single-file checkpoint; parts not asked for are None,
    and CLIP_VISION is None for families whose files carry no vision tower (all but unCLIP)."""
    from diffusion.model_loading import open_clip_vision_of_checkpoint

    service = _service()
    loaded = _handles.open_checkpoint(Path(ckpt_path), service, _embedding_dirs(embedding_directory))
    vision = None
    if output_clipvision:
        family = getattr(loaded.model.model, "checkpoint_family", "")
        vision = open_clip_vision_of_checkpoint(Path(ckpt_path), family, service)
    return (loaded.model if output_model else None, loaded.clip if output_clip else None,
            loaded.vae if output_vae else None, vision)


def load_checkpoint(config_path=None, ckpt_path=None, output_vae=True, output_clip=True, embedding_directory=None,
                    state_dict=None, config=None):
    """The old loader with an LDM YAML config (parameterization "v", the text encoder's layer_idx)."""
    from diffusion.model_loading import apply_config

    model, clip, vae, _ = load_checkpoint_guess_config(ckpt_path, output_vae, output_clip, False, embedding_directory)
    model, clip = apply_config(config_path, model, clip, config)
    return model, clip, vae


def _storage(model_options) -> torch.dtype | None:
    return (model_options or {}).get("dtype", (model_options or {}).get("weight_dtype"))


def load_diffusion_model_state_dict(sd, model_options=None):
    """MODEL from UNet weights (an SD1.x, SD2.x or SDXL UNet: bare, under model.diffusion_model., or
    in diffusers' layout); model_options["dtype"] stores them narrower (fp8)."""
    from diffusion.model_loading import diffusion_model_from_state_dict

    return diffusion_model_from_state_dict(dict(sd), _service(), _storage(model_options))


def load_diffusion_model(unet_path, model_options=None):
    from diffusion.model_loading import diffusion_model_from_state_dict

    return diffusion_model_from_state_dict(read_state_dict(unet_path), _service(), _storage(model_options),
                                           Path(unet_path))


load_unet_state_dict = load_diffusion_model_state_dict


def load_unet(unet_path, dtype=None):
    return load_diffusion_model(unet_path, {"dtype": dtype})


load_unet_model = load_unet


def _clip_type_name(clip_type) -> str:
    return clip_type.name.lower() if isinstance(clip_type, Enum) else str(clip_type or "stable_diffusion")


def load_text_encoder_state_dicts(state_dicts=(), embedding_directory=None, clip_type=CLIPType.STABLE_DIFFUSION,
                                  model_options=None):
    """CLIP from text-encoder weights: one CLIP-L (SD1), ViT-H (SD2) or bigG (SDXL refiner), or
    CLIP-L + bigG (SDXL), in transformers' or OpenCLIP's layout (see diffusion.text_encoder_files)."""
    from diffusion.model_loading import text_encoders_from_state_dicts

    device = "cpu" if (model_options or {}).get("load_device") == torch.device("cpu") else "default"
    name = _clip_type_name(clip_type)
    if len(state_dicts) == 2 and name == "stable_diffusion":
        name = "sdxl"  # ComfyUI builds SDXL's pair for two CLIP files of any non-specific type
    return text_encoders_from_state_dicts(list(state_dicts), _service(), _embedding_dirs(embedding_directory),
                                          name, device)


def load_clip(ckpt_paths, embedding_directory=None, clip_type=CLIPType.STABLE_DIFFUSION, model_options=None):
    """CLIP from text-encoder files (CLIPLoader / DualCLIPLoader)."""
    from diffusion.model_loading import open_text_encoders

    if isinstance(ckpt_paths, (str, Path)):
        ckpt_paths = [ckpt_paths]
    name = _clip_type_name(clip_type)
    if len(ckpt_paths) == 2 and name == "stable_diffusion":
        name = "sdxl"
    device = "cpu" if (model_options or {}).get("load_device") == torch.device("cpu") else "default"
    return open_text_encoders([Path(p) for p in ckpt_paths], _service(), _embedding_dirs(embedding_directory), name,
                              device)


def load_style_model(ckpt_path):
    from diffusion.style_model import load_style_model as _load
    return _load(ckpt_path)


def load_gligen(ckpt_path):
    from diffusion.gligen import load_gligen as _load
    return _load(ckpt_path, _service())


def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
    """(MODEL, CLIP) clones carrying the LoRA's patches (ComfyUI's signature and result)."""
    new_model, new_clip, _report = _load_lora_for_models(model, clip, lora, strength_model, strength_clip)
    return new_model, new_clip


def load_controlnet(ckpt_path, model=None):
    from comfy.controlnet import load_controlnet as _load
    return _load(ckpt_path, model)


def save_checkpoint(output_path, model, clip=None, vae=None, clip_vision=None, metadata=None, extra_keys=None):
    """One safetensors file in the family's original layout (CheckpointSave's): the MODEL's weights as
    patched, the CLIP's, the VAE's and a CLIP vision tower's, plus `extra_keys`."""
    from diffusion.checkpoint_save import checkpoint_state_dict, save_file

    sd = checkpoint_state_dict(model, clip, vae, clip_vision)
    sd.update(extra_keys or {})
    save_file(sd, Path(output_path), metadata)


from diffusion.style_model import StyleModel

__all__ = [
    "CLIP",
    "VAE",
    "CLIPType",
    "StyleModel",
    "load_checkpoint",
    "load_checkpoint_guess_config",
    "load_clip",
    "load_controlnet",
    "load_diffusion_model",
    "load_diffusion_model_state_dict",
    "load_gligen",
    "load_lora_for_models",
    "load_style_model",
    "load_text_encoder_state_dicts",
    "load_unet",
    "load_unet_model",
    "load_unet_state_dict",
    "save_checkpoint",
]
