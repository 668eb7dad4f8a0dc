"""ControlNet nodes with ComfyUI's names and widgets: loaders, the Apply nodes (plain, with an
inpainting mask), the union ControlNet's type and a ControlNet-only prompt.

CONTROL_NET is a `diffusion.controlnet.ControlNet` (ComfyUI's object); the Apply nodes put a copy
of it with the hint image, strength and step range, chained after the control the entry had, in
each conditioning entry's extras under "control".
"""
from __future__ import annotations

from diffusion.controlnet import ControlBase, load_controlnet
from diffusion.controlnet_union import UNION_CONTROLNET_TYPES
from diffusion.model_management import use_models
from diffusion.upscale import upscale
from graph.contract import Combo, Node, Output, Socket
from nodes.conditioning import Prompt, require_clip
from nodes.conditioning_tools import Fraction, Strength, set_values
from nodes.loaders import model_file

CONTROLNET_EXTRAS = "comfy_extras.nodes_controlnet"


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
    use_models([model])
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


class ControlNetInpaintingAliMamaApply(ControlNetApplyAdvanced):
    """Apply ControlNet with an inpainting mask. ControlNets trained with the mask as an extra hint
    channel (Alimama's inpainting ControlNets, made for Flux and SD3) get the masked image and the
    mask; other ControlNets get the image alone, exactly as Apply ControlNet gives it."""

    display_name = "ControlNetInpaintingAliMamaApply"
    comfy_function = "apply_inpaint_controlnet"
    comfy_module = CONTROLNET_EXTRAS
    category = "conditioning/controlnet"
    inputs = (Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Socket("control_net", "CONTROL_NET"), Socket("vae", "VAE"), Socket("image", "IMAGE"),
              Socket("mask", "MASK"), Strength(), Fraction("start_percent", 0.0, step=0.001),
              Fraction("end_percent", 1.0, step=0.001))

    def run(self, ctx, positive, negative, control_net, vae, image, mask, strength, start_percent, end_percent):
        net = _require_net(control_net)
        extra_concat = []
        if net.concat_mask:
            keep = 1.0 - mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
            keep_image = upscale(keep, image.shape[2], image.shape[1], "bilinear", "center").round()
            image = image * keep_image.movedim(1, -1).repeat(1, 1, 1, image.shape[3])
            extra_concat = [keep]
        return super().run(ctx, positive, negative, net, image, strength, start_percent, end_percent, vae=vae,
                           extra_concat=extra_concat)


class SetUnionControlNetType(Node):
    """Which kind of hint a union ControlNet (ControlNet++) is given; "auto" lets it tell."""

    display_name = "SetUnionControlNetType"
    comfy_function = "set_controlnet_type"
    comfy_module = CONTROLNET_EXTRAS
    category = "conditioning/controlnet"
    inputs = (Socket("control_net", "CONTROL_NET"), Combo("type", ["auto", *UNION_CONTROLNET_TYPES]))
    outputs = (Output("CONTROL_NET"),)

    def run(self, ctx, control_net, type):  # noqa: A002 - ComfyUI's name
        net = _require_net(control_net).copy()
        number = UNION_CONTROLNET_TYPES.get(type, -1)
        net.set_extra_arg("control_type", [number] if number >= 0 else [])
        return (net,)


class CLIPTextEncodeControlnet(Node):
    """Encodes a separate prompt for the ControlNets of each entry: they read it instead of the
    prompt the UNet reads."""

    display_name = None
    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_cond"
    category = "_for_testing/conditioning"
    EXPERIMENTAL = True
    inputs = (Socket("clip", "CLIP"), Socket("conditioning", "CONDITIONING"), Prompt())
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, clip, conditioning, text):
        clip = require_clip(clip)
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        return (set_values(conditioning, {"cross_attn_controlnet": cond, "pooled_output_controlnet": pooled}),)


NODES = [ControlNetLoader, DiffControlNetLoader, ControlNetApply, ControlNetApplyAdvanced,
         ControlNetInpaintingAliMamaApply, SetUnionControlNetType, CLIPTextEncodeControlnet]
