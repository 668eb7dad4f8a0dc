"""Stochastic DPM-Solver++ samplers with Brownian-tree noise (Lu et al. 2022b; k-diffusion's SDE
variants): DPM++ SDE, 2M SDE (midpoint or Heun correction), 3M SDE, and the "_gpu" names, which
build the tree on the latent's device."""
from __future__ import annotations

import torch

from .common import args_or_empty, get_ancestral_step, ones_like_batch, report, sigma_of, t_of, tree_noise


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                     noise_sampler=None, r=1 / 2, cpu_tree=True):
    """DPM-Solver++ (stochastic), k-diffusion's "DPM++ SDE": a two-stage step (intermediate at a
    fraction r of the way in t), each stage an ancestral DPM-Solver++ step with Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    extra_args = args_or_empty(extra_args)
    noise_sampler = tree_noise(x, sigmas, extra_args, noise_sampler, cpu=cpu_tree)
    s_in = ones_like_batch(x)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = t_of(sigmas[i]), t_of(sigmas[i + 1])
        lam_1 = lam_s + r * (lam_t - lam_s)
        sigma_1 = sigma_of(lam_1)
        # Stage 1: an ancestral DPM-Solver++(1) step to sigma_1.
        sd, su = get_ancestral_step(sigma_of(lam_s), sigma_of(lam_1), eta)
        h_ = t_of(sd) - lam_s
        x_2 = (-h_).exp() * x - (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + noise_sampler(sigmas[i], sigma_1) * s_noise * su
        denoised_2 = model(x_2, sigma_1 * s_in, **extra_args)
        # Stage 2: the full step with the mixed denoised estimate.
        sd, su = get_ancestral_step(sigma_of(lam_s), sigma_of(lam_t), eta)
        h_ = t_of(sd) - lam_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (-h_).exp() * x - (-h_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler=None, solver_type="midpoint", cpu_tree=True):
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, Sec. 5 / Appendix), with the second-order correction
    in "midpoint" or "heun" form and Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    extra_args = args_or_empty(extra_args)
    noise_sampler = tree_noise(x, sigmas, extra_args, noise_sampler, cpu=cpu_tree)
    s_in = ones_like_batch(x)
    old_denoised, h, h_last = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = t_of(sigmas[i + 1]) - t_of(sigmas[i])
            h_eta = h * (eta + 1)
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + (-h_eta).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                noise = noise_sampler(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler=None, cpu_tree=True):
    """DPM-Solver++(3M) SDE: the 2M SDE step plus a third-order term from the last two denoised
    estimates (k-diffusion's multistep extension of Lu et al. 2022b)."""
    if len(sigmas) <= 1:
        return x
    extra_args = args_or_empty(extra_args)
    noise_sampler = tree_noise(x, sigmas, extra_args, noise_sampler, cpu=cpu_tree)
    s_in = ones_like_batch(x)
    denoised_1, denoised_2, h, h_1, h_2 = None, None, None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = t_of(sigmas[i + 1]) - t_of(sigmas[i])
            h_eta = h * (eta + 1)
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta > 0 and s_noise > 0:
                noise = noise_sampler(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def _gpu_tree(fn):
    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        return fn(model, x, sigmas, extra_args, callback, disable, cpu_tree=False, **options)
    sampler.__doc__ = f"{fn.__name__} with the Brownian tree built on the latent's device."
    return torch.no_grad()(sampler)


sample_dpmpp_sde_gpu = _gpu_tree(sample_dpmpp_sde)
sample_dpmpp_2m_sde_gpu = _gpu_tree(sample_dpmpp_2m_sde)
sample_dpmpp_3m_sde_gpu = _gpu_tree(sample_dpmpp_3m_sde)


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """DPM-Solver++(2M) SDE with the Heun-type second-order correction."""
    return sample_dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable, **{"solver_type": "heun", **options})


@torch.no_grad()
def sample_dpmpp_2m_sde_heun_gpu(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """dpmpp_2m_sde_heun with the Brownian tree on the latent's device."""
    return sample_dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable,
                               **{"solver_type": "heun", "cpu_tree": False, **options})
