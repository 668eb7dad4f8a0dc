"""/internal/*: what ComfyUI's frontend reads for its terminal panel and file pickers.

ComfyUI serves these only under /internal (no /api twin), and so do we.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp import web

from server.jsonio import BadRequest, json_response, read_json_object
from server.logbuffer import LogBuffer
from server.security import expects_json
from server.state import ServerState, state_of

LOGS = web.AppKey("latentgraph_logs", LogBuffer)
TYPES = ("output", "input", "temp")


def setup(app: web.Application, state: ServerState, logs: LogBuffer | None) -> None:
    logs = logs or LogBuffer()  # not capturing: an app built outside `serve` has no console of its own
    logs.attach(state.hub)
    app[LOGS] = logs


async def get_logs(request: web.Request) -> web.Response:
    return json_response(request.app[LOGS].text())


async def get_raw_logs(request: web.Request) -> web.Response:
    return json_response(request.app[LOGS].raw())


@expects_json
async def subscribe_logs(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    client_id, enabled = body.get("clientId"), body.get("enabled")
    if not isinstance(client_id, str) or not client_id:
        raise BadRequest(400, "invalid_request", "'clientId' must be the websocket's client id")
    if not isinstance(enabled, bool):
        raise BadRequest(400, "invalid_request", "'enabled' must be true or false")
    request.app[LOGS].subscribe(client_id, enabled)
    return web.Response(status=200)


async def folder_paths(request: web.Request) -> web.Response:
    folders = state_of(request).folders
    return json_response({key: [str(d) for d in folders.model_dirs(key)] for key in folders.folder_keys()})


def newest_first(directory) -> list[str]:
    try:
        entries = [e for e in os.scandir(directory) if e.is_file()]
    except FileNotFoundError:
        return []
    return [e.name for e in sorted(entries, key=lambda e: (-e.stat().st_mtime, e.name))]


async def files(request: web.Request) -> web.Response:
    kind = request.match_info["directory_type"]
    if kind not in TYPES:
        raise BadRequest(400, "invalid_request", f"Invalid directory type {kind!r}: one of {', '.join(TYPES)}")
    directory = state_of(request).folders.typed_dir(kind)
    return json_response(await asyncio.to_thread(newest_first, directory))


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/internal/logs", get_logs),
    ("GET", "/internal/logs/raw", get_raw_logs),
    ("PATCH", "/internal/logs/subscribe", subscribe_logs),
    ("GET", "/internal/folder_paths", folder_paths),
    ("GET", "/internal/files/{directory_type}", files),
]
