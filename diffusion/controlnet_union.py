"""Union ControlNets (xinsir's ControlNet++ for SDXL, "controlnet-union-sdxl-1.0" and its ProMax
file): one ControlNet that takes several kinds of hint, told which by a control type.

On top of an SDXL ControlNet the file holds a task embedding per control type
(``task_embedding`` [types, 320]), one transformer block over the hint features
(``transformer_layes.0.{attn,ln_1,mlp.c_fc,mlp.c_proj,ln_2}``), ``spatial_ch_projs`` and
``control_add_embedding.linear_1/2``. As ComfyUI runs it:

* the control types (SetUnionControlNetType) become a one-hot vector over the types, each entry
  embedded sinusoidally (256 wide), flattened and put through the two-layer MLP; the result is
  added to the timestep embedding, also for "auto" (no type: all zeros);
* with a type, the hint encoder's output is mean-pooled over space, the type's task embedding
  added, run through the transformer block and projected, and that vector is added back to the
  hint features at every position; with "auto" the hint features are used as they are;
* one hint image and one type per ControlNet (ComfyUI reads only the first type); a type number
  beyond the file's (e.g. "repaint", 7, on the 6-type original file) is refused with the reason.
"""
from __future__ import annotations

import torch
from torch import nn

from .unet_blocks import timestep_embedding

UNION_CONTROLNET_TYPES = {
    "openpose": 0, "depth": 1, "hed/pidi/scribble/ted": 2, "canny/lineart/anime_lineart/mlsd": 3, "normal": 4,
    "segment": 5, "tile": 6, "repaint": 7,
}
TRANSFORMER_WIDTH = 320
TRANSFORMER_HEADS = 8
ADD_EMBED_DIM = 256


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResBlockUnionControlnet(nn.Module):
    """Pre-norm transformer block: x + attn(ln_1(x)); x + mlp(ln_2(x)) on [B, tokens, width]
    (`batch_first` False: [tokens, B, width], the original CLIP block's layout, as the style
    model's files expect)."""

    def __init__(self, width: int = TRANSFORMER_WIDTH, heads: int = TRANSFORMER_HEADS, batch_first: bool = True):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=batch_first)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class ControlAddEmbedding(nn.Module):
    def __init__(self, types: int, out_dim: int, in_dim: int = ADD_EMBED_DIM):
        super().__init__()
        self.types, self.in_dim = types, in_dim
        self.linear_1 = nn.Linear(in_dim * types, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, control_type: list[int], dtype: torch.dtype, device) -> torch.Tensor:
        one_hot = torch.zeros((self.types,), device=device)
        if control_type:
            one_hot[control_type] = 1.0
        x = timestep_embedding(one_hot, self.in_dim).to(dtype).reshape(-1, self.types * self.in_dim)
        return self.linear_2(nn.functional.silu(self.linear_1(x)))


def attach_union_parts(model: nn.Module, types: int, time_embed_dim: int) -> None:
    """The union additions, as attributes of a ControlNetModel (their file keys)."""
    model.task_embedding = nn.Parameter(torch.zeros(types, TRANSFORMER_WIDTH))
    model.transformer_layes = nn.Sequential(ResBlockUnionControlnet())
    model.spatial_ch_projs = nn.Linear(TRANSFORMER_WIDTH, TRANSFORMER_WIDTH)
    model.control_add_embedding = ControlAddEmbedding(types, time_embed_dim)


def check_types(control_type: list[int], types: int) -> None:
    too_high = [t for t in control_type if t >= types]
    if too_high:
        names = {v: k for k, v in UNION_CONTROLNET_TYPES.items()}
        worst = max(too_high)
        raise ValueError(f"control type {names.get(worst, worst)} ({worst}) is beyond the {types} types this union "
                         "ControlNet knows; the ProMax union file has all 8")


def merge_hint(model: nn.Module, hint_features: torch.Tensor, control_type: list[int]) -> torch.Tensor:
    """Hint features steered by the first control type (ComfyUI's union_controlnet_merge)."""
    pooled = hint_features.mean(dim=(2, 3)) + model.task_embedding[control_type[0]].to(hint_features)
    x = model.transformer_layes(pooled.unsqueeze(1))
    alpha = model.spatial_ch_projs(x[:, 0])
    return hint_features + alpha[:, :, None, None]


def is_union_state_dict(sd) -> bool:
    return "control_add_embedding.linear_1.bias" in sd


UNION_KEY_PREFIXES = ("task_embedding", "transformer_layes.", "spatial_ch_projs.", "control_add_embedding.")

__all__ = ["UNION_CONTROLNET_TYPES", "UNION_KEY_PREFIXES", "ControlAddEmbedding", "ResBlockUnionControlnet",
           "attach_union_parts", "check_types", "is_union_state_dict", "merge_hint"]
