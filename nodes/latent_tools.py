"""Latent tools with ComfyUI's names and widgets: composite, blend, batch slicing and repeating,
flip, rotate, crop. LATENT = {"samples": [B, C, h, w], "noise_mask"?, "batch_index"?}.

Every node returns a new dict (a shallow copy of its main input) and never writes into an input
tensor, so cached upstream outputs stay valid. Which keys ride along follows ComfyUI: a noise
mask is carried over unchanged by composite, blend, flip, rotate and crop (the sampler resizes it
to the latent when it is used), and sliced or repeated only by the batch nodes.
"""
from __future__ import annotations

import torch

from diffusion.handles import VAE_SCALE as LATENT_SCALE
from diffusion.upscale import upscale
from graph.contract import Combo, Float, Int, Node, Output, Socket
from nodes.image import MAX_RESOLUTION
from nodes.latent import with_samples
from nodes.mask import repeat_to_batch
MIN_CROP_CELLS = 8  # LatentCrop keeps at least 8 cells (64 pixels) right of and below x, y


def latent_samples(latent, name: str) -> torch.Tensor:
    """The samples tensor [B, C, h, w] of a LATENT input, or a clear error naming the input."""
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
        raise TypeError(f"{name}: expected a LATENT (a dict with a 'samples' tensor)")
    samples = latent["samples"]
    if samples.ndim != 4:
        raise ValueError(f"{name}: expected samples of shape [B, C, h, w], got {tuple(samples.shape)}")
    return samples


def reshape_latent_to(target_shape, latent: torch.Tensor, repeat_batch: bool = True) -> torch.Tensor:
    """`latent` fitted to a latent of `target_shape`: resized bilinearly with a centre crop when its
    channels or size differ (as ComfyUI does), then its batch cycled or cut to the target's."""
    if latent.shape[1:] != target_shape[1:]:
        latent = upscale(latent, target_shape[-1], target_shape[-2], "bilinear", "center")
    return repeat_to_batch(latent, target_shape[0]) if repeat_batch else latent


def _same_channels(a: torch.Tensor, b: torch.Tensor, node: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{node}: the latents have {a.shape[1]} and {b.shape[1]} channels; they must come "
                         "from the same model family")


def PixelInt(name: str, default: int, min: int = 0) -> Int:
    return Int(name, default, min=min, max=MAX_RESOLUTION, step=8)


# ---------------------------------------------------------------------------------------------
# compositing


def feather_mask(shape, y: int, x: int, target_h: int, target_w: int, feather: int) -> torch.Tensor:
    """Weights of the pasted latent: linear ramps of `feather` cells on every edge that lies inside
    the target (edges on the target's border stay hard)."""
    mask = torch.ones(shape)
    h, w = shape[2], shape[3]
    for t in range(feather):
        ramp = (1.0 / feather) * (t + 1)
        if y != 0:
            mask[:, :, t:1 + t, :] *= ramp
        if y + h < target_h:
            mask[:, :, h - 1 - t:h - t, :] *= ramp
        if x != 0:
            mask[:, :, :, t:1 + t] *= ramp
        if x + w < target_w:
            mask[:, :, :, w - 1 - t:w - t] *= ramp
    return mask


