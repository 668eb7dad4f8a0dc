"""GLIGEN (Li et al. 2023, "GLIGEN: Open-Set Grounded Text-to-Image Generation"), the box-text
variant: GLIGEN.

A GLIGEN file adds a gated self-attention layer ("fuser") after the self-attention of every
transformer of an SD UNet, and a position net that turns (phrase embedding, box) pairs into
grounding tokens. The fuser attends over [visual tokens, projected grounding tokens], keeps the
visual part, and adds it scaled by tanh(alpha_attn); then a GEGLU feed-forward scaled by
tanh(alpha_dense).

The UNet calls it through ComfyUI's "middle_patch" (after self-attention, before
cross-attention); `transformer_index` selects the fuser of the transformer being run. The sampler
asks for the patch per conditioning entry with `set_position` (boxes from GLIGENTextBoxApply) or
`set_empty` (no boxes), as ComfyUI's comfy.gligen.Gligen does.

File layout (gligen_sd14_textbox_pruned): ``{input_blocks.N.1|middle_block.1|output_blocks.N.1}.
transformer_blocks.0.fuser.{linear,attn.to_q/k/v/out.0,ff.net.0.proj/2,norm1,norm2,alpha_attn,
alpha_dense}`` and ``position_net.{linears.0/2/4,null_positive_feature,null_position_feature}``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import nn

from .attention import CrossAttention, FeedForward
from .checkpoint import CheckpointError, read_state_dict

MAX_OBJECTS = 30
FOURIER_FREQS = 8
_FUSER = re.compile(r"^(input_blocks|middle_block|output_blocks)\.(\d+)\..*?\.fuser\.(.+)$")
_BLOCK_ORDER = {"input_blocks": 0, "middle_block": 1, "output_blocks": 2}


class GatedSelfAttentionDense(nn.Module):
    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.linear = nn.Linear(context_dim, query_dim)
        self.attn = CrossAttention(query_dim, query_dim, heads, dim_head)
        self.ff = FeedForward(query_dim)
        self.norm1 = nn.LayerNorm(query_dim)
        self.norm2 = nn.LayerNorm(query_dim)
        self.alpha_attn = nn.Parameter(torch.tensor(0.0))
        self.alpha_dense = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor, objs: torch.Tensor) -> torch.Tensor:
        visual = x.shape[1]
        objs = self.linear(objs)
        attended = self.attn(self.norm1(torch.cat([x, objs], dim=1)))[:, :visual]
        x = x + torch.tanh(self.alpha_attn) * attended
        return x + torch.tanh(self.alpha_dense) * self.ff(self.norm2(x))


def fourier_embed(x: torch.Tensor, freqs: int = FOURIER_FREQS, temperature: float = 100.0) -> torch.Tensor:
    """[..., 4] boxes -> [..., 4 * 2 * freqs]: sin and cos of each coordinate per frequency,
    frequency-major (sin f0, cos f0, sin f1, ...)."""
    bands = temperature ** (torch.arange(freqs) / freqs)
    parts = []
    for f in bands:
        parts += [torch.sin(f * x), torch.cos(f * x)]
    return torch.cat(parts, dim=-1)


class PositionNet(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, freqs: int = FOURIER_FREQS):
        super().__init__()
        self.position_dim = freqs * 2 * 4
        self.linears = nn.Sequential(nn.Linear(in_dim + self.position_dim, 512), nn.SiLU(), nn.Linear(512, 512),
                                     nn.SiLU(), nn.Linear(512, out_dim))
        self.null_positive_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(self.position_dim))

    def forward(self, boxes: torch.Tensor, masks: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Grounding tokens [B, N, out_dim]; masked-out slots get the learned null features."""
        masks = masks.unsqueeze(-1)
        xyxy = fourier_embed(boxes)
        null_text = self.null_positive_feature.to(boxes).view(1, 1, -1)
        null_box = self.null_position_feature.to(boxes).view(1, 1, -1)
        embeddings = embeddings * masks + (1 - masks) * null_text
        xyxy = xyxy * masks + (1 - masks) * null_box
        return self.linears(torch.cat([embeddings, xyxy], dim=-1))


