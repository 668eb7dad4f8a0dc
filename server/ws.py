"""Websocket connections: who is connected, who gets which event, and binary preview frames.

Sending costs the event loop (which also answers every HTTP request) next to nothing per
client, so API latency does not grow with the number of connected clients:
* an event is encoded once, as a finished websocket frame, on the thread that raised it
  (the worker's events never touch the loop until they are bytes);
* each client has an outbox of frames; queueing a frame is a list append, and a flush every
  FLUSH_DELAY_S writes each client's outbox to its socket in a single write;
* back-pressure: a client whose socket is not draining gets no previews once
  PREVIEW_BUFFER_LIMIT bytes wait for it, and is disconnected past BUFFER_LIMIT, never waited
  for.
Frames keep the order they were sent in, per client.

`send(event, data, sid)` (event loop) and `post(event, data, sid)` (any thread) are the whole
sending API: sid is a client id, ALL, or None for nobody.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import struct
import threading
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable

from aiohttp import WSMsgType, web

from graph import strict_json
from server.jsonio import dumps

log = logging.getLogger(__name__)

# Binary frame types and image formats (ComfyUI's numbering; clients parse these bytes).
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
FORMAT_JPEG = 1
FORMAT_PNG = 2
_MIME = {FORMAT_JPEG: "image/jpeg", FORMAT_PNG: "image/png"}

ALL = object()  # target: every connected client

# Bytes waiting for one client (in its outbox and its socket's buffer). Previews are worth
# dropping early; events are not, up to the point where the client is clearly not reading.
PREVIEW_BUFFER_LIMIT = 1 << 20
BUFFER_LIMIT = 16 << 20
FLUSH_AT = 256 << 10
# Frames queued within this time go out in one write per client: at hundreds of events a second
# that is a few socket writes per client instead of one per event, for 10 ms of delay.
FLUSH_DELAY_S = 0.01
MAX_CLIENT_ID = 256
_TEXT, _BINARY = 0x1, 0x2


def ws_frame(payload: bytes, opcode: int) -> bytes:
    """One unmasked, uncompressed, final websocket frame (RFC 6455 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        head = struct.pack(">BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack(">BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 127, n)
    return head + payload


def event_frame(event: str, data: dict) -> bytes:
    return ws_frame(dumps({"type": event, "data": data}).encode(), _TEXT)


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
    def __init__(self, sid: str, ws: web.WebSocketResponse, transport: asyncio.Transport):
        self.sid = sid
        self.ws = ws
        self.transport = transport
        self.outbox: list[bytes] = []
        self.queued = 0  # bytes in the outbox
        self.buffered = 0  # bytes in the socket's buffer, as of the last flush
        self.flags: dict = {}  # the client's feature flags, from its first message
        self.dropped = False

    @property
    def wants_preview_metadata(self) -> bool:
        return self.flags.get("supports_preview_metadata") is True

    @property
    def backlog(self) -> int:
        return self.queued + self.buffered

    def put(self, frame: bytes) -> None:
        """Queue a frame (the hot path: an append and a sum, for every client and event)."""
        if not self.dropped:
            self.outbox.append(frame)
            self.queued += len(frame)
            if self.queued + self.buffered > FLUSH_AT:
                self.overfull()

    def overfull(self) -> None:
        """A burst, or a client behind: hand what is queued to the socket now. A client with
        BUFFER_LIMIT bytes waiting is not reading, and is dropped rather than waited for."""
        self.buffered = self.transport.get_write_buffer_size()
        if self.queued + self.buffered > BUFFER_LIMIT:
            log.warning("websocket client %s is not reading (%d bytes waiting); disconnecting it",
                        self.sid, self.queued + self.buffered)
            self.drop()
        else:
            self.flush()

    def flush(self) -> None:
        """Write the outbox in one go."""
        if self.outbox:
            data = b"".join(self.outbox) if len(self.outbox) > 1 else self.outbox[0]
            self.outbox.clear()
            self.queued = 0
            if not (self.ws.closed or self.transport.is_closing()):
                self.transport.write(data)
        self.buffered = self.transport.get_write_buffer_size()

    def drop(self) -> None:
        """Cut the connection now, never waiting for the client; its handler then cleans up."""
        self.dropped = True
        self.outbox.clear()
        self.queued = 0
        self.transport.abort()


class Hub:
    """The set of websocket clients, keyed by client id (ComfyUI's sid)."""

    def __init__(self, server_flags: dict):
        self.server_flags = server_flags
        self.clients: dict[str, Connection] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._dirty: dict[Connection, None] = {}  # connections with frames to flush, in order
        self._flush_scheduled = False
        self._everyone_dirty = False  # a frame went to ALL since the last flush
        self._posted: collections.deque = collections.deque()  # (fn, args) from other threads
        self._posted_lock = threading.Lock()
        self._drain_scheduled = False
        self._closing: set[asyncio.Task] = set()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    # -- sending (event loop thread) -------------------------------------------------------
    def _targets(self, sid) -> Iterable[Connection]:
        if sid is ALL:
            return list(self.clients.values())
        conn = self.clients.get(sid) if isinstance(sid, str) else None
        return [conn] if conn else []

    def send(self, event: str, data: dict, sid=ALL) -> None:
        """Send an event to one client (its id) or ALL; None sends nothing."""
        if sid is not None:
            self.send_frame(event_frame(event, data), sid)

    def send_frame(self, frame: bytes, sid=ALL) -> None:
        if sid is ALL:  # the common case, kept cheap per client
            for conn in self.clients.values():
                conn.put(frame)
            self._everyone_dirty = True
            self._schedule_flush()
        else:
            for conn in self._targets(sid):
                self._queue(conn, frame)

    def send_preview(self, preview: PreviewFrame, sid=ALL) -> None:
        frames: dict[bool, bytes] = {}
        for conn in self._targets(sid):
            if conn.backlog > PREVIEW_BUFFER_LIMIT:
                continue  # a client that cannot keep up loses previews, not events
            meta = conn.wants_preview_metadata
            if meta not in frames:
                frames[meta] = ws_frame(preview.frame(meta), _BINARY)
            self._queue(conn, frames[meta])

    def _queue(self, conn: Connection, frame: bytes) -> None:
        conn.put(frame)
        self._dirty[conn] = None
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self.loop is not None:
            self._flush_scheduled = True
            self.loop.call_later(FLUSH_DELAY_S, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty = list(self.clients.values()) if self._everyone_dirty else list(self._dirty)
        self._dirty.clear()
        self._everyone_dirty = False
        for conn in dirty:
            if not conn.dropped:
                conn.flush()

    # -- sending (any thread) --------------------------------------------------------------
    def post(self, event: str, data: dict, sid=ALL) -> None:
        """`send` from any thread; the frame is encoded here, off the event loop."""
        if sid is not None:
            self._hop(self.send_frame, event_frame(event, data), sid)

    def post_preview(self, preview: PreviewFrame, sid=ALL) -> None:
        if sid is not None:
            self._hop(self.send_preview, preview, sid)

    def post_bytes(self, message: bytes, sid=ALL) -> None:
        """A binary message as given (a plugin's own binary event), from any thread."""
        if sid is not None:
            self._hop(self.send_frame, ws_frame(message, _BINARY), sid)

    def _hop(self, fn, *args) -> None:
        """Hand a call to the event loop; calls made in a burst share one wake-up."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        self._posted.append((fn, args))
        with self._posted_lock:
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        try:
            loop.call_soon_threadsafe(self._drain_posted)
        except RuntimeError:  # the loop closed meanwhile (shutdown): nobody is listening anyway
            pass

    def _drain_posted(self) -> None:
        with self._posted_lock:
            self._drain_scheduled = False
        posted = self._posted
        while posted:
            fn, args = posted.popleft()
            fn(*args)

    # -- connections -----------------------------------------------------------------------
    async def handle(self, request: web.Request,
                     greeting: Callable[[str], list[tuple[str, dict]]]) -> web.StreamResponse:
        # No compression: frames are written pre-built, the same bytes for every client.
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=1 << 20, compress=False)
        await ws.prepare(request)
        transport = request.transport
        if transport is None:  # the client went away during the handshake
            return ws
        sid = request.query.get("clientId") or ""
        if not sid or len(sid) > MAX_CLIENT_ID or not sid.isprintable():  # lone surrogates are not printable
            sid = uuid.uuid4().hex
        old = self.clients.get(sid)
        if old is not None:  # a reconnect with the same id replaces the old socket
            self._close(old)
        conn = Connection(sid, ws, transport)
        self.clients[sid] = conn
        try:
            for event, data in greeting(sid):
                self._queue(conn, event_frame(event, data))
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_text(conn, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            if self.clients.get(sid) is conn:
                del self.clients[sid]
            self._dirty.pop(conn, None)
        return ws

    def _close(self, conn: Connection) -> None:
        conn.flush()
        task = asyncio.ensure_future(conn.ws.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _on_text(self, conn: Connection, text: str) -> None:
        try:
            msg = strict_json.loads(text)
        except ValueError:
            return  # clients may send anything; only feature_flags means something
        if isinstance(msg, dict) and msg.get("type") == "feature_flags":
            data = msg.get("data")
            conn.flags = data if isinstance(data, dict) else {}
            self._queue(conn, event_frame("feature_flags", self.server_flags))

    async def close_all(self) -> None:
        conns = list(self.clients.values())
        for conn in conns:
            conn.flush()
        await asyncio.gather(*(conn.ws.close() for conn in conns), return_exceptions=True)


