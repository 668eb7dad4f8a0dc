"""Style model nodes: the T2I-Adapter style model turns a CLIP vision encoding into extra prompt
tokens."""
from __future__ import annotations

import torch

from diffusion.style_model import load_style_model
from graph.contract import Combo, Float, Node, Output, Socket
from nodes.clip_vision import require_clip_vision_output
from nodes.conditioning_tools import _require_conditioning
from nodes.loaders import model_file


class StyleModelLoader(Node):
    display_name = "Load Style Model"
    comfy_function = "load_style_model"
    category = "loaders"
    inputs = (Combo("style_model_name", lambda env: env.folders.filenames("style_models")),)
    outputs = (Output("STYLE_MODEL"),)

    def run(self, ctx, style_model_name):
        path = model_file(ctx, "style_models", style_model_name)
        return (ctx.env.models.cached("style_model", path, load_style_model),)


def with_attention_bias(txt: torch.Tensor, extras: dict, n_style: int, bias: float) -> dict:
    """ComfyUI's attention mask for style tokens inserted after a prompt's n_txt tokens: the old
    mask (text + reference-image tokens) is kept in its quadrants and every query gets `bias`
    (log strength) towards the style tokens. SD UNets do not read the mask (Flux models do)."""
    bias_value = torch.log(torch.tensor([bias]))
    ref = extras.get("attention_mask_img_shape", (1, 1))
    n_ref = ref[0] * ref[1]
    n_txt = txt.shape[1]
    mask = extras.get("attention_mask")
    if mask is None:
        mask = torch.zeros((txt.shape[0], n_txt + n_ref, n_txt + n_ref), dtype=torch.float16)
    if mask.dtype == torch.bool:
        mask = torch.log(mask.to(dtype=torch.float16))
    size = n_txt + n_style + n_ref
    new = torch.zeros((txt.shape[0], size, size), dtype=torch.float16)
    new[:, :n_txt, :n_txt] = mask[:, :n_txt, :n_txt]
    new[:, :n_txt, n_txt + n_style:] = mask[:, :n_txt, n_txt:]
    new[:, n_txt + n_style:, :n_txt] = mask[:, n_txt:, :n_txt]
    new[:, n_txt + n_style:, n_txt + n_style:] = mask[:, n_txt:, n_txt:]
    new[:, :n_txt, n_txt:n_txt + n_style] = bias_value
    new[:, n_txt + n_style:, n_txt:n_txt + n_style] = bias_value
    return {**extras, "attention_mask": new.to(txt.device), "attention_mask_img_shape": ref}


class StyleModelApply(Node):
    """Appends the style model's tokens to every conditioning entry. "multiply" scales the tokens
    by strength; "attn_bias" leaves them and records log(strength) as an attention bias."""

    display_name = "Apply Style Model"
    comfy_function = "apply_stylemodel"
    category = "conditioning/style_model"
    inputs = (Socket("conditioning", "CONDITIONING"), Socket("style_model", "STYLE_MODEL"),
              Socket("clip_vision_output", "CLIP_VISION_OUTPUT"),
              Float("strength", 1.0, min=0.0, max=10.0, step=0.001), Combo("strength_type", ["multiply", "attn_bias"]))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning, style_model, clip_vision_output, strength, strength_type):
        if not callable(getattr(style_model, "get_cond", None)):
            raise TypeError(f"style_model must be a loaded style model, got {type(style_model).__name__}")
        cond = style_model.get_cond(require_clip_vision_output(clip_vision_output))
        cond = cond.flatten(start_dim=0, end_dim=1).unsqueeze(dim=0)
        if strength_type == "multiply":
            cond = cond * strength
        out = []
        for txt, extras in _require_conditioning(conditioning, "conditioning"):
            if cond.shape[-1] != txt.shape[-1]:
                raise ValueError(f"the style model makes {cond.shape[-1]}-wide tokens but the prompt's are "
                                 f"{txt.shape[-1]} wide: this style model is for SD1.x prompts")
            extras = dict(extras)
            if "attention_mask" in extras or (strength_type == "attn_bias" and strength != 1.0):
                extras = with_attention_bias(txt, extras, cond.shape[1],
                                             strength if strength_type == "attn_bias" else 1.0)
            out.append([torch.cat((txt, cond.to(txt)), dim=1), extras])
        return (out,)


NODES = [StyleModelLoader, StyleModelApply]
