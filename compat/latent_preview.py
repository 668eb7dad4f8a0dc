"""ComfyUI's `latent_preview` for plugins: live previews of a sampler's current estimate.

prepare_callback's callback reports each step to the running node as our own samplers do, handing
the latent itself over; the server turns it into a preview frame only when a client can take one
(rate-limited, latent-to-RGB or TAESD by --preview-method). get_previewer gives plugins that draw
their own previews ComfyUI's previewer objects.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from PIL import Image

import comfy.utils
import folder_paths
from comfy.cli_args import LatentPreviewMethod, args
from graph.context import LatentPreview

log = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    if name == "MAX_PREVIEW_RESOLUTION":
        return args.preview_size
    raise AttributeError(f"module 'latent_preview' has no attribute {name!r}")


def preview_to_image(latent_image: torch.Tensor) -> Image.Image:
    """[H, W, 3] in [-1, 1] -> an RGB image (8-bit by truncation, as ComfyUI)."""
    pixels = ((latent_image + 1.0) / 2.0).clamp(0, 1).mul(0xFF)
    return Image.fromarray(pixels.to(device="cpu", dtype=torch.uint8).numpy())


class LatentPreviewer:
    def decode_latent_to_preview(self, x0: torch.Tensor) -> Image.Image:
        raise NotImplementedError

    def decode_latent_to_preview_image(self, preview_format: str, x0: torch.Tensor) -> tuple:
        return ("JPEG", self.decode_latent_to_preview(x0), args.preview_size)


class Latent2RGBPreviewer(LatentPreviewer):
    """The first latent of a batch projected to RGB by per-channel factors ([C][3]) and a bias."""

    def __init__(self, latent_rgb_factors, latent_rgb_factors_bias=None):
        self.latent_rgb_factors = torch.tensor(latent_rgb_factors, device="cpu").transpose(0, 1)
        self.latent_rgb_factors_bias = (None if latent_rgb_factors_bias is None
                                        else torch.tensor(latent_rgb_factors_bias, device="cpu"))

    def decode_latent_to_preview(self, x0: torch.Tensor) -> Image.Image:
        x0 = x0[0, :, 0] if x0.ndim == 5 else x0[0]
        weight = self.latent_rgb_factors.to(x0)
        bias = None if self.latent_rgb_factors_bias is None else self.latent_rgb_factors_bias.to(x0)
        return preview_to_image(torch.nn.functional.linear(x0.movedim(0, -1), weight, bias=bias))


class TAESDPreviewerImpl(LatentPreviewer):
    """The first latent of a batch through a TAESD decoder (server/taesd.py)."""

    def __init__(self, taesd):
        self.taesd = taesd

    def decode_latent_to_preview(self, x0: torch.Tensor) -> Image.Image:
        with torch.inference_mode():
            pixels = self.taesd(x0[:1].float()).clamp(0, 1)[0].movedim(0, 2)
        return preview_to_image(pixels * 2.0 - 1.0)


def get_previewer(device, latent_format) -> LatentPreviewer | None:
    """The previewer --preview-method asks for, for latents in latent_format (a
    comfy.latent_formats object): TAESD when chosen and its decoder is in vae_approx, else
    latent-to-RGB where the format has factors; None for --preview-method none."""
    method = args.preview_method
    if method == LatentPreviewMethod.NoPreviews:
        return None
    if method == LatentPreviewMethod.TAESD:
        name = getattr(latent_format, "taesd_decoder_name", None)
        found = next((f for f in folder_paths.get_filename_list("vae_approx") if name and f.startswith(name)), None)
        if found is not None:
            from server.taesd import load_decoder
            return TAESDPreviewerImpl(load_decoder(folder_paths.get_full_path("vae_approx", found)).to(device))
        log.warning("TAESD previews chosen, but models/vae_approx has no %s", name)
    factors = getattr(latent_format, "latent_rgb_factors", None)
    if factors is None:
        return None
    return Latent2RGBPreviewer(factors, getattr(latent_format, "latent_rgb_factors_bias", None))


def prepare_callback(model, steps: int, x0_output_dict: dict | None = None) -> Callable:
    """A sampler callback (step, x0, x, total_steps): step + 1 of total_steps goes to the running
    node's progress with x0 as its live preview; x0_output_dict["x0"] keeps the latest x0."""
    bar = comfy.utils.ProgressBar(steps)
    family = getattr(model, "family", "sd1")

    def callback(step: int, x0: torch.Tensor, x: torch.Tensor, total_steps: int) -> None:
        if x0_output_dict is not None:
            x0_output_dict["x0"] = x0
        bar.update_absolute(step + 1, total_steps, LatentPreview(x0, family))

    return callback
