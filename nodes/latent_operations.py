"""Latent operations (ComfyUI's latent/advanced/operations menu): functions over a latent, made by
one node and applied by another.

A LATENT_OPERATION value is a callable `operation(latent=samples, **kwargs) -> samples` on
[B, C, h, w] tensors, the shape ComfyUI's plugins exchange, so operations made here and by plugins
mix freely.
"""
from __future__ import annotations

from typing import Callable

import torch

from graph.contract import Float, Int, Node, Output, Socket
from nodes.image_tools import filter_image, sharpen_kernel
from nodes.latent import with_samples
from nodes.latent_math import LATENT_MODULE
from nodes.latent_tools import latent_samples

OPERATIONS = "latent/advanced/operations"
LatentOperation = Callable[..., torch.Tensor]


class _OperationNode(Node):
    category = OPERATIONS
    display_name = None
    EXPERIMENTAL = True


def tonemap_reinhard(multiplier: float) -> LatentOperation:
    """Compress each pixel's vector length m with Reinhard's curve m / (1 + m), after scaling so
    that `multiplier` x (mean + 5 std) of the lengths maps to 1; directions are kept."""

    def operation(latent: torch.Tensor, **_) -> torch.Tensor:
        length = (torch.linalg.vector_norm(latent, dim=1) + 1e-10)[:, None]
        direction = latent / length
        mean = torch.mean(length, dim=(1, 2, 3), keepdim=True)
        std = torch.std(length, dim=(1, 2, 3), keepdim=True)
        top = (std * 5 + mean) * multiplier
        scaled = length * (1.0 / top)
        return direction * (scaled / (scaled + 1.0) * top)

    return operation


def sharpen(radius: int, sigma: float, alpha: float) -> LatentOperation:
    """Unsharp-mask the per-pixel directions (ImageSharpen's kernel, mirrored edges), keeping each
    pixel's vector length."""

    def operation(latent: torch.Tensor, **_) -> torch.Tensor:
        length = (torch.linalg.vector_norm(latent, dim=1) + 1e-6)[:, None]
        kernel = sharpen_kernel(radius, sigma, alpha, device=latent.device)
        sharpened = filter_image((latent / length).movedim(1, -1), kernel, radius).movedim(-1, 1)
        return length * sharpened

    return operation


class LatentOperationTonemapReinhard(_OperationNode):
    comfy_function = "execute"
    comfy_module = LATENT_MODULE
    inputs = (Float("multiplier", 1.0, min=0.0, max=100.0, step=0.01),)
    outputs = (Output("LATENT_OPERATION"),)

    def run(self, ctx, multiplier):
        return (tonemap_reinhard(multiplier),)


class LatentOperationSharpen(_OperationNode):
    comfy_function = "execute"
    comfy_module = LATENT_MODULE
    inputs = (Int("sharpen_radius", 9, min=1, max=31, step=1), Float("sigma", 1.0, min=0.1, max=10.0, step=0.1),
              Float("alpha", 0.1, min=0.0, max=5.0, step=0.01))
    outputs = (Output("LATENT_OPERATION"),)

    def run(self, ctx, sharpen_radius, sigma, alpha):
        return (sharpen(sharpen_radius, sigma, alpha),)


class LatentApplyOperation(_OperationNode):
    comfy_function = "execute"
    comfy_module = LATENT_MODULE
    inputs = (Socket("samples", "LATENT"), Socket("operation", "LATENT_OPERATION"))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, operation):
        return (with_samples(samples, operation(latent=latent_samples(samples, "samples"))),)


NODES = [LatentOperationTonemapReinhard, LatentOperationSharpen, LatentApplyOperation]
