"""Pseudo-numerical multistep methods on the sigma-ODE: iPNDM (fixed- and variable-step
Adams-Bashforth) and DEIS (Zhang & Chen 2023, arXiv:2204.13902)."""
from __future__ import annotations

import math

import torch

from .common import args_or_empty, ones_like_batch, report


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
    extra_args = args_or_empty(extra_args)
    s_in = ones_like_batch(x)
    buffer = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur * s_in, **extra_args)
        report(callback, x, i, t_cur, denoised)
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
    extra_args = args_or_empty(extra_args)
    s_in = ones_like_batch(x)
    coeffs = _deis_coefficients(sigmas, max_order)
    buffer = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur * s_in, **extra_args)
        report(callback, x, i, t_cur, denoised)
        d_cur = (x - denoised) / t_cur
        order = 1 if t_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x = x + (t_next - t_cur) * d_cur
        else:
            slopes = [d_cur] + buffer[::-1][:order - 1]
            x = x + sum(c * s for c, s in zip(coeffs[i], slopes))
        buffer = (buffer + [d_cur])[-(max_order - 1):]
    return x
