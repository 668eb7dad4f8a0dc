"""The inputs of tests/test_attention_parity.py, shared with the script that records ComfyUI's
outputs for them (tests/data/attention/make_attention_reference.py runs under ComfyUI's venv, so
this module imports nothing but torch)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Case:
    name: str
    kind: str               # "sub_quad" (UNet), "basic" (text encoders) or "vae"
    batch: int
    tokens: int
    keys: int
    heads: int
    dim_head: int
    mask: str | None = None             # None, "causal" (additive -max above the diagonal) or "additive"
    precision: torch.dtype | None = None
    dtype: torch.dtype = torch.float32
    skip_reshape: bool = False


CASES = [
    # SD1.5's self- and cross-attention at a 16x16 latent level, batch 2 as under CFG
    Case("unet_self", "sub_quad", 2, 256, 256, 8, 40),
    Case("unet_cross", "sub_quad", 2, 128, 77, 8, 40),
    Case("unet_self_heads_split", "sub_quad", 2, 64, 64, 8, 80, skip_reshape=True),
    Case("unet_masked", "sub_quad", 2, 64, 77, 8, 40, mask="additive"),
    Case("unet_bf16_fp32_scores", "sub_quad", 2, 64, 64, 8, 40, precision=torch.float32, dtype=torch.bfloat16),
    # CLIP-L's text attention with its causal mask
    Case("clip_causal", "basic", 1, 77, 77, 12, 64, mask="causal"),
    Case("clip_causal_batch", "basic", 2, 77, 77, 12, 64, mask="causal"),
    # the VAE's mid-block attention on an 8x8 latent (512 channels)
    Case("vae_mid", "vae", 1, 64, 64, 1, 512),
]


def inputs(case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """q, k, v (and the mask) for `case`, drawn from its name's seed."""
    g = torch.Generator().manual_seed(sum(map(ord, case.name)))
    inner = case.heads * case.dim_head

    def draw(*shape):
        return (torch.randn(*shape, generator=g) * 2).to(case.dtype)

    if case.kind == "vae":
        side = int(case.tokens ** 0.5)
        q, k, v = (draw(case.batch, inner, side, side) for _ in range(3))
        return q, k, v, None
    if case.skip_reshape:
        q = draw(case.batch, case.heads, case.tokens, case.dim_head)
        k, v = (draw(case.batch, case.heads, case.keys, case.dim_head) for _ in range(2))
    else:
        q = draw(case.batch, case.tokens, inner)
        k, v = (draw(case.batch, case.keys, inner) for _ in range(2))
    mask = None
    if case.mask == "causal":
        mask = torch.full((case.tokens, case.keys), -torch.finfo(torch.float32).max).triu_(1)
    elif case.mask == "additive":
        mask = torch.randn(case.batch, case.tokens, case.keys, generator=g)
    return q, k, v, mask


# Whole UNets in the SD2.1 layout (linear projections, 64-channel heads) and the SDXL layout (adm
# vector, deeper transformers), from tests/models_tiny.py, one call on a 24x24 latent at batch 2.
UNET_STYLES = ("sd21", "sdxl")
UNET_SEED = 3


def unet_inputs(config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x, timesteps, context and (for an adm UNet) y for a UNet of `config`."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, config.in_channels, 24, 24, generator=g)
    context = torch.randn(2, 77, config.context_dim, generator=g)
    y = torch.randn(2, config.adm_in_channels, generator=g) if config.adm_in_channels else None
    return x, torch.tensor([700.0, 700.0]), context, y
