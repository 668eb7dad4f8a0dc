"""Training images from a folder, with or without captions, as ComfyUI's dataset nodes read them.

* Images are .png, .jpg, .jpeg and .webp files (any case), taken in name order.
* Captions sit beside their image in a .txt file of the same name; a missing one is "".
* kohya-ss folder layout: a subfolder named "<N>_<anything>" contributes its images N times
  (a plain subfolder once); only the caption loader looks into subfolders, as in ComfyUI.
* All images take the size of the first one (or `width` x `height` when given): "None" refuses
  a different size, "Stretch" and "Pad" resize with Lanczos (ComfyUI's "Pad" resizes too), "Crop"
  keeps the top-left part (filling with black where the image is smaller).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
RESIZE_METHODS = ("None", "Stretch", "Crop", "Pad")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def folder_images(folder: Path) -> list[Path]:
    """The images directly inside `folder`, in name order."""
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)


def _repeats(name: str) -> int:
    head = name.split("_")[0]
    return int(head) if head.isdigit() else 1


def captioned_images(folder: Path) -> list[tuple[Path, str]]:
    """(image, caption) pairs of `folder` and its kohya-style subfolders, repeats expanded."""
    pairs = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if _is_image(entry):
            pairs.append((entry, read_caption(entry)))
        elif entry.is_dir():
            inner = [(p, read_caption(p)) for p in folder_images(entry)]
            pairs.extend(inner * _repeats(entry.name))
    return pairs


def read_caption(image: Path) -> str:
    caption = image.with_suffix(".txt")
    return caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""


def _open_rgb(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read training image {path}: {exc}") from None
    if img.mode == "I":   # 32-bit integer greyscale: ComfyUI scales it by 1/255
        img = img.point(lambda i: i * (1 / 255))
    return img.convert("RGB")


def load_images(paths: list[Path], resize_method: str = "None", width: int | None = None,
                height: int | None = None) -> torch.Tensor:
    """IMAGE [N, H, W, 3] in 0..1 from `paths`, sized as the module docstring says."""
    if resize_method not in RESIZE_METHODS:
        raise ValueError(f"resize_method must be one of {', '.join(RESIZE_METHODS)}, not {resize_method!r}")
    if not paths:
        raise ValueError("no images found (expected .png, .jpg, .jpeg or .webp files)")
    out = []
    for path in paths:
        img = _open_rgb(path)
        if width is None and height is None:
            width, height = img.size
        width, height = width or img.size[0], height or img.size[1]
        if img.size != (width, height):
            if resize_method in ("Stretch", "Pad"):
                img = img.resize((width, height), Image.Resampling.LANCZOS)
            elif resize_method == "Crop":
                img = img.crop((0, 0, width, height))
            else:
                raise ValueError(f"{path.name} is {img.size[0]}x{img.size[1]} but the data set's images are "
                                 f"{width}x{height}; choose a resize method (Stretch, Crop or Pad) or use "
                                 "images of one size")
        out.append(torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0))
    return torch.stack(out)
