"""/experiment/models: the model library of ComfyUI's frontend (folders, files with sizes and
times, preview images)."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import os
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image

from app.folders import IMAGE_EXTENSIONS, MODEL_EXTENSIONS
from server.files import PathRefused, name_parts
from server.jsonio import BadRequest, json_response
from server.state import state_of

HIDDEN_FOLDERS = ("configs", "custom_nodes")  # not model folders; ComfyUI leaves them out too
MAX_COVER_HEADER = 8 * 1024 * 1024


def model_files(directory: Path, path_index: int) -> list[dict[str, Any]]:
    """Model files below one folder: {name, pathIndex, modified, created, size}, as ComfyUI lists them
    (links followed, hidden files and folders and .git skipped)."""
    out = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in MODEL_EXTENSIONS:
                continue
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            out.append({"name": os.path.relpath(full, directory), "pathIndex": path_index,
                        "modified": st.st_mtime, "created": st.st_ctime, "size": st.st_size})
    return out


def _model_dirs(request: web.Request) -> list[Path]:
    folders = state_of(request).folders
    key = request.match_info["folder"]
    if key in HIDDEN_FOLDERS:
        raise BadRequest(404, "not_found", f"{key!r} is not a model folder")
    try:
        return folders.model_dirs(key)
    except KeyError:
        raise BadRequest(404, "not_found", f"no model folder named {key!r}") from None


async def model_folders(request: web.Request) -> web.Response:
    folders = state_of(request).folders
    return json_response([{"name": key, "folders": [str(d) for d in folders.model_dirs(key)]}
                          for key in folders.folder_keys() if key not in HIDDEN_FOLDERS])


async def models_in(request: web.Request) -> web.Response:
    dirs = _model_dirs(request)

    def listing() -> list:
        return [f for index, d in enumerate(dirs) if d.is_dir() for f in model_files(d, index)]

    return json_response(await asyncio.to_thread(listing))


def preview_image(model: Path) -> bytes | None:
    """The model's preview as WebP: `name.png` (any image type) or `name.preview.png` beside it,
    else the first cover image in a safetensors file's metadata (`ssmd_cover_images`)."""
    stem = model.with_suffix("")
    for base in (stem, stem.with_name(stem.name + ".preview")):
        for ext in sorted(IMAGE_EXTENSIONS):
            candidate = base.with_name(base.name + ext)
            if candidate.is_file():
                return _webp(candidate)
    if model.suffix == ".safetensors" and model.is_file():
        covers = _cover_images(model)
        if covers:
            return _webp(io.BytesIO(base64.b64decode(covers[0])))
    return None


def _cover_images(model: Path) -> list[str]:
    from safetensors import safe_open

    try:
        if model.stat().st_size < 8:
            return []
        with open(model, "rb") as f:
            if int.from_bytes(f.read(8), "little") > MAX_COVER_HEADER:
                return []
        with safe_open(str(model), "np") as f:
            metadata = f.metadata() or {}
        covers = json.loads(metadata.get("ssmd_cover_images") or "[]")
    except Exception:  # a damaged file or odd metadata simply has no preview
        return []
    return [c for c in covers if isinstance(c, str)] if isinstance(covers, list) else []


def _webp(source) -> bytes | None:
    try:
        with Image.open(source) as img:
            out = io.BytesIO()
            img.save(out, format="WEBP")
            return out.getvalue()
    except Exception:
        return None


async def model_preview(request: web.Request) -> web.Response:
    dirs = _model_dirs(request)
    raw_index = request.match_info["path_index"]
    if not raw_index.isdigit() or int(raw_index) >= len(dirs):
        raise BadRequest(400, "invalid_request", f"path index {raw_index!r} is not one of this folder's "
                                                 f"{len(dirs)} path(s)")
    try:
        # lexical check only: model folders may hold links to a shared model store, as listing follows
        parts = name_parts(request.match_info["filename"], "filename")
    except PathRefused as exc:
        raise BadRequest(exc.status, "invalid_path", exc.message) from None
    if not parts:
        raise BadRequest(400, "invalid_path", "filename is empty")
    model = dirs[int(raw_index)].joinpath(*parts)
    body = await asyncio.to_thread(preview_image, model)
    if body is None:
        raise BadRequest(404, "not_found", f"no preview image for {request.match_info['filename']!r}")
    return web.Response(body=body, content_type="image/webp")


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/experiment/models", model_folders),
    ("GET", "/experiment/models/{folder}", models_in),
    ("GET", "/experiment/models/preview/{folder}/{path_index}/{filename:.*}", model_preview),
]
