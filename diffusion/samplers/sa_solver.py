"""SA-Solver (Xue et al. 2023, "SA-Solver: stochastic Adams solver for fast sampling of diffusion
models", arXiv:2309.05019): stochastic Adams predictor and corrector in log-SNR."""
from __future__ import annotations

import torch

from .common import args_or_empty, model_sampling_of, ones_like_batch, report, step_noise, t_of


def _sa_coefficients(lambdas, lam_s, lam_t, tau, simple_order_2=False, corrector=False):
    """SA-Solver b coefficients (Xue et al. 2023, eqs. 15 and 18) for data prediction: the weights
    (1+tau^2) * integral_{lam_s}^{lam_t} e^{(1+tau^2)(lam - lam_t)} l_j(lam) d lam of the
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


def tau_interval(start_sigma: float, end_sigma: float, eta: float = 1.0):
    """Noise strength tau(sigma): eta inside [end_sigma, start_sigma], 0 (an ODE step) elsewhere."""

    def tau(sigma) -> float:
        if eta <= 0:
            return 0.0
        return eta if start_sigma >= float(sigma) >= end_sigma else 0.0

    return tau


@torch.no_grad()
def _sa_solver(model, x, sigmas, extra_args=None, callback=None, disable=None, tau_func=None, s_noise=1.0,
               noise_sampler=None, predictor_order=3, corrector_order=4, use_pece=False, simple_order_2=False):
    """Stochastic Adams predictor (order up to `predictor_order`) and corrector (up to
    `corrector_order`) in t = -log sigma, with noise strength tau_func(sigma): by default 1 between
    20% and 80% of the model's schedule, 0 elsewhere. Orders drop towards a final sigma of 0.

    What is returned is the corrected state at the last evaluated sigma: for a schedule ending in 0
    that is the final denoised estimate; for one ending above 0 it is the state one step before the
    end (the last prediction is never corrected), which is what ComfyUI returns too."""
    if len(sigmas) <= 1:
        return x
    extra_args = args_or_empty(extra_args)
    noise_sampler = step_noise(x, extra_args, noise_sampler)
    s_in = ones_like_batch(x)
    if tau_func is None:
        ms = model_sampling_of(model)
        tau_func = tau_interval(ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8))
    lambdas = t_of(sigmas)
    max_order = max(predictor_order, corrector_order)
    x_pred, h, tau_t, noise, preds = x, 0.0, 0.0, 0.0, []
    lower_to_end = sigmas[-1].item() == 0
    for i in range(len(sigmas) - 1):
        denoised = model(x_pred, sigmas[i] * s_in, **extra_args)
        report(callback, x_pred, i, sigmas[i], denoised)
        preds = (preds + [denoised])[-max_order:]
        p_order = min(predictor_order, len(preds))
        c_order = 0 if i == 0 or (sigmas[i + 1] == 0 and not use_pece) else min(corrector_order, len(preds))
        if lower_to_end:
            p_order = min(p_order, len(sigmas) - 2 - i)
            c_order = min(c_order, len(sigmas) - 1 - i)
        # corrector: redo the last step with the evaluation at its end
        if c_order == 0:
            x = x_pred
        else:
            b = _sa_coefficients(lambdas[i - c_order + 1:i + 1], lambdas[i - 1], lambdas[i], tau_t,
                                 simple_order_2, corrector=True).to(x.dtype)
            x = sigmas[i] / sigmas[i - 1] * (-(tau_t ** 2) * h).exp() * x + sum(
                bj * p for bj, p in zip(b, preds[-c_order:]))
            if tau_t > 0 and s_noise > 0:
                x = x + noise  # the predictor's noise, reused
            if use_pece:
                denoised = model(x, sigmas[i] * s_in, **extra_args)
                preds[-1] = denoised
        # predictor
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        tau_t = tau_func(sigmas[i + 1])
        b = _sa_coefficients(lambdas[i - p_order + 1:i + 1], lambdas[i], lambdas[i + 1], tau_t,
                             simple_order_2).to(x.dtype)
        h = lambdas[i + 1] - lambdas[i]
        x_pred = sigmas[i + 1] / sigmas[i] * (-(tau_t ** 2) * h).exp() * x + sum(
            bj * p for bj, p in zip(b, preds[-p_order:]))
        if tau_t > 0 and s_noise > 0:
            noise = noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (
                -2 * tau_t ** 2 * h).expm1().neg().sqrt() * s_noise
            x_pred = x_pred + noise
    return x


@torch.no_grad()
def sample_sa_solver(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """SA-Solver, predictor-corrector (PEC) mode."""
    return _sa_solver(model, x, sigmas, extra_args, callback, disable, **options)


@torch.no_grad()
def sample_sa_solver_pece(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """SA-Solver in PECE mode: the corrected state is evaluated again before predicting."""
    return _sa_solver(model, x, sigmas, extra_args, callback, disable, use_pece=True, **options)
