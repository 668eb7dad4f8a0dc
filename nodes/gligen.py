"""GLIGEN nodes: load a GLIGEN box-text model and ground phrases to boxes of the image."""
from __future__ import annotations

from diffusion.gligen import load_gligen
from graph.contract import Combo, Node, Output, Socket
from nodes.conditioning import Prompt, require_clip
from nodes.conditioning_tools import PixelInt, _require_conditioning
from nodes.loaders import model_file


class GLIGENLoader(Node):
    display_name = "GLIGENLoader"
    comfy_function = "load_gligen"
    category = "loaders"
    inputs = (Combo("gligen_name", lambda env: env.folders.filenames("gligen")),)
    outputs = (Output("GLIGEN"),)

    def run(self, ctx, gligen_name):
        models = ctx.env.models
        path = model_file(ctx, "gligen", gligen_name)
        return (models.cached("gligen", path, lambda p: load_gligen(p, models)),)


class GLIGENTextBoxApply(Node):
    """Grounds `text` to a box (pixels; stored in latent cells): the GLIGEN model steers that
    phrase's content into the box. Boxes add up over chained nodes (at most 30)."""

    display_name = "GLIGENTextBoxApply"
    comfy_function = "append"
    category = "conditioning/gligen"
    inputs = (Socket("conditioning_to", "CONDITIONING"), Socket("clip", "CLIP"),
              Socket("gligen_textbox_model", "GLIGEN"), Prompt(),
              PixelInt("width", 64, 8), PixelInt("height", 64, 8), PixelInt("x", 0, 0), PixelInt("y", 0, 0))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning_to, clip, gligen_textbox_model, text, width, height, x, y):
        gligen = getattr(gligen_textbox_model, "model", None)
        if not callable(getattr(gligen, "set_position", None)):
            raise TypeError(f"gligen_textbox_model must be a loaded GLIGEN model, got "
                            f"{type(gligen_textbox_model).__name__}")
        clip = require_clip(clip)
        _, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled="unprojected")
        if pooled.shape[-1] != gligen.key_dim:
            raise ValueError(f"this GLIGEN model reads {gligen.key_dim}-wide text embeddings but the CLIP gives "
                             f"{pooled.shape[-1]}: use the text encoder of the model GLIGEN was made for")
        box = (pooled, height // 8, width // 8, y // 8, x // 8)
        out = []
        for cond, extras in _require_conditioning(conditioning_to, "conditioning_to"):
            previous = extras["gligen"][2] if "gligen" in extras else []
            out.append([cond, {**extras, "gligen": ("position", gligen_textbox_model, previous + [box])}])
        return (out,)


NODES = [GLIGENLoader, GLIGENTextBoxApply]
