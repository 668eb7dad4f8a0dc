"""UniPC (Zhao et al. 2023, "UniPC: a unified predictor-corrector framework for fast sampling of
diffusion models", arXiv:2302.04867), multistep, data prediction, in the VP frame."""
from __future__ import annotations

import torch

from .common import args_or_empty, ones_like_batch, report


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
    extra_args = args_or_empty(extra_args)
    ts = sigmas.clone()
    if ts[-1] == 0:
        ts[-1] = 0.001
    steps = len(ts) - 1
    order = min(3, len(ts) - 2)
    alpha, std, lam = _vp_frame(ts)
    s_in = ones_like_batch(x)

    def model_x0(x_vp, k):
        x_ve = x_vp * (ts[k] ** 2 + 1.0) ** 0.5
        eps = (x_ve - model(x_ve, ts[k] * s_in, **extra_args)) / ts[k]
        return (x_vp - std[k] * eps) / alpha[k]

    x = x / torch.sqrt(1.0 + ts[0] ** 2.0)
    ms, hist = [model_x0(x, 0)], [0]
    if callback is not None:
        report(callback, x / alpha[0], 0, sigmas[0], ms[-1])
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
            report(callback, x / alpha[k], k, sigmas[k], ms[-1])
    return x / alpha[-1]


@torch.no_grad()
def sample_uni_pc_bh2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """UniPC with B(h) = e^h - 1."""
    return sample_uni_pc(model, x, sigmas, extra_args, callback, disable, variant="bh2")
