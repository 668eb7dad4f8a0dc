"""/view, /upload/image and /upload/mask: files in input/, output/ and temp/."""
from __future__ import annotations

import asyncio
import io
import json
import mimetypes
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from PIL import Image

from server.files import (IMAGE_SUFFIXES, PathRefused, check_image, merge_mask, resolve_inside, save_upload,
                          split_annotation)
from server.jsonio import BadRequest, json_response
from server.state import state_of

# Served inline; anything else leaves as a download, since a browser could run it (HTML, SVG,
# JavaScript, XML) in our origin and so reach the whole API.
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff",
                          "image/avif", "text/plain", "application/json"})
INLINE_PREFIXES = ("video/", "audio/")
TYPES = ("input", "output", "temp")


def _typed_root(state, kind: str) -> Path:
    if kind not in TYPES:
        raise BadRequest(400, "invalid_request", f"'type' must be one of {', '.join(TYPES)}, not {kind!r}")
    return state.folders.typed_dir(kind)


def _refused(exc: PathRefused) -> BadRequest:
    return BadRequest(exc.status, "forbidden_path" if exc.status == 403 else "invalid_path", exc.message)


def _disposition(kind: str, name: str) -> str:
    ascii_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in name)
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}"


def file_headers(name: str) -> dict[str, str]:
    guessed = mimetypes.guess_type(name)[0] or "application/octet-stream"
    inline = guessed in INLINE_TYPES or guessed.startswith(INLINE_PREFIXES)
    return {
        "Content-Type": guessed if inline else "application/octet-stream",
        "Content-Disposition": _disposition("inline" if inline else "attachment", name),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }


def _converted(path: Path, channel: str, preview: str | None) -> tuple[bytes, str] | None:
    """The image re-encoded for ?channel=rgb|a or ?preview=webp;90; None for non-images."""
    try:
        img = Image.open(path)
        img.load()
    except Exception:
        return None
    with img:
        if channel == "a":
            alpha = img.getchannel("A") if "A" in img.getbands() else Image.new("L", img.size, 255)
            img = Image.new("RGBA", img.size, (0, 0, 0, 0))
            img.putalpha(alpha)  # ComfyUI's shape: black pixels carrying the alpha
        elif channel == "rgb":
            img = img.convert("RGB")
        buf = io.BytesIO()
        if preview:
            fmt, _, quality_text = preview.partition(";")
            fmt = fmt.strip().lower()
            if fmt not in ("webp", "jpeg") or (fmt == "jpeg" and channel == "a"):
                fmt = "webp"
            quality = int(quality_text) if quality_text.strip().isdigit() else 90
            out = img if fmt == "webp" or img.mode in ("RGB", "L") else img.convert("RGB")
            out.save(buf, format=fmt.upper(), quality=max(1, min(quality, 100)))
            return buf.getvalue(), f"image/{fmt}"
        img.save(buf, format="PNG")
        return buf.getvalue(), "image/png"


async def view(request: web.Request) -> web.StreamResponse:
    state = state_of(request)
    query = request.query
    filename = query.get("filename")
    if not filename:
        raise BadRequest(400, "invalid_request", "'filename' is required")
    filename, kind = split_annotation(filename, query.get("type", "output") or "output")
    root = _typed_root(state, kind)
    try:
        path = resolve_inside(root, query.get("subfolder", ""), filename)
    except PathRefused as exc:
        raise _refused(exc) from None
    if not path.is_file():
        raise BadRequest(404, "not_found", f"no file {filename!r} in {kind}")
    channel = (query.get("channel") or "rgba").lower()
    if channel not in ("rgba", "rgb", "a"):
        raise BadRequest(400, "invalid_request", "'channel' must be rgba, rgb or a")
    preview = query.get("preview")
    if channel != "rgba" or preview:
        converted = await asyncio.to_thread(_converted, path, channel, preview)
        if converted is not None:
            body, content_type = converted
            name = Path(filename).stem + ("." + content_type.split("/")[1])
            headers = file_headers(name)
            headers["Content-Type"] = content_type
            return web.Response(body=body, headers=headers)
    return web.FileResponse(path, headers=file_headers(path.name))


