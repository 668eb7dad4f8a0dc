"""Mask nodes and masked compositing, with ComfyUI's names, widgets and arithmetic.

MASK values are float tensors [B, H, W] in 0..1 (1 = selected); the nodes also take a single
[H, W] mask, as ComfyUI's do. IMAGE values are [B, H, W, C], LATENT samples [B, C, h, w].
"""
from __future__ import annotations

import math
import random
import string
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from graph.contract import Boolean, Combo, Float, Int, Node, Output, Socket
from nodes.image import MAX_RESOLUTION, LoadImage, load_image_file, save_images
from nodes.image_tools import image_batch, match_channels
from nodes.latent import with_samples

MASK_CATEGORY = "mask"  # the classic menu, as in ComfyUI's /object_info for these nodes
LOAD_CHANNELS = ["alpha", "red", "green", "blue"]
IMAGE_CHANNELS = ["red", "green", "blue", "alpha"]
COMPOSITE_OPERATIONS = ["multiply", "add", "subtract", "and", "or", "xor"]


# ---------------------------------------------------------------------------------------------
# Shape helpers.


def as_mask_batch(mask: Any, name: str = "mask") -> torch.Tensor:
    """A MASK as [B, H, W]; a single [H, W] mask becomes a batch of one."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name}: expected a MASK tensor, got {type(mask).__name__}")
    if mask.dim() < 2:
        raise ValueError(f"{name}: a MASK needs at least [H, W] dimensions, got shape {list(mask.shape)}")
    return mask.reshape(-1, mask.shape[-2], mask.shape[-1])


def repeat_to_batch(tensor: torch.Tensor, size: int) -> torch.Tensor:
    """Cycle or trim the first dimension to `size`, as ComfyUI pairs one batch with another."""
    have = tensor.shape[0]
    if have == size:
        return tensor
    if have > size:
        return tensor[:size]
    repeats = [math.ceil(size / have)] + [1] * (tensor.dim() - 1)
    return tensor.repeat(repeats)[:size]


# ---------------------------------------------------------------------------------------------
# Pasting one channel-first batch into another.


def paste(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, mask: torch.Tensor | None = None,
          multiplier: int = 8, resize_source: bool = False) -> torch.Tensor:
    """Blend `source` into `destination` (both [B, C, H, W]) in place at (x, y) / multiplier.

    x and y are in output pixels; `multiplier` is 8 for latents. The mask is stretched to the
    source's size and weights the source; whatever lies past the destination's edges is dropped.
    """
    if source.shape[1] != destination.shape[1]:
        raise ValueError(f"source has {source.shape[1]} channels and destination {destination.shape[1]}; "
                         "they must match")
    source = source.to(destination.device, destination.dtype)
    height, width = destination.shape[-2:]
    if resize_source:
        source = F.interpolate(source, size=(height, width), mode="bilinear")
    source = repeat_to_batch(source, destination.shape[0])
    src_h, src_w = source.shape[-2:]

    # Offsets past the far edge are pulled back to it, so nothing (rather than an error) is pasted.
    x = max(-src_w * multiplier, min(x, width * multiplier))
    y = max(-src_h * multiplier, min(y, height * multiplier))
    left, top = x // multiplier, y // multiplier

    if mask is None:
        weight = torch.ones_like(source)
    else:
        weight = as_mask_batch(mask).to(destination.device, destination.dtype)
        weight = F.interpolate(weight.unsqueeze(1), size=(src_h, src_w), mode="bilinear")
        weight = repeat_to_batch(weight, source.shape[0])

    visible_w = width - left + min(0, x)
    visible_h = height - top + min(0, y)
    weight = weight[..., :visible_h, :visible_w]
    region = destination[..., top:top + src_h, left:left + src_w]
    blended = weight * source[..., :visible_h, :visible_w] + (1.0 - weight) * region
    destination[..., top:top + src_h, left:left + src_w] = blended
    return destination


class ImageCompositeMasked(Node):
    """Pastes `source` onto `destination` at (x, y), weighted by the optional mask."""

    comfy_function = "composite"
    category = "image"
    comfy_module = "comfy_extras.nodes_mask"
    inputs = (
        Socket("destination", "IMAGE"),
        Socket("source", "IMAGE"),
        Int("x", 0, min=0, max=MAX_RESOLUTION, step=1),
        Int("y", 0, min=0, max=MAX_RESOLUTION, step=1),
        Boolean("resize_source", False),
        Socket("mask", "MASK", optional=True),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, destination, source, x, y, resize_source, mask=None):
        destination, source = match_channels(image_batch(destination, "destination"), image_batch(source, "source"))
        canvas = destination.clone().movedim(-1, 1)
        out = paste(canvas, source.movedim(-1, 1), x, y, mask, 1, resize_source)
        return (out.movedim(1, -1),)


class LatentCompositeMasked(Node):
    """Pastes the source latent onto the destination at (x, y) pixels (x / 8 in the latent)."""

    comfy_function = "composite"
    category = "latent"
    comfy_module = "comfy_extras.nodes_mask"
    inputs = (
        Socket("destination", "LATENT"),
        Socket("source", "LATENT"),
        Int("x", 0, min=0, max=MAX_RESOLUTION, step=8),
        Int("y", 0, min=0, max=MAX_RESOLUTION, step=8),
        Boolean("resize_source", False),
        Socket("mask", "MASK", optional=True),
    )
    outputs = (Output("LATENT"),)

    def run(self, ctx, destination, source, x, y, resize_source, mask=None):
        for name, latent in (("destination", destination), ("source", source)):
            if not isinstance(latent, dict) or not isinstance(latent.get("samples"), torch.Tensor):
                raise TypeError(f"{name}: expected a LATENT dict with 'samples', got {type(latent).__name__}")
        canvas = destination["samples"].clone()
        return (with_samples(destination, paste(canvas, source["samples"], x, y, mask, 8, resize_source)),)


# ---------------------------------------------------------------------------------------------
# Loading and converting.


class LoadImageMask(LoadImage):
    """Loads one channel of an input image as a mask; "alpha" is inverted (1 = transparent)."""

    display_name = "Load Image (as Mask)"
    comfy_function = "load_image"
    category = MASK_CATEGORY
    _color_channels = LOAD_CHANNELS
    inputs = LoadImage.inputs + (Combo("channel", LOAD_CHANNELS),)
    outputs = (Output("MASK"),)

    def run(self, ctx, image: str, channel: str):
        if channel not in LOAD_CHANNELS:
            raise ValueError(f"channel must be one of {LOAD_CHANNELS}, got {channel!r}")
        pixels, mask = load_image_file(ctx.env.folders.annotated_path(image, default_type="input"))
        if channel == "alpha":
            return (mask,)
        return (pixels[..., LOAD_CHANNELS.index(channel) - 1].clone(),)


class MaskToImage(Node):
    display_name = "Convert Mask to Image"
    comfy_function = "mask_to_image"
    category = MASK_CATEGORY
    comfy_module = "comfy_extras.nodes_mask"
    inputs = (Socket("mask", "MASK"),)
    outputs = (Output("IMAGE"),)

    def run(self, ctx, mask):
        return (as_mask_batch(mask).unsqueeze(-1).expand(-1, -1, -1, 3),)


class ImageToMask(Node):
    display_name = "Convert Image to Mask"
    comfy_function = "image_to_mask"
    category = MASK_CATEGORY
    comfy_module = "comfy_extras.nodes_mask"
    inputs = (Socket("image", "IMAGE"), Combo("channel", IMAGE_CHANNELS))
    outputs = (Output("MASK"),)

    def run(self, ctx, image, channel):
        image = image_batch(image, "image")
        index = IMAGE_CHANNELS.index(channel)
        if index >= image.shape[-1]:
            raise ValueError(f"channel {channel!r}: the image has only {image.shape[-1]} channels")
        return (image[..., index],)


class SolidMask(Node):
    comfy_function = "solid"
    category = MASK_CATEGORY
    comfy_module = "comfy_extras.nodes_mask"
    inputs = (
        Float("value", 1.0, min=0.0, max=1.0, step=0.01),
        Int("width", 512, min=1, max=MAX_RESOLUTION, step=1),
        Int("height", 512, min=1, max=MAX_RESOLUTION, step=1),
    )
    outputs = (Output("MASK"),)

    def run(self, ctx, value, width, height):
        return (torch.full((1, height, width), float(value), dtype=torch.float32),)


class InvertMask(Node):
    comfy_function = "invert"
    category = MASK_CATEGORY
    comfy_module = "comfy_extras.nodes_mask"
    inputs = (Socket("mask", "MASK"),)
    outputs = (Output("MASK"),)

    def run(self, ctx, mask):
        return (1.0 - mask,)


class CropMask(Node):
    comfy_function = "crop"
    category = MASK_CATEGORY
    comfy_module = "comfy_extras.nodes_mask"
    inputs = (
        Socket("mask", "MASK"),
        Int("x", 0, min=0, max=MAX_RESOLUTION, step=1),
        Int("y", 0, min=0, max=MAX_RESOLUTION, step=1),
        Int("width", 512, min=1, max=MAX_RESOLUTION, step=1),
        Int("height", 512, min=1, max=MAX_RESOLUTION, step=1),
    )
    outputs = (Output("MASK"),)

    def run(self, ctx, mask, x, y, width, height):
        mask = as_mask_batch(mask)
        if x >= mask.shape[-1] or y >= mask.shape[-2]:
            # ComfyUI would return an empty mask here, which breaks whatever comes next.
            raise ValueError(f"crop origin ({x}, {y}) lies outside the {mask.shape[-1]}x{mask.shape[-2]} mask")
        return (mask[:, y:y + height, x:x + width],)


class ThresholdMask(Node):
    comfy_function = "image_to_mask"
    category = MASK_CATEGORY
    comfy_module = "comfy_extras.nodes_mask"
    inputs = (Socket("mask", "MASK"), Float("value", 0.5, min=0.0, max=1.0, step=0.01))
    outputs = (Output("MASK"),)

    def run(self, ctx, mask, value):
        return ((mask > value).float(),)


class ImageColorToMask(Node):
    """1 where a pixel's 8-bit colour (rounded) is exactly `color` (0xRRGGBB), else 0."""

    comfy_function = "image_to_mask"
    category = MASK_CATEGORY
    comfy_module = "comfy_extras.nodes_mask"
    inputs = (Socket("image", "IMAGE"), Int("color", 0, min=0, max=0xFFFFFF, step=1, display="color"))
    outputs = (Output("MASK"),)

    def run(self, ctx, image, color):
        image = image_batch(image)
        if image.shape[-1] < 3:
            raise ValueError(f"ImageColorToMask takes RGB images, got {image.shape[-1]} channels")
        levels = (torch.clamp(image, 0, 1.0) * 255.0).round().to(torch.int)
        packed = (levels[..., 0] << 16) + (levels[..., 1] << 8) + levels[..., 2]
        return (torch.where(packed == color, 1.0, 0).float(),)