class Gligen(nn.Module):
    """The fusers in UNet transformer order and the position net (comfy.gligen.Gligen)."""

    def __init__(self, fusers: list[nn.Module], position_net: PositionNet, key_dim: int):
        super().__init__()
        self.module_list = nn.ModuleList(fusers)
        self.position_net = position_net
        self.key_dim = key_dim
        self.max_objs = MAX_OBJECTS

    def _patch(self, boxes, masks, embeddings):
        dtype = self.position_net.null_positive_feature.dtype
        objs = self.position_net(boxes.to(dtype), masks.to(dtype), embeddings.to(dtype))
        count = len(self.module_list)

        def middle_patch(x, extra_options):
            index = extra_options["transformer_index"]
            if index >= count:
                raise ValueError(f"GLIGEN has {count} fusers but the UNet has more transformers: "
                                 "this GLIGEN model does not belong to this model")
            return self.module_list[index](x, objs.to(device=x.device, dtype=x.dtype))
        return middle_patch

    def set_position(self, latent_shape, position_params, device):
        """Patch for boxes: each (pooled text [1, key_dim], height, width, y, x) in latent cells."""
        batch, _, h, w = latent_shape
        if len(position_params) > self.max_objs:
            raise ValueError(f"GLIGEN takes at most {self.max_objs} boxes, got {len(position_params)}")
        masks = torch.zeros(self.max_objs)
        boxes = torch.zeros(self.max_objs, 4)
        embeddings = torch.zeros(self.max_objs, self.key_dim)
        for i, (pooled, height, width, y, x) in enumerate(position_params):
            boxes[i] = torch.tensor((x / w, y / h, (x + width) / w, (y + height) / h))
            embeddings[i] = pooled.reshape(-1).float()
            masks[i] = 1.0
        return self._patch(boxes.expand(batch, -1, -1).to(device), masks.expand(batch, -1).to(device),
                           embeddings.expand(batch, -1, -1).to(device))

    def set_empty(self, latent_shape, device):
        batch = latent_shape[0]
        return self._patch(torch.zeros(batch, self.max_objs, 4, device=device),
                           torch.zeros(batch, self.max_objs, device=device),
                           torch.zeros(batch, self.max_objs, self.key_dim, device=device))


def _fuser_groups(sd: Mapping[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    groups: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        m = _FUSER.match(key)
        if m:
            groups.setdefault((_BLOCK_ORDER[m.group(1)], int(m.group(2))), {})[m.group(3)] = value
    return [groups[k] for k in sorted(groups)]


def gligen_from_state_dict(sd: Mapping[str, torch.Tensor], source=None) -> Gligen:
    groups = _fuser_groups(sd)
    if not groups or "position_net.null_positive_feature" not in sd:
        raise CheckpointError(source, "not a GLIGEN model: expected *.fuser.* weights and position_net.* "
                                      f"(first keys: {', '.join(sorted(sd)[:3])})")
    fusers = []
    key_dim = 768
    for weights in groups:
        query_dim, key_dim = weights["linear.weight"].shape
        # SD1.x GLIGEN: 8 heads; other widths 64-channel heads (as ComfyUI builds them)
        heads, dim_head = (8, query_dim // 8) if key_dim == 768 else (query_dim // 64, 64)
        fuser = GatedSelfAttentionDense(query_dim, key_dim, heads, dim_head)
        result = fuser.load_state_dict({k: v.float() for k, v in weights.items()}, strict=False)
        if result.missing_keys:
            raise CheckpointError(source, f"GLIGEN fuser weights missing: {result.missing_keys[:4]}")
        fusers.append(fuser)
    in_dim = sd["position_net.null_positive_feature"].shape[0]
    out_dim = sd["position_net.linears.4.weight"].shape[0]
    position_net = PositionNet(in_dim, out_dim)
    result = position_net.load_state_dict({k[len("position_net."):]: v.float() for k, v in sd.items()
                                           if k.startswith("position_net.")}, strict=False)
    if result.missing_keys:
        raise CheckpointError(source, f"GLIGEN position net weights missing: {result.missing_keys[:4]}")
    return Gligen(fusers, position_net, key_dim).eval().requires_grad_(False)


def load_gligen(path: str | os.PathLike, manager=None):
    """GLIGEN: a ModelPatcher over the Gligen module, as ComfyUI's comfy.sd.load_gligen returns."""
    from .model_patcher import ModelPatcher

    model = gligen_from_state_dict(read_state_dict(path), path)
    load = manager.get_torch_device() if manager is not None else torch.device("cpu")
    offload = manager.unet_offload_device() if manager is not None else torch.device("cpu")
    patcher = ModelPatcher(model, load_device=load, offload_device=offload)
    patcher.manager = manager
    if manager is not None:
        manager.register(model, lambda: gligen_from_state_dict(read_state_dict(path), path),
                         name=f"GLIGEN {os.path.basename(str(path))}")
    return patcher


__all__ = [
    "GatedSelfAttentionDense",
    "Gligen",
    "PositionNet",
    "fourier_embed",
    "gligen_from_state_dict",
    "load_gligen",
]
