"""`comfy.k_diffusion.sampling` for plugins: LatentGraph's samplers and schedules under
k-diffusion's names (sample_euler, sample_dpmpp_2m, get_sigmas_karras, BrownianTreeNoiseSampler...).

Every `sample_<name>` that diffusion.samplers defines is reachable here, with k-diffusion's
signature (model, x, sigmas, extra_args=None, callback=None, disable=None, ...).
"""
from __future__ import annotations

import torch

from diffusion import samplers as _samplers
from diffusion import schedules as _schedules
from diffusion.noise import BatchedBrownianTree, BrownianTreeNoiseSampler, StepNoiseSampler
from diffusion.samplers import get_ancestral_step, linear_multistep_coeff, to_d
from diffusion.schedules import append_zero

__all__ = ["BatchedBrownianTree", "BrownianTreeNoiseSampler", "append_zero", "default_noise_sampler",
           "get_ancestral_step", "get_sigmas_exponential", "get_sigmas_karras", "get_sigmas_polyexponential",
           "get_sigmas_vp", "linear_multistep_coeff", "to_d"]


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0, device="cpu") -> torch.Tensor:
    return _schedules.karras(n, sigma_min, sigma_max, rho).to(device)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float, device="cpu") -> torch.Tensor:
    return _schedules.exponential(n, sigma_min, sigma_max).to(device)


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0,
                               device="cpu") -> torch.Tensor:
    return _schedules.polyexponential(n, sigma_min, sigma_max, rho).to(device)


def get_sigmas_vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3,
                  device="cpu") -> torch.Tensor:
    return _schedules.vp(n, beta_d, beta_min, eps_s).to(device)


def default_noise_sampler(x: torch.Tensor, seed: int | None = None):
    """noise_sampler(sigma, sigma_next): a fresh randn of x's shape per call, from a generator on
    x's device seeded with seed (the global RNG when None)."""
    return StepNoiseSampler(x, seed)


def __getattr__(name: str):
    if name.startswith("sample_") and hasattr(_samplers, name):
        return getattr(_samplers, name)
    raise AttributeError(f"module 'comfy.k_diffusion.sampling' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {n for n in dir(_samplers) if n.startswith("sample_")})
