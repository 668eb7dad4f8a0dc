"""Sigma schedules: pure functions from a step count to a descending sigma sequence, and the
published fixed schedules (Align Your Steps, GITS, OptimalSteps) the scheduler nodes offer.

Each returns a float32 tensor of length steps + 1 ending in 0 (beta and ddim_uniform may return
fewer when timesteps coincide, as ComfyUI's do; laplace returns `steps` points with no final 0,
as ComfyUI's LaplaceScheduler does). Schedules that need the model's table take its model
sampling; the others take sigma_min / sigma_max. Definitions follow ComfyUI's so a given
(scheduler, steps) pair yields the same sigmas.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

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


def laplace(n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5) -> torch.Tensor:
    """Tiankai et al. 2024 ("Improved noise schedule for diffusion training"): log-sigma follows
    the quantiles of a Laplace(mu, beta) distribution, so steps concentrate around sigma = e^mu;
    clamped to [sigma_min, sigma_max]. `n` points, no final 0."""
    x = torch.linspace(0, 1, n)
    log_sigma = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + 1e-5)
    return torch.clamp(torch.exp(log_sigma), min=sigma_min, max=sigma_max)


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


# -- editing a schedule -----------------------------------------------------------------------


def set_first(sigmas: torch.Tensor, sigma: float) -> torch.Tensor:
    """A copy with the first sigma replaced (SetFirstSigma)."""
    sigmas = sigmas.clone()
    sigmas[0] = sigma
    return sigmas


_SPACINGS = {
    "linear": lambda x: x,
    "cosine": lambda x: torch.sin(x * math.pi / 2),  # bunched towards the step's end
    "sine": lambda x: 1 - torch.cos(x * math.pi / 2),  # bunched towards its start
}


def extend_intermediate(sigmas: torch.Tensor, steps: int, start_at_sigma: float, end_at_sigma: float,
                        spacing: str = "linear") -> torch.Tensor:
    """Split every step that starts at a sigma in [end_at_sigma, start_at_sigma] (a negative start:
    no upper bound) into `steps` sub-steps, placed by `spacing` (ExtendIntermediateSigmas)."""
    if start_at_sigma < 0:
        start_at_sigma = float("inf")
    fractions = _SPACINGS[spacing](torch.linspace(0, 1, steps + 1)[1:-1])
    out = []
    for current, following in zip(sigmas[:-1], sigmas[1:]):
        out.append(float(current))
        if end_at_sigma <= current <= start_at_sigma:
            out.extend((fractions * (following - current) + current).tolist())
    if len(sigmas) > 0:
        out.append(float(sigmas[-1]))
    return torch.FloatTensor(out)


# -- published schedules ----------------------------------------------------------------------


@functools.cache
def _tables() -> dict:
    """Noise levels published with Align Your Steps, GITS and OptimalSteps (provenance in the file)."""
    return json.loads((Path(__file__).parent / "data" / "sigma_tables.json").read_text())


def loglinear_interp(levels, num_steps: int) -> np.ndarray:
    """Resample a descending list of noise levels to `num_steps` points, linearly in log-sigma."""
    xs = np.linspace(0, 1, len(levels))
    ys = np.log(np.asarray(levels, dtype=np.float64)[::-1])
    return np.exp(np.interp(np.linspace(0, 1, num_steps), xs, ys))[::-1].copy()


def _published(levels, steps: int, denoise: float, interpolate: bool = True) -> torch.Tensor:
    """`steps` steps over a published schedule (resampled when its length differs), the last
    round(steps * denoise) of them kept, ending in 0."""
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.FloatTensor([])
        total = round(steps * denoise)
    if interpolate and len(levels) != steps + 1:
        levels = loglinear_interp(levels, steps + 1)
    levels = list(levels)[-(total + 1):]
    levels[-1] = 0
    return torch.FloatTensor(levels)


def align_your_steps(model_type: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """Sabour et al. 2024 ("Align your steps"): the 10-step schedule optimised for the model
    family ("SD1", "SDXL", "SVD"), resampled log-linearly to other step counts."""
    return _published(_table("align_your_steps", model_type), steps, denoise)


def optimal_steps(model_type: str, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """Pei et al. 2025 ("Optimal stepsize for diffusion sampling"): the published schedule for
    "FLUX", "Wan" or "Chroma", resampled log-linearly to `steps`."""
    return _published(_table("optimal_steps", model_type), steps, denoise)


def gits(coeff: float, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """Chen et al. 2024 ("On the trajectory regularity of ODE-based diffusion sampling", GITS): the
    SD1.5 timesteps searched for each coefficient (0.80 to 1.50 by 0.05) and step count up to 20;
    longer schedules resample the 20-step one log-linearly."""
    lists = _table("gits", repr(round(coeff, 2)))
    if steps <= 20:
        return _published(lists[steps - 2], steps, denoise, interpolate=False)
    return _published(lists[-1], steps, denoise)


def _table(section: str, key: str):
    table = _tables()[section]
    if key not in table:
        raise ValueError(f"no published {section.replace('_', ' ')} schedule for {key!r}; known: {sorted(table)}")
    return table[key]


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
