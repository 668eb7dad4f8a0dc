"""ComfyUI's `comfy.diffusers_convert` for plugins: diffusers-layout weights renamed to the
original (LDM) layout our loaders read."""
from __future__ import annotations

import re

import torch

__all__ = ["convert_text_enc_state_dict", "convert_vae_state_dict", "reshape_weight_for_sd"]

_VAE_RENAMES = [
    # (diffusers pattern, original) applied in order to every key
    (r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2."),
    (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.mid.attn_1."),
    (r"\.conv_shortcut\.", r".nin_shortcut."),
    (r"\.attn_1\.group_norm\.", r".attn_1.norm."),
    (r"\.attn_1\.(?:to_q|query)\.", r".attn_1.q."),
    (r"\.attn_1\.(?:to_k|key)\.", r".attn_1.k."),
    (r"\.attn_1\.(?:to_v|value)\.", r".attn_1.v."),
    (r"\.attn_1\.(?:to_out\.0|proj_attn)\.", r".attn_1.proj_out."),
]


def reshape_weight_for_sd(w: torch.Tensor, conv3d: bool = False) -> torch.Tensor:
    """A linear attention weight [out, in] as the original 1x1 convolution [out, in, 1, 1]."""
    return w.reshape(*w.shape, 1, 1, 1) if conv3d else w.reshape(*w.shape, 1, 1)


def _vae_key(key: str, up_blocks: int) -> str:
    key = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.",
                 lambda m: f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.", key)
    # diffusers numbers the decoder's up blocks from the lowest resolution; the original from the highest
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                 lambda m: f"decoder.up.{up_blocks - 1 - int(m.group(1))}.block.{m.group(2)}.", key)
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                 lambda m: f"decoder.up.{up_blocks - 1 - int(m.group(1))}.upsample.", key)
    for pattern, replacement in _VAE_RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


def convert_vae_state_dict(vae_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in the original layout (attention projections become
    1x1 convolutions)."""
    up_blocks = 1 + max((int(m.group(1)) for k in vae_state_dict
                         if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))), default=-1)
    out = {}
    for key, value in vae_state_dict.items():
        new = _vae_key(key, up_blocks)
        if re.search(r"\.attn_1\.(q|k|v|proj_out)\.weight$", new) and value.dim() == 2:
            value = reshape_weight_for_sd(value)
        out[new] = value
    return out


def convert_text_enc_state_dict(text_enc_dict: dict) -> dict:
    """SD1's CLIP text encoder: diffusers and the original share transformers' layout."""
    return text_enc_dict
