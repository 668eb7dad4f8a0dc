"""Attention pieces of the latent-diffusion UNet: the spatial transformer and what it is made of.

Attribute names mirror the original checkpoint keys (``proj_in``, ``transformer_blocks.N.attn1.to_q``,
``ff.net.0.proj`` ...) so original-layout weights load without a key table.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .overrides import comfy_function


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, inner = t.shape
    return t.view(b, n, heads, inner // heads).transpose(1, 2)


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                      **kwargs) -> torch.Tensor:
    """Multi-head attention of q [B, N, heads * d] over k, v [B, M, heads * d] (or [B, heads, N, d]
    with skip_reshape) -> [B, N, heads * d] (or [B, heads, N, d] with skip_output_reshape).

    SDPA picks a fused kernel (flash / memory-efficient) per device and dtype, so the
    [tokens x tokens] score matrix of a 64x64 latent is never materialised.
    """
    if not skip_reshape:
        q, k, v = (_split_heads(t, heads) for t in (q, k, v))
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if skip_output_reshape:
        return out
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


def attention_basic(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                    **kwargs) -> torch.Tensor:
    """The same attention written out: softmax(q k^T / sqrt(d) + mask) v, scores in float32."""
    if not skip_reshape:
        q, k, v = (_split_heads(t, heads) for t in (q, k, v))
    scale = q.shape[-1] ** -0.5
    scores = torch.einsum("bhid,bhjd->bhij", q.float(), k.float()) * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + mask
    out = torch.einsum("bhij,bhjd->bhid", scores.softmax(dim=-1).to(v.dtype), v)
    if skip_output_reshape:
        return out
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


optimized_attention = attention_pytorch
optimized_attention_masked = attention_pytorch


def _attention():
    """The attention function now in effect: a plugin may replace ComfyUI's optimized_attention."""
    return comfy_function("comfy.ldm.modules.attention", "optimized_attention", optimized_attention)


class CrossAttention(nn.Module):
    """Multi-head attention; self-attention when no context is given."""

    def __init__(self, query_dim: int, context_dim: int | None = None, heads: int = 8, dim_head: int = 64):
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.dim_head = dim_head
        self.attn_precision = None
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        # Index 1 stands where training-time dropout was; checkpoints name the projection to_out.0.
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Identity())

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, value: torch.Tensor | None = None,
                mask=None, transformer_options: dict | None = None) -> torch.Tensor:
        q = self.to_q(x)
        context = x if context is None else context
        k = self.to_k(context)
        v = self.to_v(context if value is None else value)
        out = _attention()(q, k, v, self.heads, mask=mask, attn_precision=self.attn_precision,
                           transformer_options=transformer_options or {})
        return self.to_out(out)


