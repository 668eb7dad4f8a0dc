"""ER-SDE-Solver (Cui et al. 2023, "Elucidating the solution space of extended reverse-time SDEs
for diffusion models", arXiv:2309.06169), VP form with up to three stages."""
from __future__ import annotations

import torch

from .common import args_or_empty, ones_like_batch, report, step_noise


@torch.no_grad()
def sample_er_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0, noise_sampler=None,
                  noise_scaler=None, max_stage=3):
    """Extended reverse-time SDE solver, VP ER-SDE-Solver-3 (Cui et al. 2023, arXiv:2309.06169),
    with the default noise scaler x (e^{x^0.3} + 10) and numerical integrals over 200 points."""
    extra_args = args_or_empty(extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    s_in = ones_like_batch(x)
    if noise_scaler is None:
        def noise_scaler(v):
            return v * ((v ** 0.3).exp() + 10.0)
    n_points = 200.0
    idx = torch.arange(0, n_points, dtype=torch.float32, device=x.device)
    lambdas = sigmas  # sigma / alpha, and alpha = 1 in the VE frame
    old_denoised, old_denoised_d = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], denoised)
        stage = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lam_s, lam_t = lambdas[i], lambdas[i + 1]
            r = noise_scaler(lam_t) / noise_scaler(lam_s)
            x = r * x + (1 - r) * denoised
            if stage >= 2:
                dt = lam_t - lam_s
                step = -dt / n_points
                pos = lam_t + idx * step
                scaled = noise_scaler(pos)
                s = torch.sum(1 / scaled) * step
                denoised_d = (denoised - old_denoised) / (lam_s - lambdas[i - 1])
                x = x + (dt + s * noise_scaler(lam_t)) * denoised_d
                if stage >= 3:
                    s_u = torch.sum((pos - lam_s) / scaled) * step
                    denoised_u = (denoised_d - old_denoised_d) / ((lam_s - lambdas[i - 2]) / 2)
                    x = x + ((dt ** 2) / 2 + s_u * noise_scaler(lam_t)) * denoised_u
                old_denoised_d = denoised_d
            if s_noise > 0:
                std = (lam_t ** 2 - lam_s ** 2 * r ** 2).sqrt().nan_to_num(nan=0.0)
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * std
        old_denoised = denoised
    return x
