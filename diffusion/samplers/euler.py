"""Euler and Heun family (Karras et al. 2022, "Elucidating the design space of diffusion-based
generative models"), their ancestral and CFG++ forms, DPM-Solver-2 in Karras' form, Heun++ and
gradient estimation."""
from __future__ import annotations

import torch

from .common import (args_or_empty, capture_uncond, churn, get_ancestral_step, ones_like_batch, report, step_noise,
                     to_d)


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """Euler steps on the probability-flow ODE; Algorithm 2 of Karras et al. without the Heun
    correction. With churn > 0 it re-noises before each step (their stochastic sampler)."""
    extra_args = args_or_empty(extra_args)
    s_in = ones_like_batch(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], denoised, sigma_hat)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None):
    """Ancestral sampling with Euler steps: step deterministically to sigma_down, then add fresh
    noise of std sigma_up (k-diffusion's "Euler a"; eta = 1 matches DDPM's posterior variance)."""
    extra_args = args_or_empty(extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    s_in = ones_like_batch(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        report(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i]) + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                                  s_noise=1.0, noise_sampler=None):
    """Euler ancestral with CFG++: land on the guided x0, then go back up to sigma_down along the
    unconditional noise direction: x = D_cfg + sigma_down * (x - D_uncond) / sigma, plus noise."""
    extra_args, box = capture_uncond(args_or_empty(extra_args))
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    s_in = ones_like_batch(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        d = to_d(x, sigmas[i], box["uncond"])
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        x = denoised + sigma_down * d
        if eta > 0 and s_noise > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_euler_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler with CFG++ (deterministic)."""
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args, callback, disable, eta=0.0, s_noise=0.0)


@torch.no_grad()
def sample_euler_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """The "alternative" CFG++ Euler of SamplerEulerCFGpp: an Euler step whose slope is taken from
    x shifted by the guidance, d = (x - D_cfg + D_uncond - D_cfg) / sigma."""
    extra_args, box = capture_uncond(args_or_empty(extra_args))
    s_in = ones_like_batch(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x - denoised + box["uncond"], sigmas[i], denoised)
        report(callback, x, i, sigmas[i], denoised)
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0):
    """Heun's second-order method, Algorithm 2 of Karras et al. The final step to sigma = 0 is a
    plain Euler step, since the derivative is undefined there."""
    extra_args = args_or_empty(extra_args)
    s_in = ones_like_batch(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], denoised, sigma_hat)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_heunpp2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                   s_tmax=float("inf"), s_noise=1.0):
    """Heun++ (the sd-webui-samplers-scheduler "Heun++2"): like Heun, but away from the end it also
    looks two sigmas ahead and averages three slopes with weights sigma_{i+1}/(3 sigma_0) and
    sigma_{i+2}/(3 sigma_0), so the extra slopes matter most early on."""
    extra_args = args_or_empty(extra_args)
    s_in = ones_like_batch(x)
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], denoised, sigma_hat)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == s_end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
        if sigmas[i + 2] == s_end:
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
        else:
            x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
            d_3 = to_d(x_3, sigmas[i + 2], model(x_3, sigmas[i + 2] * s_in, **extra_args))
            w2, w3 = sigmas[i + 1] / (3 * sigmas[0]), sigmas[i + 2] / (3 * sigmas[0])
            x = x + ((1 - w2 - w3) * d + w2 * d_2 + w3 * d_3) * dt
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """DPM-Solver-2 (Lu et al. 2022) in Karras et al.'s form: an Euler half-step to the geometric
    mean sigma_mid, then the full step with the slope measured there."""
    extra_args = args_or_empty(extra_args)
    s_in = ones_like_batch(x)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], denoised, sigma_hat)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None):
    """Ancestral sampling with DPM-Solver-2 steps to sigma_down, then noise of std sigma_up."""
    extra_args = args_or_empty(extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    s_in = ones_like_batch(x)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        report(callback, x, i, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_gradient_estimation(model, x, sigmas, extra_args=None, callback=None, disable=None, ge_gamma=2.0,
                               cfg_pp=False):
    """Gradient estimation (Permenter & Yuan 2024, "Interpreting and improving diffusion models from
    an optimization perspective"): Euler plus (gamma - 1) times the change in slope."""
    extra_args = args_or_empty(extra_args)
    box = {}
    if cfg_pp:
        extra_args, box = capture_uncond(extra_args)
    s_in = ones_like_batch(x)
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], box["uncond"] if cfg_pp else denoised)
        report(callback, x, i, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if cfg_pp else x + d * dt
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


@torch.no_grad()
def sample_gradient_estimation_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, ge_gamma=2.0):
    """Gradient estimation with CFG++."""
    return sample_gradient_estimation(model, x, sigmas, extra_args, callback, disable, ge_gamma, cfg_pp=True)
