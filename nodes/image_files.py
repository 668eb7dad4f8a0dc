"""More image files: loading back what was generated, and saving batches as animations.

Frames become 8-bit through nodes.image.tensor_to_pil, the one conversion every saver uses.
"""
from __future__ import annotations

import json
from typing import Any

from PIL.PngImagePlugin import PngInfo

from graph.contract import Boolean, Combo, Float, Input, Int, Node, Socket
from nodes.image import LoadImage, save_target, tensor_to_pil
from nodes.image_tools import image_batch

IMAGES_MODULE = "comfy_extras.nodes_images"
ANIMATION = "image/animation"


class LoadImageOutput(LoadImage):
    """Load an image from the output folder. When the refresh button is clicked, the node will
    update the image list and automatically select the first image, allowing for easy iteration."""

    display_name = "Load Image (from Outputs)"
    comfy_function = "load_image"
    category = "image"
    EXPERIMENTAL = True
    # The editor fetches the list from the route itself, so the declaration carries none.
    inputs = (Input("image", "COMBO", typed_combo=True, options=dict(
        image_upload=True, image_folder="output",
        remote={"route": "/internal/files/output", "refresh_button": True, "control_after_refresh": "first"})),)


def animation_inputs() -> tuple:
    return (Socket("images", "IMAGE"), Input("filename_prefix", "STRING", options=dict(default="ComfyUI")),
            Float("fps", 6.0, min=0.01, max=1000.0, step=0.01))


def animation_frames(images: Any) -> list:
    return [tensor_to_pil(image) for image in image_batch(images, "images")]


def _target(ctx, images, filename_prefix: str):
    batch = image_batch(images, "images")
    target = save_target(ctx.env.folders.output_dir, filename_prefix, batch.shape[2], batch.shape[1])
    target.folder.mkdir(parents=True, exist_ok=True)
    return target


def _frame_duration(fps: float) -> int:
    return int(1000.0 / fps)


class SaveAnimatedPNG(Node):
    """Saves the batch as one animated PNG (APNG); prompt and workflow ride in "comf" chunks after
    the image data, as ComfyUI writes them."""

    comfy_function = "save_images"
    category = ANIMATION
    comfy_module = IMAGES_MODULE
    output_node = True
    inputs = (*animation_inputs(), Int("compress_level", 4, min=0, max=9, step=None))
    hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    outputs = ()

    def run(self, ctx, images, fps, compress_level, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        frames = animation_frames(images)
        target = _target(ctx, images, filename_prefix)
        metadata = None
        if not ctx.env.options.get("disable_metadata"):
            metadata = PngInfo()
            entries = ([("prompt", prompt)] if prompt is not None else []) + list((extra_pnginfo or {}).items())
            for key, value in entries:
                chunk = str(key).encode("latin-1", "strict") + b"\0" + json.dumps(value).encode("latin-1", "strict")
                metadata.add(b"comf", chunk, after_idat=True)
        name = f"{target.stem}_{target.counter:05d}_.png"
        frames[0].save(target.folder / name, pnginfo=metadata, compress_level=compress_level, save_all=True,
                       duration=_frame_duration(fps), append_images=frames[1:])
        return {"ui": {"images": [{"filename": name, "subfolder": target.subfolder, "type": "output"}],
                       "animated": (True,)}}


WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}
EXIF_PROMPT_TAG = 0x0110  # Model
EXIF_FIRST_EXTRA_TAG = 0x010F  # Make; further entries count down (ImageDescription, ...)


class SaveAnimatedWEBP(Node):
    """Saves the batch as one animated WebP; prompt and workflow ride in EXIF text fields
    ("prompt:{...}" in Model, "workflow:{...}" in Make), as ComfyUI writes them."""

    comfy_function = "save_images"
    category = ANIMATION
    comfy_module = IMAGES_MODULE
    output_node = True
    inputs = (
        *animation_inputs(),
        Boolean("lossless", True),
        Int("quality", 80, min=0, max=100, step=None),
        Combo("method", list(WEBP_METHODS)),
    )
    hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    outputs = ()

    def run(self, ctx, images, fps, filename_prefix, lossless, quality, method, num_frames=0, prompt=None,
            extra_pnginfo=None):
        if num_frames:  # ComfyUI's method parameter (no input) that splits the animation into files
            raise ValueError("SaveAnimatedWEBP: num_frames (one file per num_frames frames) is not supported")
        if method not in WEBP_METHODS:
            raise ValueError(f"method must be one of {list(WEBP_METHODS)}, got {method!r}")
        frames = animation_frames(images)
        target = _target(ctx, images, filename_prefix)
        exif = frames[0].getexif()
        if not ctx.env.options.get("disable_metadata"):
            if prompt is not None:
                exif[EXIF_PROMPT_TAG] = f"prompt:{json.dumps(prompt)}"
            for offset, (key, value) in enumerate((extra_pnginfo or {}).items()):
                exif[EXIF_FIRST_EXTRA_TAG - offset] = f"{key}:{json.dumps(value)}"
        name = f"{target.stem}_{target.counter:05d}_.webp"
        frames[0].save(target.folder / name, save_all=True, duration=_frame_duration(fps), append_images=frames[1:],
                       exif=exif, lossless=lossless, quality=quality, method=WEBP_METHODS[method])
        return {"ui": {"images": [{"filename": name, "subfolder": target.subfolder, "type": "output"}],
                       "animated": (len(frames) != 1,)}}


NODES = [LoadImageOutput, SaveAnimatedPNG, SaveAnimatedWEBP]
