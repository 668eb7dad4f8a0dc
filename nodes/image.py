"""Image nodes that need no model: make, load, save and preview images.

IMAGE values are float32 tensors [B, H, W, C] in 0..1 and MASK values [B, H, W], as in ComfyUI.
Conversions go through raw bytes (torch, Pillow and numpy for the one bulk copy).
"""
from __future__ import annotations

import hashlib
import json
import posixpath
import random
import re
import string
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from app.folders import safe_join
from graph.contract import Combo, Input, Int, Node, Output, Socket, String

MAX_RESOLUTION = 16384
EMPTY_MASK_SIZE = 64  # ComfyUI's stand-in mask for images without alpha
SAVE_COMPRESS_LEVEL = 4
PREVIEW_COMPRESS_LEVEL = 1  # previews are thrown away, so favour speed over size


# ---------------------------------------------------------------------------------------------
# Tensor <-> Pillow conversions.


def color_to_rgb(color: int) -> tuple[float, float, float]:
    """0xRRGGBB as three floats in 0..1."""
    return tuple(((color >> shift) & 0xFF) / 255.0 for shift in (16, 8, 0))


def _uint8_tensor(img: Image.Image, channels: int) -> torch.Tensor:
    """An 8-bit Pillow image as a float tensor [H, W, channels] in 0..1."""
    raw = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return raw.view(img.height, img.width, channels).to(torch.float32) / 255.0


def _wide_grey_tensor(img: Image.Image) -> torch.Tensor:
    """A 16/32-bit greyscale ('I' family) image as RGB floats, keeping the extra precision."""
    wide = img.convert("I")  # native-endian int32, whatever the source layout was
    raw = torch.frombuffer(bytearray(wide.tobytes()), dtype=torch.int32)
    grey = (raw.view(img.height, img.width).to(torch.float32) / 65535.0).clamp(0.0, 1.0)
    return grey.unsqueeze(-1).expand(-1, -1, 3).contiguous()


_MODES_BY_CHANNELS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """Floats in 0..1 as 8-bit values the way ComfyUI makes them: uint8(clip(255 * x, 0, 255)),
    truncating (0.5 -> 127, not 128), so saved files and previews match ComfyUI's byte for byte.
    NaN becomes 0. In numpy, single-threaded: torch's thread pool makes this elementwise work
    wait for a free core when the machine is busy (0.2 ms here became 70 ms under load)."""
    scaled = pixels.detach().to("cpu", torch.float32).numpy() * np.float32(255.0)
    np.nan_to_num(scaled, copy=False, nan=0.0)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return scaled.astype(np.uint8)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """One [H, W, C] image (C = 1..4) in 0..1 as a Pillow image (8-bit by to_uint8)."""
    if image.dim() == 2:
        image = image.unsqueeze(-1)
    if image.dim() != 3 or image.shape[-1] not in _MODES_BY_CHANNELS:
        raise ValueError(f"expected an image [H, W, C] with 1 to 4 channels, got shape {list(image.shape)}")
    height, width, channels = image.shape
    # tobytes() of the contiguous array: exactly this image's bytes in one copy (iterating a
    # tensor's storage goes byte by byte in Python: seconds for one 512x512 image)
    data = np.ascontiguousarray(to_uint8(image)).tobytes()
    return Image.frombytes(_MODES_BY_CHANNELS[channels], (width, height), data)


def as_batch(images: Any) -> torch.Tensor:
    """Accept a single [H, W, C] image where a batch [B, H, W, C] is expected."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected an IMAGE tensor, got {type(images).__name__}")
    return images.unsqueeze(0) if images.dim() == 3 else images


# ---------------------------------------------------------------------------------------------
# EmptyImage


class EmptyImage(Node):
    """A batch of images filled with one colour."""

    comfy_function = "generate"
    category = "image"
    inputs = (
        Int("width", 512, min=1, max=MAX_RESOLUTION, step=1),
        Int("height", 512, min=1, max=MAX_RESOLUTION, step=1),
        Int("batch_size", 1, min=1, max=4096),
        Int("color", 0, min=0, max=0xFFFFFF, step=1, display="color"),
    )
    outputs = (Output("IMAGE"),)

    def run(self, ctx, width: int, height: int, batch_size: int = 1, color: int = 0):
        rgb = torch.tensor(color_to_rgb(color), dtype=torch.float32)
        return (rgb.expand(batch_size, height, width, 3).clone(),)


# ---------------------------------------------------------------------------------------------
# LoadImage


def _frames(img: Image.Image) -> Iterator[Image.Image]:
    # MPO files carry a second view (stereo or depth) after the photo; it is not an animation.
    if img.format == "MPO":
        yield img
        return
    yield from ImageSequence.Iterator(img)


def _upright(frame: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(frame)
    except Exception:  # a damaged EXIF block should not stop the pixels from loading
        return frame


def _has_alpha(frame: Image.Image) -> bool:
    # Palette and key-colour images keep transparency in info, not in a band.
    return "A" in frame.getbands() or "transparency" in frame.info


def frame_to_tensors(frame: Image.Image) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One frame as (RGB [H, W, 3], alpha [H, W] or None)."""
    if frame.mode.startswith("I"):
        return _wide_grey_tensor(frame), None
    if _has_alpha(frame):
        rgba = _uint8_tensor(frame.convert("RGBA"), 4)
        return rgba[..., :3].contiguous(), rgba[..., 3].contiguous()
    return _uint8_tensor(frame.convert("RGB"), 3), None


