"""CLIP vision nodes: load a vision tower, encode images with it, and condition unCLIP models
(and SDXL, as its pooled vector) on the encoding."""
from __future__ import annotations

from diffusion.clip_vision import ClipVisionModel, ClipVisionOutput, load_clip_vision
from graph.contract import Combo, Float, Node, Output, Socket
from nodes.conditioning_tools import set_values
from nodes.loaders import model_file


def require_clip_vision(clip_vision) -> ClipVisionModel:
    if clip_vision is None:
        raise RuntimeError("the clip_vision input is empty: the checkpoint it comes from holds no CLIP vision model")
    if not callable(getattr(clip_vision, "encode_image", None)):
        raise TypeError(f"clip_vision must be a loaded CLIP vision model, got {type(clip_vision).__name__}")
    return clip_vision


def require_clip_vision_output(output) -> ClipVisionOutput:
    if getattr(output, "image_embeds", None) is None and getattr(output, "last_hidden_state", None) is None:
        raise TypeError(f"clip_vision_output must be a CLIP Vision Encode output, got {type(output).__name__}")
    return output


class CLIPVisionLoader(Node):
    """Loads a CLIP vision tower (ViT-L/14, ViT-H/14, ViT-bigG/14) in transformers' or OpenCLIP's
    layout."""

    display_name = "Load CLIP Vision"
    comfy_function = "load_clip"
    category = "loaders"
    inputs = (Combo("clip_name", lambda env: env.folders.filenames("clip_vision")),)
    outputs = (Output("CLIP_VISION"),)

    def run(self, ctx, clip_name):
        models = ctx.env.models
        path = model_file(ctx, "clip_vision", clip_name)
        return (models.cached("clip_vision", path, lambda p: load_clip_vision(p, models)),)


class CLIPVisionEncode(Node):
    """Encodes images with a CLIP vision model: "center" scales the shorter side to the model's
    input size and crops the middle, "none" squashes the whole image to a square."""

    display_name = "CLIP Vision Encode"
    comfy_function = "encode"
    category = "conditioning"
    inputs = (Socket("clip_vision", "CLIP_VISION"), Socket("image", "IMAGE"), Combo("crop", ["center", "none"]))
    outputs = (Output("CLIP_VISION_OUTPUT"),)

    def run(self, ctx, clip_vision, image, crop):
        return (require_clip_vision(clip_vision).encode_image(image, crop=crop == "center"),)


class unCLIPConditioning(Node):
    """Adds image embeddings to the prompt for unCLIP models (and SDXL's pooled vector):
    strength scales them, noise_augmentation noises them first (0: the image as it is)."""

    display_name = "unCLIPConditioning"
    comfy_function = "apply_adm"
    category = "conditioning"
    inputs = (Socket("conditioning", "CONDITIONING"), Socket("clip_vision_output", "CLIP_VISION_OUTPUT"),
              Float("strength", 1.0, min=-10.0, max=10.0, step=0.01),
              Float("noise_augmentation", 0.0, min=0.0, max=1.0, step=0.01))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning, clip_vision_output, strength, noise_augmentation):
        if strength == 0:
            return (conditioning,)
        entry = {"clip_vision_output": require_clip_vision_output(clip_vision_output), "strength": strength,
                 "noise_augmentation": noise_augmentation}
        out = []
        for cond, extras in set_values(conditioning, {}):
            extras["unclip_conditioning"] = list(extras.get("unclip_conditioning", [])) + [entry]
            out.append([cond, extras])
        return (out,)


NODES = [CLIPVisionLoader, CLIPVisionEncode, unCLIPConditioning]
