"""ComfyUI's `comfy.sample`: sample (KSampler's path), sample_custom, prepare_noise,
fix_empty_latent_channels. The built-in KSampler and SamplerCustom nodes call these through this
module's attributes, so a plugin that replaces one changes what those nodes do."""
from __future__ import annotations

import logging

from diffusion.ksampler import fix_empty_latent_channels
from diffusion.ksampler import sample_custom_latent as sample_custom
from diffusion.ksampler import sample_latent as sample
from diffusion.noise import prepare_noise

log = logging.getLogger(__name__)


def prepare_sampling(model, noise_shape, positive, negative, noise_mask):
    log.warning("comfy.sample.prepare_sampling isn't used anymore and can be removed")
    return model, positive, negative, noise_mask, []


def cleanup_additional_models(models) -> None:
    log.warning("comfy.sample.cleanup_additional_models isn't used anymore and can be removed")


__all__ = ["cleanup_additional_models", "fix_empty_latent_channels", "prepare_noise", "prepare_sampling", "sample",
           "sample_custom"]
