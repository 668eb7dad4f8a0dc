"""Token Merging for Stable Diffusion (Bolya & Hoffman 2023, "ToMe for SD"), as ComfyUI applies
it: before self-attention at the full latent resolution, the `ratio` of query tokens most similar
to another token are averaged into it (bipartite soft matching), so attention runs over fewer
queries; afterwards the merged tokens are copied back to every position they came from.

The destination tokens are one per 2x2 cell, chosen at random from torch's global generator (as
in ComfyUI, so a seeded run repeats); the rest are sources. Each source is matched to its most
cosine-similar destination, and the r best-matched sources are merged (mean). Keys and values are
not merged.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch


def _identity(x: torch.Tensor, mode: str | None = None) -> torch.Tensor:
    return x


def _gather(x: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    if x.device.type == "mps" and x.shape[-1] == 1:  # MPS's gather fails on a last axis of 1
        return torch.gather(x.unsqueeze(-1), dim - 1 if dim < 0 else dim, index.unsqueeze(-1)).squeeze(-1)
    return torch.gather(x, dim, index)


def _destinations(h: int, w: int, sx: int, sy: int, device, no_rand: bool) -> torch.Tensor:
    """[1, h*w, 1] token indices, destinations first: one random token of each sy x sx cell is a
    destination (cells cut off by the edge have none)."""
    cells_h, cells_w = h // sy, w // sx
    if no_rand:
        pick = torch.zeros(cells_h, cells_w, 1, device=device, dtype=torch.int64)
    else:
        pick = torch.randint(sy * sx, size=(cells_h, cells_w, 1), device=device)
    marks = torch.zeros(cells_h, cells_w, sy * sx, device=device, dtype=torch.int64)
    marks.scatter_(dim=2, index=pick, src=-torch.ones_like(pick, dtype=pick.dtype))
    marks = marks.view(cells_h, cells_w, sy, sx).transpose(1, 2).reshape(cells_h * sy, cells_w * sx)
    if cells_h * sy < h or cells_w * sx < w:
        whole = torch.zeros(h, w, device=device, dtype=torch.int64)
        whole[:cells_h * sy, :cells_w * sx] = marks
        marks = whole
    # destinations are -1 and sources 0, so sorting puts the destinations first
    return marks.reshape(1, -1, 1).argsort(dim=1)


def bipartite_soft_matching(metric: torch.Tensor, w: int, h: int, sx: int, sy: int, r: int,
                            no_rand: bool = False) -> tuple[Callable, Callable]:
    """(merge, unmerge) for tokens `metric` [B, N, C] of an h x w grid: merge removes r tokens
    by averaging each into its most similar destination; unmerge restores N tokens."""
    batch, tokens, _ = metric.shape
    if r <= 0 or w == 1 or h == 1:
        return _identity, _identity
    with torch.no_grad():
        order = _destinations(h, w, sx, sy, metric.device, no_rand)
        num_dst = (h // sy) * (w // sx)
        src_index, dst_index = order[:, num_dst:, :], order[:, :num_dst, :]

        def split(x: torch.Tensor):
            c = x.shape[-1]
            return (_gather(x, 1, src_index.expand(batch, tokens - num_dst, c)),
                    _gather(x, 1, dst_index.expand(batch, num_dst, c)))

        unit = metric / metric.norm(dim=-1, keepdim=True)
        a, b = split(unit)
        similarity = a @ b.transpose(-1, -2)
        r = min(a.shape[1], r)
        best, best_dst = similarity.max(dim=-1)
        ranked = best.argsort(dim=-1, descending=True)[..., None]
        kept = ranked[..., r:, :]      # sources left alone
        merged = ranked[..., :r, :]    # sources merged away
        merged_into = _gather(best_dst[..., None], -2, merged)

    def merge(x: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        src, dst = split(x)
        n, t1, c = src.shape
        unmerged = _gather(src, -2, kept.expand(n, t1 - r, c))
        src = _gather(src, -2, merged.expand(n, r, c))
        dst = dst.scatter_reduce(-2, merged_into.expand(n, r, c), src, reduce=mode)
        return torch.cat([unmerged, dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        n_kept = kept.shape[1]
        unmerged, dst = x[..., :n_kept, :], x[..., n_kept:, :]
        c = unmerged.shape[-1]
        src = _gather(dst, -2, merged_into.expand(batch, r, c))
        out = torch.zeros(batch, tokens, c, device=x.device, dtype=x.dtype)
        sources = src_index.expand(batch, src_index.shape[1], 1)
        out.scatter_(dim=-2, index=dst_index.expand(batch, num_dst, c), src=dst)
        out.scatter_(dim=-2, index=_gather(sources, 1, kept).expand(batch, n_kept, c), src=unmerged)
        out.scatter_(dim=-2, index=_gather(sources, 1, merged).expand(batch, r, c), src=src)
        return out

    return merge, unmerge


def merge_functions(x: torch.Tensor, ratio: float, original_shape) -> tuple[Callable, Callable]:
    """(merge, unmerge) for the tokens x [B, N, C] of a transformer at the full latent
    resolution (`original_shape` [B, C, H, W]); identity at the lower resolutions."""
    _, _, height, width = original_shape
    downsample = math.ceil(math.sqrt((height * width) // x.shape[1]))
    if downsample > 1:
        return _identity, _identity
    w, h = math.ceil(width / downsample), math.ceil(height / downsample)
    return bipartite_soft_matching(x, w, h, 2, 2, int(x.shape[1] * ratio))


def tome_patches(ratio: float):
    """(attn1_patch, attn1_output_patch) merging the self-attention queries by `ratio`."""
    current: list = [_identity]

    def merge_queries(q, k, v, extra_options):
        merge, unmerge = merge_functions(q, ratio, extra_options["original_shape"])
        current[0] = unmerge
        return merge(q), k, v

    def unmerge_output(n, extra_options):
        return current[0](n)

    return merge_queries, unmerge_output


__all__ = ["bipartite_soft_matching", "merge_functions", "tome_patches"]
