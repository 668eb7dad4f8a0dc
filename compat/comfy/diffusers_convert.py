"""ComfyUI's `comfy.diffusers_convert` for plugins: diffusers-layout weights renamed to the
original (LDM) layout our loaders read (the conversion itself is diffusion.diffusers_layout's)."""
from __future__ import annotations

from diffusion.diffusers_layout import convert_vae_state_dict, reshape_weight_for_sd

__all__ = ["convert_text_enc_state_dict", "convert_vae_state_dict", "reshape_weight_for_sd"]


def convert_text_enc_state_dict(text_enc_dict: dict) -> dict:
    """SD1's CLIP text encoder: diffusers and the original share transformers' layout."""
    return text_enc_dict
