"""Guidance from a degraded prediction of the network itself, as post-CFG functions:

* Perturbed-Attention Guidance (Ahn et al. 2024): the positive prompt is predicted again with the
  middle block's self-attention replaced by the identity map over values (each token attends
  only to itself); D = D_cfg + scale (D_cond - D_perturbed).
* Self-Attention Guidance (Hong et al. 2023): where the unconditional pass's middle-block
  self-attention concentrates, the unconditional x0 is blurred; the blurred x0 is re-noised and
  predicted again; D = D_cfg + scale (blurred - D(blurred + noise)).

Both call the network through comfy.samplers.calc_cond_batch (ours unless a plugin replaced it).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .attention import _attention
from .model_patcher import set_model_options_patch_replace
from .overrides import comfy_function


def _calc_cond_batch():
    from .ksampler import calc_cond_batch
    return comfy_function("comfy.samplers", "calc_cond_batch", calc_cond_batch)


# -- PAG -----------------------------------------------------------------------------------------

def identity_attention(q, k, v, extra_options, mask=None):
    """Self-attention whose attention map is the identity: the output is the values."""
    return v


def pag_post_cfg(scale: float, block: str = "middle", number: int = 0):
    def post_cfg(args):
        denoised = args["denoised"]
        if scale == 0:
            return denoised
        options = set_model_options_patch_replace(args["model_options"].copy(), identity_attention, "attn1",
                                                  block, number)
        x, sigma = args["input"], args["sigma"]
        (perturbed,) = _calc_cond_batch()(args["model"], [args["cond"]], x, sigma, options)
        return denoised + (args["cond_denoised"] - perturbed) * scale

    return post_cfg


# -- SAG -----------------------------------------------------------------------------------------

def attention_with_scores(q, k, v, heads: int, mask=None, attn_precision=None):
    """Multi-head attention over q, k, v [B, N, heads * d] returning (output [B, N, heads * d],
    softmaxed scores [B * heads, N, M]); scores in float32 when attn_precision is float32."""
    b, _, width = q.shape
    d = width // heads
    q, k, v = (t.reshape(b, -1, heads, d).permute(0, 2, 1, 3).reshape(b * heads, -1, d) for t in (q, k, v))
    if attn_precision == torch.float32:
        scores = torch.einsum("bid,bjd->bij", q.float(), k.float()) * d ** -0.5
    else:
        scores = torch.einsum("bid,bjd->bij", q, k) * d ** -0.5
    if mask is not None:
        mask = mask.reshape(mask.shape[0], -1).repeat_interleave(heads, dim=0)[:, None, :]
        scores.masked_fill_(~mask, -torch.finfo(scores.dtype).max)
    scores = scores.softmax(dim=-1)
    out = torch.einsum("bij,bjd->bid", scores.to(v.dtype), v)
    return out.reshape(b, heads, -1, d).permute(0, 2, 1, 3).reshape(b, -1, heads * d), scores


def gaussian_blur(image: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Per-channel Gaussian blur of [B, C, H, W] with a pixel-unit sigma, edges reflected."""
    half = (kernel_size - 1) * 0.5
    taps = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (taps / sigma).pow(2))
    kernel1d = (pdf / pdf.sum()).to(device=image.device, dtype=image.dtype)
    kernel = torch.mm(kernel1d[:, None], kernel1d[None, :])
    kernel = kernel.expand(image.shape[-3], 1, kernel_size, kernel_size)
    pad = kernel_size // 2
    return F.conv2d(F.pad(image, [pad, pad, pad, pad], mode="reflect"), kernel, groups=image.shape[-3])


def _grid_of(total: int, height: int, width: int) -> tuple[int, int]:
    """The (rows, cols) of `total` attention tokens for a latent of height x width: the divisor
    of `total` nearest sqrt(total * height / width), searched outwards as ComfyUI does."""
    guess = round(math.sqrt((height / width) * total))
    for i in range(math.floor(math.sqrt(total) / 2)):
        for rows in (guess + i, max(1, guess - i)):
            if total % rows == 0:
                return rows, total // rows
    raise ValueError(f"Self-Attention Guidance: {total} attention tokens do not tile a {height}x{width} latent")


def blur_where_attended(x0: torch.Tensor, scores: torch.Tensor, sigma: float = 3.0,
                        threshold: float = 1.0) -> torch.Tensor:
    """x0 [B, C, H, W] blurred (9-tap Gaussian) where the head-averaged attention a token receives,
    summed over the queries, exceeds `threshold`; unchanged elsewhere."""
    _, n_q, n_k = scores.shape
    b, _, height, width = x0.shape
    received = scores.reshape(b, -1, n_q, n_k).mean(1).sum(1) > threshold
    rows, cols = _grid_of(received.shape[-1], height, width)
    mask = received.reshape(b, rows, cols).unsqueeze(1).type(scores.dtype)
    mask = F.interpolate(mask, (height, width))
    return gaussian_blur(x0, kernel_size=9, sigma=sigma) * mask + x0 * (1 - mask)


def sag_patches(scale: float, blur_sigma: float, threshold: float = 1.0):
    """(attn1 replacement for the middle block's first transformer, post-CFG function). The
    replacement records the unconditional pass's attention scores; the post-CFG function uses
    those of the step's latest network call."""
    recorded: list = [None]

    def attn_and_record(q, k, v, extra_options):
        heads = extra_options["n_heads"]
        cond_or_uncond = extra_options["cond_or_uncond"]
        precision = extra_options["attn_precision"]
        if 1 not in cond_or_uncond:
            return _attention()(q, k, v, heads=heads, attn_precision=precision)
        per_chunk = q.shape[0] // len(cond_or_uncond)
        out, scores = attention_with_scores(q, k, v, heads=heads, attn_precision=precision)
        slices = heads * per_chunk
        at = cond_or_uncond.index(1)
        recorded[0] = scores[slices * at:slices * (at + 1)]
        return out

    def post_cfg(args):
        denoised = args["denoised"]
        if min(denoised.shape[2:]) <= 4:  # too small for the blur's padding
            return denoised
        uncond_pred, x = args["uncond_denoised"], args["input"]
        degraded = blur_where_attended(uncond_pred, recorded[0], blur_sigma, threshold)
        renoised = degraded + x - uncond_pred
        (sag,) = _calc_cond_batch()(args["model"], [args["uncond"]], renoised, args["sigma"], args["model_options"])
        return denoised + (degraded - sag) * scale

    return attn_and_record, post_cfg


__all__ = ["attention_with_scores", "blur_where_attended", "gaussian_blur", "identity_attention", "pag_post_cfg",
           "sag_patches"]
