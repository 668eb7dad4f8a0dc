"""Latent nodes: empty latents and latent resizing. LATENT = {"samples": [B, 4, H/8, W/8], ...}."""
from __future__ import annotations

import torch

from diffusion.upscale import CROP_METHODS, LATENT_METHODS, upscale
from graph.contract import Combo, Float, Int, Node, Output, Socket
from nodes.image import MAX_RESOLUTION

LATENT_CHANNELS = 4
MIN_LATENT_UPSCALE = 64  # pixels: ComfyUI never shrinks a latent upscale below this


class EmptyLatentImage(Node):
    """A batch of zero latents; the sampler turns them into noise scaled to its first sigma."""

    display_name = "Empty Latent Image"
    comfy_function = "generate"
    category = "latent"
    inputs = (
        Int("width", 512, min=16, max=MAX_RESOLUTION, step=8),
        Int("height", 512, min=16, max=MAX_RESOLUTION, step=8),
        Int("batch_size", 1, min=1, max=4096),
    )
    outputs = (Output("LATENT"),)

    def run(self, ctx, width, height, batch_size=1):
        return ({"samples": torch.zeros([batch_size, LATENT_CHANNELS, height // 8, width // 8])},)


def with_samples(latent: dict, samples: torch.Tensor) -> dict:
    """A copy of the LATENT dict with new samples; masks and batch indices ride along."""
    out = dict(latent)
    out["samples"] = samples
    return out


class LatentUpscale(Node):
    display_name = "Upscale Latent"
    comfy_function = "upscale"
    upscale_methods = LATENT_METHODS  # ComfyUI's class attributes, read by plugins
    crop_methods = CROP_METHODS
    category = "latent"
    inputs = (
        Socket("samples", "LATENT"),
        Combo("upscale_method", LATENT_METHODS),
        Int("width", 512, min=0, max=MAX_RESOLUTION, step=8),
        Int("height", 512, min=0, max=MAX_RESOLUTION, step=8),
        Combo("crop", CROP_METHODS),
    )
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, upscale_method, width, height, crop):
        latent = samples["samples"]
        if width == 0 and height == 0:
            return (samples,)
        h, w = latent.shape[-2:]
        if width == 0:  # keep the aspect ratio from the given height
            height = max(MIN_LATENT_UPSCALE, height)
            width = max(MIN_LATENT_UPSCALE, round(w * height / h))
        elif height == 0:
            width = max(MIN_LATENT_UPSCALE, width)
            height = max(MIN_LATENT_UPSCALE, round(h * width / w))
        else:
            width, height = max(MIN_LATENT_UPSCALE, width), max(MIN_LATENT_UPSCALE, height)
        return (with_samples(samples, upscale(latent, width // 8, height // 8, upscale_method, crop)),)


class LatentUpscaleBy(Node):
    display_name = "Upscale Latent By"
    comfy_function = "upscale"
    upscale_methods = LATENT_METHODS  # ComfyUI's class attributes, read by plugins
    category = "latent"
    inputs = (
        Socket("samples", "LATENT"),
        Combo("upscale_method", LATENT_METHODS),
        Float("scale_by", 1.5, min=0.01, max=8.0, step=0.01),
    )
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, upscale_method, scale_by):
        h, w = samples["samples"].shape[-2:]
        resized = upscale(samples["samples"], round(w * scale_by), round(h * scale_by), upscale_method)
        return (with_samples(samples, resized),)


NODES = [EmptyLatentImage, LatentUpscale, LatentUpscaleBy]
