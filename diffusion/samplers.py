"""Samplers for the probability-flow ODE / reverse SDE in the variance-exploding view.

Every sampler has the signature

    sample_NAME(model, x, sigmas, extra_args=None, callback=None, disable=None, **options) -> x

where `model(x, sigma_batch, **extra_args)` is a denoiser D(x, sigma) returning the x0 estimate
(eps- and v-prediction networks are both wrapped to this form), `x` is already noised to
sigmas[0] and `sigmas` is a descending schedule (usually ending in 0). `callback`, if given, gets
{"x", "i", "sigma", "sigma_hat", "denoised"} once per step. The maths follows ComfyUI's
k-diffusion fork so that a seed gives ComfyUI's image; the code is our own.

Notation: d = (x - D) / sigma is the ODE derivative dx/dsigma; t = -log(sigma) (the half log-SNR
lambda for a VE process) is the variable the exponential integrators step in.

Stochastic samplers take their noise from `noise_sampler(sigma, sigma_next)`; by default a
per-step generator seeded with extra_args["seed"] (ancestral) or a Brownian tree over
[sigma_min, sigma_max] with that seed (SDE samplers).
"""

from __future__ import annotations

import math

import torch

from .noise import BrownianTreeNoiseSampler, StepNoiseSampler

# ---------------------------------------------------------------------------------------------
# helpers


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


def _args(extra_args):
    return {} if extra_args is None else extra_args


def _step_noise(x, extra_args, noise_sampler):
    return StepNoiseSampler(x, extra_args.get("seed")) if noise_sampler is None else noise_sampler


def _tree_noise(x, sigmas, extra_args, noise_sampler, cpu=True):
    if noise_sampler is not None:
        return noise_sampler
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    return BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=extra_args.get("seed"), cpu=cpu)


def _report(callback, x, i, sigma, denoised, sigma_hat=None):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma if sigma_hat is None else sigma_hat,
                  "denoised": denoised})


def _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al.'s optional noise increase ("churn") before a step; returns (x, sigma_hat)."""
    gamma = 0.0
    if s_churn > 0 and s_tmin <= sigmas[i] <= s_tmax:
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1)
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + torch.randn_like(x) * s_noise * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def _capture_uncond(extra_args):
    """For CFG++ samplers: a copy of extra_args whose CFG hook records the unconditional denoised
    estimate, and the box it lands in. Forces the uncond pass even at cfg 1."""
    box = {}

    def post_cfg(args):
        box["uncond"] = args["uncond_denoised"]
        return args["denoised"]

    options = dict(extra_args.get("model_options", {}))
    options["sampler_post_cfg_function"] = list(options.get("sampler_post_cfg_function", [])) + [post_cfg]
    options["disable_cfg1_optimization"] = True
    return {**extra_args, "model_options": options}, box


def _model_sampling(model):
    ms = getattr(model, "model_sampling", None)
    if ms is None:
        from .model_sampling import ModelSamplingDiscrete
        ms = ModelSamplingDiscrete()
    return ms


def _t(sigma):
    return sigma.log().neg()


def _sigma(t):
    return t.neg().exp()


# ---------------------------------------------------------------------------------------------
# Euler / Heun family (Karras et al. 2022)


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """Euler steps on the probability-flow ODE; Algorithm 2 of Karras et al. 2022 (EDM) without the
    Heun correction. With churn > 0 it re-noises before each step (their stochastic sampler)."""
    extra_args = _args(extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], denoised, sigma_hat)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None):
    """Ancestral sampling with Euler steps: step deterministically to sigma_down, then add fresh
    noise of std sigma_up (k-diffusion's "Euler a"; eta = 1 matches DDPM's posterior variance)."""
    extra_args = _args(extra_args)
    noise_sampler = _step_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i]) + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0):
    """Heun's second-order method, Algorithm 2 of Karras et al. 2022 (EDM). The final step to
    sigma = 0 is a plain Euler step, since the derivative is undefined there."""
    extra_args = _args(extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], denoised, sigma_hat)
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
    extra_args = _args(extra_args)
    s_in = x.new_ones([x.shape[0]])
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], denoised, sigma_hat)
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
    extra_args = _args(extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], denoised, sigma_hat)
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
    extra_args = _args(extra_args)
    noise_sampler = _step_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], denoised)
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


# ---------------------------------------------------------------------------------------------
# linear multistep


