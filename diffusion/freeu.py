"""FreeU (Si et al. 2023, "FreeU: Free Lunch in Diffusion U-Net"): at the two decoder levels
nearest the bottleneck, amplify half of the backbone features and damp the low frequencies of
the skip features, as a MODEL output-block patch.

The levels are found by width, as ComfyUI does: features 4x the model's base width get (b1, s1),
2x get (b2, s2); other widths pass unchanged. Version 2 scales the backbone by a per-pixel factor
between 1 and b, following the normalised channel mean of the features instead of a constant b.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def fourier_box_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """`x` [B, C, H, W] with the (2 threshold)^2 lowest spatial frequencies (the centre of the
    shifted spectrum) multiplied by `scale`; computed in float32, returned in x's dtype."""
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = spectrum.shape[-2:]
    mask = torch.ones((h, w), device=x.device)
    cy, cx = h // 2, w // 2
    mask[cy - threshold:cy + threshold, cx - threshold:cx + threshold] = scale
    spectrum = torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))
    return torch.fft.ifftn(spectrum, dim=(-2, -1)).real.to(x.dtype)


def _backbone_factor(h: torch.Tensor, b: float, version: int):
    if version == 1:
        return b
    mean = h.mean(1, keepdim=True)
    flat = mean.reshape(mean.shape[0], -1)
    low = flat.min(dim=-1).values.reshape(-1, 1, 1, 1)
    high = flat.max(dim=-1).values.reshape(-1, 1, 1, 1)
    return (b - 1) * ((mean - low) / (high - low)) + 1


def freeu_output_block_patch(model_channels: int, b1: float, b2: float, s1: float, s2: float, version: int = 1):
    """An output_block_patch (h, skip, transformer_options) -> (h, skip) applying FreeU."""
    scales = {model_channels * 4: (b1, s1), model_channels * 2: (b2, s2)}
    fft_on_cpu: set = set()  # devices whose torch.fft failed once (some backends lack it)

    def skip_filter(skip: torch.Tensor, s: float) -> torch.Tensor:
        if skip.device not in fft_on_cpu:
            try:
                return fourier_box_filter(skip, 1, s)
            except RuntimeError:
                log.warning("torch.fft is not supported on %s; FreeU filters on the CPU", skip.device)
                fft_on_cpu.add(skip.device)
        return fourier_box_filter(skip.cpu(), 1, s).to(skip.device)

    def patch(h: torch.Tensor, skip: torch.Tensor, transformer_options):
        scale = scales.get(int(h.shape[1]))
        if scale is None:
            return h, skip
        b, s = scale
        half = h.shape[1] // 2
        h = torch.cat([h[:, :half] * _backbone_factor(h, b, version), h[:, half:]], dim=1)
        return h, skip_filter(skip, s)

    return patch


__all__ = ["fourier_box_filter", "freeu_output_block_patch"]
