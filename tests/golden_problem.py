"""The guided denoising problem behind the golden sampler tests.

Shared, unchanged, by tests/test_sampler_golden.py (our samplers) and by
tests/data/golden/make_golden.py, which ran ComfyUI's own sampler functions on it to compute the
reference values. It imports nothing but torch so both interpreters can load it.

The denoiser is classifier-free guidance over two different analytic "models": cond and uncond
are the exact denoisers of two different Gaussian data distributions (per-channel spread, a
spatial pattern in the mean) plus a small smooth nonlinearity, so a CFG++ sampler that used the
guided estimate where it should use the unconditional one (or the reverse) gives another answer.
"""
from __future__ import annotations

import math

import torch

SHAPE = (2, 4, 4, 4)  # batch 2, so per-item sigma handling is exercised
CFG = 3.0
SEED = 1234  # per-step and Brownian-tree noise
LATENT_SEED = 7  # the starting latent


def _mean(x: torch.Tensor, offset: float) -> torch.Tensor:
    """A deterministic mean field of x's shape (so it follows x through an upscale)."""
    _, c, h, w = x.shape
    cs = torch.arange(c, dtype=torch.float64).view(1, c, 1, 1)
    hs = torch.arange(h, dtype=torch.float64).view(1, 1, h, 1) / max(h - 1, 1)
    ws = torch.arange(w, dtype=torch.float64).view(1, 1, 1, w) / max(w - 1, 1)
    field = 0.6 * torch.cos(cs * 1.7 + offset) + 0.4 * torch.sin(3.0 * hs + 2.0 * ws + cs + offset)
    return field.to(x.dtype)


def _spread(x: torch.Tensor, base: float) -> torch.Tensor:
    c = x.shape[1]
    return (base + 0.25 * torch.arange(c, dtype=x.dtype)).view(1, c, 1, 1)


def _gaussian(x: torch.Tensor, sigma: torch.Tensor, offset: float, base: float) -> torch.Tensor:
    s2 = _spread(x, base) ** 2
    sg = sigma.reshape(-1, 1, 1, 1).to(x.dtype) ** 2
    exact = (s2 * x + sg * _mean(x, offset)) / (s2 + sg)
    return exact + 0.05 * torch.tanh(x / (1.0 + sg)) * sg / (1.0 + sg)


def cond_uncond(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) x0 predictions at x and per-item sigma."""
    return _gaussian(x, sigma, 0.0, 0.5), _gaussian(x, sigma, 1.3, 0.8)


def start_latent(sigma0: float) -> torch.Tensor:
    """x at the first sigma: a fixed clean latent plus seeded noise times sigma0."""
    g = torch.Generator().manual_seed(LATENT_SEED)
    clean = torch.randn(SHAPE, generator=g) * 0.5
    return clean + torch.randn(SHAPE, generator=g) * sigma0


def guided(x: torch.Tensor, sigma: torch.Tensor, model_options: dict | None = None) -> torch.Tensor:
    """CFG with ComfyUI's hook contract: "sampler_post_cfg_function" entries see the guided,
    cond and uncond estimates; at cfg 1 the uncond pass is skipped (its estimate is zeros)
    unless "disable_cfg1_optimization" is set."""
    model_options = model_options or {}
    cond, uncond = cond_uncond(x, sigma)
    if math.isclose(CFG, 1.0) and not model_options.get("disable_cfg1_optimization", False):
        uncond = torch.zeros_like(x)
    out = uncond + (cond - uncond) * CFG
    for fn in model_options.get("sampler_post_cfg_function", []):
        out = fn({"denoised": out, "cond_denoised": cond, "uncond_denoised": uncond, "cond_scale": CFG,
                  "sigma": sigma, "input": x, "model_options": model_options, "cond": None, "uncond": None,
                  "model": None})
    return out
