"""Latent arithmetic and reshaping (ComfyUI's latent/advanced menu): add, subtract, multiply,
interpolate, concatenate, cut, and the batch's seed behaviour.

LATENT = {"samples": [B, C, h, w], ...}; each node returns a shallow copy of its first input with
new samples, so noise masks and batch indices ride along as in ComfyUI.
"""
from __future__ import annotations

import torch

from graph.contract import Choice, Float, Int, Node, Output, Socket
from nodes.image import MAX_RESOLUTION
from nodes.latent import with_samples
from nodes.latent_tools import latent_samples, reshape_latent_to
from nodes.mask import repeat_to_batch

ADVANCED = "latent/advanced"
LATENT_MODULE = "comfy_extras.nodes_latent"


class _LatentNode(Node):
    category = ADVANCED
    display_name = None
    outputs = (Output("LATENT"),)


class LatentAdd(_LatentNode):
    """samples1 + samples2 (samples2 resized bilinearly with centre crop and batch-cycled to fit)."""
    comfy_function = "execute"

    comfy_module = LATENT_MODULE
    inputs = (Socket("samples1", "LATENT"), Socket("samples2", "LATENT"))

    def run(self, ctx, samples1, samples2):
        s1 = latent_samples(samples1, "samples1")
        return (with_samples(samples1, s1 + reshape_latent_to(s1.shape, latent_samples(samples2, "samples2"))),)


class LatentSubtract(_LatentNode):
    """samples1 - samples2 (samples2 fitted to samples1 as in LatentAdd)."""
    comfy_function = "execute"

    comfy_module = LATENT_MODULE
    inputs = (Socket("samples1", "LATENT"), Socket("samples2", "LATENT"))

    def run(self, ctx, samples1, samples2):
        s1 = latent_samples(samples1, "samples1")
        return (with_samples(samples1, s1 - reshape_latent_to(s1.shape, latent_samples(samples2, "samples2"))),)


class LatentMultiply(_LatentNode):
    comfy_function = "execute"
    comfy_module = LATENT_MODULE
    inputs = (Socket("samples", "LATENT"), Float("multiplier", 1.0, min=-10.0, max=10.0, step=0.01))

    def run(self, ctx, samples, multiplier):
        return (with_samples(samples, latent_samples(samples, "samples") * multiplier),)


def _channel_norms(samples: torch.Tensor) -> torch.Tensor:
    """Per-pixel vector lengths over the channels, [B, h, w], to divide [B, C, h, w] by as ComfyUI
    does: aligned from the right, so for a batch of one each pixel's vector is normalised, and a
    batch of B latents broadcasts its norms against the channel axis (possible only for B == C)."""
    norms = torch.linalg.vector_norm(samples, dim=1)
    if norms.shape[0] not in (1, samples.shape[1]):
        raise ValueError(f"LatentInterpolate takes a batch of 1 (or of {samples.shape[1]}, as many as the latent "
                         f"has channels), as ComfyUI does; got a batch of {norms.shape[0]}")
    return norms


class LatentInterpolate(_LatentNode):
    """Spherical-style blend: directions mixed by `ratio` (samples1's weight) and renormalised,
    lengths mixed linearly."""
    comfy_function = "execute"

    comfy_module = LATENT_MODULE
    inputs = (Socket("samples1", "LATENT"), Socket("samples2", "LATENT"),
              Float("ratio", 1.0, min=0.0, max=1.0, step=0.01))

    def run(self, ctx, samples1, samples2, ratio):
        s1 = latent_samples(samples1, "samples1")
        s2 = reshape_latent_to(s1.shape, latent_samples(samples2, "samples2"))
        m1, m2 = _channel_norms(s1), _channel_norms(s2)
        mixed = torch.nan_to_num(s1 / m1) * ratio + torch.nan_to_num(s2 / m2) * (1.0 - ratio)
        direction = torch.nan_to_num(mixed / _channel_norms(mixed))
        return (with_samples(samples1, direction * (m1 * ratio + m2 * (1.0 - ratio))),)


CONCAT_DIMS = ["x", "-x", "y", "-y", "t", "-t"]
AXES = {"x": -1, "y": -2, "t": -3}  # on a [B, C, h, w] image latent, "t" is the channel axis


class LatentConcat(_LatentNode):
    """samples2 appended to samples1 along x (width), y (height) or t; a leading "-" puts samples2
    first. samples2's batch is cycled or cut to samples1's."""
    comfy_function = "execute"

    comfy_module = LATENT_MODULE
    inputs = (Socket("samples1", "LATENT"), Socket("samples2", "LATENT"), Choice("dim", CONCAT_DIMS))

    def run(self, ctx, samples1, samples2, dim):
        if dim not in CONCAT_DIMS:
            raise ValueError(f"LatentConcat: dim must be one of {CONCAT_DIMS}, got {dim!r}")
        s1 = latent_samples(samples1, "samples1")
        s2 = latent_samples(samples2, "samples2")
        s2 = repeat_to_batch(s2, s1.shape[0])
        parts = (s2, s1) if dim.startswith("-") else (s1, s2)
        axis = AXES[dim[-1]]
        for other in range(-s1.dim(), 0):
            if other != axis and s1.shape[other] != s2.shape[other]:
                raise ValueError(f"LatentConcat along {dim}: samples1 is {list(s1.shape)} and samples2 "
                                 f"{list(s2.shape)}; every other dimension must match")
        return (with_samples(samples1, torch.cat(parts, dim=axis)),)


class LatentCut(_LatentNode):
    """`amount` cells from `index` along x, y or t; a negative index counts from the end. Both are
    clamped to the latent."""
    comfy_function = "execute"

    comfy_module = LATENT_MODULE
    inputs = (Socket("samples", "LATENT"), Choice("dim", ["x", "y", "t"]),
              Int("index", 0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
              Int("amount", 1, min=1, max=MAX_RESOLUTION, step=1))

    def run(self, ctx, samples, dim, index, amount):
        if dim not in AXES:
            raise ValueError(f"LatentCut: dim must be one of {list(AXES)}, got {dim!r}")
        s = latent_samples(samples, "samples")
        axis = s.dim() + AXES[dim]
        size = s.shape[axis]
        if index >= 0:
            index = min(index, size - 1)
            amount = min(size - index, amount)
        else:
            index = max(index, -size)
            amount = min(-index, amount)
        return (with_samples(samples, torch.narrow(s, axis, index, amount)),)


class LatentBatchSeedBehavior(_LatentNode):
    """"fixed": every latent of the batch gets the first one's noise (its batch index repeated);
    "random": the batch indices are dropped, so each latent gets its own noise."""
    comfy_function = "execute"

    comfy_module = LATENT_MODULE
    inputs = (Socket("samples", "LATENT"), Choice("seed_behavior", ["random", "fixed"], default="fixed"))

    def run(self, ctx, samples, seed_behavior):
        out = dict(samples)
        if seed_behavior == "random":
            out.pop("batch_index", None)
        elif seed_behavior == "fixed":
            first = out.get("batch_index", [0])[0]
            out["batch_index"] = [first] * latent_samples(samples, "samples").shape[0]
        else:
            raise ValueError(f"seed_behavior must be 'random' or 'fixed', got {seed_behavior!r}")
        return (out,)


NODES = [LatentAdd, LatentSubtract, LatentMultiply, LatentInterpolate, LatentConcat, LatentCut,
         LatentBatchSeedBehavior]