def linear_multistep_coeff(order, t, i, j):
    """Integral over [t_i, t_{i+1}] of the j-th Lagrange basis polynomial through t_i, ..., t_{i-order+1}."""
    from scipy import integrate

    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")

    def basis(tau):
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0]


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep (Adams-Bashforth in sigma with non-uniform steps, as in k-diffusion's LMS):
    integrate the Lagrange interpolant of the last `order` slopes over the next step."""
    extra_args = _args(extra_args)
    s_in = x.new_ones([x.shape[0]])
    sigmas_np = sigmas.detach().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        ds = (ds + [to_d(x, sigmas[i], denoised)])[-order:]
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur_order = min(i + 1, order)
            coeffs = [linear_multistep_coeff(cur_order, sigmas_np, i, j) for j in range(cur_order)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


# ---------------------------------------------------------------------------------------------
# DPM-Solver (Lu et al. 2022, arXiv:2206.00927), noise-prediction form in t = -log sigma


class _DPMSolver:
    def __init__(self, model, extra_args, info_callback=None):
        self.model, self.extra_args, self.info_callback = model, extra_args, info_callback

    def eps(self, cache, key, x, t):
        if key not in cache:
            sigma = _sigma(t)
            cache[key] = (x - self.model(x, sigma * x.new_ones([x.shape[0]]), **self.extra_args)) / sigma
        return cache[key]

    def step_1(self, x, t, t_next, cache):
        h = t_next - t
        return x - _sigma(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step_2(self, x, t, t_next, cache, r1=1 / 2):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - _sigma(s2) * (r2 * h).expm1() * eps
              - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def step(self, order, x, t, t_next, cache, **kw):
        return (self.step_1, self.step_2, self.step_3)[order - 1](x, t, t_next, cache, **kw)

    def report(self, x, i, t, cache):
        denoised = x - _sigma(t) * self.eps(cache, "eps", x, t)
        if self.info_callback is not None:
            self.info_callback({"x": x, "i": i, "sigma": _sigma(t), "sigma_hat": _sigma(t), "denoised": denoised})


def _ancestral_t(t, t_next, t_end, eta):
    """For DPM-Solver with eta: the t to step to and the noise std to add afterwards."""
    sd, su = get_ancestral_step(_sigma(t), _sigma(t_next), eta)
    t_next_ = torch.minimum(t_end, _t(sd))
    return t_next_, (_sigma(t_next) ** 2 - _sigma(t_next_) ** 2) ** 0.5


@torch.no_grad()
def dpm_solver_fast(model, x, sigma_min, sigma_max, n, extra_args=None, callback=None, disable=None, eta=0.0,
                    s_noise=1.0, noise_sampler=None):
    """DPM-Solver-fast (Lu et al. 2022, Sec. 3.4): `n` model evaluations spent as third-order
    steps, uniform in t = -log sigma, finishing with a second/first-order step."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    extra_args = _args(extra_args)
    noise_sampler = _step_noise(x, extra_args, noise_sampler)
    solver = _DPMSolver(model, extra_args, callback)
    t_start, t_end = _t(torch.as_tensor(sigma_max)), _t(torch.as_tensor(sigma_min))
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
            x = x + su * s_noise * noise_sampler(_sigma(t), _sigma(t_next))
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
    extra_args = _args(extra_args)
    noise_sampler = _step_noise(x, extra_args, noise_sampler)
    solver = _DPMSolver(model, extra_args, callback)
    s, t_end = _t(torch.as_tensor(sigma_max)), _t(torch.as_tensor(sigma_min))
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
            x = x_high + su * s_noise * noise_sampler(_sigma(s), _sigma(t)) if eta else x_high
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


# ---------------------------------------------------------------------------------------------
# DPM-Solver++ (Lu et al. 2022b, arXiv:2211.01095), data-prediction form


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                              noise_sampler=None):
    """Ancestral sampling with DPM-Solver++(2S) steps (single-step, second order, midpoint in t)
    down to sigma_down, then noise of std sigma_up."""
    extra_args = _args(extra_args)
    noise_sampler = _step_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, _sigma(s) * s_in, **extra_args)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                     noise_sampler=None, r=1 / 2, cpu_tree=True):
    """DPM-Solver++ (stochastic), k-diffusion's "DPM++ SDE": a two-stage step (intermediate at a
    fraction r of the way in t), each stage an ancestral DPM-Solver++ step with Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    extra_args = _args(extra_args)
    noise_sampler = _tree_noise(x, sigmas, extra_args, noise_sampler, cpu=cpu_tree)
    s_in = x.new_ones([x.shape[0]])
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = _t(sigmas[i]), _t(sigmas[i + 1])
        lam_1 = lam_s + r * (lam_t - lam_s)
        sigma_1 = _sigma(lam_1)
        # Stage 1: an ancestral DPM-Solver++(1) step to sigma_1.
        sd, su = get_ancestral_step(_sigma(lam_s), _sigma(lam_1), eta)
        h_ = _t(sd) - lam_s
        x_2 = (-h_).exp() * x - (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + noise_sampler(sigmas[i], sigma_1) * s_noise * su
        denoised_2 = model(x_2, sigma_1 * s_in, **extra_args)
        # Stage 2: the full step with the mixed denoised estimate.
        sd, su = get_ancestral_step(_sigma(lam_s), _sigma(lam_t), eta)
        h_ = _t(sd) - lam_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (-h_).exp() * x - (-h_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M), Lu et al. 2022b Alg. 2: multistep second order using the previous
    denoised estimate; first order on the first step and on the final step to sigma = 0."""
    extra_args = _args(extra_args)
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            denoised_d = denoised
        else:
            r = (t - _t(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
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
    extra_args = _args(extra_args)
    noise_sampler = _tree_noise(x, sigmas, extra_args, noise_sampler, cpu=cpu_tree)
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h, h_last = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
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
    extra_args = _args(extra_args)
    noise_sampler = _tree_noise(x, sigmas, extra_args, noise_sampler, cpu=cpu_tree)
    s_in = x.new_ones([x.shape[0]])
    denoised_1, denoised_2, h, h_1, h_2 = None, None, None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
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


# ---------------------------------------------------------------------------------------------
# DDPM / LCM


@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Ancestral DDPM sampling (Ho et al. 2020, Alg. 2) between arbitrary table points: each step
    draws from the posterior q(x_{t'} | x_t, x0) in the VP frame, with the step's own
    alpha = abar_t / abar_t'."""
    extra_args = _args(extra_args)
    noise_sampler = _step_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        _report(callback, x, i, sigma, denoised)
        eps = (x - denoised) / sigma
        x_vp = x / torch.sqrt(1.0 + sigma ** 2.0)
        abar, abar_next = 1 / (sigma * sigma + 1), 1 / (sigma_next * sigma_next + 1)
        alpha = abar / abar_next
        x = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - abar).sqrt())
        if sigma_next > 0:
            x = x + ((1 - alpha) * (1.0 - abar_next) / (1.0 - abar)).sqrt() * noise_sampler(sigma, sigma_next)
            x = x * torch.sqrt(1.0 + sigma_next ** 2.0)
    return x


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Latent Consistency Model sampling (Luo et al. 2023, Alg. 1): jump to the denoised estimate,
    then re-noise it to the next sigma with fresh noise."""
    extra_args = _args(extra_args)
    noise_sampler = _step_noise(x, extra_args, noise_sampler)
    ms = _model_sampling(model)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = ms.noise_scaling(sigmas[i + 1], noise_sampler(sigmas[i], sigmas[i + 1]), x)
    return x


# ---------------------------------------------------------------------------------------------
# pseudo-numerical multistep methods (Zhang & Chen 2023 DEIS; Zhou et al. 2024 iPNDM)


def _ipndm_step(x, d_cur, buffer, i, t_cur, t_next, sigmas, order, variable):
    """One iPNDM step using the current slope and up to three past ones."""
    dt = t_next - t_cur
    if order == 1:
        return x + dt * d_cur
    if not variable:
        weights = {2: (3, -1), 3: (23, -16, 5), 4: (55, -59, 37, -9)}[order]
        denom = {2: 2, 3: 12, 4: 24}[order]
        slopes = [d_cur] + buffer[::-1][:order - 1]
        return x + dt * sum(w * s for w, s in zip(weights, slopes)) / denom
    # Variable-step Adams-Bashforth coefficients for non-uniform sigma spacing.
    h = [dt] + [sigmas[i - k] - sigmas[i - k - 1] for k in range(order - 1)]
    if order == 2:
        c = [(2 + h[0] / h[1]) / 2, -(h[0] / h[1]) / 2]
    else:
        h0, h1, h2 = h[0], h[1], h[2]
        t1 = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
        if order == 3:
            c = [(2 + h0 / h1) / 2 + t1, -(h0 / h1) / 2 - (1 + h1 / h2) * t1, t1 * h1 / h2]
        else:
            h3 = h[3]
            q = h1 * (h1 + h2) / (h2 * (h2 + h3))
            t2 = (((1 - h0 / (3 * (h0 + h1))) / 2 + (1 - h0 / (2 * (h0 + h1))) * h0 / (6 * (h0 + h1 + h2)))
                  * (h0 * (h0 + h1) * (h0 + h1 + h2)) / (h1 * (h1 + h2) * (h1 + h2 + h3)))
            c = [(2 + h0 / h1) / 2 + t1 + t2,
                 -(h0 / h1) / 2 - (1 + h1 / h2) * t1 - (1 + h1 / h2 + q) * t2,
                 t1 * h1 / h2 + (h1 / h2 + q * (1 + h2 / h3)) * t2,
                 -t2 * q * h1 / h2]
    slopes = [d_cur] + buffer[::-1][:order - 1]
    return x + dt * sum(ci * s for ci, s in zip(c, slopes))


def _ipndm(model, x, sigmas, extra_args, callback, max_order, variable):
    extra_args = _args(extra_args)
    s_in = x.new_ones([x.shape[0]])
    buffer = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur * s_in, **extra_args)
        _report(callback, x, i, t_cur, denoised)
        d_cur = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x = denoised
        else:
            x = _ipndm_step(x, d_cur, buffer, i, t_cur, t_next, sigmas, order, variable)
        buffer = (buffer + [d_cur])[-(max_order - 1):] if max_order > 1 else []
    return x


@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """Improved PNDM (Zhang & Chen 2023, DEIS paper, Sec. 4; Liu et al. 2022): Adams-Bashforth on the
    sigma-ODE with fixed-step coefficients up to fourth order, warming up from Euler."""
    return _ipndm(model, x, sigmas, extra_args, callback, max_order, variable=False)


@torch.no_grad()
def sample_ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """iPNDM with variable-step Adams-Bashforth coefficients (from zju-pi's diff-solvers), which
    account for the non-uniform sigma spacing."""
    return _ipndm(model, x, sigmas, extra_args, callback, max_order, variable=True)


def _deis_coefficients(sigmas, max_order, n_points=10000):
    """DEIS "tAB" coefficients (Zhang & Chen 2023, eq. 14): the sigma-ODE dx = d(x) dsigma is
    rewritten in a VP time tau, sigma(tau) = sqrt(1/alpha(tau) - 1) with a linear-beta alpha fitted
    to sigma in [0.002, 80], and each slope's Lagrange basis polynomial (in tau) is integrated against
    dsigma/dtau by a Riemann sum, as the reference implementation does."""
    s = sigmas.detach().cpu().double()
    eps_s, s_min, s_max = 1e-3, 0.002, 80.0
    beta_d = 2 * (math.log(s_min ** 2 + 1) / eps_s - math.log(s_max ** 2 + 1)) / (eps_s - 1)
    beta_min = math.log(s_max ** 2 + 1) - 0.5 * beta_d
    taus_all = ((beta_min ** 2 + 2 * beta_d * (s ** 2 + 1).log()).sqrt() - beta_min) / beta_d
    beta_0, beta_1 = beta_min, beta_d + beta_min
    coeffs = []
    for i in range(len(s) - 1):
        order = min(i + 1, max_order)
        if order == 1:
            coeffs.append([])
            continue
        taus = torch.linspace(float(taus_all[i]), float(taus_all[i + 1]), n_points, dtype=torch.float64)
        dtau = (taus_all[i + 1] - taus_all[i]) / n_points
        alpha = torch.exp(-0.5 * taus ** 2 * (beta_1 - beta_0) - taus * beta_0)
        dsigma_dtau = 0.5 * (taus * (beta_1 - beta_0) + beta_0) / torch.sqrt(alpha * (1 - alpha))
        nodes = [taus_all[i - k] for k in range(order)]
        row = []
        for j in range(order):
            basis = torch.ones_like(taus)
            for k in range(order):
                if k != j:
                    basis = basis * (taus - nodes[k]) / (nodes[j] - nodes[k])
            row.append(float(torch.sum(dsigma_dtau * basis) * dtau))
        coeffs.append(row)
    return coeffs


@torch.no_grad()
def sample_deis(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=3):
    """DEIS (Zhang & Chen 2023, "Fast sampling of diffusion models with exponential integrator"),
    the tAB variant: a multistep method whose weights integrate the slope's polynomial
    extrapolation exactly in a VP time variable."""
    extra_args = _args(extra_args)
    s_in = x.new_ones([x.shape[0]])
    coeffs = _deis_coefficients(sigmas, max_order)
    buffer = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur * s_in, **extra_args)
        _report(callback, x, i, t_cur, denoised)
        d_cur = (x - denoised) / t_cur
        order = 1 if t_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x = x + (t_next - t_cur) * d_cur
        else:
            slopes = [d_cur] + buffer[::-1][:order - 1]
            x = x + sum(c * s for c, s in zip(coeffs[i], slopes))
        buffer = (buffer + [d_cur])[-(max_order - 1):]
    return x


# ---------------------------------------------------------------------------------------------
# CFG++ (Chung et al. 2024, arXiv:2406.08070): step with the guided x0 but re-noise along the
# unconditional noise direction. These need the CFG wrapper's uncond estimate.


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                                  s_noise=1.0, noise_sampler=None):
    """Euler ancestral with CFG++: x_next = D_cfg + sigma_down * eps_uncond, plus sigma_up noise."""
    extra_args, box = _capture_uncond(_args(extra_args))
    noise_sampler = _step_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
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
def sample_dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                                     s_noise=1.0, noise_sampler=None):
    """DPM-Solver++(2S) ancestral with CFG++: both stages use the unconditional estimate and the
    guidance difference (D_cfg - D_uncond) of the first evaluation is added after the step."""
    extra_args, box = _capture_uncond(_args(extra_args))
    noise_sampler = _step_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        guidance = denoised - box["uncond"]
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], box["uncond"]) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * box["uncond"]
            model(x_2, _sigma(s) * s_in, **extra_args)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * box["uncond"]
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        x = x + guidance
    return x


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) with CFG++."""
    extra_args, box = _capture_uncond(_args(extra_args))
    s_in = x.new_ones([x.shape[0]])
    old_uncond = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        uncond = box["uncond"]
        _report(callback, x, i, sigmas[i], denoised)
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        mix = -torch.exp(-h) * uncond
        if old_uncond is not None and sigmas[i + 1] != 0:
            r = (t - _t(sigmas[i - 1])) / h
            mix = mix - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = uncond
    return x


# ---------------------------------------------------------------------------------------------
# RES multistep (Zhang et al. 2023, arXiv:2308.02157) and gradient estimation


def _res_multistep(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, eta, cfg_pp):
    """Second-order "refined exponential solver" multistep in t = -log sigma, optionally ancestral."""
    extra_args = _args(extra_args)
    box = {}
    if cfg_pp:
        extra_args, box = _capture_uncond(extra_args)
    noise_sampler = _step_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    old_sigma_down, old_denoised = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], denoised)
        step_from = box["uncond"] if cfg_pp else denoised
        if sigma_down == 0 or old_denoised is None:
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], step_from) * sigma_down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            c2 = (_t(sigmas[i - 1]) - _t(old_sigma_down)) / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - step_from)
            x = _sigma(h) * x + h * (b1 * step_from + b2 * old_denoised)
        if sigmas[i + 1] > 0 and sigma_up:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised, old_sigma_down = step_from, sigma_down
    return x