def load_image_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """An image file as (IMAGE [B, H, W, 3], MASK [B, H, W]); frames of another size are dropped."""
    images: list[torch.Tensor] = []
    alphas: list[torch.Tensor | None] = []
    with Image.open(path) as img:
        for frame in _frames(img):
            frame = _upright(frame)
            if images and frame.size != (images[0].shape[1], images[0].shape[0]):
                continue
            rgb, alpha = frame_to_tensors(frame)
            images.append(rgb)
            alphas.append(alpha)
    if not images:
        raise ValueError(f"{path.name}: no image frames could be read")
    return torch.stack(images), _masks(alphas, images[0].shape[:2])


def _masks(alphas: list[torch.Tensor | None], size: tuple[int, int]) -> torch.Tensor:
    """MASK = 1 - alpha; with no alpha anywhere, ComfyUI's small zero mask per frame."""
    if all(a is None for a in alphas):
        return torch.zeros(len(alphas), EMPTY_MASK_SIZE, EMPTY_MASK_SIZE, dtype=torch.float32)
    return torch.stack([torch.zeros(size) if a is None else 1.0 - a for a in alphas]).to(torch.float32)


def _input_image_path(env: Any, name: str) -> Path:
    """The file a LoadImage value names; "x.png [output]" picks another folder."""
    return env.folders.annotated_path(name, default_type="input")


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def input_file_fingerprint(env: Any, name: Any) -> Any:
    """The content hash of the file an input name ("x.png", "x.png [output]") points to: the
    content, not the name or mtime, decides whether downstream results are stale."""
    try:
        return file_sha256(_input_image_path(env, name))
    except (OSError, ValueError, TypeError):
        return float("nan")  # unreadable: never reuse a cached result


def check_input_file(env: Any, name: Any, kind: str) -> bool | str:
    """True when an input name points to a file inside its folder, else the error to show."""
    if not isinstance(name, str) or not name:
        return f"Invalid {kind} file: {name!r}"
    try:
        path = _input_image_path(env, name)
    except ValueError as exc:
        return f"Invalid {kind} file: {name} ({exc})"
    if path.is_file():
        return True
    folder = next((t for t in ("input", "output", "temp") if path.is_relative_to(env.folders.typed_dir(t))), "input")
    return (f"Invalid {kind} file: {name} (no such file in the {folder} folder {env.folders.typed_dir(folder)}: "
            f"copy it there, or upload it with the node's 'choose file to upload')")


class LoadImage(Node):
    """Loads an image from the input folder; the mask is the inverted alpha channel."""

    display_name = "Load Image"
    comfy_function = "load_image"
    category = "image"
    inputs = (Combo("image", lambda env: env.folders.input_images(), image_upload=True),)
    outputs = (Output("IMAGE"), Output("MASK"))

    def run(self, ctx, image: str):
        return load_image_file(_input_image_path(ctx.env, image))

    @classmethod
    def fingerprint(cls, env: Any, image: Any = None, **_: Any) -> Any:
        return input_file_fingerprint(env, image)

    @classmethod
    def check(cls, env: Any, image: Any) -> bool | str:
        # Naming `image` here also waives the combo-membership check, so annotated names and
        # files uploaded after the editor loaded its list are accepted.
        return check_input_file(env, image, "image")


# ---------------------------------------------------------------------------------------------
# SaveImage / PreviewImage


@dataclass(frozen=True)
class SaveTarget:
    folder: Path
    stem: str  # file name before "_<counter>_.png"; may still hold %batch_num%
    subfolder: str  # relative to the root, "/"-separated, "" for the root itself
    counter: int


def expand_prefix(prefix: str, width: int, height: int, now: datetime) -> str:
    """Replace the server-side %tokens% of a filename prefix (not %batch_num%, which is per image)."""
    tokens = {
        "%width%": str(width),
        "%height%": str(height),
        "%year%": str(now.year),
        "%month%": f"{now.month:02d}",
        "%day%": f"{now.day:02d}",
        "%hour%": f"{now.hour:02d}",
        "%minute%": f"{now.minute:02d}",
        "%second%": f"{now.second:02d}",
    }
    for token, value in tokens.items():
        prefix = prefix.replace(token, value)
    return prefix


