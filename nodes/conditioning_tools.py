"""Conditioning tools with ComfyUI's names and widgets: combine, average, concat, areas, masks,
timestep ranges, zero-out. CONDITIONING = [[cond [B, T, D], extras], ...].

These nodes only annotate entries ("area", "strength", "mask", "start_percent", ...); the sampler
(diffusion/ksampler.py) is what turns the annotations into cropped, weighted UNet calls.
"""
from __future__ import annotations

import logging

import torch

from diffusion.handles import VAE_SCALE
from graph.contract import Combo, Float, Int, Node, Output, Socket
from nodes.image import MAX_RESOLUTION

log = logging.getLogger(__name__)


def _require_conditioning(conditioning, name: str) -> list:
    if not isinstance(conditioning, list) or any(
            not isinstance(e, (list, tuple)) or len(e) != 2 or not isinstance(e[1], dict) for e in conditioning):
        raise TypeError(f"{name}: expected CONDITIONING, a list of [tensor, dict] entries")
    return conditioning


def set_values(conditioning, values: dict, name: str = "conditioning") -> list:
    """A new conditioning list whose entries carry `values` in their extras; the tensors are shared
    and the input's dicts are never written to (upstream cache entries stay intact)."""
    return [[t, {**extras, **values}] for t, extras in _require_conditioning(conditioning, name)]


def _first_entry(conditioning_from, node: str):
    """ComfyUI's average and concat nodes only ever read the first entry of conditioning_from."""
    _require_conditioning(conditioning_from, "conditioning_from")
    if not conditioning_from:
        raise ValueError(f"{node}: conditioning_from is empty")
    if len(conditioning_from) > 1:
        log.warning("%s: conditioning_from has %d entries; only the first is used", node, len(conditioning_from))
    return conditioning_from[0]


def Strength(name: str = "strength") -> Float:
    return Float(name, 1.0, min=0.0, max=10.0, step=0.01)


def PixelInt(name: str, default: int, min: int) -> Int:
    return Int(name, default, min=min, max=MAX_RESOLUTION, step=8)


def Fraction(name: str, default: float, step: float = 0.01) -> Float:
    return Float(name, default, min=0.0, max=1.0, step=step)


class ConditioningCombine(Node):
    """Both lists of entries side by side: the sampler averages their predictions."""

    display_name = "Conditioning (Combine)"
    comfy_function = "combine"
    category = "conditioning"
    inputs = (Socket("conditioning_1", "CONDITIONING"), Socket("conditioning_2", "CONDITIONING"))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning_1, conditioning_2):
        return (_require_conditioning(conditioning_1, "conditioning_1")
                + _require_conditioning(conditioning_2, "conditioning_2"),)


def _fit_tokens(t_from: torch.Tensor, tokens: int) -> torch.Tensor:
    """conditioning_from cut or zero-padded to `tokens` tokens."""
    t_from = t_from[:, :tokens]
    if t_from.shape[1] < tokens:
        pad = t_from.new_zeros((t_from.shape[0], tokens - t_from.shape[1], t_from.shape[2]))
        t_from = torch.cat([t_from, pad], dim=1)
    return t_from


class ConditioningAverage(Node):
    """to * strength + from * (1 - strength), per token (from is cut or zero-padded to to's length),
    and the same for the pooled output."""

    # ComfyUI's display-name table spells this key "ConditioningAverage " (trailing space), so its
    # server reports the class name as the display name; we report the same.
    comfy_function = "addWeighted"
    category = "conditioning"
    inputs = (Socket("conditioning_to", "CONDITIONING"), Socket("conditioning_from", "CONDITIONING"),
              Fraction("conditioning_to_strength", 1.0))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning_to, conditioning_from, conditioning_to_strength):
        cond_from, extras_from = _first_entry(conditioning_from, "ConditioningAverage")
        pooled_from = extras_from.get("pooled_output")
        w = conditioning_to_strength
        out = []
        for t_to, extras_to in _require_conditioning(conditioning_to, "conditioning_to"):
            if t_to.shape[-1] != cond_from.shape[-1]:
                raise ValueError(f"ConditioningAverage: embedding sizes differ (conditioning_to {t_to.shape[-1]}, "
                                 f"conditioning_from {cond_from.shape[-1]}); both must come from the same model")
            mixed = t_to * w + _fit_tokens(cond_from, t_to.shape[1]) * (1.0 - w)
            extras = dict(extras_to)
            pooled_to = extras_to.get("pooled_output", pooled_from)
            if pooled_from is not None and pooled_to is not None:
                extras["pooled_output"] = pooled_to * w + pooled_from * (1.0 - w)
            elif pooled_from is not None:
                extras["pooled_output"] = pooled_from
            out.append([mixed, extras])
        return (out,)


