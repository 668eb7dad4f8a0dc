"""Image tools as ComfyUI computes them: invert, crop, blur, sharpen, blend, colour quantization,
morphology, Canny edges, noise, and taking batches apart and repeating them.

IMAGE values are float tensors [B, H, W, C] in 0..1.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from graph.contract import Choice, Float, Int, Node, Output, Socket
from nodes.image import MAX_RESOLUTION, to_uint8
from nodes.image_transform import resize_image

ALPHA_CHANNELS = 4  # an RGBA image keeps its alpha out of colour operations


def image_batch(image: Any, name: str = "image") -> torch.Tensor:
    """An IMAGE as [B, H, W, C]; a single [H, W, C] image becomes a batch of one."""
    if not isinstance(image, torch.Tensor) or image.dim() not in (3, 4):
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name}: expected an IMAGE [B, H, W, C], got {shape}")
    return image.unsqueeze(0) if image.dim() == 3 else image


def match_channels(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Give the source the destination's channel count: drop extras, or add an opaque alpha."""
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        source = F.pad(source, (0, 1), value=1.0)
    return destination, source


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
        from kornia.filters import canny  # imported here: kornia costs start-up time and only these nodes use it

        colour = image[..., :3].movedim(-1, 1).float()  # alpha carries no edges
        _, edges = canny(colour, low_threshold, high_threshold)
        return (edges.to(image.dtype).repeat(1, 3, 1, 1).movedim(1, -1),)



# ---------------------------------------------------------------------------------------------
# Blending, quantizing, morphology.

POSTPROCESSING = "comfy_extras.nodes_post_processing"


def _soft_light_curve(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))


BLEND_MODES = {
    "normal": lambda a, b: b,
    "multiply": lambda a, b: a * b,
    "screen": lambda a, b: 1 - (1 - a) * (1 - b),
    "overlay": lambda a, b: torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b)),
    "soft_light": lambda a, b: torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a),
                                           a + (2 * b - 1) * (_soft_light_curve(a) - a)),
    "difference": lambda a, b: a - b,
}


class ImageBlend(Node):
    """image1 mixed with blend_mode(image1, image2) by blend_factor, clamped to 0..1; image2 is
    first resized (bicubic, centre crop) to image1's size when they differ."""

    comfy_function = "execute"
    category = "image/postprocessing"
    comfy_module = POSTPROCESSING
    display_name = None
    inputs = (
        Socket("image1", "IMAGE"),
        Socket("image2", "IMAGE"),
        Float("blend_factor", 0.5, min=0.0, max=1.0, step=0.01),
        Choice("blend_mode", list(BLEND_MODES)),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image1, image2, blend_factor, blend_mode):
        if blend_mode not in BLEND_MODES:
            raise ValueError(f"blend_mode must be one of {list(BLEND_MODES)}, got {blend_mode!r}")
        image1, image2 = match_channels(image_batch(image1, "image1"), image_batch(image2, "image2"))
        image2 = image2.to(image1.device)
        if image1.shape != image2.shape:
            image2 = resize_image(image2, image1.shape[2], image1.shape[1], "bicubic", "center")
        blended = BLEND_MODES[blend_mode](image1, image2)
        return (torch.clamp(image1 * (1 - blend_factor) + blended * blend_factor, 0, 1),)


def bayer_matrix(order: int) -> np.ndarray:
    """The order x order ordered-dither threshold map (order a power of 2), centred on 0: each level
    spreads the previous one's thresholds over four interleaved quarters."""
    if order == 1:
        return np.zeros((1, 1), np.float32)
    cells = order * order
    inner = cells * bayer_matrix(order // 2)
    return np.block([[inner - 1.5, inner + 0.5], [inner + 1.5, inner - 0.5]]) / cells


def _bayer_dither(image: Image.Image, palette: Image.Image, order: int) -> Image.Image:
    """Ordered dithering: add a tiled threshold map scaled to the palette's spacing, then map to the
    nearest palette colour."""
    colors = len(palette.getpalette()) // 3
    spread = 2 * 256 / colors
    threshold = torch.from_numpy(spread * bayer_matrix(order) + 0.5)
    pixels = torch.from_numpy(np.array(image).astype(np.float32))
    rows, cols = math.ceil(pixels.shape[0] / order), math.ceil(pixels.shape[1] / order)
    tiled = threshold.tile(rows, cols).unsqueeze(-1)[:pixels.shape[0], :pixels.shape[1]]
    dithered = (pixels + tiled).clamp_(0, 255).to(torch.uint8)
    return Image.fromarray(dithered.numpy()).quantize(palette=palette, dither=Image.Dither.NONE)


DITHERS = ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]


