"""Sigma schedules: pure functions from a step count to a descending sigma sequence.

Each returns a float32 tensor of length steps + 1 ending in 0 (beta and ddim_uniform may return
fewer when timesteps coincide, as ComfyUI's do). Schedules that need the model's discrete table
take a `ModelSamplingDiscrete`; the others take sigma_min / sigma_max. Definitions follow
ComfyUI's so a given (scheduler, steps) pair yields the same sigmas.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal"]


def append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: interpolate linearly in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log-sigma."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """A polynomial ramp in log-sigma (rho = 1 is `exponential`)."""
    ramp = torch.linspace(1, 0, n) ** rho
    return append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> torch.Tensor:
    """The continuous VP-SDE schedule of Song et al. 2021."""
    t = torch.linspace(1, eps_s, n)
    return append_zero(torch.sqrt(torch.special.expm1(beta_d * t ** 2 / 2 + beta_min * t)))


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in arctan(sigma) (Sabour et al. 2024, "Align your steps", KL-optimal schedule)."""
    w = torch.arange(n, dtype=torch.float32).div_(n - 1)
    sigmas = w.new_zeros(n + 1)
    sigmas[:-1] = (w * math.atan(sigma_min) + (1 - w) * math.atan(sigma_max)).tan_()
    return sigmas


def normal(ms, steps: int, sgm: bool = False) -> torch.Tensor:
    """Timesteps evenly spaced from the model's sigma_max to sigma_min, mapped back to sigmas.
    `sgm` (sgm_uniform) spaces steps + 1 points and drops the last, so no step lands on sigma_min."""
    start, end = ms.timestep(ms.sigma_max), ms.timestep(ms.sigma_min)
    append = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=0.00001):
            # A zero-SNR table already ends at 0: spend the extra point there instead.
            steps += 1
            append = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(ms.sigma(ts)) for ts in timesteps]
    if append:
        sigs.append(0.0)
    return torch.FloatTensor(sigs)


def sgm_uniform(ms, steps: int) -> torch.Tensor:
    return normal(ms, steps, sgm=True)


def simple(ms, steps: int) -> torch.Tensor:
    """Every (1000 / steps)-th entry of the sigma table, from the top."""
    stride = len(ms.sigmas) / steps
    sigs = [float(ms.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.FloatTensor(sigs + [0.0])


def ddim_uniform(ms, steps: int) -> torch.Tensor:
    """DDIM's uniform timestep spacing: table entries 1, 1 + k, 1 + 2k, ... (k = 1000 // steps),
    reversed, with a final 0. Can give steps + 1 or more points when 1000 % steps leaves room."""
    x = 1
    if math.isclose(float(ms.sigmas[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs = []
    else:
        sigs = [0.0]
    stride = max(len(ms.sigmas) // steps, 1)
    while x < len(ms.sigmas):
        sigs.append(float(ms.sigmas[x]))
        x += stride
    return torch.FloatTensor(sigs[::-1])


def beta(ms, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Lee et al. 2024 ("Beta sampling is all you need"): timesteps at quantiles of Beta(alpha, beta),
    so steps cluster at both ends. Duplicate timesteps after rounding are dropped."""
    import scipy.stats

    total = len(ms.sigmas) - 1
    ts = 1 - np.linspace(0, 1, steps, endpoint=False)
    ts = np.rint(scipy.stats.beta.ppf(ts, alpha, beta) * total)
    sigs, last = [], -1
    for t in ts:
        if t != last:
            sigs.append(float(ms.sigmas[int(t)]))
        last = t
    return torch.FloatTensor(sigs + [0.0])


def linear_quadratic(ms, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None) -> torch.Tensor:
    """Mochi's schedule: linear for the first half up to `threshold_noise`, then quadratic to 1;
    expressed as 1 - t and scaled by sigma_max."""
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        lin = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        diff = linear_steps - threshold_noise * steps
        quad_steps = steps - linear_steps
        quad_coef = diff / (linear_steps * quad_steps ** 2)
        lin_coef = threshold_noise / linear_steps - 2 * diff / (quad_steps ** 2)
        const = quad_coef * (linear_steps ** 2)
        quad = [quad_coef * (i ** 2) + lin_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - x for x in lin + quad + [1.0]]
    return torch.FloatTensor(schedule) * ms.sigma_max.cpu()


def sd_turbo(ms, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """SDTurboScheduler: SD-Turbo was distilled on timesteps 999, 899, ..., 99; take `steps` of them
    starting where `denoise` says, and append 0."""
    start = 10 - int(10 * denoise)
    timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start:start + steps]
    sigmas = ms.sigma(timesteps)
    return torch.cat([sigmas, sigmas.new_zeros([1])])


_USES_TABLE = {
    "simple": simple, "sgm_uniform": sgm_uniform, "ddim_uniform": ddim_uniform, "beta": beta, "normal": normal,
    "linear_quadratic": linear_quadratic,
}
_USES_RANGE = {"karras": karras, "exponential": exponential, "kl_optimal": kl_optimal}


def calculate_sigmas(ms, scheduler: str, steps: int) -> torch.Tensor:
    """Sigmas of a named scheduler for `steps` steps of the model whose table is `ms`."""
    if scheduler in _USES_TABLE:
        return _USES_TABLE[scheduler](ms, steps)
    if scheduler in _USES_RANGE:
        return _USES_RANGE[scheduler](n=steps, sigma_min=float(ms.sigma_min), sigma_max=float(ms.sigma_max))
    raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {SCHEDULER_NAMES}")