class ConditioningConcat(Node):
    """conditioning_from's tokens appended to each entry of conditioning_to (one longer prompt)."""

    display_name = "Conditioning (Concat)"
    comfy_function = "concat"
    category = "conditioning"
    inputs = (Socket("conditioning_to", "CONDITIONING"), Socket("conditioning_from", "CONDITIONING"))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning_to, conditioning_from):
        cond_from, _ = _first_entry(conditioning_from, "ConditioningConcat")
        out = []
        for t_to, extras in _require_conditioning(conditioning_to, "conditioning_to"):
            if t_to.shape[-1] != cond_from.shape[-1]:
                raise ValueError(f"ConditioningConcat: embedding sizes differ (conditioning_to {t_to.shape[-1]}, "
                                 f"conditioning_from {cond_from.shape[-1]}); both must come from the same model")
            out.append([torch.cat((t_to, cond_from), dim=1), dict(extras)])
        return (out,)


class ConditioningSetArea(Node):
    """Restricts the conditioning to a rectangle given in pixels (stored in latent cells)."""

    display_name = "Conditioning (Set Area)"
    comfy_function = "append"
    category = "conditioning"
    inputs = (Socket("conditioning", "CONDITIONING"), PixelInt("width", 64, 64), PixelInt("height", 64, 64),
              PixelInt("x", 0, 0), PixelInt("y", 0, 0), Strength())
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning, width, height, x, y, strength):
        s = VAE_SCALE  # areas are stored in latent cells
        area = (height // s, width // s, y // s, x // s)
        return (set_values(conditioning, {"area": area, "strength": strength, "set_area_to_bounds": False}),)


class ConditioningSetAreaPercentage(Node):
    """The same as a fraction of the image; the sampler resolves it at the latent's size."""

    display_name = "Conditioning (Set Area with Percentage)"
    comfy_function = "append"
    category = "conditioning"
    inputs = (Socket("conditioning", "CONDITIONING"), Fraction("width", 1.0), Fraction("height", 1.0),
              Fraction("x", 0.0), Fraction("y", 0.0), Strength())
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning, width, height, x, y, strength):
        area = ("percentage", height, width, y, x)
        return (set_values(conditioning, {"area": area, "strength": strength, "set_area_to_bounds": False}),)


class ConditioningSetAreaStrength(Node):
    comfy_function = "append"
    category = "conditioning"
    inputs = (Socket("conditioning", "CONDITIONING"), Strength())
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning, strength):
        return (set_values(conditioning, {"strength": strength}),)


class ConditioningSetMask(Node):
    """Weights the conditioning per pixel by a mask; "mask bounds" also runs it only on the mask's
    bounding box (at least 8x8 latent cells), which is faster and gives the model a tighter crop."""

    display_name = "Conditioning (Set Mask)"
    comfy_function = "append"
    category = "conditioning"
    inputs = (Socket("conditioning", "CONDITIONING"), Socket("mask", "MASK"), Strength(),
              Combo("set_cond_area", ["default", "mask bounds"]))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning, mask, set_cond_area, strength):
        if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
            raise ValueError(f"ConditioningSetMask: mask must be a [H, W] or [B, H, W] tensor, got "
                             f"{getattr(mask, 'shape', type(mask).__name__)}")
        if mask.ndim < 3:
            mask = mask.unsqueeze(0)
        values = {"mask": mask, "set_area_to_bounds": set_cond_area != "default", "mask_strength": strength}
        return (set_values(conditioning, values),)


class ConditioningSetTimestepRange(Node):
    """Active only between two fractions of the sampling run (0 = first step, 1 = the end)."""

    comfy_function = "set_range"
    category = "advanced/conditioning"
    inputs = (Socket("conditioning", "CONDITIONING"), Fraction("start", 0.0, step=0.001),
              Fraction("end", 1.0, step=0.001))
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning, start, end):
        return (set_values(conditioning, {"start_percent": start, "end_percent": end}),)


class ConditioningZeroOut(Node):
    """All-zero embeddings (and pooled output) of the same shapes: a true empty negative for SDXL."""

    comfy_function = "zero_out"
    category = "advanced/conditioning"
    inputs = (Socket("conditioning", "CONDITIONING"),)
    outputs = (Output("CONDITIONING"),)

    def run(self, ctx, conditioning):
        out = []
        for t, extras in _require_conditioning(conditioning, "conditioning"):
            extras = dict(extras)
            if extras.get("pooled_output") is not None:
                extras["pooled_output"] = torch.zeros_like(extras["pooled_output"])
            out.append([torch.zeros_like(t), extras])
        return (out,)


NODES = [ConditioningCombine, ConditioningAverage, ConditioningConcat, ConditioningSetArea,
         ConditioningSetAreaPercentage, ConditioningSetAreaStrength, ConditioningSetMask,
         ConditioningSetTimestepRange, ConditioningZeroOut]
