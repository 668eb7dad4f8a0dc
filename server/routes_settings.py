"""/settings: the user's settings, one JSON object in `<user>/comfy.settings.json` (ComfyUI's file).

The frontend posts settings as text/plain JSON, so these routes take any content type; the
origin guard is what keeps other sites out. Replies to POST are empty, as ComfyUI's.
"""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from server.jsonio import json_response, read_json, read_json_object
from server.routes_user import users_of
from server.userdata import UserError

MAX_SETTING_ID = 256


def _setting_id(request: web.Request) -> str:
    setting_id = request.match_info["id"]
    if len(setting_id) > MAX_SETTING_ID or not setting_id.isprintable():
        raise UserError(400, "invalid_request", f"a setting id is printable text of at most {MAX_SETTING_ID} "
                                                "characters")
    return setting_id


async def get_settings(request: web.Request) -> web.Response:
    store = users_of(request)
    return json_response(await asyncio.to_thread(store.settings, store.user_of(request.headers)))


async def get_setting(request: web.Request) -> web.Response:
    store = users_of(request)
    settings = await asyncio.to_thread(store.settings, store.user_of(request.headers))
    return json_response(settings.get(_setting_id(request)))  # null when unset


async def post_settings(request: web.Request) -> web.Response:
    store = users_of(request)
    user = store.user_of(request.headers)
    changes = await read_json_object(request)
    await asyncio.to_thread(store.update_settings, user, changes)
    return web.Response(status=200)


async def post_setting(request: web.Request) -> web.Response:
    store = users_of(request)
    user = store.user_of(request.headers)
    setting_id = _setting_id(request)
    value = await read_json(request)  # any JSON value, null included; an empty body is refused
    await asyncio.to_thread(store.update_settings, user, {setting_id: value})
    return web.Response(status=200)


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/settings", get_settings),
    ("GET", "/settings/{id}", get_setting),
    ("POST", "/settings", post_settings),
    ("POST", "/settings/{id}", post_setting),
]