@torch.no_grad()
def sample_res_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                         noise_sampler=None):
    """RES multistep (Zhang et al. 2023, "Improved order analysis and design of exponential
    integrator for diffusion models"), second order, deterministic."""
    return _res_multistep(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, 0.0, False)


@torch.no_grad()
def sample_res_multistep_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                                noise_sampler=None):
    """RES multistep with CFG++."""
    return _res_multistep(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, 0.0, True)


@torch.no_grad()
def sample_res_multistep_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                                   s_noise=1.0, noise_sampler=None):
    """RES multistep stepping to sigma_down, then ancestral noise."""
    return _res_multistep(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, eta, False)


@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                                          s_noise=1.0, noise_sampler=None):
    """Ancestral RES multistep with CFG++."""
    return _res_multistep(model, x, sigmas, extra_args, callback, s_noise, noise_sampler, eta, True)


@torch.no_grad()
def sample_gradient_estimation(model, x, sigmas, extra_args=None, callback=None, disable=None, ge_gamma=2.0,
                               cfg_pp=False):
    """Gradient estimation (Permenter & Yuan 2024, "Interpreting and improving diffusion models from
    an optimization perspective"): Euler plus (gamma - 1) times the change in slope."""
    extra_args = _args(extra_args)
    box = {}
    if cfg_pp:
        extra_args, box = _capture_uncond(extra_args)
    s_in = x.new_ones([x.shape[0]])
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = to_d(x, sigmas[i], box["uncond"] if cfg_pp else denoised)
        _report(callback, x, i, sigmas[i], denoised)
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


