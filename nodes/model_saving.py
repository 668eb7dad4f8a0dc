"""Saving models: checkpoints, bare UNets, text encoders, VAEs, image-only checkpoints and LoRAs
extracted from model differences, as safetensors under the output folder (which the loaders also
list: output/checkpoints, output/diffusion_models, output/clip, output/vae, output/loras)."""
from __future__ import annotations

from pathlib import Path

from diffusion.checkpoint_save import (
    checkpoint_metadata,
    checkpoint_state_dict,
    clip_files,
    lora_from_diff,
    prompt_metadata,
    save_file,
)
from graph.contract import Boolean, Choice, Int, Node, Socket, String
from nodes.clip_vision import require_clip_vision
from nodes.conditioning import require_clip
from nodes.image import save_target

MERGING = "comfy_extras.nodes_model_merging"
SAVE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def model_path(ctx, filename_prefix: str) -> tuple[Path, str, int]:
    """(file, stem, counter) for the next file of this prefix: <stem>_<counter:05>_.safetensors."""
    target = save_target(ctx.env.folders.output_dir, filename_prefix, 0, 0)
    return target.folder / f"{target.stem}_{target.counter:05}_.safetensors", target.stem, target.counter


def _disabled(ctx) -> bool:
    return bool(ctx.env.options.get("disable_metadata"))


def _require_model(model):
    if model is None or not hasattr(getattr(model, "model", None), "diffusion_model"):
        raise TypeError(f"model must be a loaded MODEL, got {type(model).__name__}")
    return model


def _require_vae(vae):
    if vae is None or not callable(getattr(vae, "get_sd", None)):
        raise TypeError(f"vae must be a loaded VAE, got {type(vae).__name__}")
    vae.throw_exception_if_invalid()
    return vae


def save_checkpoint(ctx, model, filename_prefix: str, prompt=None, extra_pnginfo=None, clip=None, vae=None,
                    clip_vision=None) -> Path:
    path, stem, counter = model_path(ctx, filename_prefix)
    metadata = checkpoint_metadata(model, stem, counter, prompt, extra_pnginfo, _disabled(ctx))
    return save_file(checkpoint_state_dict(model, clip, vae, clip_vision), path, metadata)


class CheckpointSave(Node):
    """Writes MODEL (with its LoRA and merge patches applied), CLIP and VAE as one checkpoint."""

    display_name = "Save Checkpoint"
    comfy_function = "save"
    comfy_module = MERGING
    category = "advanced/model_merging"
    output_node = True
    inputs = (Socket("model", "MODEL"), Socket("clip", "CLIP"), Socket("vae", "VAE"),
              String("filename_prefix", "checkpoints/ComfyUI", multiline=None))
    hidden = SAVE_HIDDEN
    outputs = ()

    def run(self, ctx, model, clip, vae, filename_prefix, prompt=None, extra_pnginfo=None):
        save_checkpoint(ctx, _require_model(model), filename_prefix, prompt, extra_pnginfo, clip=require_clip(clip),
                        vae=_require_vae(vae))
        return {}


class ModelSave(Node):
    """Writes the diffusion model alone (UNet keys under model.diffusion_model.)."""

    display_name = "ModelSave"
    comfy_function = "save"
    comfy_module = MERGING
    category = "advanced/model_merging"
    output_node = True
    inputs = (Socket("model", "MODEL"), String("filename_prefix", "diffusion_models/ComfyUI", multiline=None))
    hidden = SAVE_HIDDEN
    outputs = ()

    def run(self, ctx, model, filename_prefix, prompt=None, extra_pnginfo=None):
        save_checkpoint(ctx, _require_model(model), filename_prefix, prompt, extra_pnginfo)
        return {}


