"""DPM-Solver++ (Lu et al. 2022b, arXiv:2211.01095), data-prediction form in t = -log sigma:
the single-step 2S (ancestral) and the multistep 2M, each with its CFG++ form."""
from __future__ import annotations

import torch

from .common import (args_or_empty, capture_uncond, get_ancestral_step, ones_like_batch, report, sigma_of, step_noise,
                     t_of, to_d)


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                              noise_sampler=None):
    """Ancestral sampling with DPM-Solver++(2S) steps (single-step, second order, midpoint in t)
    down to sigma_down, then noise of std sigma_up."""
    extra_args = args_or_empty(extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    s_in = ones_like_batch(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        report(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = t_of(sigmas[i]), t_of(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (sigma_of(s) / sigma_of(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, sigma_of(s) * s_in, **extra_args)
            x = (sigma_of(t_next) / sigma_of(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                                     s_noise=1.0, noise_sampler=None):
    """DPM-Solver++(2S) ancestral with CFG++: each stage starts from x moved by the guidance
    (x + D_cfg - D_uncond, so the exponential decay acts on the unconditional noise only), the
    midpoint is evaluated with guidance again, and the full step uses the first guided estimate
    with the midpoint's unconditional one (so, unlike the other CFG++ samplers, it does not reduce
    to its base sampler when cond equals uncond). The last step (sigma_down = 0) lands on D_cfg."""
    extra_args, box = capture_uncond(args_or_empty(extra_args))
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    s_in = ones_like_batch(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        report(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0:
            x = denoised + to_d(x, sigmas[i], box["uncond"]) * sigma_down
        else:
            t, t_next = t_of(sigmas[i]), t_of(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (sigma_of(s) / sigma_of(t)) * (x + denoised - box["uncond"]) - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, sigma_of(s) * s_in, **extra_args)
            # box["uncond"] is now the midpoint's unconditional estimate (ComfyUI's order of reads)
            x = (sigma_of(t_next) / sigma_of(t)) * (x + denoised - box["uncond"]) - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M), Lu et al. 2022b Alg. 2: multistep second order using the previous
    denoised estimate; first order on the first step and on the final step to sigma = 0."""
    extra_args = args_or_empty(extra_args)
    s_in = ones_like_batch(x)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], denoised)
        t, t_next = t_of(sigmas[i]), t_of(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            denoised_d = denoised
        else:
            r = (t - t_of(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigma_of(t_next) / sigma_of(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) with CFG++: x_next = D_cfg + e^-h (x - D_uncond), plus the multistep
    correction against the previous unconditional estimate."""
    extra_args, box = capture_uncond(args_or_empty(extra_args))
    s_in = ones_like_batch(x)
    old_uncond = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        uncond = box["uncond"]
        report(callback, x, i, sigmas[i], denoised)
        t, t_next = t_of(sigmas[i]), t_of(sigmas[i + 1])
        h = t_next - t
        mix = -torch.exp(-h) * uncond
        if old_uncond is not None and sigmas[i + 1] != 0:
            r = (t - t_of(sigmas[i - 1])) / h
            mix = mix - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = uncond
    return x
