"""JSON in and out of the server: strict parsing of request bodies, safe encoding of replies.

Request bodies come from anyone who can reach the port, so parsing refuses what would later
break storage or browsers (NaN/Infinity, absurd nesting, giant integers, lone surrogates) with
a 4xx that says what and where, instead of letting it surface as a 500 deep inside the engine.
"""
from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

from graph import strict_json


class BadRequest(Exception):
    """A client error that becomes a JSON error reply."""

    def __init__(self, status: int, type: str, message: str, details: str = ""):
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.details = details

    def response(self) -> web.Response:
        return error_response(self.status, self.type, self.message, self.details)


def parse_json(text: str | bytes) -> Any:
    """A request body parsed strictly (see graph.strict_json); raises BadRequest."""
    try:
        return strict_json.loads(text)
    except strict_json.StrictJSONError as exc:
        raise BadRequest(400, "invalid_json", f"The request body is not valid JSON: {exc}") from None


async def read_json(request: web.Request, *, empty: Any = None) -> Any:
    """The request's JSON body; `empty` when there is no body at all (for optional bodies)."""
    raw = await request.read()  # aiohttp enforces client_max_size here (413)
    if not raw.strip():
        if empty is not None:
            return empty
        raise BadRequest(400, "invalid_json", "The request body is empty; expected a JSON object")
    return parse_json(raw)


async def read_json_object(request: web.Request, *, optional: bool = False) -> dict:
    body = await read_json(request, empty={} if optional else None)
    if not isinstance(body, dict):
        raise BadRequest(400, "invalid_json", f"Expected a JSON object, got {type(body).__name__}")
    return body


def _finite(value: Any) -> Any:
    """A copy with NaN/Infinity replaced by None, for the rare reply that holds them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Strict JSON text: browsers' JSON.parse rejects NaN, and node outputs may hold odd objects."""
    try:
        return json.dumps(value, allow_nan=False, default=str)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False, default=str)


def json_response(value: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(text=dumps(value), status=status, content_type="application/json", headers=headers)


def raw_json_response(text: str, status: int = 200) -> web.Response:
    """A reply whose JSON text was assembled already (history entries are stored as text)."""
    return web.Response(text=text, status=status, content_type="application/json")


def error_body(type: str, message: str, details: str = "") -> dict:
    # ComfyUI's error shape, so clients that show a prompt's validation error show ours too.
    return {"error": {"type": type, "message": message, "details": details, "extra_info": {}}}


def error_response(status: int, type: str, message: str, details: str = "") -> web.Response:
    return json_response(error_body(type, message, details), status=status)
