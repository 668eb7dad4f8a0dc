"""Convolutional building blocks of the latent-diffusion UNet and the container that routes inputs.

Every UNet stage (``input_blocks.N``, ``middle_block``, ``output_blocks.N``) is a short sequence
of these modules; `TimestepSequential` hands each one the inputs it actually uses.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SpatialTransformer


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of (possibly fractional) timesteps, cosines first.

    Computed in float32 whatever the model dtype: bf16 cannot resolve t * freq for t near 1000.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """Two 3x3 convolutions with the timestep embedding added in between, plus a skip path."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.in_layers = nn.Sequential(
            nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        # Identity at index 2 stands where training-time dropout was, keeping the conv at out_layers.3.
        self.out_layers = nn.Sequential(
            nn.GroupNorm(32, out_channels), nn.SiLU(), nn.Identity(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        # A 1x1 projection only where the width changes; checkpoints have no key otherwise.
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Halves the resolution with a strided 3x3 convolution (odd sizes round up)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling then a 3x3 convolution.

    `size` lets the decoder land exactly on the matching skip connection when the encoder
    rounded an odd size up (a 9-wide latent goes 9 -> 5 -> ... and must come back to 9, not 10).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            size = (x.shape[-2] * 2, x.shape[-1] * 2)
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class TimestepSequential(nn.Sequential):
    """A UNet stage: runs its modules in order, giving each only the inputs it takes.

    Counts transformers in transformer_options["transformer_index"], and lets the MODEL's
    "forward_timestep_embed_patch" entries (class, handler) take over other layers of that class.
    """

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                transformer_options: dict | None = None, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        options = transformer_options if transformer_options is not None else {}
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, options)
                if "transformer_index" in options:
                    options["transformer_index"] += 1
            elif isinstance(layer, Upsample):
                x = layer(x, out_size)
            else:
                handler = next((h for cls, h in options.get("patches", {}).get("forward_timestep_embed_patch", [])
                                if isinstance(layer, cls)), None)
                if handler is not None:
                    x = handler(layer, x, emb, context, options, out_size, None, None, None)
                else:
                    x = layer(x)
        return x
