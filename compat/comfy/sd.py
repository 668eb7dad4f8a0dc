"""ComfyUI's `comfy.sd`: loading checkpoints, diffusion models and LoRAs as MODEL / CLIP / VAE, and
those classes. Everything loads through the runtime's model-lifetime service, like our loader
nodes (the same MODEL, CLIP and VAE objects; see diffusion/handles.py)."""
from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path

import torch

from diffusion import handles as _handles
from diffusion.checkpoint import detect, load_unet, load_vae, read_state_dict
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
    """(MODEL, CLIP, VAE, CLIP_VISION) of a single-file checkpoint; parts not asked for are None.
    CLIP vision models inside checkpoints (unCLIP) are not supported: always None."""
    loaded = _handles.open_checkpoint(Path(ckpt_path), _service(), _embedding_dirs(embedding_directory))
    return (loaded.model if output_model else None, loaded.clip if output_clip else None,
            loaded.vae if output_vae else None, None)


def load_checkpoint(config_path=None, ckpt_path=None, output_vae=True, output_clip=True, embedding_directory=None,
                    state_dict=None, config=None):
    """The old loader with a YAML config: the config is not needed (the file's keys say everything)."""
    return load_checkpoint_guess_config(ckpt_path, output_vae, output_clip, False, embedding_directory)[:3]


def load_diffusion_model_state_dict(sd, model_options=None):
    """MODEL from bare UNet weights (an SD1.x, SD2.x or SDXL UNet, with or without the
    model.diffusion_model. prefix)."""
    service = _service()
    info = detect(sd)
    prefix = info.unet_prefix
    weights = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and k[len(prefix):] != "v_pred"}
    dtype = (model_options or {}).get("dtype") or service.unet_dtype()
    unet = load_unet(weights, info.unet_config, service.unet_inital_load_device(), dtype)
    return _handles.wrap_diffusion_model(unet, info, service)


def load_diffusion_model(unet_path, model_options=None):
    service = _service()
    info = detect(read_state_dict(unet_path), unet_path)
    prefix = info.unet_prefix
    dtype = (model_options or {}).get("dtype") or service.unet_dtype()
    weights = {k[len(prefix):]: v for k, v in read_state_dict(unet_path).items()
               if k.startswith(prefix) and k[len(prefix):] != "v_pred"}
    unet = load_unet(weights, info.unet_config, service.unet_inital_load_device(), dtype, unet_path)
    return _handles.wrap_diffusion_model(unet, info, service)


load_unet_state_dict = load_diffusion_model_state_dict


def load_unet_model(unet_path, dtype=None):
    return load_diffusion_model(unet_path, {"dtype": dtype})


# transformers-layout CLIP text model keys -> where a checkpoint keeps them, per tower name
_TEXT_PREFIX = {"l": "cond_stage_model.transformer.", "g": "conditioner.embedders.1.model."}


def load_clip(ckpt_paths, embedding_directory=None, clip_type=CLIPType.STABLE_DIFFUSION, model_options=None):
    """CLIP from text-encoder files: a CLIP-L file (SD1), or CLIP-L plus bigG (SDXL), in the
    original checkpoint layout or transformers' (text_model.*)."""
    from diffusion.text_encoders import TextEncoder, clip_l_to_inner, inner_to_open_clip

    if isinstance(ckpt_paths, (str, Path)):
        ckpt_paths = [ckpt_paths]
    combined: dict[str, torch.Tensor] = {}
    for path in ckpt_paths:
        sd = read_state_dict(path)
        if any(k.startswith(("cond_stage_model.", "conditioner.")) for k in sd):
            combined.update(sd)
            continue
        inner, _ = clip_l_to_inner(sd)
        layers = 1 + max((int(k.split(".")[2]) for k in inner if k.startswith("encoder.layers.")), default=-1)
        if layers >= 32:  # bigG: store it the way an SDXL checkpoint does (OpenCLIP layout)
            out = inner_to_open_clip(inner)
            if "text_projection.weight" in sd:
                out["text_projection"] = sd["text_projection.weight"].t().contiguous()
            combined.update({_TEXT_PREFIX["g"] + k: v for k, v in out.items()})
        else:
            combined.update({_TEXT_PREFIX["l"] + "text_model." + k: v for k, v in inner.items()})
    if any(k.startswith(_TEXT_PREFIX["g"]) for k in combined) and any(k.startswith(_TEXT_PREFIX["l"]) for k in combined):
        combined = {k.replace(_TEXT_PREFIX["l"], "conditioner.embedders.0.transformer."): v for k, v in combined.items()}
    service = _service()
    try:
        text = TextEncoder.from_state_dict(combined, dtype=service.text_encoder_dtype(),
                                           device=service.text_encoder_offload_device())
    except ValueError as exc:
        raise ValueError(f"load_clip: {exc} (LatentGraph reads SD1 CLIP-L and SDXL CLIP-L + bigG text encoders)") \
            from None
    return _handles.wrap_clip(text, service, _embedding_dirs(embedding_directory))


def load_lora_for_models(model, clip, lora, strength_model, strength_clip):
    """(MODEL, CLIP) clones carrying the LoRA's patches (ComfyUI's signature and result)."""
    new_model, new_clip, _report = _load_lora_for_models(model, clip, lora, strength_model, strength_clip)
    return new_model, new_clip


def load_controlnet(ckpt_path, model=None):
    from comfy.controlnet import load_controlnet as _load
    return _load(ckpt_path, model)


def save_checkpoint(output_path, model, clip=None, vae=None, clip_vision=None, metadata=None, extra_keys=None):
    """One safetensors file holding the MODEL's weights as patched, the CLIP's and the VAE's."""
    from safetensors.torch import save_file

    from diffusion.model_management import load_models_gpu

    load_models_gpu([m for m in (model, getattr(clip, "patcher", None), getattr(vae, "patcher", None)) if m])
    clip_sd = clip.cond_stage_model.state_dict_original() if clip is not None else None
    vae_sd = {"first_stage_model." + k: v for k, v in vae.get_sd().items()} if vae is not None else None
    sd = model.model.state_dict_for_saving(clip_sd, vae_sd)
    sd.update(extra_keys or {})
    save_file({k: v.contiguous() for k, v in sd.items()}, str(output_path), metadata=metadata)


__all__ = ["CLIP", "CLIPType", "VAE", "load_checkpoint", "load_checkpoint_guess_config", "load_clip",
           "load_controlnet", "load_diffusion_model", "load_diffusion_model_state_dict", "load_lora_for_models",
           "load_unet_model", "load_unet_state_dict", "save_checkpoint"]
