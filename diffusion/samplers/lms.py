"""Linear multistep (k-diffusion's LMS): Adams-Bashforth in sigma with non-uniform steps."""
from __future__ import annotations

import torch

from .common import args_or_empty, ones_like_batch, report, to_d


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
    """Integrate the Lagrange interpolant of the last `order` slopes over the next step; the step to
    sigma = 0 lands on the denoised estimate."""
    extra_args = args_or_empty(extra_args)
    s_in = ones_like_batch(x)
    sigmas_np = sigmas.detach().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        ds = (ds + [to_d(x, sigmas[i], denoised)])[-order:]
        report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur_order = min(i + 1, order)
            coeffs = [linear_multistep_coeff(cur_order, sigmas_np, i, j) for j in range(cur_order)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x