# ---------------------------------------------------------------------------------------------
# ER-SDE, SEEDS, SA-Solver


@torch.no_grad()
def sample_er_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0, noise_sampler=None,
                  noise_scaler=None, max_stage=3):
    """Extended reverse-time SDE solver, VP ER-SDE-Solver-3 (Cui et al. 2023, arXiv:2309.06169),
    with the default noise scaler x (e^{x^0.3} + 10) and numerical integrals over 200 points."""
    extra_args = _args(extra_args)
    noise_sampler = _step_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    if noise_scaler is None:
        def noise_scaler(v):
            return v * ((v ** 0.3).exp() + 10.0)
    n_points = 200.0
    idx = torch.arange(0, n_points, dtype=torch.float32, device=x.device)
    lambdas = sigmas  # sigma / alpha, and alpha = 1 in the VE frame
    old_denoised, old_denoised_d = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
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


def _phi1(h):
    return torch.expm1(h)


def _phi2(h):
    return (torch.expm1(h) - h) / h


@torch.no_grad()
def sample_seeds_2(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                   noise_sampler=None, r=0.5):
    """SEEDS-2 (Gonzalez et al. 2023, arXiv:2305.14267), stochastic exponential derivative-free
    solver, data prediction, two stages; the stage noises are correlated as one Brownian path."""
    extra_args = _args(extra_args)
    noise_sampler = _step_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    noisy = eta > 0 and s_noise > 0
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = _t(sigmas[i]), _t(sigmas[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1 = torch.lerp(lam_s, lam_t, r)
        sigma_1 = _sigma(lam_1)
        x_2 = sigma_1 / sigmas[i] * (-r * h * eta).exp() * x - _phi1(-r * h_eta) * denoised
        if noisy:
            sde_noise = (-2 * r * h * eta).expm1().neg().sqrt() * noise_sampler(sigmas[i], sigma_1)
            x_2 = x_2 + sde_noise * sigma_1 * s_noise
        denoised_2 = model(x_2, sigma_1 * s_in, **extra_args)
        denoised_d = torch.lerp(denoised, denoised_2, 1 / (2 * r))
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - _phi1(-h_eta) * denoised_d
        if noisy:
            seg = (r - 1) * h * eta
            sde_noise = sde_noise * seg.exp() + seg.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_1, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


@torch.no_grad()
def sample_seeds_3(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                   noise_sampler=None, r_1=1.0 / 3, r_2=2.0 / 3):
    """SEEDS-3 (Gonzalez et al. 2023), three stages at fractions r_1, r_2 of the step in log-SNR."""
    extra_args = _args(extra_args)
    noise_sampler = _step_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    noisy = eta > 0 and s_noise > 0
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = _t(sigmas[i]), _t(sigmas[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        sigma_1, sigma_2 = _sigma(torch.lerp(lam_s, lam_t, r_1)), _sigma(torch.lerp(lam_s, lam_t, r_2))
        x_2 = sigma_1 / sigmas[i] * (-r_1 * h * eta).exp() * x - _phi1(-r_1 * h_eta) * denoised
        if noisy:
            sde_noise = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise_sampler(sigmas[i], sigma_1)
            x_2 = x_2 + sde_noise * sigma_1 * s_noise
        denoised_2 = model(x_2, sigma_1 * s_in, **extra_args)
        a3_2 = r_2 / r_1 * _phi2(-r_2 * h_eta)
        a3_1 = _phi1(-r_2 * h_eta) - a3_2
        x_3 = sigma_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - (a3_1 * denoised + a3_2 * denoised_2)
        if noisy:
            seg = (r_1 - r_2) * h * eta
            sde_noise = sde_noise * seg.exp() + seg.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_1, sigma_2)
            x_3 = x_3 + sde_noise * sigma_2 * s_noise
        denoised_3 = model(x_3, sigma_2 * s_in, **extra_args)
        b3 = _phi2(-h_eta) / r_2
        b1 = _phi1(-h_eta) - b3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - (b1 * denoised + b3 * denoised_3)
        if noisy:
            seg = (r_2 - 1) * h * eta
            sde_noise = sde_noise * seg.exp() + seg.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_2, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


def _sa_coefficients(sigma_next, lambdas, lam_s, lam_t, tau, simple_order_2=False, corrector=False):
    """SA-Solver b coefficients (Xue et al. 2023, eqs. 15 and 18) for data prediction: the weights
    alpha_t (1+tau^2) * integral_{lam_s}^{lam_t} e^{(1+tau^2)(lam - lam_t)} l_j(lam) d lam of the
    Lagrange basis l_j through `lambdas`. The monomial integrals I_p follow from integrating by
    parts, I_p = (t^p - s^p e^{-a h}) - (p / a) I_{p-1}, and the basis weights solve V^T b = I."""
    a = 1 + tau ** 2
    h = lam_t - lam_s
    k = lambdas.shape[0]
    if simple_order_2 and k == 2:
        if corrector:
            b_1 = 0.5 * a * h
            b_2 = -(-h * a).expm1() - b_1
        else:
            b_2 = (0.5 * a * h ** 2) / (lambdas[-2] - lam_s)
            b_1 = -(-h * a).expm1() - b_2
        return torch.stack([b_2, b_1]).double()
    lam_s, lam_t, lambdas = lam_s.double(), lam_t.double(), lambdas.double()
    decay = torch.exp(-a * (lam_t - lam_s))
    integrals = [1 - decay]
    for p in range(1, k):
        integrals.append(lam_t ** p - lam_s ** p * decay - (p / a) * integrals[-1])
    vander_t = torch.vander(lambdas, k, increasing=True).T
    return torch.linalg.solve(vander_t, torch.stack(integrals))


@torch.no_grad()
def _sa_solver(model, x, sigmas, extra_args=None, callback=None, disable=None, tau_func=None, s_noise=1.0,
               noise_sampler=None, predictor_order=3, corrector_order=4, use_pece=False, simple_order_2=False):
    """SA-Solver (Xue et al. 2023, "SA-Solver: stochastic Adams solver for fast sampling of
    diffusion models"): stochastic Adams predictor and corrector in log-SNR, noise strength tau
    (1 between 20% and 80% of the schedule, 0 elsewhere by default)."""
    if len(sigmas) <= 1:
        return x
    extra_args = _args(extra_args)
    noise_sampler = _step_noise(x, extra_args, noise_sampler)
    s_in = x.new_ones([x.shape[0]])
    if tau_func is None:
        ms = _model_sampling(model)
        start, end = ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8)

        def tau_func(sigma):
            return 1.0 if start >= float(sigma) >= end else 0.0
    lambdas = _t(sigmas)
    max_order = max(predictor_order, corrector_order)
    x_pred, h, tau_t, noise, preds = x, 0.0, 0.0, 0.0, []
    lower_to_end = sigmas[-1].item() == 0
    for i in range(len(sigmas) - 1):
        denoised = model(x_pred, sigmas[i] * s_in, **extra_args)
        _report(callback, x_pred, i, sigmas[i], denoised)
        preds = (preds + [denoised])[-max_order:]
        p_order = min(predictor_order, len(preds))
        c_order = 0 if i == 0 or (sigmas[i + 1] == 0 and not use_pece) else min(corrector_order, len(preds))
        if lower_to_end:
            p_order = min(p_order, len(sigmas) - 2 - i)
            c_order = min(c_order, len(sigmas) - 1 - i)
        if c_order == 0:
            x = x_pred
        else:
            b = _sa_coefficients(sigmas[i], lambdas[i - c_order + 1:i + 1], lambdas[i - 1], lambdas[i], tau_t,
                                 simple_order_2, corrector=True).to(x.dtype)
            x = sigmas[i] / sigmas[i - 1] * (-(tau_t ** 2) * h).exp() * x + sum(
                bj * p for bj, p in zip(b, preds[-c_order:]))
            if tau_t > 0 and s_noise > 0:
                x = x + noise
            if use_pece:
                denoised = model(x, sigmas[i] * s_in, **extra_args)
                preds[-1] = denoised
        if sigmas[i + 1] == 0:
            x_pred = denoised
            continue
        tau_t = tau_func(sigmas[i + 1])
        b = _sa_coefficients(sigmas[i + 1], lambdas[i - p_order + 1:i + 1], lambdas[i], lambdas[i + 1], tau_t,
                             simple_order_2).to(x.dtype)
        h = lambdas[i + 1] - lambdas[i]
        x_pred = sigmas[i + 1] / sigmas[i] * (-(tau_t ** 2) * h).exp() * x + sum(
            bj * p for bj, p in zip(b, preds[-p_order:]))
        if tau_t > 0 and s_noise > 0:
            noise = noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (
                -2 * tau_t ** 2 * h).expm1().neg().sqrt() * s_noise
            x_pred = x_pred + noise
    return x_pred


@torch.no_grad()
def sample_sa_solver(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """SA-Solver, predictor-corrector (PEC) mode."""
    return _sa_solver(model, x, sigmas, extra_args, callback, disable, **options)


@torch.no_grad()
def sample_sa_solver_pece(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """SA-Solver in PECE mode: the corrected state is evaluated again before predicting."""
    return _sa_solver(model, x, sigmas, extra_args, callback, disable, use_pece=True, **options)


# ---------------------------------------------------------------------------------------------
# UniPC (Zhao et al. 2023, arXiv:2302.04867)


def _vp_frame(sigma):
    """VP mean coefficient, std and half log-SNR for VE sigmas, computed through the same float32
    chain ComfyUI uses (so results agree at the tiny final sigma, where it loses precision)."""
    log_mean = 0.5 * torch.log(1 / (sigma * sigma + 1))
    var = 1.0 - torch.exp(2.0 * log_mean)
    return torch.exp(log_mean), torch.sqrt(var), log_mean - 0.5 * torch.log(var)


def _unipc_update(model_x0, x, ms, hist, k, order, alpha, std, lam, variant, use_corrector):
    """One UniPC step to table index k: UniP predictor of `order`, then (optionally) the UniC
    corrector that reuses the model evaluation at the new point. Returns (x, x0 at k or None)."""
    i0 = hist[-1]
    h = lam[k] - lam[i0]
    rks, d1s = [], []
    for j in range(1, order):
        rk = (lam[hist[-(j + 1)]] - lam[i0]) / h
        rks.append(float(rk))
        d1s.append((ms[-(j + 1)] - ms[-1]) / rk)
    rks.append(1.0)
    hh = -h.double()
    h_phi_1 = torch.expm1(hh)
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rk_t = torch.tensor(rks, dtype=torch.float64)
    rows, b, h_phi_k, fact = [], [], h_phi_1 / hh - 1, 1
    for n in range(1, order + 1):
        rows.append(rk_t ** (n - 1))
        b.append(h_phi_k * fact / b_h)
        fact *= n + 1
        h_phi_k = h_phi_k / hh - 1 / fact
    R, b = torch.stack(rows), torch.stack(b)
    x_base = (std[k] / std[i0]) * x - (alpha[k] * h_phi_1.to(x.dtype)) * ms[-1]
    scale = alpha[k] * b_h.to(x.dtype)
    x_t = x_base
    if d1s:
        rhos_p = [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        x_t = x_base - scale * sum(float(r) * d for r, d in zip(rhos_p, d1s))
    if not use_corrector:
        return x_t, None
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(R, b).tolist()
    x0_t = model_x0(x_t, k)
    corr = sum(float(r) * d for r, d in zip(rhos_c[:-1], d1s)) if d1s else 0
    return x_base - scale * (corr + rhos_c[-1] * (x0_t - ms[-1])), x0_t


@torch.no_grad()
def sample_uni_pc(model, x, sigmas, extra_args=None, callback=None, disable=None, variant="bh1"):
    """UniPC multistep (Zhao et al. 2023): predictor UniP-p and corrector UniC-p in data-prediction
    form, order min(3, steps - 1), lower orders at the start and the end; B(h) = h ("bh1") or
    e^h - 1 ("bh2"). Runs in the VP frame; a final sigma of 0 is replaced by 0.001 (log-SNR must
    stay finite), so the result keeps that last trace of noise, as ComfyUI's does."""
    extra_args = _args(extra_args)
    ts = sigmas.clone()
    if ts[-1] == 0:
        ts[-1] = 0.001
    steps = len(ts) - 1
    order = min(3, len(ts) - 2)
    alpha, std, lam = _vp_frame(ts)
    s_in = x.new_ones([x.shape[0]])

    def model_x0(x_vp, k):
        x_ve = x_vp * (ts[k] ** 2 + 1.0) ** 0.5
        eps = (x_ve - model(x_ve, ts[k] * s_in, **extra_args)) / ts[k]
        return (x_vp - std[k] * eps) / alpha[k]

    x = x / torch.sqrt(1.0 + ts[0] ** 2.0)
    ms, hist = [model_x0(x, 0)], [0]
    if callback is not None:
        _report(callback, x / alpha[0], 0, sigmas[0], ms[-1])
    if order < 1:
        # A one-step schedule leaves UniPC no room to step (ComfyUI returns the input rescaled).
        return x / alpha[-1]
    for k in range(1, steps + 1):
        k_order = k if k < order else min(order, steps + 1 - k)
        x, x0_k = _unipc_update(model_x0, x, ms, hist, k, k_order, alpha, std, lam, variant, k < steps)
        if k < steps:
            ms.append(model_x0(x, k) if x0_k is None else x0_k)
            hist.append(k)
            ms, hist = ms[-order:], hist[-order:]
        if callback is not None and 1 <= k < steps:
            _report(callback, x / alpha[k], k, sigmas[k], ms[-1])
    return x / alpha[-1]


@torch.no_grad()
def sample_uni_pc_bh2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """UniPC with B(h) = e^h - 1."""
    return sample_uni_pc(model, x, sigmas, extra_args, callback, disable, variant="bh2")


# ---------------------------------------------------------------------------------------------
# names

SAMPLER_NAMES = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]

# KSampler computes one extra step for these and drops the second-to-last sigma: their final
# step to 0 is Euler, so this keeps the number of second-order steps equal to `steps`.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def sampler_function(name: str):
    """The sampling function of a sampler name. "ddim" is Euler (in the VE frame Euler on the
    probability-flow ODE is exactly deterministic DDIM); KSampler adds its inpainting noise rule."""
    if name == "ddim":
        return sample_euler
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {name!r}")
    return globals()[f"sample_{name}"]
