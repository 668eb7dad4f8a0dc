"""Kohya's Deep Shrink (ComfyUI's PatchModelAddDownscale): during an early range of the sampling,
the features after one input block are downscaled, so the UNet's deep levels see the layout of a
smaller image (the composition a model trained at lower resolution gets right); the decoder
upscales them back to each skip connection's size.
"""
from __future__ import annotations

from .upscale import upscale


def deep_shrink_patches(model_sampling, block_number: int, downscale_factor: float, start_percent: float,
                        end_percent: float, downscale_method: str, upscale_method: str):
    """(input_block_patch, output_block_patch): after input block `block_number`, features are
    resized by 1 / downscale_factor while the step's sigma lies within the percent range; the
    decoder resizes any features whose height differs from the skip's to the skip's size."""
    sigma_start = model_sampling.percent_to_sigma(start_percent)
    sigma_end = model_sampling.percent_to_sigma(end_percent)

    def shrink(h, transformer_options):
        if transformer_options["block"][1] == block_number:
            sigma = transformer_options["sigmas"][0].item()
            if sigma_end <= sigma <= sigma_start:
                h = upscale(h, round(h.shape[-1] * (1.0 / downscale_factor)),
                            round(h.shape[-2] * (1.0 / downscale_factor)), downscale_method, "disabled")
        return h

    def restore(h, skip, transformer_options):
        if h.shape[2] != skip.shape[2]:
            h = upscale(h, skip.shape[-1], skip.shape[-2], upscale_method, "disabled")
        return h, skip

    return shrink, restore


__all__ = ["deep_shrink_patches"]
