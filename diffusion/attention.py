"""Attention pieces of the latent-diffusion UNet: the spatial transformer and what it is made of.

Attribute names mirror the original checkpoint keys (``proj_in``, ``transformer_blocks.N.attn1.to_q``,
``ff.net.0.proj`` ...) so original-layout weights load without a key table.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .overrides import comfy_function


def _split_heads(t: torch.Tensor, heads: int, batch: int) -> torch.Tensor:
    """[B, N, heads * d] -> [batch, heads, N * B / batch, d]. k and v are laid out by q's batch, as
    ComfyUI's attention functions do: a patch that splits the queries into tiles along the batch
    (HyperTile) has each tile attend to its own contiguous band of the keys."""
    inner = t.shape[-1]
    return t.reshape(batch, -1, heads, inner // heads).transpose(1, 2)


def _merge_heads(out: torch.Tensor, skip_output_reshape: bool) -> torch.Tensor:
    """[B, heads, N, d] -> [B, N, heads * d], or as it is with skip_output_reshape."""
    if skip_output_reshape:
        return out
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


def attention_pytorch(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                      **kwargs) -> torch.Tensor:
    """Multi-head attention of q [B, N, heads * d] over k, v [B, M, heads * d] (or [B, heads, N, d]
    with skip_reshape) -> [B, N, heads * d] (or [B, heads, N, d] with skip_output_reshape).

    SDPA picks a fused kernel (flash / memory-efficient) per device and dtype, so the
    [tokens x tokens] score matrix of a 64x64 latent is never materialised.
    """
    if not skip_reshape:
        b = q.shape[0]
        q, k, v = (_split_heads(t, heads, b) for t in (q, k, v))
    if mask is not None:
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
    return _merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask), skip_output_reshape)


# -- ComfyUI's CPU attention, operation for operation ----------------------------------------------
#
# ComfyUI computes attention on the CPU with its own functions rather than SDPA: the UNet with its
# sub-quadratic attention, the text encoders with its basic attention, the VAE with its sliced
# attention. Each sums in its own order, so for ComfyUI's fp32 pixels bit for bit these run the
# same torch operations on tensors of the same shapes and layouts ([batch * heads, tokens, d]
# copies). tests/test_attention_parity.py holds them to ComfyUI's recorded outputs with torch.equal.


def comfy_cpu_numerics(t: torch.Tensor) -> bool:
    """Whether attention on `t` computes ComfyUI's CPU functions operation for operation: fp32 on
    the CPU, where our numbers are ComfyUI's bit for bit."""
    return t.device.type == "cpu" and t.dtype == torch.float32


def _heads_first(t: torch.Tensor, heads: int, batch: int, keys_transposed: bool = False) -> torch.Tensor:
    """[B, N, heads * d] -> a contiguous [batch * heads, N', d] ([batch * heads, d, N'] for
    transposed keys), laid out by q's batch as in _split_heads."""
    t = _split_heads(t, heads, batch)
    if keys_transposed:
        t = t.transpose(-1, -2)
    return t.reshape(batch * heads, *t.shape[-2:])


def _mask_per_head(mask: torch.Tensor, batch: int, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """An attention mask ([Mq, Mk], [B, Mq, Mk] or [B, heads, Mq, Mk]) as [batch * heads, Mq, Mk],
    added to the scores; a boolean mask (True: attend) becomes 0 / -max."""
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, -torch.finfo(dtype).max)
    bs = 1 if mask.ndim == 2 else mask.shape[0]
    return mask.reshape(bs, -1, mask.shape[-2], mask.shape[-1]).expand(batch, heads, -1, -1).reshape(
        -1, mask.shape[-2], mask.shape[-1])


def _split_output(out: torch.Tensor, heads: int, skip_output_reshape: bool) -> torch.Tensor:
    """[batch * heads, N, d] -> [batch, N, heads * d] (or [batch, heads, N, d])."""
    return _merge_heads(out.unflatten(0, (-1, heads)), skip_output_reshape)


# Scores computed per call in attention_sub_quad and vae_attention: blocks of query rows of about
# this many bytes (16 MB: 64 rows of a 64x64 latent's self-attention at batch 2 x 8 heads) keep
# the score matrix out of memory and, on this CPU, run faster than larger blocks. The block size
# changes no value, since each query row's scores, softmax and output are computed on their own,
# as long as a block has several rows: for a single row the BLAS multiplies a vector, in another
# order.
_SCORE_BLOCK_BYTES = 16 << 20
_MIN_BLOCK_ROWS = 16