class LatentComposite(Node):
    """Pastes samples_from into samples_to at (x, y) pixels (floored to latent cells), cut at the
    target's edges, optionally cross-fading over `feather` pixels."""

    display_name = "Latent Composite"
    comfy_function = "composite"
    category = "latent"
    inputs = (Socket("samples_to", "LATENT"), Socket("samples_from", "LATENT"), PixelInt("x", 0),
              PixelInt("y", 0), PixelInt("feather", 0))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples_to, samples_from, x, y, composite_method="normal", feather=0):
        if composite_method != "normal":
            raise ValueError(f"LatentComposite: unknown composite_method {composite_method!r}; only 'normal' exists")
        target = latent_samples(samples_to, "samples_to")
        source = latent_samples(samples_from, "samples_from")
        _same_channels(target, source, "LatentComposite")
        x, y, feather = x // LATENT_SCALE, y // LATENT_SCALE, feather // LATENT_SCALE
        th, tw = target.shape[2:]
        if y >= th or x >= tw:
            raise ValueError(f"LatentComposite: position x={x * LATENT_SCALE}, y={y * LATENT_SCALE} lies outside "
                             f"samples_to ({tw * LATENT_SCALE}x{th * LATENT_SCALE} pixels)")
        source = source[:, :, :th - y, :tw - x]
        h, w = source.shape[2:]
        out = target.clone()
        if feather == 0:
            out[:, :, y:y + h, x:x + w] = source
        else:
            mask = feather_mask(source.shape, y, x, th, tw, feather).to(source)
            out[:, :, y:y + h, x:x + w] = source * mask + out[:, :, y:y + h, x:x + w] * (1.0 - mask)
        return (with_samples(samples_to, out),)


class LatentBlend(Node):
    """samples1 * blend_factor + samples2 * (1 - blend_factor); samples2 is first resized (bicubic,
    centre crop) to samples1's size when the shapes differ. ComfyUI's only blend mode is "normal",
    and it has no widget."""

    display_name = "Latent Blend"
    comfy_function = "blend"
    category = "_for_testing"
    inputs = (Socket("samples1", "LATENT"), Socket("samples2", "LATENT"),
              Float("blend_factor", 0.5, min=0, max=1, step=0.01))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples1, samples2, blend_factor, blend_mode="normal"):
        if blend_mode != "normal":
            raise ValueError(f"LatentBlend: unsupported blend mode {blend_mode!r}; only 'normal' exists")
        s1, s2 = latent_samples(samples1, "samples1"), latent_samples(samples2, "samples2")
        _same_channels(s1, s2, "LatentBlend")
        if s1.shape != s2.shape:
            s2 = upscale(s2, s1.shape[3], s1.shape[2], "bicubic", "center")
        return (with_samples(samples1, s1 * blend_factor + s2 * (1 - blend_factor)),)


# ---------------------------------------------------------------------------------------------
# batches


class LatentFromBatch(Node):
    """`length` latents from `batch_index` on (both clamped to the batch). The picked positions are
    recorded in "batch_index", so the sampler draws the same noise they had in the full batch."""

    display_name = "Latent From Batch"
    comfy_function = "frombatch"
    category = "latent/batch"
    inputs = (Socket("samples", "LATENT"), Int("batch_index", 0, min=0, max=63), Int("length", 1, min=1, max=64))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, batch_index, length):
        s_in = latent_samples(samples, "samples")
        start = min(s_in.shape[0] - 1, batch_index)
        length = min(s_in.shape[0] - start, length)
        out = with_samples(samples, s_in[start:start + length].clone())
        if "noise_mask" in samples:
            masks = samples["noise_mask"]
            if masks.shape[0] == 1:  # one mask serves the whole batch
                out["noise_mask"] = masks.clone()
            else:
                # cycled to the latent batch, as the sampler would repeat it
                out["noise_mask"] = repeat_to_batch(masks, s_in.shape[0])[start:start + length].clone()
        if "batch_index" in samples:
            out["batch_index"] = samples["batch_index"][start:start + length]
        else:
            out["batch_index"] = list(range(start, start + length))
        return (out,)


class RepeatLatentBatch(Node):
    """The batch repeated `amount` times; batch indices of the copies continue past the originals'
    range so each copy gets fresh noise."""

    display_name = "Repeat Latent Batch"
    comfy_function = "repeat"
    category = "latent/batch"
    inputs = (Socket("samples", "LATENT"), Int("amount", 1, min=1, max=64))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, amount):
        s_in = latent_samples(samples, "samples")
        out = with_samples(samples, s_in.repeat((amount, 1, 1, 1)))
        # ComfyUI repeats a per-item mask batch as it is (not fitted to the latent batch first);
        # a single mask already applies to every item.
        if "noise_mask" in samples and samples["noise_mask"].shape[0] > 1:
            out["noise_mask"] = samples["noise_mask"].repeat((amount, 1, 1, 1))
        if "batch_index" in samples:
            indices = list(samples["batch_index"])
            offset = max(indices) - min(indices) + 1
            out["batch_index"] = indices + [i + k * offset for k in range(1, amount) for i in indices]
        return (out,)


