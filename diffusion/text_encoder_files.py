"""Stand-alone text encoder files (CLIPLoader, DualCLIPLoader, diffusers folders) as a TextEncoder.

A file holds one CLIP text transformer, in transformers' layout (``text_model.*``, and for
projected towers ``text_projection.weight``; what CLIPSave and diffusers write) or OpenCLIP's
(``transformer.resblocks.*``, ``text_projection`` used as ``x @ P``). Which tower it is follows
ComfyUI's rule (a 31st layer: OpenCLIP bigG; a 23rd: OpenCLIP ViT-H; else CLIP-L); towers with
fewer layers than the released ones (test models) are told apart by width (1280 bigG, 1024
ViT-H). The tower(s) then make the encoder ComfyUI would build:

* one CLIP-L: SD1.x's; one ViT-H: SD2.x's; one bigG: the SDXL refiner's;
* two files (DualCLIPLoader "sdxl", a diffusers SDXL folder): CLIP-L + bigG, SDXL base's.

CLIPLoader types and DualCLIPLoader types other than these build other families' encoders in
ComfyUI (SD3, Flux, Stable Cascade, ...); those are refused with the reason. So are T5, Llama,
Gemma, Qwen and other language-model encoders, named.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import torch

from .checkpoint import CheckpointError, read_state_dict
from .text_encoders import TextEncoder, clip_l_to_inner, inner_to_open_clip

# CLIPLoader types whose ComfyUI encoder for a CLIP-L / ViT-H / bigG file is the SD one
_SD_TYPES_L = frozenset({"stable_diffusion", "stable_cascade", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
                         "lumina2", "wan", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image"})
_SD_TYPES_G = _SD_TYPES_L - {"stable_cascade"}
# keys (in transformers' or the original layout) by which other encoders are recognised
_LANGUAGE_MODELS = (
    ("encoder.block.0.layer.0.SelfAttention.k.weight", "a T5 text encoder"),
    ("shared.weight", "a T5 text encoder"),
    ("model.layers.0.post_feedforward_layernorm.weight", "a Gemma language model"),
    ("model.layers.0.self_attn.k_proj.bias", "a Qwen language model"),
    ("model.layers.0.post_attention_layernorm.weight", "a Llama-family language model"),
)


def _layers(sd: Mapping[str, object], pattern: str) -> int:
    return len({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})


def tower_kind(sd: Mapping[str, torch.Tensor], source=None) -> str:
    """"l", "h" or "g" for a text transformer in either layout (prefix removed)."""
    for key, what in _LANGUAGE_MODELS:
        if key in sd:
            raise CheckpointError(source, f"this is {what}, which LatentGraph does not run; it reads CLIP-L, "
                                          "OpenCLIP ViT-H and OpenCLIP bigG text encoders (SD1.x, SD2.x, SDXL)")
    if "transformer.resblocks.0.attn.in_proj_weight" in sd:
        layers = _layers(sd, r"transformer\.resblocks\.(\d+)\.")
        width = sd["token_embedding.weight"].shape[1]
    else:
        inner, _ = clip_l_to_inner(sd)
        if "embeddings.token_embedding.weight" not in inner:
            sample = ", ".join(sorted(sd)[:3])
            raise CheckpointError(source, "not a CLIP text encoder: expected text_model.embeddings.token_embedding."
                                          f"weight or OpenCLIP's transformer.resblocks.*; first keys: {sample}")
        layers = _layers(inner, r"encoder\.layers\.(\d+)\.")
        width = inner["embeddings.token_embedding.weight"].shape[1]
    if layers >= 31:
        return "g"
    if layers >= 23:
        return "h"
    return {1280: "g", 1024: "h"}.get(width, "l")


def openclip_layout(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenCLIP-family tower in OpenCLIP's layout (how SD2/SDXL checkpoints store it)."""
    if "transformer.resblocks.0.attn.in_proj_weight" in sd:
        return dict(sd)
    inner, _ = clip_l_to_inner(sd)
    out = inner_to_open_clip(inner)
    if "text_projection.weight" in sd:
        out["text_projection"] = sd["text_projection.weight"].t().contiguous()
    elif "text_projection" in sd:
        out["text_projection"] = sd["text_projection"]
    if "logit_scale" in sd:
        out["logit_scale"] = sd["logit_scale"]
    return out


