"""`comfy.k_diffusion.utils` for plugins: k-diffusion's small tensor and module helpers."""
from __future__ import annotations

import contextlib
import math

import torch

from diffusion.samplers import append_dims

__all__ = ["append_dims", "eval_mode", "n_params", "rand_log_normal", "rand_log_uniform", "train_mode"]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@contextlib.contextmanager
def train_mode(model: torch.nn.Module, mode: bool = True):
    """Put every submodule in training mode (eval with mode=False), restoring each on exit."""
    modes = [m.training for m in model.modules()]
    try:
        yield model.train(mode)
    finally:
        for m, was in zip(model.modules(), modes):
            m.training = was


def eval_mode(model: torch.nn.Module):
    return train_mode(model, False)


def rand_log_normal(shape, loc=0.0, scale=1.0, device="cpu", dtype=torch.float32) -> torch.Tensor:
    return (torch.randn(shape, device=device, dtype=dtype) * scale + loc).exp()


def rand_log_uniform(shape, min_value, max_value, device="cpu", dtype=torch.float32) -> torch.Tensor:
    lo, hi = math.log(min_value), math.log(max_value)
    return (torch.rand(shape, device=device, dtype=dtype) * (hi - lo) + lo).exp()
