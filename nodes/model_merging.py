"""Model merging (ComfyUI's advanced/model_merging): weighted sums of two MODELs' UNets or two
CLIPs' text encoders.

A merge is weight patches on a clone of the first input: for every key of the second, the nested
patch [(its weight, convert), *its own patches] with strength_patch and strength_model, so
merged = strength_model * w1 + strength_patch * w2' where w2' is the second model's weight with
its patches (a LoRA on it) applied. Nothing is copied until the merged model is loaded for
sampling or encoding, and further LoRAs or merges on the result compose in order.
"""
from __future__ import annotations

from graph.contract import Float, Node, Output, Socket

MERGING = "advanced/model_merging"
MODULE = "comfy_extras.nodes_model_merging"
UNET_PREFIX = "diffusion_model."


def merge_into(target, source_patches: dict, strength_patch: float, strength_model: float, ratio_of=None) -> None:
    """Add each of `source_patches` (a get_key_patches() result) to `target` (a patcher or CLIP);
    `ratio_of(key)` gives a per-key ratio r instead, with strengths (1 - r, r)."""
    for key, patch in source_patches.items():
        if ratio_of is not None:
            ratio = ratio_of(key)
            strength_patch, strength_model = 1.0 - ratio, ratio
        target.add_patches({key: patch}, strength_patch, strength_model)


def clip_patches(clip) -> dict:
    """The CLIP's key patches minus the position ids and logit scale, which merges leave alone."""
    return {k: v for k, v in clip.get_key_patches().items()
            if not k.endswith((".position_ids", ".logit_scale"))}


def Ratio(name: str) -> Float:
    return Float(name, 1.0, min=0.0, max=1.0, step=0.01)


def Multiplier() -> Float:
    return Float("multiplier", 1.0, min=-10.0, max=10.0, step=0.01)


class _Merge(Node):
    comfy_function = "merge"
    comfy_module = MODULE
    category = MERGING


class ModelMergeSimple(_Merge):
    """model1 * ratio + model2 * (1 - ratio), over the UNet weights."""

    comfy_function = "merge"
    comfy_module = MODULE
    inputs = (Socket("model1", "MODEL"), Socket("model2", "MODEL"), Ratio("ratio"))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model1, model2, ratio):
        merged = model1.clone()
        merge_into(merged, model2.get_key_patches(UNET_PREFIX), 1.0 - ratio, ratio)
        return (merged,)


class ModelMergeBlocks(_Merge):
    """ModelMergeSimple with one ratio per part of the UNet: input blocks, middle block and output
    blocks (other weights take the input ratio)."""

    comfy_function = "merge"
    comfy_module = MODULE
    inputs = (Socket("model1", "MODEL"), Socket("model2", "MODEL"), Ratio("input"), Ratio("middle"), Ratio("out"))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model1, model2, **kwargs):
        ratios = kwargs  # input, middle, out, in the order given
        merged = model1.clone()
        merge_into(merged, model2.get_key_patches(UNET_PREFIX), 0.0, 0.0,
                   ratio_of=lambda key: block_ratio(key[len(UNET_PREFIX):], ratios))
        return (merged,)


def block_ratio(unet_key: str, ratios: dict) -> float:
    """The ratio of the longest name in `ratios` that `unet_key` starts with, else the first
    ratio given (ComfyUI's rule: "input" matches input_blocks.*, "out" both output_blocks.* and
    the final out.* layers; the time and label embeddings match none and take the first ratio
    passed, which is "input" when the inputs come in their declared order, as from the editor)."""
    best, best_length = next(iter(ratios.values())), 0
    for name, ratio in ratios.items():
        if unet_key.startswith(name) and len(name) > best_length:
            best, best_length = ratio, len(name)
    return best


class ModelMergeSubtract(_Merge):
    """(model1 - model2) * multiplier: the difference of a fine-tune from its base, to add to
    another model with ModelMergeAdd (ComfyUI scales model1 too, not only model2)."""

    comfy_function = "merge"
    comfy_module = MODULE
    inputs = (Socket("model1", "MODEL"), Socket("model2", "MODEL"), Multiplier())
    outputs = (Output("MODEL"),)

    def run(self, ctx, model1, model2, multiplier):
        merged = model1.clone()
        merge_into(merged, model2.get_key_patches(UNET_PREFIX), -multiplier, multiplier)
        return (merged,)


class ModelMergeAdd(_Merge):
    """model1 + model2 (e.g. a difference from ModelMergeSubtract added to another model)."""

    comfy_function = "merge"
    comfy_module = MODULE
    inputs = (Socket("model1", "MODEL"), Socket("model2", "MODEL"))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model1, model2):
        merged = model1.clone()
        merge_into(merged, model2.get_key_patches(UNET_PREFIX), 1.0, 1.0)
        return (merged,)


class CLIPMergeSimple(_Merge):
    """clip1 * ratio + clip2 * (1 - ratio), over the text encoder weights."""

    comfy_function = "merge"
    comfy_module = MODULE
    inputs = (Socket("clip1", "CLIP"), Socket("clip2", "CLIP"), Ratio("ratio"))
    outputs = (Output("CLIP"),)

    def run(self, ctx, clip1, clip2, ratio):
        merged = clip1.clone()
        merge_into(merged, clip_patches(clip2), 1.0 - ratio, ratio)
        return (merged,)


class CLIPMergeSubtract(_Merge):
    """(clip1 - clip2) * multiplier."""

    comfy_function = "merge"
    comfy_module = MODULE
    inputs = (Socket("clip1", "CLIP"), Socket("clip2", "CLIP"), Multiplier())
    outputs = (Output("CLIP"),)

    def run(self, ctx, clip1, clip2, multiplier):
        merged = clip1.clone()
        merge_into(merged, clip_patches(clip2), -multiplier, multiplier)
        return (merged,)


class CLIPMergeAdd(_Merge):
    """clip1 + clip2."""

    comfy_function = "merge"
    comfy_module = MODULE
    inputs = (Socket("clip1", "CLIP"), Socket("clip2", "CLIP"))
    outputs = (Output("CLIP"),)

    def run(self, ctx, clip1, clip2):
        merged = clip1.clone()
        merge_into(merged, clip_patches(clip2), 1.0, 1.0)
        return (merged,)


NODES = [ModelMergeSimple, ModelMergeBlocks, ModelMergeSubtract, ModelMergeAdd, CLIPMergeSimple,
         CLIPMergeSubtract, CLIPMergeAdd]
