"""Image tools: invert, batch, crop, blur, sharpen and Canny edges, as ComfyUI computes them.

IMAGE values are float tensors [B, H, W, C] in 0..1.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from kornia.filters import canny

from graph.contract import Float, Int, Node, Output, Socket
from nodes.image import MAX_RESOLUTION
from nodes.image_transform import resize_image

ALPHA_CHANNELS = 4  # an RGBA image keeps its alpha out of colour operations


def image_batch(image: Any, name: str = "image") -> torch.Tensor:
    """An IMAGE as [B, H, W, C]; a single [H, W, C] image becomes a batch of one."""
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4):
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name}: expected an IMAGE [B, H, W, C], got {shape}")
    return image.unsqueeze(0) if image.dim() == 3 else image


def gaussian_kernel(size: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """ComfyUI's blur kernel: a size x size Gaussian whose grid spans -1..1, so sigma is relative
    to the radius rather than in pixels; normalised to sum 1."""
    coords = torch.linspace(-1.0, 1.0, size, device=device)
    squared = coords[:, None] ** 2 + coords[None, :] ** 2
    weights = torch.exp(-squared / (2.0 * sigma * sigma))
    return (weights / weights.sum()).to(dtype)


def filter_image(image: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """Correlate every channel with `kernel` over the image, mirrored at the edges."""
    _, height, width, channels = image.shape
    if radius >= height or radius >= width:
        raise ValueError(f"radius {radius} needs an image larger than {radius} pixels on each side, "
                         f"got {width}x{height}")
    weights = kernel.to(image.device, image.dtype).expand(channels, 1, -1, -1)
    padded = F.pad(image.movedim(-1, 1), (radius, radius, radius, radius), mode="reflect")
    return F.conv2d(padded, weights, groups=channels).movedim(1, -1)


class ImageInvert(Node):
    display_name = "Invert Image"
    comfy_function = "invert"
    category = "image"
    inputs = (Socket("image", "IMAGE"),)
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image):
        inverted = 1.0 - image
        if image.shape[-1] == ALPHA_CHANNELS:
            inverted[..., 3] = image[..., 3]  # alpha is transparency, not colour
        return (inverted,)


class ImageBatch(Node):
    """Joins two batches; the second is resized (bilinear, centre crop) to the first's size."""

    display_name = "Batch Images"
    comfy_function = "batch"
    category = "image"
    inputs = (Socket("image1", "IMAGE"), Socket("image2", "IMAGE"))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image1, image2):
        image1, image2 = image_batch(image1, "image1"), image_batch(image2, "image2")
        channels = (image1.shape[-1], image2.shape[-1])
        if abs(channels[0] - channels[1]) > 1:
            raise ValueError(f"cannot batch images with {channels[0]} and {channels[1]} channels")
        # The one with fewer channels gains an opaque alpha (RGB next to RGBA).
        if channels[0] > channels[1]:
            image2 = F.pad(image2, (0, 1), value=1.0)
        elif channels[0] < channels[1]:
            image1 = F.pad(image1, (0, 1), value=1.0)
        if image1.shape[1:] != image2.shape[1:]:
            image2 = resize_image(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
        return (torch.cat((image1, image2.to(image1.device, image1.dtype)), dim=0),)


class ImageCrop(Node):
    display_name = "Image Crop"
    comfy_function = "crop"
    category = "image/transform"
    comfy_module = "comfy_extras.nodes_images"
    inputs = (
        Socket("image", "IMAGE"),
        Int("width", 512, min=1, max=MAX_RESOLUTION, step=1),
        Int("height", 512, min=1, max=MAX_RESOLUTION, step=1),
        Int("x", 0, min=0, max=MAX_RESOLUTION, step=1),
        Int("y", 0, min=0, max=MAX_RESOLUTION, step=1),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, width, height, x, y):
        image = image_batch(image)
        # An origin past the edge is pulled back onto the last pixel, so the crop is never empty.
        x = min(x, image.shape[2] - 1)
        y = min(y, image.shape[1] - 1)
        return (image[:, y:y + height, x:x + width, :],)


class ImageBlur(Node):
    comfy_function = "execute"
    category = "image/postprocessing"
    comfy_module = "comfy_extras.nodes_post_processing"
    display_name = None
    inputs = (
        Socket("image", "IMAGE"),
        Int("blur_radius", 1, min=1, max=31, step=1),
        Float("sigma", 1.0, min=0.1, max=10.0, step=0.1),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, blur_radius, sigma):
        image = image_batch(image)
        if blur_radius == 0:
            return (image,)
        kernel = gaussian_kernel(blur_radius * 2 + 1, sigma, device=image.device)
        return (filter_image(image, kernel, blur_radius),)


def sharpen_kernel(radius: int, sigma: float, alpha: float, device=None) -> torch.Tensor:
    """Identity plus alpha * 10 times (identity - Gaussian): an unsharp mask that sums to 1."""
    size = radius * 2 + 1
    kernel = gaussian_kernel(size, sigma, device=device) * -(alpha * 10)
    kernel[radius, radius] = kernel[radius, radius] - kernel.sum() + 1.0
    return kernel


class ImageSharpen(Node):
    comfy_function = "execute"
    category = "image/postprocessing"
    comfy_module = "comfy_extras.nodes_post_processing"
    display_name = None
    inputs = (
        Socket("image", "IMAGE"),
        Int("sharpen_radius", 1, min=1, max=31, step=1),
        Float("sigma", 1.0, min=0.1, max=10.0, step=0.01),
        Float("alpha", 1.0, min=0.0, max=5.0, step=0.01),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, sharpen_radius, sigma, alpha):
        image = image_batch(image)
        if sharpen_radius == 0:
            return (image,)
        kernel = sharpen_kernel(sharpen_radius, sigma, alpha, device=image.device)
        return (filter_image(image, kernel, sharpen_radius).clamp(0.0, 1.0),)


class Canny(Node):
    """Canny edges (kornia's, as ComfyUI uses) of the image's grey level, as a white-on-black image."""

    comfy_function = "execute"
    category = "image/preprocessors"
    comfy_module = "comfy_extras.nodes_canny"
    display_name = None
    inputs = (
        Socket("image", "IMAGE"),
        Float("low_threshold", 0.4, min=0.01, max=0.99, step=0.01),
        Float("high_threshold", 0.8, min=0.01, max=0.99, step=0.01),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, low_threshold, high_threshold):
        image = image_batch(image)
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold ({low_threshold}) must not exceed high_threshold ({high_threshold})")
        if image.shape[-1] not in (1, 3, 4):
            raise ValueError(f"Canny takes a grey, RGB or RGBA image, got {image.shape[-1]} channels")
        colour = image[..., :3].movedim(-1, 1).float()  # alpha carries no edges
        _, edges = canny(colour, low_threshold, high_threshold)
        return (edges.to(image.dtype).repeat(1, 3, 1, 1).movedim(1, -1),)


NODES = [ImageInvert, ImageBatch, ImageCrop, ImageBlur, ImageSharpen, Canny]
