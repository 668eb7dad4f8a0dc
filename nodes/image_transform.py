"""Image geometry nodes: resizing, fitting, flipping, rotating and stitching, as ComfyUI does them.

IMAGE = [B, H, W, C] floats in 0..1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffusion.upscale import CROP_METHODS, IMAGE_METHODS, upscale
from graph.contract import Boolean, Choice, Combo, Float, Int, Node, Output, Socket
from nodes.image import MAX_RESOLUTION


def resize_image(image, width: int, height: int, method: str, crop: str = "disabled"):
    return upscale(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


def scale_image(image, factor: float, method: str):
    """Both sides times `factor`, rounded to whole pixels."""
    h, w = image.shape[1:3]
    return resize_image(image, round(w * factor), round(h * factor), method)


class ImageScale(Node):
    display_name = "Upscale Image"
    comfy_function = "upscale"
    upscale_methods = IMAGE_METHODS  # ComfyUI's class attributes, read by plugins
    crop_methods = CROP_METHODS
    category = "image/upscaling"
    inputs = (
        Socket("image", "IMAGE"),
        Combo("upscale_method", IMAGE_METHODS),
        Int("width", 512, min=0, max=MAX_RESOLUTION, step=1),
        Int("height", 512, min=0, max=MAX_RESOLUTION, step=1),
        Combo("crop", CROP_METHODS),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, upscale_method, width, height, crop):
        if width == 0 and height == 0:
            return (image,)
        h, w = image.shape[1:3]
        if width == 0:  # 0 keeps the aspect ratio from the other side
            width = max(1, round(w * height / h))
        elif height == 0:
            height = max(1, round(h * width / w))
        return (resize_image(image, width, height, upscale_method, crop),)


class ImageScaleBy(Node):
    display_name = "Upscale Image By"
    comfy_function = "upscale"
    upscale_methods = IMAGE_METHODS  # ComfyUI's class attributes, read by plugins
    category = "image/upscaling"
    inputs = (
        Socket("image", "IMAGE"),
        Combo("upscale_method", IMAGE_METHODS),
        Float("scale_by", 1.0, min=0.01, max=8.0, step=0.01),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, upscale_method, scale_by):
        return (scale_image(image, scale_by, upscale_method),)


# ---------------------------------------------------------------------------------------------
# Resizing to a pixel budget or a longest side, and fitting into a canvas.


class ImageScaleToTotalPixels(Node):
    """Resizes to about `megapixels` x 2^20 pixels, keeping the aspect ratio."""

    comfy_function = "execute"
    category = "image/upscaling"
    comfy_module = "comfy_extras.nodes_post_processing"
    display_name = None
    inputs = (
        Socket("image", "IMAGE"),
        Choice("upscale_method", IMAGE_METHODS),
        Float("megapixels", 1.0, min=0.01, max=16.0, step=0.01),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, upscale_method, megapixels):
        h, w = image.shape[1:3]
        return (scale_image(image, math.sqrt(int(megapixels * 1024 * 1024) / (w * h)), upscale_method),)


class ImageScaleToMaxDimension(Node):
    """Resizes so the longer side is `largest_size` pixels, keeping the aspect ratio."""

    comfy_function = "upscale"
    category = "image/upscaling"
    comfy_module = "comfy_extras.nodes_images"
    # ComfyUI lists "bilinear" twice; the list is kept as it is so saved workflows match.
    inputs = (
        Socket("image", "IMAGE"),
        Combo("upscale_method", ["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"]),
        Int("largest_size", 512, min=0, max=MAX_RESOLUTION, step=1),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, upscale_method, largest_size):
        height, width = image.shape[1:3]
        if height > width:
            width, height = round((width / height) * largest_size), largest_size
        elif width > height:
            width, height = largest_size, round((height / width) * largest_size)
        else:
            width = height = largest_size
        if width < 1 or height < 1:
            raise ValueError(f"largest_size {largest_size} would shrink the {image.shape[2]}x{image.shape[1]} "
                             f"image to {width}x{height} pixels")
        return (resize_image(image, width, height, upscale_method),)


class ResizeAndPadImage(Node):
    """Fits the image inside target_width x target_height (aspect kept, sizes truncated to whole
    pixels) and centres it on a white or black canvas of exactly that size."""

    comfy_function = "resize_and_pad"
    category = "image/transform"
    comfy_module = "comfy_extras.nodes_images"
    inputs = (
        Socket("image", "IMAGE"),
        Int("target_width", 512, min=1, max=MAX_RESOLUTION, step=1),
        Int("target_height", 512, min=1, max=MAX_RESOLUTION, step=1),
        Combo("padding_color", ["white", "black"]),
        Combo("interpolation", ["area", "bicubic", "nearest-exact", "bilinear", "lanczos"]),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, target_width, target_height, padding_color, interpolation):
        batch, height, width, channels = image.shape
        scale = min(target_width / width, target_height / height)
        new_width, new_height = int(width * scale), int(height * scale)
        if new_width < 1 or new_height < 1:
            raise ValueError(f"a {width}x{height} image fitted into {target_width}x{target_height} would be "
                             f"{new_width}x{new_height} pixels")
        resized = resize_image(image, new_width, new_height, interpolation)
        fill = 0.0 if padding_color == "black" else 1.0
        canvas = torch.full((batch, target_height, target_width, channels), fill, dtype=image.dtype,
                            device=image.device)
        top, left = (target_height - new_height) // 2, (target_width - new_width) // 2
        canvas[:, top:top + new_height, left:left + new_width] = resized
        return (canvas,)


# ---------------------------------------------------------------------------------------------
# Flipping, rotating, stitching.


class ImageFlip(Node):
    comfy_function = "flip"
    category = "image/transform"
    comfy_module = "comfy_extras.nodes_images"
    inputs = (Socket("image", "IMAGE"), Combo("flip_method", ["x-axis: vertically", "y-axis: horizontally"]))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, flip_method):
        if flip_method.startswith("x"):
            return (torch.flip(image, dims=[1]),)
        if flip_method.startswith("y"):
            return (torch.flip(image, dims=[2]),)
        return (image,)


class ImageRotate(Node):
    """Clockwise rotation by quarter turns."""

    comfy_function = "rotate"
    category = "image/transform"
    comfy_module = "comfy_extras.nodes_images"
    inputs = (Socket("image", "IMAGE"), Combo("rotation", ["none", "90 degrees", "180 degrees", "270 degrees"]))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, rotation):
        turns = {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ")[0], 0)
        # Turning from the width axis towards the height axis is clockwise on screen.
        return (torch.rot90(image, k=turns, dims=[2, 1]),)


STITCH_COLORS = {"white": 1.0, "black": 0.0, "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0),
                 "blue": (0.0, 0.0, 1.0)}


def _pad_to_batch(image: torch.Tensor, size: int) -> torch.Tensor:
    """Extend a batch to `size` by repeating its last image."""
    if image.shape[0] >= size:
        return image
    return torch.cat([image, image[-1:].repeat(size - image.shape[0], 1, 1, 1)])


def _centre_pad(image: torch.Tensor, dim: int, size: int, value: float) -> torch.Tensor:
    """Pad [B, H, W, C] along H (dim 1) or W (dim 2) to `size`, the odd pixel after the image."""
    missing = size - image.shape[dim]
    if missing <= 0:
        return image
    before, after = missing // 2, missing - missing // 2
    pads = (0, 0, 0, 0, before, after) if dim == 1 else (0, 0, before, after)
    return F.pad(image, pads, mode="constant", value=value)


def _spacer(color, shape, device) -> torch.Tensor:
    spacer = torch.full(shape, 0.0, device=device)
    if isinstance(color, tuple):
        for channel, value in enumerate(color[:shape[-1]]):
            spacer[..., channel] = value
    else:
        spacer[..., :min(3, shape[-1])] = color
    if shape[-1] == 4:
        spacer[..., 3] = 1.0
    return spacer


class ImageStitch(Node):
    """Stitches image2 to image1 in the specified direction.
    If image2 is not provided, returns image1 unchanged.
    Optional spacing can be added between images."""

    display_name = "Image Stitch"
    comfy_function = "stitch"
    category = "image/transform"
    comfy_module = "comfy_extras.nodes_images"
    inputs = (
        Socket("image1", "IMAGE"),
        Combo("direction", ["right", "down", "left", "up"], default="right"),
        Boolean("match_image_size", True),
        Int("spacing_width", 0, min=0, max=1024, step=2),
        Combo("spacing_color", list(STITCH_COLORS), default="white"),
        Socket("image2", "IMAGE", optional=True),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image1, direction, match_image_size, spacing_width, spacing_color, image2=None):
        if image2 is None:
            return (image1,)
        if spacing_color not in STITCH_COLORS:
            raise ValueError(f"spacing_color must be one of {list(STITCH_COLORS)}, got {spacing_color!r}")
        side_by_side = direction in ("left", "right")
        batch = max(image1.shape[0], image2.shape[0])
        image1, image2 = _pad_to_batch(image1, batch), _pad_to_batch(image2, batch)
        color = STITCH_COLORS[spacing_color]
        if match_image_size:
            # image2 takes image1's height (side by side) or width (stacked), keeping its aspect.
            h1, w1 = image1.shape[1:3]
            aspect = image2.shape[2] / image2.shape[1]
            size = (int(h1 * aspect), h1) if side_by_side else (w1, int(w1 / aspect))
            image2 = resize_image(image2, size[0], size[1], "lanczos")
        else:
            fill = 0.0 if isinstance(color, tuple) else color
            dim = 1 if side_by_side else 2
            size = max(image1.shape[dim], image2.shape[dim])
            image1, image2 = _centre_pad(image1, dim, size, fill), _centre_pad(image2, dim, size, fill)
        channels = max(image1.shape[-1], image2.shape[-1])
        image1 = F.pad(image1, (0, channels - image1.shape[-1]), value=1.0)
        image2 = F.pad(image2, (0, channels - image2.shape[-1]), value=1.0)
        parts = [image2, image1] if direction in ("left", "up") else [image1, image2]
        if spacing_width > 0:
            spacing_width += spacing_width % 2
            if side_by_side:
                shape = (batch, max(image1.shape[1], image2.shape[1]), spacing_width, channels)
            else:
                shape = (batch, spacing_width, max(image1.shape[2], image2.shape[2]), channels)
            parts.insert(1, _spacer(color, shape, image1.device))
        return (torch.cat(parts, dim=2 if side_by_side else 1),)


NODES = [ImageScale, ImageScaleBy, ImageScaleToTotalPixels, ImageScaleToMaxDimension, ResizeAndPadImage, ImageFlip,
         ImageRotate, ImageStitch]
