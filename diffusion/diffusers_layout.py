"""diffusers-layout weights in the original (LDM) layout, and diffusers model folders.

* UNet2DConditionModel weights (``down_blocks.N.resnets.M.conv1.weight``, ...) are renamed to
  the original keys (``input_blocks.K.0.in_layers.2.weight``, ...) from the block structure the
  keys show, so any SD1.x/SD2.x/SDXL-shaped UNet converts without a table of known models.
* AutoencoderKL weights: the encoder/decoder block names, the decoder's reversed level order, and
  the attention projections (Linear in diffusers) as 1x1 convolutions.
* A diffusers folder (``model_index.json`` beside ``unet/``, ``vae/``, ``text_encoder/`` and, for
  SDXL, ``text_encoder_2/``) is read the way ComfyUI's DiffusersLoader reads it: the first of
  ``diffusion_pytorch_model(.fp16).safetensors|.bin`` and ``model(.fp16).safetensors`` /
  ``pytorch_model(.fp16).bin``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from .controlnet import _diffusers_block_index, _resnet

UNET_FILES = ("diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors",
              "diffusion_pytorch_model.fp16.bin", "diffusion_pytorch_model.bin")
TEXT_ENCODER_FILES = ("model.fp16.safetensors", "model.safetensors", "pytorch_model.fp16.bin", "pytorch_model.bin")

_BASIC = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
          "time_embedding.linear_2.": "time_embed.2.", "add_embedding.linear_1.": "label_emb.0.0.",
          "add_embedding.linear_2.": "label_emb.0.2.", "class_embedding.linear_1.": "label_emb.0.0.",
          "class_embedding.linear_2.": "label_emb.0.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}


def is_diffusers_unet(sd: Mapping[str, object]) -> bool:
    return "conv_in.weight" in sd and any(k.startswith("down_blocks.") for k in sd) \
        and any(k.startswith("up_blocks.") for k in sd)


def _up_block_index(sd: Mapping[str, object]) -> tuple[dict[tuple[int, int], int], set[int]]:
    """(up block, resnet) -> output_blocks index, and the up blocks that have attentions."""
    resnets: dict[int, set[int]] = {}
    attended: set[int] = set()
    for key in sd:
        m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.", key)
        if m:
            level = int(m.group(1))
            resnets.setdefault(level, set())
            if m.group(2) == "resnets":
                resnets[level].add(int(m.group(3)))
            else:
                attended.add(level)
    index, out = 0, {}
    for level in sorted(resnets):
        for j in sorted(resnets[level]):
            out[(level, j)] = index
            index += 1
    return out, attended


def diffusers_unet_to_original(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original-layout keys (no prefix) for a diffusers UNet2DConditionModel state dict.

    Raises ValueError naming the first key with no place in an SD UNet."""
    down = _diffusers_block_index(sd)
    up, attended = _up_block_index(sd)
    last_resnet = {level: max(j for (lv, j) in up if lv == level) for level, _ in up}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        new = _rename(key, down, up, attended, last_resnet)
        if new is None:
            raise ValueError(f"diffusers UNet key {key!r} has no place in an SD UNet")
        out[new] = value
    return out


def _rename(key, down, up, attended, last_resnet) -> str | None:
    for old, new in _BASIC.items():
        if key.startswith(old):
            return new + key[len(old):]
    try:
        if m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            return f"input_blocks.{down[(int(m[1]), int(m[2]))]}.0.{_resnet(m[3])}"
        if m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
            return f"input_blocks.{down[(int(m[1]), int(m[2]))]}.1.{m[3]}"
        if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
            return f"input_blocks.{down[(int(m[1]), -1)]}.0.op.{m[2]}"
        if m := re.match(r"mid_block\.resnets\.([01])\.(.*)", key):
            return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
        if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
            return f"middle_block.1.{m[1]}"
        if m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
            return f"output_blocks.{up[(int(m[1]), int(m[2]))]}.0.{_resnet(m[3])}"
        if m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
            return f"output_blocks.{up[(int(m[1]), int(m[2]))]}.1.{m[3]}"
        if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
            level = int(m[1])
            slot = 2 if level in attended else 1
            return f"output_blocks.{up[(level, last_resnet[level])]}.{slot}.conv.{m[2]}"
    except KeyError:
        return None
    return None


# ---------------------------------------------------------------------------------------------
# VAE

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


def is_diffusers_vae(sd: Mapping[str, object]) -> bool:
    return "decoder.up_blocks.0.resnets.0.norm1.weight" in sd


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


def convert_vae_state_dict(vae_state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


# ---------------------------------------------------------------------------------------------
# folders


def first_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def diffusers_files(folder: Path) -> dict[str, Path | list[Path]]:
    """{"unet": path, "vae": path, "text": [paths]} of a diffusers folder; raises naming what is missing."""
    from .checkpoint import CheckpointError

    unet = first_file(folder / "unet", UNET_FILES)
    vae = first_file(folder / "vae", UNET_FILES)
    text = [p for p in (first_file(folder / "text_encoder", TEXT_ENCODER_FILES),
                        first_file(folder / "text_encoder_2", TEXT_ENCODER_FILES)) if p is not None]
    missing = [name for name, found in (("unet/", unet), ("vae/", vae), ("text_encoder/", text)) if not found]
    if missing:
        raise CheckpointError(folder, f"not a complete diffusers model: no weights in {', '.join(missing)} "
                                      f"(looked for {', '.join(UNET_FILES[:2])}, {', '.join(TEXT_ENCODER_FILES[:2])})")
    return {"unet": unet, "vae": vae, "text": text}


__all__ = ["convert_vae_state_dict", "diffusers_files", "diffusers_unet_to_original", "is_diffusers_unet",
           "is_diffusers_vae", "reshape_weight_for_sd"]
