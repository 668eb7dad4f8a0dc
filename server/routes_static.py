"""The editor's files: web/ at /, and each node pack's WEB_DIRECTORY at /extensions/<pack>/."""
from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web

from server.files import PathRefused, resolve_inside
from server.jsonio import BadRequest
from server.state import state_of

log = logging.getLogger(__name__)

NO_CACHE = {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache", "Expires": "0"}

_PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LatentGraph</title></head>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto">
<h1>LatentGraph is running</h1>
<p>The graph editor is not installed here ({where} has no index.html), but the API is:
POST a prompt to <code>/prompt</code>, follow it on the <code>/ws</code> websocket,
read results from <code>/history</code> and <code>/view</code>. Every route also answers under
<code>/api</code>.</p>
</body></html>
"""


async def index(request: web.Request) -> web.StreamResponse:
    web_root = state_of(request).config.web_root
    page = web_root / "index.html"
    if page.is_file():
        return web.FileResponse(page, headers=NO_CACHE)
    text = _PLACEHOLDER.format(where=html.escape(str(web_root)))
    return web.Response(text=text, content_type="text/html", headers=NO_CACHE)


def serve_file(root: Path, relative: str) -> web.StreamResponse:
    """A file under root, with the same strict resolution as /view (no escapes, no symlinks out)."""
    try:
        path = resolve_inside(root, relative)
        if path.is_dir():  # its index.html may itself be a symlink, so it is resolved the same way
            path = resolve_inside(root, relative, "index.html")
    except PathRefused as exc:
        raise BadRequest(exc.status, "invalid_path", exc.message) from None
    if not path.is_file():
        raise BadRequest(404, "not_found", f"no such file: /{relative}")
    return web.FileResponse(path)


async def web_file(request: web.Request) -> web.StreamResponse:
    return serve_file(state_of(request).config.web_root, request.match_info["path"])


async def extension_file(request: web.Request) -> web.StreamResponse:
    directories = state_of(request).runtime.registry.web_directories
    pack = request.match_info["pack"]
    if pack not in directories:
        raise BadRequest(404, "not_found", f"no node pack {pack!r} serves web files")
    return serve_file(Path(directories[pack]), request.match_info["path"])


def add_static_routes(app: web.Application) -> None:
    """Registered last: the web root's catch-all must not shadow the API."""
    app.router.add_get("/extensions/{pack}/{path:.*}", extension_file)
    app.router.add_get("/{path:.*}", web_file)


@web.middleware
async def cache_headers(request: web.Request,
                        handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Scripts and pages must not be cached, or an updated editor keeps running old code."""
    response = await handler(request)
    if request.path.endswith((".js", ".mjs", ".css", ".html")) or request.path.endswith("index.json"):
        for key, value in NO_CACHE.items():
            response.headers.setdefault(key, value)
    return response