class LatentBatch(Node):
    """samples2 appended to samples1 (resized bilinearly with centre crop to samples1's size if it
    differs). Batch indices are concatenated, defaulting to 0..B-1 for each side."""

    comfy_function = "execute"
    category = "latent/batch"
    comfy_module = "comfy_extras.nodes_latent"
    display_name = None
    inputs = (Socket("samples1", "LATENT"), Socket("samples2", "LATENT"))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples1, samples2):
        s1, s2 = latent_samples(samples1, "samples1"), latent_samples(samples2, "samples2")
        _same_channels(s1, s2, "LatentBatch")
        s2 = reshape_latent_to(s1.shape, s2, repeat_batch=False)
        out = with_samples(samples1, torch.cat((s1, s2), dim=0))
        out["batch_index"] = (list(samples1.get("batch_index", range(s1.shape[0])))
                              + list(samples2.get("batch_index", range(s2.shape[0]))))
        return (out,)


# ---------------------------------------------------------------------------------------------
# transforms


class LatentFlip(Node):
    display_name = "Flip Latent"
    comfy_function = "flip"
    category = "latent/transform"
    inputs = (Socket("samples", "LATENT"), Combo("flip_method", ["x-axis: vertically", "y-axis: horizontally"]))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, flip_method):
        s_in = latent_samples(samples, "samples")
        dims = {"x": [2], "y": [3]}.get(flip_method[:1])
        if dims is None:
            raise ValueError(f"LatentFlip: unknown flip_method {flip_method!r}")
        return (with_samples(samples, torch.flip(s_in, dims=dims)),)


ROTATIONS = {"none": 0, "90 degrees": 1, "180 degrees": 2, "270 degrees": 3}


class LatentRotate(Node):
    """Clockwise rotation by quarter turns."""

    display_name = "Rotate Latent"
    comfy_function = "rotate"
    category = "latent/transform"
    inputs = (Socket("samples", "LATENT"), Combo("rotation", list(ROTATIONS)))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, rotation):
        s_in = latent_samples(samples, "samples")
        if rotation not in ROTATIONS:
            raise ValueError(f"LatentRotate: unknown rotation {rotation!r}")
        # Turning from the width axis towards the height axis is clockwise on screen.
        return (with_samples(samples, torch.rot90(s_in, k=ROTATIONS[rotation], dims=[3, 2])),)


class LatentCrop(Node):
    """A width x height pixel window at (x, y), floored to latent cells; x and y are pulled back so
    that at least 8 cells remain to their right and below."""

    display_name = "Crop Latent"
    comfy_function = "crop"
    category = "latent/transform"
    inputs = (Socket("samples", "LATENT"), PixelInt("width", 512, min=64), PixelInt("height", 512, min=64),
              PixelInt("x", 0), PixelInt("y", 0))
    outputs = (Output("LATENT"),)

    def run(self, ctx, samples, width, height, x, y):
        s_in = latent_samples(samples, "samples")
        h, w = s_in.shape[2:]
        if h < MIN_CROP_CELLS or w < MIN_CROP_CELLS:
            raise ValueError(f"LatentCrop: the latent ({w * LATENT_SCALE}x{h * LATENT_SCALE} pixels) is smaller "
                             f"than the {MIN_CROP_CELLS * LATENT_SCALE}-pixel minimum crop")
        x = min(x // LATENT_SCALE, w - MIN_CROP_CELLS)
        y = min(y // LATENT_SCALE, h - MIN_CROP_CELLS)
        return (with_samples(samples, s_in[:, :, y:y + height // LATENT_SCALE, x:x + width // LATENT_SCALE]),)


NODES = [LatentComposite, LatentBlend, LatentFromBatch, RepeatLatentBatch, LatentBatch, LatentFlip, LatentRotate,
         LatentCrop]
