"""Writing models back to single files, in the layouts and with the metadata ComfyUI writes.

* Checkpoints (CheckpointSave, ModelSave, ImageOnlyCheckpointSave): the UNet under
  ``model.diffusion_model.`` with its weight patches (LoRA, merges) applied; the text encoders
  in the family's original layout (SD1 ``cond_stage_model.transformer.text_model.*``; SD2
  ``cond_stage_model.model.*`` OpenCLIP; SDXL ``conditioner.embedders.0.transformer.*`` plus
  ``conditioner.embedders.1.model.*``; refiner ``conditioner.embedders.0.model.*``); the VAE
  under ``first_stage_model.``; a CLIP vision tower in transformers' layout under the model's
  vision prefix (unCLIP: ``embedder.model.visual.``; none for other families); a top-level empty
  ``v_pred`` (and ``ztsnr``) for v-prediction models. Metadata: ``modelspec.*`` for SDXL
  families, ``modelspec.predict_key``, ``prompt`` and one entry per extra_pnginfo key (JSON),
  the last two left out under --disable-metadata.
* Text encoders (CLIPSave): one file per tower, ``<prefix>_clip_l``, ``_clip_g``, ``_clip_h``,
  keys as transformers names them (``text_model.*``, ``text_projection.weight``, ``logit_scale``).
* LoRA extraction (LoraSave): each weight difference of a MODEL/CLIP "diff" (ModelMergeSubtract
  output) by truncated SVD, rank r: up = U_r S_r, down = V_r^T, both clamped to [-q, q], q the
  0.99 quantile of their joined entries; convolutions flattened to [out, in*k*k]; fp16; keys
  ``diffusion_model.<weight>.lora_up/lora_down.weight`` and ``text_encoders.<weight>...``,
  ``.diff`` (full differences, and 1-D weights) and ``.diff_b`` (biases).

Files are safetensors; non-contiguous tensors (channels-last convolutions) are made contiguous.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CLAMP_QUANTILE = 0.99
# ComfyUI's CLIPSave file suffixes, in the order it writes them
CLIP_PARTS = ("clip_l", "clip_g", "clip_h")
# families whose files carry a CLIP vision tower, and where
CLIP_VISION_PREFIX = {"sd2_unclip_h": "embedder.model.visual.", "sd2_unclip_l": "embedder.model.visual."}
SDXL_ARCHITECTURES = {"sdxl": "stable-diffusion-xl-v1-base", "sdxl_ip2p": "stable-diffusion-xl-v1-edit",
                      "sdxl_refiner": "stable-diffusion-xl-v1-refiner"}


def model_family(model) -> str:
    """The detected family of MODEL's DiffusionModel (sd1, sd2, sdxl, sdxl_refiner, ...)."""
    inner = model.model
    return getattr(inner, "checkpoint_family", None) or getattr(inner, "family", "sd1")


def prediction_of(model) -> str:
    sampling = model.get_model_object("model_sampling")
    return getattr(sampling, "prediction", "eps")


def checkpoint_metadata(model, stem: str, counter: int, prompt=None, extra_pnginfo=None,
                        disable_metadata: bool = False) -> dict[str, str]:
    metadata: dict[str, str] = {}
    architecture = SDXL_ARCHITECTURES.get(model_family(model))
    if architecture is not None:
        metadata["modelspec.architecture"] = architecture
        metadata["modelspec.sai_model_spec"] = "1.0.0"
        metadata["modelspec.implementation"] = "sgm"
        metadata["modelspec.title"] = f"{stem} {counter}"
    prediction = prediction_of(model)
    if prediction == "eps":
        metadata["modelspec.predict_key"] = "epsilon"
    elif prediction == "v_prediction":
        metadata["modelspec.predict_key"] = "v"
    metadata.update(prompt_metadata(prompt, extra_pnginfo, disable_metadata))
    return metadata


def prompt_metadata(prompt=None, extra_pnginfo=None, disable_metadata: bool = False) -> dict[str, str]:
    if disable_metadata:
        return {}
    out = {"prompt": "" if prompt is None else json.dumps(prompt)}
    for key, value in (extra_pnginfo or {}).items():
        out[str(key)] = json.dumps(value)
    return out


def marker_keys(model) -> dict[str, torch.Tensor]:
    """Top-level keys that tell loaders how the model predicts (ComfyUI's extra keys)."""
    if prediction_of(model) != "v_prediction":
        return {}
    out = {"v_pred": torch.tensor([])}
    if getattr(model.get_model_object("model_sampling"), "zsnr", False):
        out["ztsnr"] = torch.tensor([])
    return out


