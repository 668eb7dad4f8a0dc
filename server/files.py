"""Files that clients name: resolving them strictly inside input/output/temp, and saving uploads.

Names come from the network, so resolution is two-step: a lexical check that refuses anything
that is not a plain relative name (400), then a check of the fully resolved path, symlinks
followed, against the resolved folder (403). Only then is anything read or written.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, PngImagePlugin

from graph.strict_json import has_surrogates

ANNOTATION = re.compile(r"^(.*?)\s*\[(input|output|temp)\]\s*$")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
IMAGE_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF"})
# Enough for a 4x upscale of a 2048x2048 image; decoding more takes seconds and gigabytes
# (a 20 KB PNG can claim 13000x13000 pixels).
MAX_PIXELS = 8192 * 8192
_DRIVE = re.compile(r"^[A-Za-z]:")
NAME_MAX = 255  # bytes in one file name, on every common filesystem
PATH_MAX = 4096  # bytes in a whole path (Linux)
MAX_NESTING = 64  # folders in a name; real ones nest a handful deep


class PathRefused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def name_parts(text: str, what: str) -> list[str]:
    """Components of a relative name; refuses NUL, backslashes, absolute paths and '..'."""
    if not isinstance(text, str):
        raise PathRefused(400, f"{what} must be text")
    if "\x00" in text:
        raise PathRefused(400, f"{what} contains a NUL byte")
    if has_surrogates(text):
        raise PathRefused(400, f"{what} is not valid UTF-8 text")
    if "\\" in text:
        raise PathRefused(400, f"{what} contains a backslash; use '/' between folders")
    if text.startswith("/") or _DRIVE.match(text):
        raise PathRefused(400, f"{what} must be a relative name, not an absolute path")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathRefused(400, f"{what} must not refer to a parent folder ('..')")
    if any(len(p.encode()) > NAME_MAX for p in parts):
        raise PathRefused(400, f"{what} has a name longer than {NAME_MAX} bytes")
    if len(parts) > MAX_NESTING:  # pathlib's mkdir(parents=True) recurses once per level
        raise PathRefused(400, f"{what} is nested deeper than {MAX_NESTING} folders")
    return parts


def resolve_inside(root: Path, subfolder: str, filename: str | None = None) -> Path:
    """root/subfolder[/filename], resolved; PathRefused unless it stays inside root."""
    parts = name_parts(subfolder, "subfolder")
    if filename is not None:
        file_parts = name_parts(filename, "filename")
        if not file_parts:
            raise PathRefused(400, "filename is empty")
        parts += file_parts
    base = Path(root).resolve()
    try:
        target = base.joinpath(*parts).resolve()
    except OSError as exc:  # a symlink loop, ...
        raise PathRefused(400, f"that path cannot be used: {exc.strerror or exc}") from None
    if len(str(target).encode()) > PATH_MAX:
        raise PathRefused(400, f"that path is longer than {PATH_MAX} bytes")
    if target != base and not target.is_relative_to(base):
        raise PathRefused(403, "that path leads outside its folder")
    return target


def split_annotation(filename: str, default_type: str) -> tuple[str, str]:
    """'x.png [output]' -> ('x.png', 'output'); plain names keep the default type."""
    match = ANNOTATION.match(filename)
    return (match.group(1), match.group(2)) if match else (filename, default_type)


def check_image(data: bytes) -> str:
    """The image format of uploaded bytes; ValueError unless pillow reads them as a raster image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            width, height = img.size
            img.verify()
    except Exception as exc:  # pillow raises many kinds for garbage
        raise ValueError(f"the file is not an image pillow can read ({type(exc).__name__})") from None
    if fmt not in IMAGE_FORMATS:
        raise ValueError(f"image format {fmt} is not accepted")
    check_pixels(width, height)
    return fmt


def check_pixels(width: int, height: int) -> None:
    """ValueError for an image over MAX_PIXELS, read from its header before anything is decoded."""
    if width * height > MAX_PIXELS:
        raise ValueError(f"the image is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); "
                         f"at most {MAX_PIXELS / 1e6:.0f} megapixels (8192x8192) are accepted")


def merge_mask(original_path: Path, mask_data: bytes) -> bytes:
    """The original image with the mask upload's alpha as its alpha, as PNG bytes.

    The original's PNG text chunks (prompt, workflow) are kept so the edited file still
    carries the workflow that made it.
    """
    with Image.open(original_path) as original:
        check_pixels(*original.size)
        info = PngImagePlugin.PngInfo()
        for key, value in (original.info or {}).items():
            if isinstance(key, str) and isinstance(value, str):
                info.add_text(key, value)
        base = original.convert("RGBA")
    with Image.open(io.BytesIO(mask_data)) as mask:
        alpha = mask.convert("RGBA").getchannel("A")
    if alpha.size != base.size:
        alpha = alpha.resize(base.size, Image.LANCZOS)
    base.putalpha(alpha)
    out = io.BytesIO()
    base.save(out, format="PNG", pnginfo=info, compress_level=4)
    return out.getvalue()


@dataclass(frozen=True)
class Saved:
    name: str
    path: Path
    reused: bool


def _same_content(path: Path, digest: str) -> bool:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() == digest
    except OSError:
        return False


def numbered(name: str, index: int) -> str:
    stem, ext = os.path.splitext(name)
    return f"{stem} ({index}){ext}"


def save_upload(root: Path, subfolder: str, filename: str, data: bytes, overwrite: bool) -> Saved:
    """Write an upload under root/subfolder; a clash gets 'name (1).ext' unless overwrite, and
    a file with identical content is reused rather than duplicated."""
    folder = resolve_inside(root, subfolder)
    parts = name_parts(filename, "filename")
    if len(parts) != 1:
        raise PathRefused(400, "filename must be a plain file name (put folders in 'subfolder')")
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(data).hexdigest()
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if overwrite:
            resolve_inside(root, subfolder, parts[0])  # a link there must not lead outside either
            target = folder / parts[0]
            os.replace(tmp, target)  # replaces a link itself, never writes through it
            return Saved(parts[0], target, False)
        index = 0
        name = parts[0]
        while True:
            resolve_inside(root, subfolder, name)
            target = folder / name  # written as named: links are never followed for writing
            if os.path.lexists(target):
                if not target.is_symlink() and target.is_file() and _same_content(target, digest):
                    return Saved(name, target, True)
            else:
                try:
                    os.link(tmp, target)  # atomic and never replaces an existing name
                    return Saved(name, target, False)
                except FileExistsError:
                    pass  # a racing upload took the name
                except OSError:  # a filesystem without hard links
                    try:
                        with open(target, "xb") as f:
                            f.write(data)
                        return Saved(name, target, False)
                    except FileExistsError:
                        pass
            index += 1
            name = numbered(parts[0], index)
    finally:
        tmp.unlink(missing_ok=True)
