"""Websocket connections: who is connected, who gets which event, and binary preview frames.

Every connection has its own outbox drained by its own task, so one slow browser never holds
up the others or the worker, and frames reach each client in the order they were sent. Events
come from the worker thread through `post*`, which hop onto the event loop first.
"""
from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable

from aiohttp import WSMsgType, web

from server.jsonio import dumps

log = logging.getLogger(__name__)

# Binary frame types and image formats (ComfyUI's numbering; clients parse these bytes).
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
FORMAT_JPEG = 1
FORMAT_PNG = 2
_MIME = {FORMAT_JPEG: "image/jpeg", FORMAT_PNG: "image/png"}

ALL = object()  # target: every connected client

# Previews are worth dropping for a client that cannot keep up; events are not, up to a point
# past which the client is clearly gone and is disconnected rather than growing memory.
MAX_PREVIEW_BACKLOG = 8
MAX_BACKLOG = 20_000
MAX_CLIENT_ID = 256


@dataclass(frozen=True)
class PreviewFrame:
    image: bytes
    format: int  # FORMAT_JPEG or FORMAT_PNG
    prompt_id: str
    node_id: str

    def frame(self, with_metadata: bool) -> bytes:
        if not with_metadata:
            return struct.pack(">II", PREVIEW_IMAGE, self.format) + self.image
        meta = json.dumps({"node_id": self.node_id, "display_node_id": self.node_id, "real_node_id": self.node_id,
                           "parent_node_id": None, "prompt_id": self.prompt_id,
                           "image_type": _MIME[self.format]}).encode()
        return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + self.image


def target_for(event: str, client_id: str | None):
    """Who sees an event of a prompt: its client; without one, everyone sees progress-like
    events but not the execution_* ones (except execution_interrupted), as in ComfyUI."""
    if client_id:
        return client_id
    if event.startswith("execution_") and event != "execution_interrupted":
        return None
    return ALL


class Connection:
    def __init__(self, sid: str, ws: web.WebSocketResponse):
        self.sid = sid
        self.ws = ws
        self.outbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self.flags: dict = {}  # the client's feature flags, from its first message

    @property
    def wants_preview_metadata(self) -> bool:
        return self.flags.get("supports_preview_metadata") is True

    def put(self, message: str | bytes, droppable: bool = False) -> None:
        size = self.outbox.qsize()
        if droppable and size >= MAX_PREVIEW_BACKLOG:
            return
        if size >= MAX_BACKLOG:
            log.warning("websocket client %s is not reading; disconnecting it", self.sid)
            self.close()
            return
        self.outbox.put_nowait(message)

    def close(self) -> None:
        self.outbox.put_nowait(None)

    async def pump(self) -> None:
        """Send queued frames until closed; a broken socket just ends the pump."""
        try:
            while (message := await self.outbox.get()) is not None:
                if isinstance(message, str):
                    await self.ws.send_str(message)
                else:
                    await self.ws.send_bytes(message)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass
        finally:
            if not self.ws.closed:
                await self.ws.close()


class Hub:
    """The set of websocket clients, keyed by client id (ComfyUI's sid)."""

    def __init__(self, server_flags: dict):
        self.server_flags = server_flags
        self.clients: dict[str, Connection] = {}
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    # -- sending (event loop thread) -------------------------------------------------------
    def _targets(self, sid) -> Iterable[Connection]:
        if sid is ALL:
            return list(self.clients.values())
        conn = self.clients.get(sid) if isinstance(sid, str) else None
        return [conn] if conn else []

    def send(self, event: str, data: dict, sid=ALL) -> None:
        targets = self._targets(sid)
        if targets:
            text = dumps({"type": event, "data": data})
            for conn in targets:
                conn.put(text)

    def send_preview(self, preview: PreviewFrame, sid=ALL) -> None:
        frames: dict[bool, bytes] = {}
        for conn in self._targets(sid):
            meta = conn.wants_preview_metadata
            if meta not in frames:
                frames[meta] = preview.frame(meta)
            conn.put(frames[meta], droppable=True)

    # -- sending (any thread) --------------------------------------------------------------
    def post(self, event: str, data: dict, sid=ALL) -> None:
        if sid is not None:
            self._hop(self.send, event, data, sid)

    def post_preview(self, preview: PreviewFrame, sid=ALL) -> None:
        if sid is not None:
            self._hop(self.send_preview, preview, sid)

    def post_bytes(self, message: bytes, sid=ALL) -> None:
        """A binary frame as given (a plugin's own binary event)."""
        if sid is not None:
            self._hop(self._send_bytes, message, sid)

    def _send_bytes(self, message: bytes, sid) -> None:
        for conn in self._targets(sid):
            conn.put(message)

    def _hop(self, fn, *args) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed meanwhile (shutdown): nobody is listening anyway
            pass

    # -- connections -----------------------------------------------------------------------
    async def handle(self, request: web.Request,
                     greeting: Callable[[str], list[tuple[str, dict]]]) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=1 << 20)
        await ws.prepare(request)
        sid = request.query.get("clientId") or ""
        if not sid or len(sid) > MAX_CLIENT_ID or not sid.isprintable():
            sid = uuid.uuid4().hex
        old = self.clients.get(sid)
        if old is not None:  # a reconnect with the same id replaces the old socket
            old.close()
        conn = Connection(sid, ws)
        self.clients[sid] = conn
        pump = asyncio.create_task(conn.pump())
        try:
            for event, data in greeting(sid):
                conn.put(dumps({"type": event, "data": data}))
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_text(conn, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            if self.clients.get(sid) is conn:
                del self.clients[sid]
            conn.close()
            await asyncio.wait([pump], timeout=5)
        return ws

    def _on_text(self, conn: Connection, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            return  # clients may send anything; only feature_flags means something
        if isinstance(msg, dict) and msg.get("type") == "feature_flags":
            data = msg.get("data")
            conn.flags = data if isinstance(data, dict) else {}
            conn.put(dumps({"type": "feature_flags", "data": self.server_flags}))

    async def close_all(self) -> None:
        for conn in list(self.clients.values()):
            conn.close()
            await conn.ws.close()