class CLIPSave(Node):
    """Writes each text encoder of the CLIP to its own file (<prefix>_clip_l, _clip_g, ...)."""

    display_name = "CLIPSave"
    comfy_function = "save"
    comfy_module = MERGING
    category = "advanced/model_merging"
    output_node = True
    inputs = (Socket("clip", "CLIP"), String("filename_prefix", "clip/ComfyUI", multiline=None))
    hidden = SAVE_HIDDEN
    outputs = ()

    def run(self, ctx, clip, filename_prefix, prompt=None, extra_pnginfo=None):
        metadata = {} if _disabled(ctx) else {"format": "pt", **prompt_metadata(prompt, extra_pnginfo)}
        for part, sd in clip_files(require_clip(clip)).items():
            path, _, _ = model_path(ctx, f"{filename_prefix}_{part}" if part else filename_prefix)
            save_file(sd, path, metadata)
        return {}


class VAESave(Node):
    display_name = "VAESave"
    comfy_function = "save"
    comfy_module = MERGING
    category = "advanced/model_merging"
    output_node = True
    inputs = (Socket("vae", "VAE"), String("filename_prefix", "vae/ComfyUI_vae", multiline=None))
    hidden = SAVE_HIDDEN
    outputs = ()

    def run(self, ctx, vae, filename_prefix, prompt=None, extra_pnginfo=None):
        path, _, _ = model_path(ctx, filename_prefix)
        save_file(_require_vae(vae).get_sd(), path, prompt_metadata(prompt, extra_pnginfo, _disabled(ctx)))
        return {}


class ImageOnlyCheckpointSave(Node):
    """Writes MODEL, CLIP_VISION and VAE as one checkpoint (image-conditioned models)."""

    display_name = "ImageOnlyCheckpointSave"
    comfy_function = "save"
    comfy_module = "comfy_extras.nodes_video_model"
    category = "advanced/model_merging"
    output_node = True
    inputs = (Socket("model", "MODEL"), Socket("clip_vision", "CLIP_VISION"), Socket("vae", "VAE"),
              String("filename_prefix", "checkpoints/ComfyUI", multiline=None))
    hidden = SAVE_HIDDEN
    outputs = ()

    def run(self, ctx, model, clip_vision, vae, filename_prefix, prompt=None, extra_pnginfo=None):
        save_checkpoint(ctx, _require_model(model), filename_prefix, prompt, extra_pnginfo, vae=_require_vae(vae),
                        clip_vision=require_clip_vision(clip_vision))
        return {}


class LoraSave(Node):
    """Extracts a LoRA from model and/or text-encoder differences (ModelMergeSubtract,
    CLIPMergeSubtract outputs): rank-r SVD of every weight difference ("standard") or the
    differences themselves ("full_diff"); bias_diff also keeps the bias differences."""

    display_name = "Extract and Save Lora"
    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_lora_extract"
    category = "_for_testing"
    output_node = True
    EXPERIMENTAL = True
    inputs = (String("filename_prefix", "loras/ComfyUI_extracted_lora"), Int("rank", 8, min=1, max=4096, step=1),
              Choice("lora_type", ["standard", "full_diff"]), Boolean("bias_diff", True),
              Socket("model_diff", "MODEL", optional=True, tooltip="The ModelSubtract output to be converted to a lora."),
              Socket("text_encoder_diff", "CLIP", optional=True,
                     tooltip="The CLIPSubtract output to be converted to a lora."))
    hidden = {"prompt": ["PROMPT"], "extra_pnginfo": ["EXTRA_PNGINFO"]}
    outputs = ()

    def run(self, ctx, filename_prefix, rank, lora_type, bias_diff, model_diff=None, text_encoder_diff=None):
        if model_diff is None and text_encoder_diff is None:
            return {}
        full = lora_type == "full_diff"
        path, _, _ = model_path(ctx, filename_prefix)
        sd: dict = {}
        if model_diff is not None:
            lora_from_diff(_require_model(model_diff), rank, "diffusion_model.", "diffusion_model.", full, bias_diff, sd)
        if text_encoder_diff is not None:
            lora_from_diff(require_clip(text_encoder_diff).patcher, rank, "", "text_encoders.", full, bias_diff, sd)
        save_file(sd, path)
        return {}


NODES = [CheckpointSave, ModelSave, CLIPSave, VAESave, ImageOnlyCheckpointSave, LoraSave]
