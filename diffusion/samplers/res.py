"""RES multistep (Zhang et al. 2023, "Improved order analysis and design of exponential integrator
for diffusion models", arXiv:2308.02157): second-order exponential multistep in t = -log sigma,
deterministic or ancestral, each with its CFG++ form."""
from __future__ import annotations

import torch

from .common import (args_or_empty, capture_uncond, get_ancestral_step, ones_like_batch, report, sigma_of,
                     step_noise, t_of, to_d)


def _res_multistep(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, eta, cfg_pp):
    """Second-order "refined exponential solver" multistep in t = -log sigma, optionally ancestral."""
    extra_args = args_or_empty(extra_args)
    box = {}
    if cfg_pp:
        extra_args, box = capture_uncond(extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    s_in = ones_like_batch(x)
    old_sigma_down, old_denoised = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        report(callback, x, i, sigmas[i], denoised)
        step_from = box["uncond"] if cfg_pp else denoised
        if sigma_down == 0 or old_denoised is None:
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], step_from) * sigma_down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = t_of(sigmas[i]), t_of(sigma_down)
            h = t_next - t
            c2 = (t_of(sigmas[i - 1]) - t_of(old_sigma_down)) / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - step_from)
            x = sigma_of(h) * x + h * (b1 * step_from + b2 * old_denoised)
        if sigmas[i + 1] > 0 and sigma_up:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised, old_sigma_down = step_from, sigma_down
    return x


@torch.no_grad()
def sample_res_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                         noise_sampler=None):
    """RES multistep (Zhang et al. 2023, "Improved order analysis and design of exponential
    integrator for diffusion models"), second order, deterministic."""
    return _res_multistep(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, 0.0, False)


@torch.no_grad()
def sample_res_multistep_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                                noise_sampler=None):
    """RES multistep with CFG++."""
    return _res_multistep(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, 0.0, True)


@torch.no_grad()
def sample_res_multistep_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                                   s_noise=1.0, noise_sampler=None):
    """RES multistep stepping to sigma_down, then ancestral noise."""
    return _res_multistep(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, eta, False)


@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                                          s_noise=1.0, noise_sampler=None):
    """Ancestral RES multistep with CFG++."""
    return _res_multistep(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, eta, True)
