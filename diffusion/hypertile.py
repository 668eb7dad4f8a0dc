"""HyperTile (tfernd/HyperTile, as ComfyUI applies it): self-attention at the largest latent
resolutions runs per tile, the queries split into nh x nw tiles moved into the batch, so its cost
falls from (HW)^2 to (HW)^2 / (nh nw).

Only the queries are tiled; the keys and values stay whole and the attention lays them out by the
queries' batch (see diffusion.attention), so each query tile attends to one contiguous band of
rows of the key tokens. Tile counts are drawn from torch's global generator, as in ComfyUI, so a
seeded run repeats.
"""
from __future__ import annotations

import math

import torch


def random_divisor(value: int, min_value: int, max_options: int = 1) -> int:
    """value // d for a divisor d >= min_value of `value`, one of the `max_options` smallest such
    d picked at random. As in ComfyUI, the draw is randint(0, options - 1), so the largest of the
    options is never picked, and nothing is drawn when only one option exists."""
    min_value = min(min_value, value)
    divisors = [d for d in range(min_value, value + 1) if value % d == 0]
    counts = [value // d for d in divisors[:max_options]]
    index = torch.randint(low=0, high=len(counts) - 1, size=(1,)).item() if len(counts) > 1 else 0
    return counts[index]


def _to_tiles(t: torch.Tensor, nh: int, h: int, nw: int, w: int) -> torch.Tensor:
    """[B, nh*h*nw*w, C] tokens -> [B*nh*nw, h*w, C] tiles."""
    b, _, c = t.shape
    return t.reshape(b, nh, h, nw, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, h * w, c)


def _from_tiles(t: torch.Tensor, nh: int, h: int, nw: int, w: int) -> torch.Tensor:
    """The inverse of `_to_tiles`."""
    c = t.shape[-1]
    b = t.shape[0] // (nh * nw)
    return t.reshape(b, nh, nw, h, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * h * nw * w, c)


def hypertile_patches(tile_size: int, swap_size: int, max_depth: int, scale_depth: bool):
    """(attn1_patch, attn1_output_patch) that tile self-attention at the latent resolution and
    the `max_depth` halvings below it; tiles are about tile_size / 8 latent cells (at least 4),
    doubled per depth with `scale_depth`."""
    latent_tile = max(32, tile_size) // 8
    pending: list = []  # the tiling of the attention in flight, for the output patch

    def tile_queries(q, k, v, extra_options):
        tokens = q.shape[-2]
        shape = extra_options["original_shape"]
        sizes = [(shape[-2] / 2 ** i) * (shape[-1] / 2 ** i) for i in range(max_depth + 1)]
        if tokens not in sizes:
            return q, k, v
        aspect = shape[-1] / shape[-2]
        # ComfyUI's names: "h" is the token count times the aspect ratio's root (the width for a
        # non-square latent); the tiling below follows it as written.
        h, w = round(math.sqrt(tokens * aspect)), round(math.sqrt(tokens / aspect))
        factor = 2 ** sizes.index(tokens) if scale_depth else 1
        nh = random_divisor(h, latent_tile * factor, swap_size)
        nw = random_divisor(w, latent_tile * factor, swap_size)
        if nh * nw > 1:
            q = _to_tiles(q, nh, h // nh, nw, w // nw)
            pending[:] = [(nh, nw, h, w)]
        return q, k, v

    def untile_output(out, extra_options):
        if pending:
            nh, nw, h, w = pending.pop()
            out = _from_tiles(out, nh, h // nh, nw, w // nw)
        return out

    return tile_queries, untile_output


__all__ = ["hypertile_patches", "random_divisor"]
