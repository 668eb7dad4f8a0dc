"""The T2I-Adapter style model (Mou et al. 2023, "T2I-Adapter", the style adapter): STYLE_MODEL.

It reads a CLIP ViT-L/14 image encoding (all 257 tokens of the last hidden state), appends
`num_token` learned query tokens, runs a few pre-norm transformer blocks (OpenCLIP's residual
attention block with quick-GELU) and projects the query tokens to the text encoder's width, so
they can be appended to a prompt's conditioning as extra tokens.

The file (``t2iadapter_style_sd14v1.pth``) holds ``style_embedding`` [1, tokens, width],
``proj`` [width, context], ``ln_pre``/``ln_post`` and ``transformer_layes.N.*`` (sic). Sizes come
from the weights; heads are 8 as in the released model (ComfyUI builds exactly that one).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import nn

from .checkpoint import CheckpointError, materialize, read_state_dict
from .controlnet_union import ResBlockUnionControlnet

STYLE_HEADS = 8


class StyleAdapter(nn.Module):
    def __init__(self, width: int = 1024, context_dim: int = 768, heads: int = STYLE_HEADS, layers: int = 3,
                 num_token: int = 8):
        super().__init__()
        self.num_token = num_token
        self.transformer_layes = nn.Sequential(*[ResBlockUnionControlnet(width, heads, batch_first=False) for _ in range(layers)])
        self.style_embedding = nn.Parameter(torch.zeros(1, num_token, width))
        self.ln_post = nn.LayerNorm(width)
        self.ln_pre = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, context_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CLIP vision last hidden state [N, tokens, width] -> style tokens [N, num_token, context]."""
        dtype = self.proj.dtype
        queries = self.style_embedding.expand(x.shape[0], -1, -1)
        x = torch.cat([x.to(dtype), queries], dim=1)
        x = self.ln_pre(x).permute(1, 0, 2)
        x = self.transformer_layes(x).permute(1, 0, 2)
        x = self.ln_post(x[:, -self.num_token:, :])
        return x @ self.proj


class StyleModel:
    """STYLE_MODEL: ComfyUI's comfy.sd.StyleModel (`model`, `get_cond(clip_vision_output)`)."""

    def __init__(self, model: nn.Module, device="cpu"):
        self.model = model.eval().requires_grad_(False)

    @torch.no_grad()
    def get_cond(self, clip_vision_output) -> torch.Tensor:
        hidden = clip_vision_output.last_hidden_state
        width = self.model.style_embedding.shape[-1]
        if hidden.shape[-1] != width:
            raise ValueError(f"this style model reads {width}-wide CLIP vision features (CLIP ViT-L/14), but the "
                             f"CLIP vision output is {hidden.shape[-1]} wide: load the matching CLIP vision model")
        device = self.model.proj.device
        return self.model(hidden.to(device)).float().cpu()


def _identify(sd: Mapping[str, object]) -> str:
    if "redux_down.weight" in sd:
        return " (it is a Flux Redux image encoder, which LatentGraph does not run)"
    if any(k.startswith(("body.", "conv_in.", "adapter.")) for k in sd):
        return " (it looks like a T2I-Adapter for structure, which belongs in the controlnet folder)"
    return ""


def load_style_model(path: str | os.PathLike, device="cpu") -> StyleModel:
    sd = read_state_dict(path)
    if "style_embedding" not in sd:
        raise CheckpointError(path, "not a T2I-Adapter style model: no style_embedding key" + _identify(sd))
    try:
        _, tokens, width = sd["style_embedding"].shape
        context = sd["proj"].shape[1]
    except (KeyError, ValueError):
        raise CheckpointError(path, "style model weights are incomplete: style_embedding must be [1, tokens, width] "
                                    "and proj [width, context]") from None
    layers = len({int(m.group(1)) for k in sd if (m := re.match(r"transformer_layes\.(\d+)\.", k))})
    if width % STYLE_HEADS:
        raise CheckpointError(path, f"style model width {width} does not split into {STYLE_HEADS} heads")
    model = materialize(lambda: StyleAdapter(width, context, STYLE_HEADS, layers, tokens),
                        {k: v.float().to(device) for k, v in sd.items()}, path, "style model")
    return StyleModel(model)


__all__ = ["StyleAdapter", "StyleModel", "load_style_model"]