class MaskPreview(Node):
    """Shows masks in the editor as grey images (written to the temp folder, which is wiped)."""

    comfy_function = "execute"
    category = MASK_CATEGORY
    comfy_module = "comfy_extras.nodes_mask"
    output_node = True
    inputs = (Socket("mask", "MASK"),)
    hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    outputs = ()
    COMPRESS_LEVEL = 4  # ComfyUI saves mask previews as SaveImage does, unlike PreviewImage

    def __init__(self):
        # Per instance, so two previews never number into the same file series.
        self.prefix_append = "_temp_" + "".join(random.choice(string.ascii_lowercase) for _ in range(5))

    def run(self, ctx, mask, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        grey = as_mask_batch(mask).unsqueeze(-1).expand(-1, -1, -1, 3)
        return save_images(ctx, grey, ctx.env.folders.temp_dir, filename_prefix + self.prefix_append, "temp",
                           self.COMPRESS_LEVEL, prompt, extra_pnginfo)


# ---------------------------------------------------------------------------------------------
# Combining, growing, feathering.


def _combine(region: torch.Tensor, part: torch.Tensor, operation: str) -> torch.Tensor:
    if operation == "multiply":
        return region * part
    if operation == "add":
        return region + part
    if operation == "subtract":
        return region - part
    # Boolean operations see a value as set when it rounds to 1 (0.5 rounds to even, i.e. 0).
    a, b = region.round().bool(), part.round().bool()
    if operation == "and":
        return (a & b).float()
    if operation == "or":
        return (a | b).float()
    return (a ^ b).float()  # "xor"; the node has checked the name


def _pair_batches(output: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One mask broadcasts over the other's batch; two batches of different sizes do not pair."""
    if output.shape[0] == source.shape[0] or source.shape[0] == 1:
        return output, source
    if output.shape[0] == 1:
        return output.expand(source.shape[0], -1, -1).clone(), source
    raise ValueError(f"destination has {output.shape[0]} masks and source {source.shape[0]}; "
                     "the batches must match or one of them must hold a single mask")


class MaskComposite(Node):
    """Combines `source` into `destination` at (x, y); the result is clamped to 0..1."""

    comfy_function = "combine"
    category = MASK_CATEGORY
    comfy_module = "comfy_extras.nodes_mask"
    inputs = (
        Socket("destination", "MASK"),
        Socket("source", "MASK"),
        Int("x", 0, min=0, max=MAX_RESOLUTION, step=1),
        Int("y", 0, min=0, max=MAX_RESOLUTION, step=1),
        Combo("operation", COMPOSITE_OPERATIONS),
    )
    outputs = (Output("MASK"),)

    def run(self, ctx, destination, source, x, y, operation):
        if operation not in COMPOSITE_OPERATIONS:
            raise ValueError(f"operation must be one of {COMPOSITE_OPERATIONS}, got {operation!r}")
        output = as_mask_batch(destination, "destination").clone()
        source = as_mask_batch(source, "source").to(output.device, output.dtype)
        output, source = _pair_batches(output, source)
        height, width = output.shape[-2:]
        right = min(x + source.shape[-1], width)
        bottom = min(y + source.shape[-2], height)
        if right > x and bottom > y:  # otherwise the source lies wholly off the destination
            part = source[:, :bottom - y, :right - x]
            output[:, y:bottom, x:right] = _combine(output[:, y:bottom, x:right], part, operation)
        return (output.clamp(0.0, 1.0),)


def _ramp(length: int, size: int) -> torch.Tensor:
    """Factors (1/n, 2/n, ..., 1) over the first n = min(length, size) entries, 1 elsewhere."""
    n = min(length, size)
    factors = torch.ones(size, dtype=torch.float64)
    if n:
        factors[:n] = torch.arange(1, n + 1, dtype=torch.float64) / n
    return factors


class FeatherMask(Node):
    """Fades the mask linearly to 1/n at each edge over the given number of pixels."""

    comfy_function = "feather"
    category = MASK_CATEGORY
    comfy_module = "comfy_extras.nodes_mask"
    inputs = (
        Socket("mask", "MASK"),
        Int("left", 0, min=0, max=MAX_RESOLUTION, step=1),
        Int("top", 0, min=0, max=MAX_RESOLUTION, step=1),
        Int("right", 0, min=0, max=MAX_RESOLUTION, step=1),
        Int("bottom", 0, min=0, max=MAX_RESOLUTION, step=1),
    )
    outputs = (Output("MASK"),)

    def run(self, ctx, mask, left, top, right, bottom):
        output = as_mask_batch(mask).clone()
        height, width = output.shape[-2:]
        # The far-edge ramps run outward from the edge pixel, so they are the near ramps flipped.
        columns = _ramp(left, width) * _ramp(right, width).flip(0)
        rows = _ramp(top, height) * _ramp(bottom, height).flip(0)
        factors = (rows[:, None] * columns[None, :]).to(output.device, output.dtype)
        return (output * factors,)


class GrowMask(Node):
    """Dilates (expand > 0) or erodes (expand < 0) the mask by one pixel per step."""

    comfy_function = "expand_mask"
    category = MASK_CATEGORY
    comfy_module = "comfy_extras.nodes_mask"
    inputs = (
        Socket("mask", "MASK"),
        Int("expand", 0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
        Boolean("tapered_corners", True),
    )
    outputs = (Output("MASK"),)

    def run(self, ctx, mask, expand, tapered_corners):
        import scipy.ndimage  # imported here: scipy costs start-up time and only this node uses it

        corner = 0 if tapered_corners else 1
        footprint = np.array([[corner, 1, corner], [1, 1, 1], [corner, 1, corner]], dtype=bool)
        step = scipy.ndimage.grey_erosion if expand < 0 else scipy.ndimage.grey_dilation
        grown = []
        for single in as_mask_batch(mask).detach().to("cpu", torch.float32):
            values = single.numpy()
            for _ in range(abs(expand)):
                if ctx is not None:
                    ctx.check_interrupt()
                values = step(values, footprint=footprint)
            grown.append(torch.from_numpy(np.ascontiguousarray(values)))
        return (torch.stack(grown).to(mask.device),)


NODES = [
    LoadImageMask, SolidMask, InvertMask, MaskComposite, GrowMask, FeatherMask, CropMask, ThresholdMask,
    MaskToImage, ImageToMask, ImageCompositeMasked, LatentCompositeMasked, ImageColorToMask, MaskPreview,
]
