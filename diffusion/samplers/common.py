"""What every sampler shares: the ODE derivative, the ancestral split of a step, noise sources,
the per-step report and the CFG++ hook.

Notation: D(x, sigma) is the denoiser (x0 estimate); d = (x - D) / sigma is dx/dsigma of the
probability-flow ODE; t = -log sigma (the half log-SNR lambda of a VE process) is the variable the
exponential integrators step in. Only the variance-exploding parameterisation of the SD family
is handled (ComfyUI's rectified-flow variants of a few samplers do not apply to it).
"""
from __future__ import annotations

import torch

from ..noise import BrownianTreeNoiseSampler, StepNoiseSampler


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def to_d(x, sigma, denoised):
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    """Split a step sigma_from -> sigma_to into a deterministic step down to sigma_down and fresh
    noise of std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_to^2 (eta = 1 is DDPM-like)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def t_of(sigma):
    """t = -log sigma."""
    return sigma.log().neg()


def sigma_of(t):
    return t.neg().exp()


def phi_1(h):
    """h phi_1(h) = e^h - 1, the first exponential-integrator weight."""
    return torch.expm1(h)


def phi_2(h):
    """h phi_2(h) = (e^h - 1 - h) / h."""
    return (torch.expm1(h) - h) / h


def args_or_empty(extra_args):
    return {} if extra_args is None else extra_args


def ones_like_batch(x):
    """The per-item sigma multiplier: sigma * s_in gives one sigma per batch item."""
    return x.new_ones([x.shape[0]])


def step_noise(x, extra_args, noise_sampler):
    """Per-step Gaussian noise for ancestral samplers, seeded by extra_args["seed"]."""
    return StepNoiseSampler(x, extra_args.get("seed")) if noise_sampler is None else noise_sampler


def tree_noise(x, sigmas, extra_args, noise_sampler, cpu=True):
    """Brownian-tree noise over the schedule's range for the SDE samplers."""
    if noise_sampler is not None:
        return noise_sampler
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    return BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=extra_args.get("seed"), cpu=cpu)


def report(callback, x, i, sigma, denoised, sigma_hat=None):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma if sigma_hat is None else sigma_hat,
                  "denoised": denoised})


def churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al.'s optional noise increase ("churn") before a step; returns (x, sigma_hat)."""
    gamma = 0.0
    if s_churn > 0 and s_tmin <= sigmas[i] <= s_tmax:
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1)
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + torch.randn_like(x) * s_noise * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def capture_uncond(extra_args):
    """For CFG++ (Chung et al. 2024, arXiv:2406.08070): a copy of extra_args whose post-CFG hook
    records the unconditional x0 estimate, and the box it lands in ("uncond"). Forces the uncond
    pass even at cfg 1."""
    box = {}

    def post_cfg(args):
        box["uncond"] = args["uncond_denoised"]
        return args["denoised"]

    options = dict(extra_args.get("model_options", {}))
    options["sampler_post_cfg_function"] = list(options.get("sampler_post_cfg_function", [])) + [post_cfg]
    options["disable_cfg1_optimization"] = True
    return {**extra_args, "model_options": options}, box


def model_sampling_of(model):
    """The model's sigma table and parameterisation (the SD1 table when the denoiser has none)."""
    ms = getattr(model, "model_sampling", None)
    if ms is None:
        from ..model_sampling import ModelSamplingDiscrete
        ms = ModelSamplingDiscrete()
    return ms
