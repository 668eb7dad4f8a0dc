"""ComfyUI's `comfy.model_detection`: what a state dict's keys and shapes say about the UNet, in
ComfyUI's unet_config form, from our detection (diffusion/checkpoint.py, diffusion/unet.py)."""
from __future__ import annotations

from diffusion.checkpoint import detect, find_unet_prefix
from diffusion.diffusers_layout import diffusers_unet_to_original
from diffusion.latent_formats import latent_format_for
from diffusion.model import ModelConfig


def count_blocks(state_dict_keys, prefix_string: str) -> int:
    count = 0
    while any(k.startswith(prefix_string.format(count)) for k in state_dict_keys):
        count += 1
    return count


def unet_prefix_from_state_dict(state_dict) -> str:
    prefix = find_unet_prefix(state_dict)
    return "model.diffusion_model." if prefix is None else prefix


def _unet_config(config) -> dict:
    """Our UNetConfig in ComfyUI's unet_config keys."""
    levels = len(config.channel_mult)
    return {
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "in_channels": config.in_channels, "out_channels": config.out_channels,
        "model_channels": config.model_channels, "num_res_blocks": list(config.num_res_blocks),
        "channel_mult": list(config.channel_mult), "transformer_depth": list(config.transformer_depth),
        "transformer_depth_output": list(config.transformer_depth_output),
        "transformer_depth_middle": config.transformer_depth_middle, "context_dim": config.context_dim,
        "num_heads": config.num_heads, "num_head_channels": config.num_head_channels,
        "use_linear_in_transformer": config.use_linear_in_transformer,
        "adm_in_channels": config.adm_in_channels, "num_classes": "sequential" if config.adm_in_channels else None,
        "attention_resolutions": [2 ** i for i in range(levels)],
    }


def detect_unet_config(state_dict, key_prefix: str, metadata=None) -> dict | None:
    try:
        info = detect({k: v for k, v in state_dict.items() if k.startswith(key_prefix)} if key_prefix else state_dict)
    except ValueError:
        return None
    return _unet_config(info.unet_config)


def model_config_from_unet(state_dict, unet_key_prefix: str, use_base_if_no_match=False, metadata=None):
    """The model config (unet_config, latent_format, sampling_settings) of a UNet, or None."""
    try:
        info = detect(state_dict)
    except ValueError:
        return None
    family = {"sd1_inpaint": "sd1", "sd2_v": "sd2"}.get(info.family, info.family)
    settings = {"prediction": info.prediction}
    return ModelConfig(_unet_config(info.unet_config), latent_format_for(family), settings)


def unet_config_from_diffusers_unet(state_dict, dtype=None):
    """The unet_config of a diffusers-layout UNet (read through the loader's own key conversion)."""
    return detect_unet_config(diffusers_unet_to_original(state_dict), "")


def model_config_from_diffusers_unet(state_dict):
    return model_config_from_unet(diffusers_unet_to_original(state_dict), "")


__all__ = ["count_blocks", "detect_unet_config", "model_config_from_diffusers_unet", "model_config_from_unet",
           "unet_config_from_diffusers_unet", "unet_prefix_from_state_dict"]