def clip_l_layout(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if "transformer.resblocks.0.attn.in_proj_weight" in sd:
        raise ValueError("a CLIP-L text encoder in OpenCLIP's layout is not a released format")
    inner, _ = clip_l_to_inner(sd)
    return {"text_model." + k: v for k, v in inner.items()}


def checkpoint_layout(towers: Sequence[tuple[str, Mapping[str, torch.Tensor]]], source=None) -> dict:
    """The towers' weights as the matching family's checkpoint holds them."""
    kinds = sorted(kind for kind, _ in towers)
    by_kind = dict(towers)
    if kinds == ["l"]:
        return {"cond_stage_model.transformer." + k: v for k, v in clip_l_layout(by_kind["l"]).items()}
    if kinds == ["h"]:
        return {"cond_stage_model.model." + k: v for k, v in openclip_layout(by_kind["h"]).items()}
    if kinds == ["g"]:
        return {"conditioner.embedders.0.model." + k: v for k, v in openclip_layout(by_kind["g"]).items()}
    if kinds == ["g", "l"]:
        out = {"conditioner.embedders.0.transformer." + k: v for k, v in clip_l_layout(by_kind["l"]).items()}
        out.update({"conditioner.embedders.1.model." + k: v for k, v in openclip_layout(by_kind["g"]).items()})
        return out
    names = {"l": "CLIP-L", "h": "OpenCLIP ViT-H", "g": "OpenCLIP bigG"}
    raise CheckpointError(source, "text encoders " + " + ".join(names[k] for k in kinds) + " make no SD1.x/SD2.x/"
                                  "SDXL encoder (SDXL: one CLIP-L and one bigG file)")


def check_type(kinds: list[str], clip_type: str, source=None) -> None:
    """Refuse types for which ComfyUI would build another family's encoder from these files."""
    if len(kinds) == 1:
        allowed = _SD_TYPES_G if kinds[0] == "g" else _SD_TYPES_L
        if clip_type not in allowed:
            raise CheckpointError(source, f"type {clip_type!r} makes ComfyUI build the {clip_type} text encoder, "
                                          "which LatentGraph does not run; use type stable_diffusion")
    elif clip_type != "sdxl":
        raise CheckpointError(source, f"type {clip_type!r} is a text encoder pair LatentGraph does not run; "
                                      "DualCLIPLoader supports sdxl (CLIP-L + bigG)")


def text_encoder_from_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]], clip_type: str | None = None,
                                  dtype: torch.dtype | None = torch.float32, device=None,
                                  sources: Sequence | None = None) -> TextEncoder:
    sources = list(sources or [None] * len(state_dicts))
    towers = [(tower_kind(sd, src), sd) for sd, src in zip(state_dicts, sources)]
    label = ", ".join(os.path.basename(str(s)) for s in sources if s is not None) or None
    if clip_type is not None:
        check_type([k for k, _ in towers], clip_type, label)
    combined = checkpoint_layout(towers, label)
    try:
        return TextEncoder.from_state_dict(combined, dtype=dtype, device=device)
    except ValueError as exc:
        raise CheckpointError(label, f"text encoder: {exc}") from None


def load_text_encoder_files(paths: Sequence[str | os.PathLike], clip_type: str | None = None,
                            dtype: torch.dtype | None = torch.float32, device=None) -> TextEncoder:
    return text_encoder_from_state_dicts([read_state_dict(p) for p in paths], clip_type, dtype, device, paths)


__all__ = ["check_type", "checkpoint_layout", "load_text_encoder_files", "text_encoder_from_state_dicts",
           "tower_kind"]
