"""/users, /userdata and /v2/userdata: the user's files (ComfyUI's shapes), in server.userdata."""
from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from server.jsonio import json_response, read_json_object
from server.routes_files import file_headers
from server.security import expects_json
from server.userdata import UserError, UserStore, file_info

USERS = web.AppKey("latentgraph_users", UserStore)


def users_of(request: web.Request) -> UserStore:
    return request.app[USERS]


def _flag(request: web.Request, name: str, default: str = "") -> bool:
    return request.query.get(name, default).lower() == "true"


def _overwrite(request: web.Request) -> bool:
    # ComfyUI's rule: only the literal "false" keeps an existing file ("undefined" overwrites)
    return request.query.get("overwrite", "true") != "false"


async def get_users(request: web.Request) -> web.Response:
    store = users_of(request)
    if store.multi_user:
        return json_response({"storage": "server", "users": store.users})
    # "migrated": the frontend moves settings out of the browser's storage once, on first use
    return json_response({"storage": "server", "migrated": store.exists(store.user_of(request.headers))})


@expects_json
async def post_users(request: web.Request) -> web.Response:
    store = users_of(request)
    body = await read_json_object(request)
    try:
        if not store.multi_user:
            raise UserError(400, "invalid_request", "this server keeps one user's data; start it with "
                                                    "--multi-user to create user profiles")
        user_id = await asyncio.to_thread(store.add_user, body.get("username"))
    except UserError as exc:
        # the frontend shows `error` as text here, so this route keeps ComfyUI's plain shape
        return json_response({"error": exc.message}, status=exc.status)
    return json_response(user_id)


async def list_userdata(request: web.Request) -> web.Response:
    store = users_of(request)
    user = store.user_of(request.headers)
    directory = request.query.get("dir", "")
    if not directory:
        raise UserError(400, "invalid_request", "'dir' is required: the folder to list, e.g. dir=workflows")
    files = await asyncio.to_thread(store.list_files, user, directory, _flag(request, "recurse"),
                                    _flag(request, "full_info"), _flag(request, "split"))
    return json_response(files)


async def list_userdata_v2(request: web.Request) -> web.Response:
    store = users_of(request)
    user = store.user_of(request.headers)
    return json_response(await asyncio.to_thread(store.list_tree, user, request.query.get("path", "")))


async def get_userdata(request: web.Request) -> web.StreamResponse:
    store = users_of(request)
    path = await asyncio.to_thread(store.read, store.user_of(request.headers), request.match_info["file"])
    headers = file_headers(path.name)
    if path.suffix.lower() == ".css":
        headers["Content-Type"] = "text/css"  # the frontend links user.css as a stylesheet
    return web.FileResponse(path, headers=headers)


def _saved(request: web.Request, store: UserStore, user: str, path) -> web.Response:
    root = store.root(user)
    return json_response(file_info(path, root) if _flag(request, "full_info", "false") else store.relative(user, path))


async def post_userdata(request: web.Request) -> web.Response:
    store = users_of(request)
    user = store.user_of(request.headers)
    data = await request.read()  # any content: workflows, templates, css (client_max_size applies)
    path = await asyncio.to_thread(store.write, user, request.match_info["file"], data, _overwrite(request))
    return _saved(request, store, user, path)


async def delete_userdata(request: web.Request) -> web.Response:
    store = users_of(request)
    await asyncio.to_thread(store.delete, store.user_of(request.headers), request.match_info["file"])
    return web.Response(status=204)


async def move_userdata(request: web.Request) -> web.Response:
    store = users_of(request)
    user = store.user_of(request.headers)
    path = await asyncio.to_thread(store.move, user, request.match_info["file"], request.match_info["dest"],
                                   _overwrite(request))
    return _saved(request, store, user, path)


ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/users", get_users),
    ("POST", "/users", post_users),
    ("GET", "/userdata", list_userdata),
    ("GET", "/v2/userdata", list_userdata_v2),
    ("GET", "/userdata/{file}", get_userdata),
    ("POST", "/userdata/{file}", post_userdata),
    ("DELETE", "/userdata/{file}", delete_userdata),
    ("POST", "/userdata/{file}/move/{dest}", move_userdata),
]
