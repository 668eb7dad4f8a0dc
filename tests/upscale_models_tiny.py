"""Small random-weight upscale models in the real key layouts, for tests: the original ESRGAN
("model.N", as most community .pth files) and Real-ESRGAN's basicsr RRDBNet ("conv_first", "body.N").
Widths are tiny; the dense blocks keep ESRGAN's 32 growth channels, which spandrel assumes.
"""
from __future__ import annotations

import torch

RRDB_CONVS = 5  # convolutions per residual dense block
GROWTH = 32  # ESRGAN's dense-block growth channels (spandrel assumes the published value)


def _conv(sd: dict, name: str, out_ch: int, in_ch: int, gen: torch.Generator) -> None:
    sd[f"{name}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=gen) / (in_ch * 9) ** 0.5
    sd[f"{name}.bias"] = torch.randn(out_ch, generator=gen) * 0.01


def esrgan_state_dict(scale: int, filters: int = 8, blocks: int = 1, seed: int = 0) -> dict:
    """The original ESRGAN layout: model.0 first conv, model.1.sub.* the RRDB trunk, one
    upsample conv per factor of 2 every third index, then the HR and last convs."""
    gen, sd = torch.Generator().manual_seed(seed), {}
    _conv(sd, "model.0", filters, 3, gen)
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for conv in range(1, RRDB_CONVS + 1):
                out_ch = GROWTH if conv < RRDB_CONVS else filters
                _conv(sd, f"model.1.sub.{block}.RDB{rdb}.conv{conv}.0", out_ch, filters + (conv - 1) * GROWTH, gen)
    _conv(sd, f"model.1.sub.{blocks}", filters, filters, gen)
    index = 3
    for _ in range(scale.bit_length() - 1):
        _conv(sd, f"model.{index}", filters, filters, gen)
        index += 3
    _conv(sd, f"model.{index - 1}", filters, filters, gen)
    _conv(sd, f"model.{index + 1}", 3, filters, gen)
    return sd


def real_esrgan_state_dict(scale: int, filters: int = 8, blocks: int = 1, seed: int = 1) -> dict:
    """Real-ESRGAN's basicsr RRDBNet layout; x2 and x1 models take pixel-unshuffled input (12 or
    48 channels) and always upsample twice."""
    gen, sd = torch.Generator().manual_seed(seed), {}
    _conv(sd, "conv_first", filters, 3 * {4: 1, 2: 4, 1: 16}[scale], gen)
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for conv in range(1, RRDB_CONVS + 1):
                out_ch = GROWTH if conv < RRDB_CONVS else filters
                _conv(sd, f"body.{block}.rdb{rdb}.conv{conv}", out_ch, filters + (conv - 1) * GROWTH, gen)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        _conv(sd, name, filters, filters, gen)
    _conv(sd, "conv_last", 3, filters, gen)
    return sd
