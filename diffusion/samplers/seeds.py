"""SEEDS (Gonzalez et al. 2023, "SEEDS: exponential SDE solvers for fast high-quality sampling from
diffusion models", arXiv:2305.14267): stochastic exponential derivative-free solvers in
data-prediction form, two or three stages whose noises are correlated as one Brownian path."""
from __future__ import annotations

import torch

from .common import args_or_empty, ones_like_batch, phi_1, phi_2, report, sigma_of, step_noise, t_of


@torch.no_grad()
def sample_seeds_2(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                   noise_sampler=None, r=0.5):
    """SEEDS-2 (Gonzalez et al. 2023, arXiv:2305.14267), stochastic exponential derivative-free
    solver, data prediction, two stages; the stage noises are correlated as one Brownian path."""
    extra_args = args_or_empty(extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    s_in = ones_like_batch(x)
    noisy = eta > 0 and s_noise > 0
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = t_of(sigmas[i]), t_of(sigmas[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1 = torch.lerp(lam_s, lam_t, r)
        sigma_1 = sigma_of(lam_1)
        x_2 = sigma_1 / sigmas[i] * (-r * h * eta).exp() * x - phi_1(-r * h_eta) * denoised
        if noisy:
            sde_noise = (-2 * r * h * eta).expm1().neg().sqrt() * noise_sampler(sigmas[i], sigma_1)
            x_2 = x_2 + sde_noise * sigma_1 * s_noise
        denoised_2 = model(x_2, sigma_1 * s_in, **extra_args)
        denoised_d = torch.lerp(denoised, denoised_2, 1 / (2 * r))
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - phi_1(-h_eta) * denoised_d
        if noisy:
            seg = (r - 1) * h * eta
            sde_noise = sde_noise * seg.exp() + seg.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_1, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


@torch.no_grad()
def sample_seeds_3(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                   noise_sampler=None, r_1=1.0 / 3, r_2=2.0 / 3):
    """SEEDS-3 (Gonzalez et al. 2023), three stages at fractions r_1, r_2 of the step in log-SNR."""
    extra_args = args_or_empty(extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    s_in = ones_like_batch(x)
    noisy = eta > 0 and s_noise > 0
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = t_of(sigmas[i]), t_of(sigmas[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        sigma_1, sigma_2 = sigma_of(torch.lerp(lam_s, lam_t, r_1)), sigma_of(torch.lerp(lam_s, lam_t, r_2))
        x_2 = sigma_1 / sigmas[i] * (-r_1 * h * eta).exp() * x - phi_1(-r_1 * h_eta) * denoised
        if noisy:
            sde_noise = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise_sampler(sigmas[i], sigma_1)
            x_2 = x_2 + sde_noise * sigma_1 * s_noise
        denoised_2 = model(x_2, sigma_1 * s_in, **extra_args)
        a3_2 = r_2 / r_1 * phi_2(-r_2 * h_eta)
        a3_1 = phi_1(-r_2 * h_eta) - a3_2
        x_3 = sigma_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - (a3_1 * denoised + a3_2 * denoised_2)
        if noisy:
            seg = (r_1 - r_2) * h * eta
            sde_noise = sde_noise * seg.exp() + seg.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_1, sigma_2)
            x_3 = x_3 + sde_noise * sigma_2 * s_noise
        denoised_3 = model(x_3, sigma_2 * s_in, **extra_args)
        b3 = phi_2(-h_eta) / r_2
        b1 = phi_1(-h_eta) - b3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - (b1 * denoised + b3 * denoised_3)
        if noisy:
            seg = (r_2 - 1) * h * eta
            sde_noise = sde_noise * seg.exp() + seg.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_2, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x