def text_encoder_checkpoint_keys(clip, family: str) -> dict[str, torch.Tensor]:
    """The CLIP's weights as this family's checkpoint holds them (ComfyUI's saving layout)."""
    sd = clip.cond_stage_model.state_dict_original()
    if family.startswith("sd1"):
        # ComfyUI's CLIP-L has no position_ids buffer and its SD1 saver adds none
        sd.pop("cond_stage_model.transformer.text_model.embeddings.position_ids", None)
    return sd


def checkpoint_state_dict(model, clip=None, vae=None, clip_vision=None) -> dict[str, torch.Tensor]:
    """Everything CheckpointSave writes, weights as patched."""
    from .model_management import use_models

    patchers = [model] + ([clip.patcher] if clip is not None else [])
    use_models(patchers, force_patch_weights=True)
    family = model_family(model)
    unet = model.model.diffusion_model.state_dict()
    sd = {"model.diffusion_model." + k: v for k, v in unet.items()}
    sd.update(marker_keys(model))
    if clip is not None:
        sd.update(text_encoder_checkpoint_keys(clip, family))
    if vae is not None:
        sd.update({"first_stage_model." + k: v for k, v in vae.get_sd().items()})
    if clip_vision is not None:
        prefix = CLIP_VISION_PREFIX.get(family, "")
        sd.update({prefix + k: v for k, v in clip_vision.get_sd().items()})
    return sd


def save_file(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file as write

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.detach().to("cpu").contiguous()) for k, v in sd.items()}
    write(tensors, str(path), metadata=metadata or None)
    return path


def clip_files(clip) -> dict[str, dict[str, torch.Tensor]]:
    """CLIPSave's files: {tower name ("clip_l", ...): its weights in transformers' names}."""
    from .model_management import use_models

    use_models([clip.patcher], force_patch_weights=True)
    sd = clip.get_sd()
    out: dict[str, dict[str, torch.Tensor]] = {}
    for part in CLIP_PARTS:
        prefix = part + "."
        mine = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if mine:
            out[part] = {k.removeprefix("transformer."): v for k, v in mine.items()}
    rest = {k.removeprefix("transformer."): v for k, v in sd.items() if not k.startswith(tuple(p + "." for p in CLIP_PARTS))}
    if rest:
        out[""] = rest
    return out


# ---------------------------------------------------------------------------------------------
# LoRA extraction


def extract_lora(diff: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) with up @ down ~ diff (rank-r SVD, clamped at the 0.99 quantile)."""
    conv = diff.ndim == 4
    kernel = tuple(diff.shape[2:4]) if conv else None
    out_dim, in_dim = diff.shape[:2]
    rank = min(rank, in_dim, out_dim)
    matrix = diff.flatten(start_dim=1) if conv and kernel != (1, 1) else diff.squeeze() if conv else diff
    u, s, vh = torch.linalg.svd(matrix.float())
    up = u[:, :rank] @ torch.diag(s[:rank])
    down = vh[:rank, :]
    high = torch.quantile(torch.cat([up.flatten(), down.flatten()]), CLAMP_QUANTILE)
    up, down = up.clamp(-high, high), down.clamp(-high, high)
    if conv:
        up = up.reshape(out_dim, rank, 1, 1)
        down = down.reshape(rank, in_dim, kernel[0], kernel[1])
    return up, down


def _half(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().half().cpu()


def lora_from_diff(patcher, rank: int, model_prefix: str, lora_prefix: str, full_diff: bool,
                   bias_diff: bool, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adds the LoRA of one "diff" model (its weights as patched are the differences)."""
    from .model_management import use_models

    use_models([patcher], force_patch_weights=True)
    sd = patcher.model_state_dict(filter_prefix=model_prefix)
    for key, value in sd.items():
        name = lora_prefix + key[len(model_prefix):]
        if key.endswith(".weight"):
            base = name[:-len(".weight")]
            if full_diff:
                out[f"{base}.diff"] = _half(value)
            elif value.ndim < 2:
                if bias_diff:
                    out[f"{base}.diff"] = _half(value)
            else:
                try:
                    up, down = extract_lora(value, rank)
                except Exception as exc:  # e.g. quantile() of an over-large tensor
                    log.warning("could not make LoRA weights for %s (%s); is the difference zero?", key, exc)
                    continue
                out[f"{base}.lora_up.weight"] = _half(up)
                out[f"{base}.lora_down.weight"] = _half(down)
        elif bias_diff and key.endswith(".bias"):
            out[f"{name[:-len('.bias')]}.diff_b"] = _half(value)
    return out


__all__ = ["CLAMP_QUANTILE", "checkpoint_metadata", "checkpoint_state_dict", "clip_files", "extract_lora",
           "lora_from_diff", "marker_keys", "model_family", "prompt_metadata", "save_file"]
