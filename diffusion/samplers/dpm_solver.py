"""DPM-Solver (Lu et al. 2022, arXiv:2206.00927) in noise-prediction form over t = -log sigma:
the fixed-budget "fast" schedule and the adaptive-step DPM-Solver-12/23. Both use only the two
ends of the given schedule."""
from __future__ import annotations

import math

import torch

from .common import args_or_empty, get_ancestral_step, sigma_of, step_noise, t_of


class _DPMSolver:
    def __init__(self, model, extra_args, info_callback=None):
        self.model, self.extra_args, self.info_callback = model, extra_args, info_callback

    def eps(self, cache, key, x, t):
        if key not in cache:
            sigma = sigma_of(t)
            cache[key] = (x - self.model(x, sigma * x.new_ones([x.shape[0]]), **self.extra_args)) / sigma
        return cache[key]

    def step_1(self, x, t, t_next, cache):
        h = t_next - t
        return x - sigma_of(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step_2(self, x, t, t_next, cache, r1=1 / 2):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - sigma_of(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - sigma_of(t_next) * h.expm1() * eps - sigma_of(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - sigma_of(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - sigma_of(s2) * (r2 * h).expm1() * eps
              - sigma_of(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - sigma_of(t_next) * h.expm1() * eps - sigma_of(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def step(self, order, x, t, t_next, cache, **kw):
        return (self.step_1, self.step_2, self.step_3)[order - 1](x, t, t_next, cache, **kw)

    def report(self, x, i, t, cache):
        denoised = x - sigma_of(t) * self.eps(cache, "eps", x, t)
        if self.info_callback is not None:
            self.info_callback({"x": x, "i": i, "sigma": sigma_of(t), "sigma_hat": sigma_of(t), "denoised": denoised})


def _ancestral_t(t, t_next, t_end, eta):
    """For DPM-Solver with eta: the t to step to and the noise std to add afterwards."""
    sd, su = get_ancestral_step(sigma_of(t), sigma_of(t_next), eta)
    t_next_ = torch.minimum(t_end, t_of(sd))
    return t_next_, (sigma_of(t_next) ** 2 - sigma_of(t_next_) ** 2) ** 0.5


@torch.no_grad()
def dpm_solver_fast(model, x, sigma_min, sigma_max, n, extra_args=None, callback=None, disable=None, eta=0.0,
                    s_noise=1.0, noise_sampler=None):
    """DPM-Solver-fast (Lu et al. 2022, Sec. 3.4): `n` model evaluations spent as third-order
    steps, uniform in t = -log sigma, finishing with a second/first-order step."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    extra_args = args_or_empty(extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    solver = _DPMSolver(model, extra_args, callback)
    t_start, t_end = t_of(torch.as_tensor(sigma_max)), t_of(torch.as_tensor(sigma_min))
    m = math.floor(n / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1, device=x.device, dtype=t_start.dtype)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    for i, order in enumerate(orders):
        cache = {}
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = _ancestral_t(t, t_next, t_end, eta) if eta else (t_next, 0.0)
        solver.report(x, i, t, cache)
        x = solver.step(order, x, t, t_next_, cache)
        if eta:
            x = x + su * s_noise * noise_sampler(sigma_of(t), sigma_of(t_next))
    return x


@torch.no_grad()
def dpm_solver_adaptive(model, x, sigma_min, sigma_max, extra_args=None, callback=None, disable=None, order=3,
                        rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81,
                        eta=0.0, s_noise=1.0, noise_sampler=None, return_info=False):
    """DPM-Solver-12 / -23 with adaptive step size (Lu et al. 2022, Sec. 3.3 / Alg. 5): embedded
    pairs of orders (1,2) or (2,3) estimate the local error, and a PID controller (the I term by
    default) sizes the next step."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    if order not in (2, 3):
        raise ValueError("order should be 2 or 3")
    extra_args = args_or_empty(extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    solver = _DPMSolver(model, extra_args, callback)
    s, t_end = t_of(torch.as_tensor(sigma_max)), t_of(torch.as_tensor(sigma_min))
    atol, rtol = torch.tensor(atol), torch.tensor(rtol)
    pid = _PIDController(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    x_prev, info = x, {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
    while s < t_end - 1e-5:
        cache = {}
        t = torch.minimum(t_end, s + pid.h)
        t_, su = _ancestral_t(s, t, t_end, eta) if eta else (t, 0.0)
        solver.report(x, info["steps"], s, cache)
        x_low = solver.step(order - 1, x, s, t_, cache, **({"r1": 1 / 3} if order == 3 else {}))
        x_high = solver.step(order, x, s, t_, cache)
        delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high + su * s_noise * noise_sampler(sigma_of(s), sigma_of(t)) if eta else x_high
            s = t
            info["n_accept"] += 1
        else:
            info["n_reject"] += 1
        info["nfe"] += order
        info["steps"] += 1
    return (x, info) if return_info else x


class _PIDController:
    """PID step-size control for ODE solvers (Söderlind 2003), with a soft arctan limiter."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order=1, accept_safety=0.81, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety, self.eps, self.errs = accept_safety, eps, []

    def propose_step(self, error):
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


def _dpm_range(sigmas):
    # The schedule's last nonzero sigma: DPM-Solver works in log-sigma, where 0 is unreachable.
    sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
    return sigma_min, sigmas[0]


@torch.no_grad()
def sample_dpm_fast(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """DPM-Solver-fast over [last nonzero sigma, sigmas[0]] with len(sigmas) - 1 evaluations (only
    the ends of the schedule are used, as in ComfyUI)."""
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max = _dpm_range(sigmas)
    return dpm_solver_fast(model, x, sigma_min, sigma_max, len(sigmas) - 1, extra_args, callback, disable,
                           **options)


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """DPM-Solver-23 with adaptive steps over [last nonzero sigma, sigmas[0]]."""
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max = _dpm_range(sigmas)
    return dpm_solver_adaptive(model, x, sigma_min, sigma_max, extra_args, callback, disable, **options)

