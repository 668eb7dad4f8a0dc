"""Middlewares that keep a local server local, and errors JSON.

A browser will happily send requests to http://127.0.0.1:8188 on behalf of any web page the
user visits. Three guards stop that:
* Host: while bound to loopback, only our own names are accepted, so a DNS-rebinding page
  (evil.example resolving to 127.0.0.1) cannot talk to us even though it is "same origin".
* Origin / Sec-Fetch-Site: a request a browser marks as coming from another site is refused;
  reads too (a cross-site fetch of /history would leak prompts), websockets included.
* Content type: JSON routes refuse the form encodings a page can post cross-site without a
  CORS preflight, unless the request carries no browser marks at all (urllib's default
  form type, which ComfyUI's own API example relies on).
Besides, compressed bodies are refused unread on every route (a gzip bomb), and a response to a
body that was not read to its end closes the connection.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from server.config import LOOPBACK_NAMES, ServerConfig
from server.jsonio import BadRequest, error_response

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
_BROWSER_MARKS = ("Origin", "Referer", "Sec-Fetch-Site", "Sec-Fetch-Mode", "Sec-Fetch-Dest")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def expects_json(handler: Handler) -> Handler:
    """Marks a route whose body is JSON, for the content-type guard."""
    handler.expects_json = True  # type: ignore[attr-defined]
    return handler


def split_host(value: str, default_port: int | None) -> tuple[str, int | None] | None:
    """'name:port' / '[v6]:port' -> (lower-case name, port); None when malformed."""
    value = value.strip().lower()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else ""
    elif value.count(":") == 1:
        name, port_text = value.split(":")
    elif ":" in value:  # a bare IPv6 address
        name, port_text = value, ""
    else:
        name, port_text = value, ""
    if port_text:
        if not port_text.isdigit() or len(port_text) > 5:
            return None
        return name, int(port_text)
    return name, default_port


def _same_server(a: tuple[str, int | None], b: tuple[str, int | None]) -> bool:
    if a == b:
        return True
    # localhost, 127.0.0.1 and [::1] on one port are the same server to us
    return a[1] == b[1] and a[0] in LOOPBACK_NAMES and b[0] in LOOPBACK_NAMES


def _refuse(status: int, kind: str, message: str) -> web.Response:
    return error_response(status, kind, message)


def make_guard(config: ServerConfig) -> Callable:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        headers = request.headers
        if config.loopback_only and "Host" in headers:
            host = split_host(headers["Host"], None)
            allowed = set(LOOPBACK_NAMES) | {h.lower().strip("[]") for h in config.hosts}
            if host is None or host[0] not in allowed or host[1] not in (None, config.port):
                return _refuse(403, "forbidden_host",
                               f"Host {headers['Host']!r} is not this server's address; while it listens on "
                               "loopback only, use http://127.0.0.1 or http://localhost")
        origin = headers.get("Origin")
        cors_ok = origin is not None and config.cors_origin is not None and config.cors_origin in ("*", origin)
        if origin is not None and not cors_ok:
            if origin.strip().lower() == "null":
                return _refuse(403, "forbidden_origin", "Requests from an opaque origin (Origin: null) are refused")
            parts = urlsplit(origin.strip())
            origin_host = split_host(parts.netloc, _DEFAULT_PORTS.get(parts.scheme.lower()))
            server_host = split_host(headers.get("Host", ""), 443 if request.secure else 80)
            if origin_host is None or server_host is None or not _same_server(origin_host, server_host):
                return _refuse(403, "forbidden_origin",
                               f"Cross-origin request from {origin!r} refused (start the server with "
                               "--enable-cors-header to allow other origins)")
        encoding = headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity") and request.body_exists:
            # A 2 MB gzip body can inflate to gigabytes; inflating it at all, even only up to
            # the size limit, costs the one thread that serves every request.
            return _refuse(415, "unsupported_media_type",
                           f"Compressed request bodies (Content-Encoding: {encoding}) are not accepted; "
                           "send the body uncompressed")
        upgrading = headers.get("Upgrade", "").lower() == "websocket"
        if (request.method in STATE_CHANGING or upgrading) and not cors_ok \
                and headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            return _refuse(403, "forbidden_origin", "Cross-site request refused")
        if request.method in STATE_CHANGING and _route_expects_json(request):
            problem = _content_type_problem(request)
            if problem:
                return _refuse(415, "unsupported_media_type", problem)
        return await handler(request)

    return guard


def _route_expects_json(request: web.Request) -> bool:
    route = request.match_info.route
    return bool(getattr(getattr(route, "handler", None), "expects_json", False))


def _content_type_problem(request: web.Request) -> str | None:
    raw = request.headers.get("Content-Type")
    if raw is None or not request.body_exists:
        return None  # scripts often send none; and an empty body carries nothing to misread
    mime = raw.split(";", 1)[0].strip().lower()
    if mime == "application/json" or mime.endswith("+json"):
        return None
    if mime == "application/x-www-form-urlencoded" and not any(h in request.headers for h in _BROWSER_MARKS):
        return None  # urllib's default for POST data, used by ComfyUI's API examples
    return f"Content-Type {mime!r} is not accepted here; send the body as application/json"


def make_cors(config: ServerConfig) -> Callable:
    """With --enable-cors-header: answer preflights and label replies for the allowed origin."""

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = config.cors_origin if config.cors_origin == "*" else (
            origin if origin == config.cors_origin else None)
        if request.method == "OPTIONS" and allowed and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = web.Response(status=200)
        else:
            response = await handler(request)
        if allowed:
            response.headers["Access-Control-Allow-Origin"] = allowed
            response.headers["Access-Control-Allow-Methods"] = "POST, GET, DELETE, PUT, OPTIONS, PATCH"
            response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
            response.headers["Access-Control-Allow-Credentials"] = "true"
        return response

    return cors


def _kind(status: int) -> str:
    return {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
            413: "request_too_large", 415: "unsupported_media_type"}.get(status, "http_error")


def make_error_middleware(config: ServerConfig) -> Callable:
    """Every failure leaves as JSON; an unexpected exception is a 500 and the server goes on."""

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await _answer(request, handler)
        if request.body_exists and not request.content.is_eof() and not response.prepared:
            response.force_close()  # a body we did not read to the end: no more requests on it
        return response

    async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400 or (exc.content_type or "").endswith("json"):
                raise
            if exc.status == 413:
                limit_mb = config.max_upload_bytes / (1024 * 1024)
                message = (f"The request body is larger than this server accepts ({limit_mb:g} MB; "
                           "see --max-upload-size)")
            else:
                message = exc.reason or "error"
                if exc.text and exc.text != f"{exc.status}: {exc.reason}":
                    message = exc.text
            response = error_response(exc.status, _kind(exc.status), message)
            for name in ("Allow",):
                if name in exc.headers:
                    response.headers[name] = exc.headers[name]
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception as exc:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return error_response(500, "internal_error", f"The server failed on this request: "
                                                         f"{type(exc).__name__}: {exc}")

    return errors