def _row_blocks(n: int, row_bytes: int) -> list[tuple[int, int]]:
    """(top, bottom) of each block of query rows; a short last block joins the one before."""
    rows = max(_MIN_BLOCK_ROWS, _SCORE_BLOCK_BYTES // row_bytes)
    tops = list(range(0, n, rows))
    if len(tops) > 1 and n - tops[-1] < _MIN_BLOCK_ROWS:
        tops.pop()
    return list(zip(tops, [*tops[1:], n]))


def attention_sub_quad(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                       **kwargs) -> torch.Tensor:
    """ComfyUI's default attention on the CPU: its sub-quadratic attention as it runs whenever the
    keys fit at once (a few hundred MB free), i.e. scores = baddbmm(q, k^T, alpha=scale), plus the
    mask, softmax, times v; queries in blocks of rows (ComfyUI sizes its blocks from free memory,
    we from _SCORE_BLOCK_BYTES; neither changes a value). Scores in fp32 when attn_precision asks
    for it and q is not fp32."""
    if skip_reshape:
        b, _, _, d = q.shape
        query, value = q.reshape(b * heads, -1, d), v.reshape(b * heads, -1, d)
        key_t = k.reshape(b * heads, -1, d).movedim(1, 2)
    else:
        b = q.shape[0]
        query, value = _heads_first(q, heads, b), _heads_first(v, heads, b)
        key_t = _heads_first(k, heads, b, keys_transposed=True)
    dtype = query.dtype
    if attn_precision == torch.float32 and dtype != torch.float32:
        query, key_t = query.float(), key_t.float()
    scale = query.shape[-1] ** -0.5
    if mask is not None:
        mask = _mask_per_head(mask, b, heads, query.dtype)
    batch_heads, n, _ = query.shape
    beta_zero = torch.empty(1, 1, 1, dtype=query.dtype, device=query.device)
    out = value.new_empty(batch_heads, n, value.shape[-1])
    for top, bottom in _row_blocks(n, batch_heads * key_t.shape[-1] * query.element_size()):
        scores = torch.baddbmm(beta_zero, query[:, top:bottom], key_t, alpha=scale, beta=0)
        if mask is not None:
            scores += mask if mask.shape[1] == 1 else mask[:, top:bottom]
        out[:, top:bottom] = torch.bmm(scores.softmax(dim=-1).to(value.dtype), value)
        del scores
    return _split_output(out.to(dtype), heads, skip_output_reshape)


def attention_basic(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                    **kwargs) -> torch.Tensor:
    """The same attention written out as ComfyUI's basic attention computes it (its choice for
    text encoders on the CPU): einsum scores times the scale (fp32 when attn_precision asks),
    plus the mask, softmax, einsum with v."""
    if skip_reshape:
        b, _, _, d = q.shape
        q, k, v = (t.reshape(b * heads, -1, d) for t in (q, k, v))
    else:
        b = q.shape[0]
        q, k, v = (_heads_first(t, heads, b) for t in (q, k, v))
    scale = q.shape[-1] ** -0.5
    if attn_precision == torch.float32:
        q, k = q.float(), k.float()
    scores = torch.einsum("bid,bjd->bij", q, k) * scale
    if mask is not None:
        scores.add_(_mask_per_head(mask, b, heads, scores.dtype))
    out = torch.einsum("bij,bjd->bid", scores.softmax(dim=-1).to(v.dtype), v)
    return _split_output(out, heads, skip_output_reshape)


def attention_default(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False, skip_output_reshape=False,
                      **kwargs) -> torch.Tensor:
    """ComfyUI's attention for the tensors' device: on the CPU in fp32 its sub-quadratic attention
    (its numbers, bit for bit); elsewhere SDPA, as ComfyUI uses on NVIDIA GPUs, and on the CPU in
    bf16 (not ComfyUI's default there, and faster)."""
    fn = attention_sub_quad if comfy_cpu_numerics(q) else attention_pytorch
    return fn(q, k, v, heads, mask=mask, attn_precision=attn_precision, skip_reshape=skip_reshape,
              skip_output_reshape=skip_output_reshape)


def vae_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Single-head attention over the pixels of [B, C, H, W] q, k, v. On the CPU in fp32 as
    ComfyUI's VAE computes it there (its sliced attention: bmm(q, k) * scale, softmax, bmm(v, p^T)
    into [B, C, HW], in blocks of query columns, which change no value); elsewhere SDPA."""
    b, c, h, w = q.shape
    if not comfy_cpu_numerics(q):
        def tokens(t):   # [B, C, H, W] -> [B, 1, H*W, C]
            return t.reshape(b, 1, c, h * w).transpose(-1, -2)
        out = F.scaled_dot_product_attention(tokens(q), tokens(k), tokens(v))
        return out.transpose(-1, -2).reshape(b, c, h, w)
    query = q.reshape(b, c, -1).permute(0, 2, 1)
    key, value = k.reshape(b, c, -1), v.reshape(b, c, -1)
    out = torch.zeros_like(key)
    scale = c ** -0.5
    n = query.shape[1]
    for top, bottom in _row_blocks(n, b * n * q.element_size()):
        scores = torch.bmm(query[:, top:bottom], key) * scale
        probs = F.softmax(scores, dim=2).permute(0, 2, 1)
        del scores
        out[:, :, top:bottom] = torch.bmm(value, probs)
        del probs
    return out.reshape(b, c, h, w)


optimized_attention = attention_default
optimized_attention_masked = attention_default


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
        # [B, h*w, C]: a free view of NHWC activations; from NCHW ones a contiguous copy, as
        # ComfyUI makes it (a strided view can send the projections down other BLAS/oneDNN paths,
        # which sum in another order).
        tokens = x.flatten(2).transpose(1, 2).contiguous()
        if self.use_linear:
            tokens = self.proj_in(tokens)
        for i, block in enumerate(self.transformer_blocks):
            options["block_index"] = i
            tokens = block(tokens, contexts[i], options)
        if self.use_linear:
            tokens = self.proj_out(tokens)
        x = tokens.transpose(1, 2).reshape(b, -1, h, w)
        free_nhwc_view = (x.device.type == "cpu" and not comfy_cpu_numerics(x)
                          and residual.is_contiguous(memory_format=torch.channels_last))
        if not free_nhwc_view:   # ComfyUI's NCHW copy; the reduced-precision CPU path keeps the view
            x = x.contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        return x + residual
