"""Image resizing nodes. IMAGE = [B, H, W, C] floats in 0..1."""
from __future__ import annotations

from diffusion.upscale import CROP_METHODS, IMAGE_METHODS, upscale
from graph.contract import Combo, Float, Int, Node, Output, Socket
from nodes.image import MAX_RESOLUTION


def resize_image(image, width: int, height: int, method: str, crop: str = "disabled"):
    return upscale(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


class ImageScale(Node):
    display_name = "Upscale Image"
    comfy_function = "upscale"
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
    category = "image/upscaling"
    inputs = (
        Socket("image", "IMAGE"),
        Combo("upscale_method", IMAGE_METHODS),
        Float("scale_by", 1.0, min=0.01, max=8.0, step=0.01),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, image, upscale_method, scale_by):
        h, w = image.shape[1:3]
        return (resize_image(image, round(w * scale_by), round(h * scale_by), upscale_method),)


NODES = [ImageScale, ImageScaleBy]