async def _upload_form(request: web.Request) -> tuple[Any, dict[str, str]]:
    ctype = request.headers.get("Content-Type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise BadRequest(415, "unsupported_media_type", "Send the upload as multipart/form-data")
    try:
        form = await request.post()
    except web.HTTPException:
        raise
    except (ValueError, AssertionError) as exc:
        raise BadRequest(400, "invalid_request", f"Malformed multipart body: {exc}") from None
    image = form.get("image")
    if not isinstance(image, web.FileField):
        raise BadRequest(400, "invalid_request", "The form needs an 'image' file field")
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    return image, fields


def _upload_target(state, fields: dict[str, str]) -> tuple[Path, str, str, bool]:
    kind = fields.get("type") or "input"
    root = _typed_root(state, kind)
    subfolder = fields.get("subfolder", "")
    overwrite = fields.get("overwrite", "").lower() in ("true", "1", "yes")
    return root, kind, subfolder, overwrite


def _checked_name(image: web.FileField) -> str:
    name = image.filename or ""
    if not name:
        raise BadRequest(400, "invalid_request", "The uploaded file has no name")
    if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
        raise BadRequest(400, "invalid_image", f"{name!r}: only image files are accepted "
                                               f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    return name


def _store(root: Path, subfolder: str, name: str, data: bytes, overwrite: bool):
    try:
        return save_upload(root, subfolder, name, data, overwrite)
    except PathRefused as exc:
        raise _refused(exc) from None


async def upload_image(request: web.Request) -> web.Response:
    state = state_of(request)
    image, fields = await _upload_form(request)
    root, kind, subfolder, overwrite = _upload_target(state, fields)
    name = _checked_name(image)
    data = image.file.read()
    try:
        await asyncio.to_thread(check_image, data)
    except ValueError as exc:
        raise BadRequest(400, "invalid_image", f"{name!r}: {exc}") from None
    saved = await asyncio.to_thread(_store, root, subfolder, name, data, overwrite)
    return json_response({"name": saved.name, "subfolder": subfolder, "type": kind})


async def upload_mask(request: web.Request) -> web.Response:
    state = state_of(request)
    image, fields = await _upload_form(request)
    root, kind, subfolder, overwrite = _upload_target(state, fields)
    name = _checked_name(image)
    try:
        ref = json.loads(fields.get("original_ref", ""))
    except ValueError:
        raise BadRequest(400, "invalid_request", "'original_ref' must be JSON: {filename, subfolder, type}") from None
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str) or not ref["filename"]:
        raise BadRequest(400, "invalid_request", "'original_ref' needs a 'filename'")
    ref_name, ref_kind = split_annotation(ref["filename"], str(ref.get("type") or "output"))
    try:
        original = resolve_inside(_typed_root(state, ref_kind), str(ref.get("subfolder") or ""), ref_name)
    except PathRefused as exc:
        raise _refused(exc) from None
    if not original.is_file():
        raise BadRequest(404, "not_found", f"original image {ref_name!r} not found in {ref_kind}")
    data = image.file.read()
    try:
        await asyncio.to_thread(check_image, data)
        merged = await asyncio.to_thread(merge_mask, original, data)
    except ValueError as exc:
        raise BadRequest(400, "invalid_image", str(exc)) from None
    except (OSError, Image.DecompressionBombError) as exc:  # the original is not a readable image
        raise BadRequest(400, "invalid_image", f"cannot read the original image: {exc}") from None
    name = os.path.splitext(name)[0] + ".png"  # the merge is always written as PNG
    saved = await asyncio.to_thread(_store, root, subfolder, name, merged, overwrite)
    return json_response({"name": saved.name, "subfolder": subfolder, "type": kind})


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/view", view),
    ("POST", "/upload/image", upload_image),
    ("POST", "/upload/mask", upload_mask),
]
