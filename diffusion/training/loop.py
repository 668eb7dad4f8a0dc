"""The pieces every training run here shares: the denoising loss, precision, seeding, learning rates.

The loss is the one Stable Diffusion was trained with (Ho et al. 2020; Rombach et al. 2022): draw
a timestep t uniformly from the model's 1000, noise the clean latent to
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps and regress the network's output on eps (or on
v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 for v-prediction models). The network sees x_t exactly
as it does when sampling (`ModelSamplingDiscrete.calculate_input` of x0 + sigma eps), so what is
trained here is what the samplers call. Optional Min-SNR-gamma weighting (Hang et al. 2023)
evens out how much easy and hard noise levels pull on the weights.
"""
from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from diffusion.model_sampling import ModelSamplingDiscrete


def seed_everything(seed: int) -> torch.Generator:
    """Seeds Python, NumPy and torch; returns a CPU generator for the run's own draws."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX); elsewhere it is emulated."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def training_dtype(device: torch.device, requested: str = "auto") -> torch.dtype:
    """The autocast dtype: "auto" is bf16 where the hardware has it (CUDA from Ampere, CPUs with
    AVX512-BF16), else fp32. fp16 is never chosen on the CPU, where it is emulated and very slow."""
    if requested == "fp32":
        return torch.float32
    if requested == "bf16":
        return torch.bfloat16
    if requested != "auto":
        raise ValueError(f"training precision must be auto, fp32 or bf16, not {requested!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for the forward pass (weights and optimizer state stay float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def noised(model_sampling: ModelSamplingDiscrete, x0: torch.Tensor, noise: torch.Tensor,
           timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(network input, sigma) for clean latents x0 (model space) at integer timesteps."""
    sigma = model_sampling.sigmas.to(x0.device)[timesteps].float()
    x = x0 + noise * sigma.view(-1, *([1] * (x0.ndim - 1)))
    return model_sampling.calculate_input(sigma, x), sigma


def target_for(model_sampling: ModelSamplingDiscrete, x0: torch.Tensor, noise: torch.Tensor,
               sigma: torch.Tensor) -> torch.Tensor:
    if model_sampling.prediction == "eps":
        return noise
    if model_sampling.prediction == "v_prediction":
        s = sigma.view(-1, *([1] * (x0.ndim - 1)))
        alpha = 1 / (s * s + 1).sqrt()   # sqrt(abar)
        return alpha * noise - (s * alpha) * x0
    return x0


def coarse_noise(shape: torch.Size, generator: torch.Generator, strengths: tuple[float, ...]) -> torch.Tensor:
    """Gaussian noise plus smooth noise at coarser scales: strengths[i] weights a field drawn on
    the grid halved i + 1 times (bilinearly upsampled), the last reaching one value per channel
    (offset noise, Guttenberg 2023; at several scales, pyramid noise, Whitaker 2023).

    Why: SD's schedule keeps some signal at its last step, and the smaller the latent the more of
    its coarse content survives (an 8x8 latent's mean has 8 times the per-cell SNR). A model
    trained on white noise then takes the background and layout from the seed's noise instead
    of the prompt. Noise that is also random at those scales teaches it not to trust them; the
    white noise a sampler starts from is one draw of the same distribution (coarse part near 0).
    """
    b, c, h, w = shape
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    for i, strength in enumerate(strengths):
        ch, cw = max(1, h >> (i + 1)), max(1, w >> (i + 1))
        field = torch.randn((b, c, ch, cw), generator=generator, dtype=torch.float32)
        if strength:
            noise += strength * F.interpolate(field, size=(h, w), mode="bilinear", align_corners=False)
    return noise


def snr_weights(sigma: torch.Tensor, gamma: float | None, prediction: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights per sample (ones when gamma is None)."""
    if gamma is None:
        return torch.ones_like(sigma)
    snr = 1.0 / (sigma * sigma)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction == "v_prediction" else clipped / snr


@dataclass(frozen=True)
class LossResult:
    loss: torch.Tensor          # weighted mean over the batch (what is back-propagated)
    per_sample: torch.Tensor    # unweighted MSE per sample, detached


def denoising_loss(unet, model_sampling: ModelSamplingDiscrete, x0: torch.Tensor, context: torch.Tensor,
                   generator: torch.Generator, *, min_snr_gamma: float | None = None,
                   timestep_range: tuple[int, int] = (0, 999), loss: str = "mse",
                   y: torch.Tensor | None = None, coarse: tuple[float, ...] = (),
                   high_noise_sigma: float | None = None) -> LossResult:
    """The noise-prediction loss of `unet` on model-space latents x0 [B, C, h, w].

    Noise and timesteps are drawn from `generator` on the CPU, so a run is reproducible for a
    seed whatever device computes. `loss`: "mse", "l1", "huber" or "smooth_l1". `coarse`: the
    strengths of `coarse_noise` (none: plain Gaussian noise, as SD and ComfyUI's trainer use).
    `high_noise_sigma`: weights are multiplied by 1 + (sigma / high_noise_sigma)^2 (none: not).
    """
    b = x0.shape[0]
    low, high = timestep_range
    timesteps = torch.randint(low, high + 1, (b,), generator=generator).to(x0.device)
    if coarse:
        noise = coarse_noise(x0.shape, generator, coarse).to(x0.device)
    else:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32).to(x0.device)
    x0 = x0.float()
    xin, sigma = noised(model_sampling, x0, noise, timesteps)
    kwargs = {} if y is None else {"y": y}
    out = unet(xin, timesteps.float(), context=context, **kwargs).float()
    target = target_for(model_sampling, x0, noise, sigma)
    per_element = elementwise_loss(out, target, loss)
    per_sample = per_element.flatten(1).mean(1)
    weights = snr_weights(sigma, min_snr_gamma, model_sampling.prediction)
    if high_noise_sigma:
        # eps loss prices an error in the clean picture at 1/sigma^2, so where the layout is decided
        # (the largest sigmas) a misplaced shape costs almost nothing; this pays for it there
        weights = weights * (1 + (sigma / high_noise_sigma) ** 2)
    return LossResult((per_sample * weights).mean(), per_sample.detach())


def elementwise_loss(out: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "mse":
        return F.mse_loss(out, target, reduction="none")
    if kind == "l1":
        return F.l1_loss(out, target, reduction="none")
    if kind == "huber":
        return F.huber_loss(out, target, reduction="none", delta=1.0)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(out, target, reduction="none", beta=1.0)
    raise ValueError(f"unknown loss {kind!r}; one of mse, l1, huber, smooth_l1")


def cosine_lr(step: int, total: int, peak: float, warmup: int = 0, floor: float = 0.1) -> float:
    """Linear warm-up to `peak`, then a cosine down to floor * peak at `total`."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class EMA:
    """Exponential moving average of a module's float parameters (the weights that get shipped)."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()
                       if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        # Warm-up (as in Karras' and timm's EMA): early averages must not drag the random init along.
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().float(), 1 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.shadow = {k: v.clone().float() for k, v in sd.items()}
