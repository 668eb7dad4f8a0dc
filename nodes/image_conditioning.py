"""Conditioning on an image for models that take one as extra input channels: InstructPix2Pix
(the image to edit, as a latent) and the SD x4 upscaler (the low-resolution image)."""
from __future__ import annotations

import torch

from diffusion.upscale import upscale
from graph.contract import Float, Node, Output, Socket
from nodes.conditioning_tools import set_values


class InstructPixToPixConditioning(Node):
    """Encodes the image to edit (cropped to a multiple of 8 pixels) and attaches its latent to both
    prompts; the latent output is zeros of the same size to sample from."""

    display_name = None
    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_ip2p"
    category = "conditioning/instructpix2pix"
    inputs = (Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"), Socket("vae", "VAE"),
              Socket("pixels", "IMAGE"))
    outputs = (Output("CONDITIONING", name="positive"), Output("CONDITIONING", name="negative"),
               Output("LATENT", name="latent"))

    def run(self, ctx, positive, negative, pixels, vae):  # ComfyUI's parameter order
        h, w = pixels.shape[1] // 8 * 8, pixels.shape[2] // 8 * 8
        top, left = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
        concat = vae.encode(pixels[:, top:top + h, left:left + w, :])
        values = {"concat_latent_image": concat}
        return (set_values(positive, values, "positive"), set_values(negative, values, "negative"),
                {"samples": torch.zeros_like(concat)})


class SD_4XUpscale_Conditioning(Node):
    """For the SD x4 upscaler: the images scaled by scale_ratio / 4 (bilinear, in -1..1) ride with
    both prompts with the noise augmentation; the latent output is zeros at a quarter of the target
    size."""

    display_name = None
    comfy_function = "execute"
    comfy_module = "comfy_extras.nodes_sdupscale"
    category = "conditioning/upscale_diffusion"
    inputs = (Socket("images", "IMAGE"), Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"),
              Float("scale_ratio", 4.0, min=0.0, max=10.0, step=0.01),
              Float("noise_augmentation", 0.0, min=0.0, max=1.0, step=0.001))
    outputs = (Output("CONDITIONING", name="positive"), Output("CONDITIONING", name="negative"),
               Output("LATENT", name="latent"))

    def run(self, ctx, images, positive, negative, scale_ratio, noise_augmentation):
        width = max(1, round(images.shape[-2] * scale_ratio))
        height = max(1, round(images.shape[-3] * scale_ratio))
        pixels = upscale(images.movedim(-1, 1) * 2.0 - 1.0, width // 4, height // 4, "bilinear", "center")
        values = {"concat_image": pixels, "noise_augmentation": noise_augmentation}
        latent = torch.zeros([images.shape[0], 4, height // 4, width // 4])
        return (set_values(positive, values, "positive"), set_values(negative, values, "negative"),
                {"samples": latent})


NODES = [InstructPixToPixConditioning, SD_4XUpscale_Conditioning]
