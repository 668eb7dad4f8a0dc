"""Tiled processing as ComfyUI does it: run a network over overlapping tiles and blend the results.

`tiled_scale` maps a channel-first batch [B, C, *spatial] through `fn`, whose output is the tile
scaled by `scale` per spatial dimension (4 for a 4x upscaler, 8 for a VAE decoder, 1/8 for a VAE
encoder). Tiles start every `tile - overlap` samples; one that would run past the far edge is
pulled back so that it ends on it (never starting later than `size - overlap`). Each tile's output
is weighted by a mask that ramps linearly from 1/f to 1 over the first and last f = round(overlap *
scale) output samples of every dimension, the weighted outputs are summed and divided by the summed
weights. A sample that fits in one tile is passed through `fn` whole.

The VAE variants average three such passes with differently shaped tiles (tall, wide and square),
which hides the seams of any single tiling; sizes follow ComfyUI's VAE.decode_tiled/encode_tiled:
decoding counts tiles and overlap in latent cells, encoding in pixels.
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

import torch

Progress = Callable[[int, int], None]  # (tiles done, tiles in all)

DECODE_TILE, DECODE_OVERLAP = 64, 16  # latent cells, when the caller gives none
ENCODE_TILE, ENCODE_OVERLAP = 512, 64  # pixels


def tile_count(size: Sequence[int], tile: Sequence[int], overlap: int) -> int:
    """How many tiles `tiled_scale` runs over one sample of spatial `size`."""
    count = 1
    for extent, length in zip(size, tile):
        count *= len(_starts(extent, length, overlap))
    return count


def _starts(extent: int, length: int, overlap: int) -> list[int]:
    if extent <= length:
        return [0]
    if length <= overlap:
        raise ValueError(f"a tile of {length} cannot overlap its neighbour by {overlap}: the overlap must be "
                         "smaller than the tile")
    return [max(0, min(extent - overlap, start)) for start in range(0, extent - overlap, length - overlap)]


def _edge_weights(shape: Sequence[int], feathers: Sequence[int], device) -> torch.Tensor:
    """Blend weights of one tile's output [*shape]: a linear ramp (1/f, 2/f, ..., 1) at both ends
    of each dimension; a dimension no longer than its ramp is left flat."""
    weights = torch.ones(tuple(shape), device=device)
    for dim, (extent, feather) in enumerate(zip(shape, feathers)):
        if feather >= extent:
            continue
        ramp = torch.ones(extent, device=device)
        rise = torch.arange(1, feather + 1, device=device, dtype=torch.float32) / feather
        ramp[:feather] *= rise
        ramp[extent - feather:] *= rise.flip(0)
        view = [1] * len(shape)
        view[dim] = extent
        weights = weights * ramp.view(view)
    return weights


@torch.inference_mode()
def tiled_scale(samples: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], tile: Sequence[int],
                overlap: int, scale: float, out_channels: int, progress: Progress | None = None,
                done: int = 0, total: int | None = None, output_device="cpu") -> torch.Tensor:
    """fn over overlapping tiles of every sample in `samples` [B, C, *spatial], blended; returns a
    float32 [B, out_channels, *round(spatial * scale)] tensor on `output_device`.

    `tile` has one length per spatial dimension; `progress(done + tiles so far, total)` is called
    after each tile (a VAE's three passes share one count).
    """
    spatial = samples.shape[2:]
    if len(tile) != len(spatial):
        raise ValueError(f"{len(tile)} tile lengths for {len(spatial)} spatial dimensions")
    out_size = [round(extent * scale) for extent in spatial]
    output = torch.empty([samples.shape[0], out_channels, *out_size], device=output_device)
    per_sample = tile_count(spatial, tile, overlap)
    total = total if total is not None else per_sample * samples.shape[0]
    feathers = [round(overlap * scale)] * len(spatial)
    for b in range(samples.shape[0]):
        sample = samples[b:b + 1]
        if all(extent <= length for extent, length in zip(spatial, tile)):
            output[b:b + 1] = fn(sample).to(output_device)
            done += 1
            if progress is not None:
                progress(done, total)
            continue
        summed = torch.zeros([1, out_channels, *out_size], device=output_device)
        weight = torch.zeros_like(summed)
        grids = [_starts(extent, length, overlap) for extent, length in zip(spatial, tile)]
        for starts in itertools.product(*grids):
            piece, corner = sample, []
            for dim, start in enumerate(starts):
                piece = piece.narrow(dim + 2, start, min(tile[dim], spatial[dim] - start))
                corner.append(round(start * scale))
            result = fn(piece).to(output_device)
            mask = _edge_weights(result.shape[2:], feathers, output_device)
            region, region_weight = summed, weight
            for dim, (offset, extent) in enumerate(zip(corner, result.shape[2:])):
                region = region.narrow(dim + 2, offset, extent)
                region_weight = region_weight.narrow(dim + 2, offset, extent)
            region += result * mask
            region_weight += mask
            done += 1
            if progress is not None:
                progress(done, total)
        output[b:b + 1] = summed / weight
    return output


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def _mean_of_tilings(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tiles: list[tuple[int, int]],
                     overlap: int, scale: float, out_channels: int, progress: Progress | None) -> torch.Tensor:
    """The mean of `tiled_scale` over several (height, width) tile shapes, summed in the given order."""
    counts = [x.shape[0] * tile_count(x.shape[2:], tile, overlap) for tile in tiles]
    total, done, out = sum(counts), 0, None
    for tile, count in zip(tiles, counts):
        part = tiled_scale(x, fn, tile, overlap, scale, out_channels, progress, done, total)
        out = part if out is None else out + part
        done += count
    return out / float(len(tiles))


def decode_tiled(decode: Callable[[torch.Tensor], torch.Tensor], latent: torch.Tensor, scale: int,
                 out_channels: int, tile_x: int | None = None, tile_y: int | None = None,
                 overlap: int | None = None, progress: Progress | None = None) -> torch.Tensor:
    """Raw decoder output (-1..1 scale, unclamped) of `latent` [B, C, h, w], as the mean of a tall,
    a wide and a square tiling; tiles and overlap in latent cells (64 and 16 when not given)."""
    tile_x, tile_y = _given(tile_x, DECODE_TILE), _given(tile_y, DECODE_TILE)
    tiles = [(tile_y * 2, tile_x // 2), (tile_y // 2, tile_x * 2), (tile_y, tile_x)]
    return _mean_of_tilings(decode, latent, tiles, _given(overlap, DECODE_OVERLAP), scale, out_channels, progress)


def encode_tiled(encode: Callable[[torch.Tensor], torch.Tensor], pixels: torch.Tensor, scale: int,
                 latent_channels: int, tile_x: int | None = None, tile_y: int | None = None,
                 overlap: int | None = None, progress: Progress | None = None) -> torch.Tensor:
    """Latents of `pixels` [B, C, H, W] as the mean of a square, a wide and a tall tiling; tiles and
    overlap in pixels (512 and 64 when not given), `scale` the VAE's downscale factor."""
    tile_x, tile_y = _given(tile_x, ENCODE_TILE), _given(tile_y, ENCODE_TILE)
    tiles = [(tile_y, tile_x), (tile_y // 2, tile_x * 2), (tile_y * 2, tile_x // 2)]
    return _mean_of_tilings(encode, pixels, tiles, _given(overlap, ENCODE_OVERLAP), 1.0 / scale, latent_channels,
                            progress)