class GEGLU(nn.Module):
    """Gated GELU: one projection yields both the value and its gate."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        inner = dim * mult
        # Index 1 stands where the original's dropout (inert at inference) was, so the output
        # projection keeps its checkpoint name ff.net.2.
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Identity(), nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention on the text context, then a GEGLU feed-forward.

    Honours the MODEL's transformer_options as ComfyUI's block does: "patches" attn1_patch /
    attn2_patch (rewrite the attention inputs), attn1_output_patch / attn2_output_patch (rewrite
    the attention output), middle_patch; "patches_replace" attn1 / attn2 keyed by (block kind,
    stage, index in the transformer) or (block kind, stage), which replace the attention itself
    and receive the projected q, k, v. Patches see extra_options: the transformer_options minus
    the patches, plus n_heads, dim_head and attn_precision.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.n_heads = heads
        self.d_head = dim_head
        self.attn_precision = None

    @staticmethod
    def _replaced(attn: CrossAttention, fn, n, context, value, extra_options):
        q, k, v = attn.to_q(n), attn.to_k(context), attn.to_v(value)
        return attn.to_out(fn(q, k, v, extra_options))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                transformer_options: dict | None = None) -> torch.Tensor:
        options = transformer_options if transformer_options is not None else {}
        patches = options.get("patches", {})
        replace = options.get("patches_replace", {})
        if not patches and not replace:  # the common case: no dict building per block
            x = x + self.attn1(self.norm1(x), transformer_options=options)
            x = x + self.attn2(self.norm2(x), context, transformer_options=options)
            return x + self.ff(self.norm3(x))
        extra = {k: v for k, v in options.items() if k not in ("patches", "patches_replace")}
        extra["n_heads"], extra["dim_head"], extra["attn_precision"] = self.n_heads, self.d_head, self.attn_precision
        block = options.get("block")
        block_index = options.get("block_index", 0)
        transformer_block = None if block is None else (block[0], block[1], block_index)

        n = self.norm1(x)
        context_attn1 = value_attn1 = None
        if "attn1_patch" in patches:
            context_attn1 = value_attn1 = n
            for p in patches["attn1_patch"]:
                n, context_attn1, value_attn1 = p(n, context_attn1, value_attn1, extra)
        attn1_replace = replace.get("attn1", {})
        key1 = transformer_block if transformer_block in attn1_replace else block
        if key1 in attn1_replace:
            context_attn1 = n if context_attn1 is None else context_attn1
            value_attn1 = n if value_attn1 is None else value_attn1
            n = self._replaced(self.attn1, attn1_replace[key1], n, context_attn1, value_attn1, extra)
        else:
            n = self.attn1(n, context=context_attn1, value=value_attn1, transformer_options=options)
        for p in patches.get("attn1_output_patch", []):
            n = p(n, extra)
        x = x + n
        for p in patches.get("middle_patch", []):
            x = p(x, extra)

        n = self.norm2(x)
        context_attn2, value_attn2 = context, None
        if "attn2_patch" in patches:
            value_attn2 = context_attn2
            for p in patches["attn2_patch"]:
                n, context_attn2, value_attn2 = p(n, context_attn2, value_attn2, extra)
        attn2_replace = replace.get("attn2", {})
        key2 = transformer_block if transformer_block in attn2_replace else block
        if key2 in attn2_replace:
            value_attn2 = context_attn2 if value_attn2 is None else value_attn2
            n = self._replaced(self.attn2, attn2_replace[key2], n, context_attn2, value_attn2, extra)
        else:
            n = self.attn2(n, context=context_attn2, value=value_attn2, transformer_options=options)
        for p in patches.get("attn2_output_patch", []):
            n = p(n, extra)
        x = x + n
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Runs transformer blocks over the pixels of a feature map, as a residual branch.

    SD1.x projects in and out with 1x1 convolutions (before flattening), SD2.x/SDXL with linear
    layers (after flattening); the two are the same map but store differently shaped weights.
    """

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int,
                 use_linear: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        # eps 1e-6 (not GroupNorm's default) is what these weights were trained with.
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        if use_linear:
            self.proj_in = nn.Linear(channels, inner)
            self.proj_out = nn.Linear(inner, channels)
        else:
            self.proj_in = nn.Conv2d(channels, inner, 1)
            self.proj_out = nn.Conv2d(inner, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, context, transformer_options: dict | None = None) -> torch.Tensor:
        """`context` [B, T, D], or one per transformer block as a list."""
        options = transformer_options if transformer_options is not None else {}
        contexts = context if isinstance(context, list) else [context] * len(self.transformer_blocks)
        b, _, h, w = x.shape
        options["activations_shape"] = list(x.shape)
        residual = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        tokens = x.flatten(2).transpose(1, 2)  # [B, h*w, C]
        if self.use_linear:
            tokens = self.proj_in(tokens)
        for i, block in enumerate(self.transformer_blocks):
            options["block_index"] = i
            tokens = block(tokens, contexts[i], options)
        if self.use_linear:
            tokens = self.proj_out(tokens)
        x = tokens.transpose(1, 2).reshape(b, -1, h, w)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + residual
