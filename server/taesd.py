"""The TAESD decoder (madebyollin's Tiny AutoEncoder for SD) for live sampling previews.

A small convolutional net that turns a 4-channel latent into an RGB image 8x larger, far
cheaper than the real VAE. The module is an nn.Sequential whose indices match the published
decoder files (taesd_decoder.*, taesdxl_decoder.*), so their state dicts load without any key
mapping: 1 = first conv, 3..5 / 8..10 / 13..15 / 18 = residual blocks, 7 / 12 / 17 = the bias-free
convs after each 2x upsample, 19 = the final conv to RGB.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from diffusion.checkpoint import read_state_dict

WIDTH = 64


def _conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, kernel_size=3, padding=1, bias=bias)


class SoftClamp(nn.Module):
    """Squashes latents smoothly into (-3, 3): outliers mid-sampling would otherwise blow up."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class ResBlock(nn.Module):
    """Three 3x3 convs with ReLUs between them, added to the input, then a ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(channels, channels), nn.ReLU(), _conv(channels, channels), nn.ReLU(),
                                  _conv(channels, channels))
        self.skip = nn.Identity()  # equal widths throughout the decoder: no projection needed
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


def _stage(blocks: int) -> list[nn.Module]:
    return [ResBlock(WIDTH) for _ in range(blocks)]


class TAESDDecoder(nn.Sequential):
    """latent [B, C, h, w] -> image [B, 3, 8h, 8w], roughly in [0, 1]."""

    def __init__(self, latent_channels: int = 4):
        layers: list[nn.Module] = [SoftClamp(), _conv(latent_channels, WIDTH), nn.ReLU()]
        for _ in range(3):
            layers += _stage(3) + [nn.Upsample(scale_factor=2), _conv(WIDTH, WIDTH, bias=False)]
        layers += _stage(1) + [_conv(WIDTH, 3)]
        super().__init__(*layers)
        self.latent_channels = latent_channels


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Some redistributions nest the decoder under a name ("decoder.", "taesd_decoder.")."""
    for prefix in ("taesd_decoder.", "decoder.layers.", "decoder."):
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_decoder(path: Path) -> TAESDDecoder:
    state = _strip_prefix(read_state_dict(path))
    first = state.get("1.weight")
    if first is None or first.dim() != 4:
        raise ValueError(f"{path}: not a TAESD decoder (no '1.weight' conv)")
    decoder = TAESDDecoder(latent_channels=first.shape[1])
    decoder.load_state_dict({k: v.float() for k, v in state.items()})
    return decoder.eval().requires_grad_(False)
