"""One-jump samplers: ancestral DDPM between table points, Latent Consistency Model sampling and its
upscaling variant."""
from __future__ import annotations

import numpy as np
import torch

from .common import args_or_empty, model_sampling_of, ones_like_batch, report, step_noise


@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Ancestral DDPM sampling (Ho et al. 2020, Alg. 2) between arbitrary table points: each step
    draws from the posterior q(x_{t'} | x_t, x0) in the VP frame, with the step's own
    alpha = abar_t / abar_t'."""
    extra_args = args_or_empty(extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    s_in = ones_like_batch(x)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        report(callback, x, i, sigma, denoised)
        eps = (x - denoised) / sigma
        x_vp = x / torch.sqrt(1.0 + sigma ** 2.0)
        abar, abar_next = 1 / (sigma * sigma + 1), 1 / (sigma_next * sigma_next + 1)
        alpha = abar / abar_next
        x = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - abar).sqrt())
        if sigma_next > 0:
            x = x + ((1 - alpha) * (1.0 - abar_next) / (1.0 - abar)).sqrt() * noise_sampler(sigma, sigma_next)
            x = x * torch.sqrt(1.0 + sigma_next ** 2.0)
    return x


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Latent Consistency Model sampling (Luo et al. 2023, Alg. 1): jump to the denoised estimate,
    then re-noise it to the next sigma with fresh noise."""
    extra_args = args_or_empty(extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    ms = model_sampling_of(model)
    s_in = ones_like_batch(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = ms.noise_scaling(sigmas[i + 1], noise_sampler(sigmas[i], sigmas[i + 1]), x)
    return x


@torch.no_grad()
def sample_lcm_upscale(model, x, sigmas, extra_args=None, callback=None, disable=None, total_upscale=2.0,
                       upscale_method="bislerp", upscale_steps=None):
    """LCM sampling that grows the latent while it samples (SamplerLCMUpscale): after each of the
    first `upscale_steps` jumps the denoised latent is resized, by factors spaced linearly from 1
    to `total_upscale` (of the original size), before it is re-noised. `upscale_steps` None means
    about half the steps. The fresh noise comes from torch's global generator, as in ComfyUI."""
    from ..upscale import upscale

    extra_args = args_or_empty(extra_args)
    if upscale_steps is None:
        upscale_steps = max(len(sigmas) // 2 + 1, 2)
    else:
        upscale_steps = min(upscale_steps + 1, len(sigmas) + 1)
    factors = np.linspace(1.0, total_upscale, upscale_steps)[1:]
    height, width = x.shape[-2:]
    s_in = ones_like_batch(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], denoised)
        x = denoised
        if i < len(factors):
            x = upscale(x, round(width * factors[i]), round(height * factors[i]), upscale_method)
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * torch.randn_like(x)
    return x
