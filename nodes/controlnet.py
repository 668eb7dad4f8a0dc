"""ControlNet nodes with ComfyUI's names and widgets: loaders and the two Apply nodes.

CONTROL_NET is a `diffusion.controlnet.ControlNet` (ComfyUI's object); the Apply nodes put a copy
of it with the hint image, strength and step range, chained after the control the entry had, in
each conditioning entry's extras under "control".
"""
from __future__ import annotations

from diffusion.controlnet import ControlBase, load_controlnet
from diffusion.model_management import load_models_gpu
from graph.contract import Combo, Node, Output, Socket
from nodes.conditioning_tools import Fraction, Strength
from nodes.loaders import model_file


def _controlnet_names(env):
    return env.folders.filenames("controlnet")


def _load(ctx, control_net_name: str, model=None) -> ControlBase:
    models = ctx.env.models
    path = model_file(ctx, "controlnet", control_net_name)
    options = dict(device=models.unet_offload_device(), dtype=models.unet_dtype(),
                   load_device=models.get_torch_device(), manager=models)
    if model is None:
        return models.cached("controlnet", path, lambda p: load_controlnet(p, None, **options))
    # A diff ControlNet's weights are added to the model's as this MODEL has them (LoRA patches
    # applied), so it is not shared through the file cache.
    load_models_gpu([model])
    return load_controlnet(path, model.model.diffusion_model, **options)


class ControlNetLoader(Node):
    display_name = "Load ControlNet Model"
    comfy_function = "load_controlnet"
    category = "loaders"
    inputs = (Combo("control_net_name", _controlnet_names),)
    outputs = (Output("CONTROL_NET"),)

    def run(self, ctx, control_net_name):
        return (_load(ctx, control_net_name),)


class DiffControlNetLoader(Node):
    """Loads a "diff" ControlNet, whose file stores differences to the model's UNet weights."""

    display_name = "Load ControlNet Model (diff)"
    comfy_function = "load_controlnet"
    category = "loaders"
    inputs = (Socket("model", "MODEL"), Combo("control_net_name", _controlnet_names))
    outputs = (Output("CONTROL_NET"),)

    def run(self, ctx, model, control_net_name):
        return (_load(ctx, control_net_name, model),)


def _require_net(control_net):
    if not isinstance(control_net, ControlBase):
        raise TypeError(f"control_net must be a loaded ControlNet, got {type(control_net).__name__}")
    return control_net


class ControlNetApply(Node):
    """The old Apply node: attaches the ControlNet to one conditioning for every step; the
    sampler also applies it to the negative prompt when that has no ControlNet of its own."""

    display_name = "Apply ControlNet (OLD)"
    comfy_function = "apply_controlnet"
    category = "conditioning/controlnet"
    DEPRECATED = True
    inputs = (Socket("conditioning", "CONDITIONING"), Socket("control_net", "CONTROL_NET"),
              Socket("image", "IMAGE"), Strength())
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning, control_net, image, strength):
        if strength == 0:
            return (conditioning,)
        net = _require_net(control_net)
        hint = image.movedim(-1, 1)
        out = []
        for cond, extras in conditioning:
            extras = dict(extras)
            extras["control"] = net.apply(hint, strength, previous=extras.get("control"))
            extras["control_apply_to_uncond"] = True
            out.append([cond, extras])
        return (out,)


class ControlNetApplyAdvanced(Node):
    """Attaches the ControlNet to both prompts for the steps between start_percent and
    end_percent, on top of any ControlNet already attached."""

    display_name = "Apply ControlNet"
    comfy_function = "apply_controlnet"
    category = "conditioning/controlnet"
    inputs = (Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Socket("control_net", "CONTROL_NET"), Socket("image", "IMAGE"), Strength(),
              Fraction("start_percent", 0.0, step=0.001), Fraction("end_percent", 1.0, step=0.001),
              Socket("vae", "VAE", optional=True))
    outputs = (Output("CONDITIONING", name="positive"), Output("CONDITIONING", name="negative"))

    def run(self, ctx, positive, negative, control_net, image, strength, start_percent, end_percent, vae=None,
            extra_concat=[]):  # noqa: B006 - ComfyUI's signature; never mutated
        # `vae` is only used by ControlNets that take latent hints (SD3, Flux); SD1.x/SDXL ones
        # take pixel hints, so it is accepted and ignored as in ComfyUI.
        if extra_concat:
            raise ValueError("extra_concat (extra hint channels for SD3/Flux ControlNets) is not supported")
        if strength == 0:
            return (positive, negative)
        net = _require_net(control_net)
        hint = image.movedim(-1, 1)
        # One control per distinct earlier control, shared by both prompts, so the sampler can
        # run cond and uncond in one batch (it batches entries with the same control object).
        made: dict[int, object] = {}
        out = []
        for conditioning in (positive, negative):
            entries = []
            for cond, extras in conditioning:
                extras = dict(extras)
                previous = extras.get("control")
                control = made.get(id(previous))
                if control is None:
                    control = made[id(previous)] = net.apply(hint, strength, (start_percent, end_percent), previous)
                extras["control"] = control
                extras["control_apply_to_uncond"] = False
                entries.append([cond, extras])
            out.append(entries)
        return (out[0], out[1])


NODES = [ControlNetLoader, DiffControlNetLoader, ControlNetApply, ControlNetApplyAdvanced]
