"""Text conditioning nodes. CONDITIONING = [[cond [1, T, D], {"pooled_output": ..., ...}], ...]."""
from __future__ import annotations

from graph.contract import Float, Input, Int, Node, Output, Socket
from nodes.image import MAX_RESOLUTION


def require_clip(clip):
    if clip is None:
        raise RuntimeError("the clip input is empty: if it comes from a checkpoint loader, the checkpoint "
                           "holds no text encoder")
    return clip


def Prompt(name: str = "text") -> Input:
    # No default: ComfyUI's prompt widgets declare none, and /object_info must match.
    return Input(name, "STRING", options=dict(multiline=True, dynamicPrompts=True))


class CLIPTextEncode(Node):
    """Encodes a prompt (with (emphasis:1.2) and embedding:name syntax) into conditioning."""

    display_name = "CLIP Text Encode (Prompt)"
    comfy_function = "encode"
    category = "conditioning"
    inputs = (Prompt(), Socket("clip", "CLIP"))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, clip, text):
        clip = require_clip(clip)
        return (clip.encode_from_tokens_scheduled(clip.tokenize(text)),)


class CLIPSetLastLayer(Node):
    display_name = "CLIP Set Last Layer"
    comfy_function = "set_last_layer"
    category = "conditioning"
    inputs = (Socket("clip", "CLIP"), Int("stop_at_clip_layer", -1, min=-24, max=-1, step=1))
    outputs = (Output("CLIP"),)

    def run(self, ctx, clip, stop_at_clip_layer):
        clip = require_clip(clip).clone()
        clip.clip_layer(stop_at_clip_layer)
        return (clip,)


def _size(name: str, default: int) -> Int:
    return Int(name, default, min=0, max=MAX_RESOLUTION)


class CLIPTextEncodeSDXL(Node):
    """SDXL base: separate prompts for the bigG (text_g) and CLIP-L (text_l) encoders, plus the
    size and crop conditioning SDXL was trained with."""

    comfy_function = "execute"
    category = "advanced/conditioning"
    comfy_module = "comfy_extras.nodes_clip_sdxl"
    display_name = None
    inputs = (Socket("clip", "CLIP"), _size("width", 1024), _size("height", 1024), _size("crop_w", 0),
              _size("crop_h", 0), _size("target_width", 1024), _size("target_height", 1024),
              Prompt("text_g"), Prompt("text_l"))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, clip, width, height, crop_w, crop_h, target_width, target_height, text_g, text_l):
        clip = require_clip(clip)
        tokens = clip.tokenize(text_g)
        tokens["l"] = clip.tokenize(text_l)["l"]
        if len(tokens["l"]) != len(tokens["g"]):  # pad the shorter side with empty-prompt windows
            empty = clip.tokenize("")
            while len(tokens["l"]) < len(tokens["g"]):
                tokens["l"] += empty["l"]
            while len(tokens["l"]) > len(tokens["g"]):
                tokens["g"] += empty["g"]
        return (clip.encode_from_tokens_scheduled(tokens, add_dict={
            "width": width, "height": height, "crop_w": crop_w, "crop_h": crop_h, "target_width": target_width,
            "target_height": target_height}),)


class CLIPTextEncodeSDXLRefiner(Node):
    comfy_function = "execute"
    category = "advanced/conditioning"
    comfy_module = "comfy_extras.nodes_clip_sdxl"
    display_name = None
    inputs = (Float("ascore", 6.0, min=0.0, max=1000.0, step=0.01), _size("width", 1024), _size("height", 1024),
              Prompt(), Socket("clip", "CLIP"))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, clip, ascore, width, height, text):
        clip = require_clip(clip)
        return (clip.encode_from_tokens_scheduled(clip.tokenize(text), add_dict={
            "aesthetic_score": ascore, "width": width, "height": height}),)


NODES = [CLIPTextEncode, CLIPSetLastLayer, CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner]
