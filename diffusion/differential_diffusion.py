"""Differential Diffusion (Levin & Fried 2023): a soft inpainting mask as a per-pixel strength.
At each step only the pixels whose mask value reaches the step's progress threshold are
regenerated, so a pixel with mask m is changed over the last m of the schedule; `strength` < 1
blends that binary mask with the soft one.
"""
from __future__ import annotations

import torch


def differential_denoise_mask(strength: float = 1.0):
    """A denoise_mask_function (sigma, denoise_mask, extra_options) -> mask for the MODEL."""

    def mask_function(sigma: torch.Tensor, denoise_mask: torch.Tensor, extra_options: dict) -> torch.Tensor:
        model_sampling = extra_options["model"].inner_model.model_sampling
        step_sigmas = extra_options["sigmas"]
        sigma_to = model_sampling.sigma_min
        sigma_to = max(sigma_to, step_sigmas[-1])
        ts_from = model_sampling.timestep(step_sigmas[0])
        ts_to = model_sampling.timestep(sigma_to)
        threshold = (model_sampling.timestep(sigma[0]) - ts_to) / (ts_from - ts_to)
        binary = (denoise_mask >= threshold).to(denoise_mask.dtype)
        if strength and strength < 1:
            return strength * binary + (1 - strength) * denoise_mask
        return binary

    return mask_function


__all__ = ["differential_denoise_mask"]