class ImageQuantize(Node):
    """Reduces each image to a palette of at most `colors` colours (Pillow's median cut), mapped
    with no dithering, Floyd-Steinberg error diffusion or a Bayer ordered dither."""

    comfy_function = "execute"
    category = "image/postprocessing"
    comfy_module = POSTPROCESSING
    display_name = None
    inputs = (
        Socket("image", "IMAGE"),
        Int("colors", 256, min=1, max=256, step=1),
        Choice("dither", DITHERS),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, colors, dither):
        image = image_batch(image)
        if image.shape[-1] != 3:
            raise ValueError(f"ImageQuantize takes RGB images, got {image.shape[-1]} channels")
        if dither not in DITHERS:
            raise ValueError(f"dither must be one of {DITHERS}, got {dither!r}")
        result = torch.zeros_like(image)
        for index, single in enumerate(image):
            pil = Image.fromarray(to_uint8(single))
            palette = pil.quantize(colors=colors)  # a palette image for quantize(palette=...)
            if dither.startswith("bayer"):
                mapped = _bayer_dither(pil, palette, int(dither.split("-")[-1]))
            else:
                method = Image.Dither.FLOYDSTEINBERG if dither == "floyd-steinberg" else Image.Dither.NONE
                mapped = pil.quantize(palette=palette, dither=method)
            result[index] = torch.from_numpy(np.array(mapped.convert("RGB"))).to(result) / 255
        return (result,)


# operation -> the kornia.morphology function that computes it
MORPHOLOGY = {"erode": "erosion", "dilate": "dilation", "open": "opening", "close": "closing",
              "gradient": "gradient", "bottom_hat": "bottom_hat", "top_hat": "top_hat"}


class Morphology(Node):
    """Grey-level morphology (kornia's, as ComfyUI uses) with a kernel_size x kernel_size square."""

    display_name = "ImageMorphology"
    comfy_function = "execute"
    category = "image/postprocessing"
    comfy_module = "comfy_extras.nodes_morphology"
    inputs = (
        Socket("image", "IMAGE"),
        Choice("operation", list(MORPHOLOGY)),
        Int("kernel_size", 3, min=3, max=999, step=1),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, operation, kernel_size):
        if operation not in MORPHOLOGY:
            raise ValueError(f"operation must be one of {list(MORPHOLOGY)}, got {operation!r}")
        import kornia.morphology

        image = image_batch(image)
        kernel = torch.ones(kernel_size, kernel_size, device=image.device)
        apply = getattr(kornia.morphology, MORPHOLOGY[operation])
        return (apply(image.movedim(-1, 1), kernel).movedim(1, -1),)


# ---------------------------------------------------------------------------------------------
# Noise, size, batches.

IMAGES_MODULE = "comfy_extras.nodes_images"


class ImageAddNoise(Node):
    """Adds strength x standard normal noise (drawn on the CPU from `seed`), clamped to 0..1."""

    comfy_function = "repeat"
    category = "image"
    comfy_module = IMAGES_MODULE
    inputs = (
        Socket("image", "IMAGE"),
        Int("seed", 0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
            tooltip="The random seed used for creating the noise."),
        Float("strength", 0.5, min=0.0, max=1.0, step=0.01),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, seed, strength):
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn(image.size(), generator=generator, device="cpu").to(image)
        return (torch.clip(image + strength * noise, min=0.0, max=1.0),)


class GetImageSize(Node):
    """Returns width and height of the image, and passes it through unchanged."""

    display_name = "Get Image Size"
    comfy_function = "get_size"
    category = "image"
    comfy_module = IMAGES_MODULE
    inputs = (Socket("image", "IMAGE"),)
    hidden = {"unique_id": "UNIQUE_ID"}
    outputs = (Output("INT", "width"), Output("INT", "height"), Output("INT", "batch_size"))

    def run(self, ctx, image, unique_id=None):
        image = image_batch(image)
        return (image.shape[2], image.shape[1], image.shape[0])


class ImageFromBatch(Node):
    """`length` images from `batch_index` on, both clamped to the batch."""

    comfy_function = "frombatch"
    category = "image/batch"
    comfy_module = IMAGES_MODULE
    inputs = (Socket("image", "IMAGE"), Int("batch_index", 0, min=0, max=4095), Int("length", 1, min=1, max=4096))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, batch_index, length):
        image = image_batch(image)
        start = min(image.shape[0] - 1, batch_index)
        length = min(image.shape[0] - start, length)
        return (image[start:start + length].clone(),)


class RepeatImageBatch(Node):
    comfy_function = "repeat"
    category = "image/batch"
    comfy_module = IMAGES_MODULE
    inputs = (Socket("image", "IMAGE"), Int("amount", 1, min=1, max=4096))
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, amount):
        return (image_batch(image).repeat((amount, 1, 1, 1)),)


NODES = [ImageInvert, ImageBatch, ImageCrop, ImageBlur, ImageSharpen, Canny, ImageBlend, ImageQuantize, Morphology,
         ImageAddNoise, GetImageSize, ImageFromBatch, RepeatImageBatch]
