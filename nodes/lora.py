"""LoRA loader nodes: LoraLoader and LoraLoaderModelOnly, with ComfyUI's names and widgets.

The outputs are clones of the input MODEL / CLIP carrying the LoRA as weight patches; the
model-lifetime service applies them when the clone is used (and puts the original weights back
for a user of the plain model), so the same checkpoint used without the LoRA is unaffected.
"""
from __future__ import annotations

from diffusion.checkpoint import read_state_dict
from diffusion.lora import load_lora_for_models
from graph.contract import Combo, Float, Node, Output, Socket
from nodes.loaders import model_file


def Strength(name: str, what: str) -> Float:
    return Float(name, 1.0, min=-100.0, max=100.0, step=0.01,
                 tooltip=f"How strongly to modify the {what}. This value can be negative.")


def LoraName() -> Combo:
    return Combo("lora_name", lambda env: env.folders.filenames("loras"), tooltip="The name of the LoRA.")


def _with_lora(ctx, model, clip, lora_name, strength_model, strength_clip):
    """(outputs, ui or None): ComfyUI returns the inputs themselves when both strengths are 0."""
    if strength_model == 0 and strength_clip == 0:
        return (model, clip), None
    if model is None:
        raise RuntimeError("the model input is empty: the checkpoint holds no diffusion model")
    lora = read_state_dict(model_file(ctx, "loras", lora_name))
    new_model, new_clip, report = load_lora_for_models(model, clip, lora, strength_model, strength_clip,
                                                       name=lora_name)
    # Only problems are surfaced in the UI; a clean load stays as quiet as ComfyUI's.
    ui = {"text": [report.message()]} if report.problems else None
    return (new_model, new_clip), ui


def _result(outputs: tuple, ui):
    return outputs if ui is None else {"ui": ui, "result": outputs}


class LoraLoader(Node):
    """LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are
    denoised such as applying styles. Multiple LoRA nodes can be linked together."""

    display_name = "Load LoRA"
    comfy_function = "load_lora"
    category = "loaders"
    inputs = (Socket("model", "MODEL", tooltip="The diffusion model the LoRA will be applied to."),
              Socket("clip", "CLIP", tooltip="The CLIP model the LoRA will be applied to."),
              LoraName(), Strength("strength_model", "diffusion model"), Strength("strength_clip", "CLIP model"))
    outputs = (Output("MODEL", tooltip="The modified diffusion model."),
               Output("CLIP", tooltip="The modified CLIP model."))

    def run(self, ctx, model, clip, lora_name, strength_model, strength_clip):
        return _result(*_with_lora(ctx, model, clip, lora_name, strength_model, strength_clip))


class LoraLoaderModelOnly(Node):
    """Applies a LoRA to the diffusion model only (the text encoder is left as it is)."""

    comfy_function = "load_lora_model_only"
    category = "loaders"
    inputs = (Socket("model", "MODEL"), LoraName(), Float("strength_model", 1.0, min=-100.0, max=100.0, step=0.01))
    outputs = (Output("MODEL"),)

    def run(self, ctx, model, lora_name, strength_model):
        (new_model, _), ui = _with_lora(ctx, model, None, lora_name, strength_model, 0)
        return _result((new_model,), ui)


NODES = [LoraLoader, LoraLoaderModelOnly]