def next_counter(folder: Path, stem: str) -> int:
    """1 + the highest counter of files named <stem>_<digits>_... in folder, else 1."""
    parts = [re.escape(p) for p in stem.split("%batch_num%")]
    pattern = re.compile(r"\d+".join(parts) + r"_(\d+)_")
    highest = 0
    if folder.is_dir():
        for entry in folder.iterdir():
            match = pattern.match(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def save_target(root: Path, prefix: str, width: int, height: int, now: datetime | None = None) -> SaveTarget:
    """Where a batch goes: a "/" in the prefix makes a subfolder, which must stay under root."""
    # Backslashes separate folders too, so a prefix written on Windows lands in the same place.
    expanded = expand_prefix(prefix, width, height, now or datetime.now()).replace("\\", "/")
    subfolder, stem = posixpath.split(posixpath.normpath(expanded))
    if stem == ".":
        stem = ""
    try:
        folder = safe_join(root, subfolder) if subfolder else root
    except ValueError as exc:
        raise ValueError(f"Saving image outside the output folder is not allowed: filename_prefix "
                         f"{prefix!r} points outside {root} ({exc})") from exc
    return SaveTarget(folder, stem, subfolder, next_counter(folder, stem))


def png_metadata(prompt: Any, extra_pnginfo: Any) -> PngInfo:
    """tEXt chunks: "prompt" = the API prompt, plus one chunk per extra_pnginfo key ("workflow")."""
    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    if isinstance(extra_pnginfo, dict):
        for key, value in extra_pnginfo.items():
            info.add_text(str(key), json.dumps(value))
    return info


def save_images(ctx, images: Any, root: Path, prefix: str, kind: str, compress_level: int,
                prompt: Any = None, extra_pnginfo: Any = None) -> dict:
    """Write a batch as numbered PNGs and return the ui entry the editor shows."""
    batch = as_batch(images)
    target = save_target(root, prefix, width=batch.shape[2], height=batch.shape[1])
    target.folder.mkdir(parents=True, exist_ok=True)
    metadata = None if ctx.env.options.get("disable_metadata") else png_metadata(prompt, extra_pnginfo)
    results = []
    counter = target.counter
    for index, image in enumerate(batch):
        ctx.check_interrupt()
        while True:
            name = f"{target.stem.replace('%batch_num%', str(index))}_{counter + index:05d}_.png"
            try:  # another process (a cluster worker) may be saving under the same prefix right now
                file = open(target.folder / name, "xb")
                break
            except FileExistsError:
                counter = next_counter(target.folder, target.stem) - index
        with file:
            tensor_to_pil(image).save(file, format="PNG", pnginfo=metadata, compress_level=compress_level)
        results.append({"filename": name, "subfolder": target.subfolder, "type": kind})
    return {"ui": {"images": results}}


class SaveImage(Node):
    """Saves images to the output folder as PNGs carrying the prompt and workflow."""

    display_name = "Save Image"
    comfy_function = "save_images"
    category = "image"
    output_node = True
    inputs = (
        Socket("images", "IMAGE"),
        # Single-line without a "multiline" key, as ComfyUI declares it.
        Input("filename_prefix", "STRING", options=dict(default="ComfyUI")),
    )
    hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    outputs = ()

    def __init__(self):
        # ComfyUI's instance attributes, which plugins' subclasses set in their __init__ (a
        # preview node writing to temp/, say). output_dir None: the `type` folder of the engine.
        self.output_dir: str | None = None
        self.type = "output"
        self.prefix_append = ""
        self.compress_level = SAVE_COMPRESS_LEVEL

    def run(self, ctx, images, filename_prefix: str = "ComfyUI", prompt=None, extra_pnginfo=None):
        root = Path(self.output_dir) if self.output_dir else ctx.env.folders.typed_dir(self.type)
        return save_images(ctx, images, root, filename_prefix + self.prefix_append, self.type,
                           self.compress_level, prompt, extra_pnginfo)


class PreviewImage(SaveImage):
    """Shows images in the editor; they are written to the temp folder, which is wiped."""

    display_name = "Preview Image"
    comfy_function = "save_images"
    category = "image"
    output_node = True
    inputs = (Socket("images", "IMAGE"),)
    hidden = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    outputs = ()

    def __init__(self):
        super().__init__()
        self.type = "temp"
        # Per instance, so two preview nodes never number into the same file series.
        self.prefix_append = "_temp_" + "".join(random.choices(string.ascii_lowercase, k=5))
        self.compress_level = PREVIEW_COMPRESS_LEVEL


# ---------------------------------------------------------------------------------------------
# Reading PNG text chunks back (to run a PNG's embedded workflow).



NODES = [EmptyImage, LoadImage, SaveImage, PreviewImage]
