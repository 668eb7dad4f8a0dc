"""ComfyUI's `server.PromptServer` for plugins: routes, the aiohttp app and messages to clients.

One PromptServer exists per runtime from before packs import (app.runtime makes it), so a pack's
import-time `PromptServer.instance.routes.get(...)` works in every mode. When the server runs,
build_app serves that object's application and attaches the server state: its routes answer
(added before or after start, also under /api, after the core routes and before static files,
as in ComfyUI), and send_sync reaches our websocket clients. Under `main.py run` nothing is
served: messages go nowhere and the queue is empty.
"""
from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
from typing import Any, Callable

from aiohttp import web

from app import compat

log = logging.getLogger(__name__)


class BinaryEventTypes:
    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4


_IMAGE_FORMATS = {"JPEG": 1, "PNG": 2}


class _Instance:
    """PromptServer.instance: the bound runtime's server (AttributeError before any is bound, so
    `hasattr(PromptServer, "instance")` answers as in ComfyUI before the server exists)."""

    def __get__(self, obj, owner) -> "PromptServer":
        if not compat.is_bound():
            raise AttributeError("PromptServer.instance does not exist before LatentGraph's runtime starts")
        return compat.bound().plugin_server


class PromptServer:
    instance = _Instance()

    def __init__(self, client_max_size: int = 100 * 1024 * 1024):
        self.routes = web.RouteTableDef()
        self.app = web.Application(client_max_size=client_max_size)
        self.supports = ["custom_nodes_from_web"]
        self.number = 0
        self.on_prompt_handlers: list[Callable[[dict], dict]] = []
        self.client_session = None
        self._state: Any = None  # server.state.ServerState while serving
        self._idle_loop: asyncio.AbstractEventLoop | None = None
        self._dispatcher = web.UrlDispatcher()
        self._registered = 0

    # -- serving ---------------------------------------------------------------------------
    def attach(self, state: Any) -> None:
        """Called by build_app: the state whose clients and queue this object speaks for."""
        self._state = state
        self.app.middlewares.append(self._plugin_routes)

    @web.middleware
    async def _plugin_routes(self, request: web.Request, handler):
        """Plugin routes answer where no core route did (unmatched, or only the static files'
        catch-all matched), read afresh so routes added after start work too."""
        from server.routes_static import web_file

        matched = request.match_info
        if len(self.routes) and (matched.http_exception is not None or matched.handler is web_file):
            self._register_new_routes()
            match = await self._dispatcher.resolve(request)
            if match.http_exception is None:
                match.add_app(request.app)
                match.freeze()
                routed = request.clone()  # match_info is read-once on a request; a clone has none yet
                routed._match_info = match  # what aiohttp's own dispatch sets before calling a handler
                return await match.handler(routed)
        return await handler(request)

    def _register_new_routes(self) -> None:
        items = list(self.routes)
        for item in items[self._registered:]:
            if isinstance(item, web.RouteDef):
                for prefix in ("", "/api"):
                    self._dispatcher.add_route(item.method, prefix + item.path, item.handler, **item.kwargs)
            else:  # web.StaticDef
                self._dispatcher.add_static(item.prefix, item.path, **item.kwargs)
        self._registered = len(items)

    @property
    def web_root(self) -> str | None:
        return str(self._state.config.web_root) if self._state is not None else None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The server's event loop; without a running server, one that never runs (messages
        scheduled on it are simply never sent)."""
        if self._state is not None and self._state.hub.loop is not None:
            return self._state.hub.loop
        if self._idle_loop is None:
            self._idle_loop = asyncio.new_event_loop()
        return self._idle_loop

    @property
    def sockets(self) -> dict:
        """Connected websockets by client id."""
        if self._state is None:
            return {}
        return {sid: conn.ws for sid, conn in self._state.hub.clients.items()}

    # -- who is running what ---------------------------------------------------------------
    def _job(self):
        worker = getattr(self._state, "worker", None)
        return worker.current if worker is not None else None

    @property
    def client_id(self) -> str | None:
        """The client that queued the running prompt."""
        from graph.context import current_context
        ctx = current_context.get()
        if ctx is not None:
            cid = ctx.extra_data.get("client_id")
            return cid if isinstance(cid, str) else None
        job = self._job()
        return job.client_id if job is not None else None

    @property
    def last_node_id(self) -> str | None:
        from graph.context import current_context
        ctx = current_context.get()
        if ctx is not None:
            return ctx.node_id
        worker = getattr(self._state, "worker", None)
        return worker.current_node if worker is not None else None

    @property
    def last_prompt_id(self) -> str | None:
        from graph.context import current_context
        ctx = current_context.get()
        if ctx is not None:
            return ctx.prompt_id
        job = self._job()
        return job.prompt_id if job is not None else None

    @property
    def prompt_queue(self) -> "PromptQueue":
        return PromptQueue(self._state)

    def get_queue_info(self) -> dict:
        return {"exec_info": {"queue_remaining": self.prompt_queue.get_tasks_remaining()}}

    def queue_updated(self) -> None:
        self.send_sync("status", {"status": self.get_queue_info()})

    # -- prompts ---------------------------------------------------------------------------
    def add_on_prompt_handler(self, handler: Callable[[dict], dict]) -> None:
        self.on_prompt_handlers.append(handler)

    def trigger_on_prompt(self, json_data: dict) -> dict:
        """Each handler may rewrite a POST /prompt body before it is validated; one that raises
        is logged and skipped."""
        for handler in self.on_prompt_handlers:
            try:
                json_data = handler(json_data)
            except Exception:
                log.exception("an on_prompt handler of a custom node raised; ignored")
        return json_data

    # -- messages --------------------------------------------------------------------------
    def send_sync(self, event: Any, data: Any, sid: str | None = None) -> None:
        """Send an event to one client (sid) or all; callable from any thread."""
        hub = self._state.hub if self._state is not None else None
        if hub is None:
            return
        from server.ws import ALL
        target = ALL if sid is None else sid
        if event == BinaryEventTypes.UNENCODED_PREVIEW_IMAGE:
            hub.post_preview(self._preview_frame(data[0], data[1], data[2] if len(data) > 2 else None), target)
        elif event == BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA:
            (image_type, image, max_size), metadata = data
            hub.post_preview(self._preview_frame(image_type, image, max_size, metadata), target)
        elif isinstance(data, (bytes, bytearray)):
            hub.post_bytes(self.encode_bytes(event, data), target)
        else:
            hub.post(event, data, target)

    async def send(self, event: Any, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    async def send_json(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    async def send_bytes(self, event: int, data: bytes, sid: str | None = None) -> None:
        self.send_sync(event, bytes(data), sid)

    async def send_image(self, image_data: tuple, sid: str | None = None) -> None:
        self.send_sync(BinaryEventTypes.UNENCODED_PREVIEW_IMAGE, image_data, sid)

    async def send_image_with_metadata(self, image_data: tuple, metadata: dict | None = None,
                                       sid: str | None = None) -> None:
        self.send_sync(BinaryEventTypes.PREVIEW_IMAGE_WITH_METADATA, (image_data, metadata), sid)

    def send_progress_text(self, text: str | bytes, node_id: str, sid: str | None = None) -> None:
        """Text shown on a node while it runs: a TEXT frame of (node id length, node id, text)."""
        text = text.encode() if isinstance(text, str) else bytes(text)
        node = str(node_id).encode()
        self.send_sync(BinaryEventTypes.TEXT, struct.pack(">I", len(node)) + node + text, sid)

    @staticmethod
    def encode_bytes(event: int, data: bytes) -> bytes:
        if not isinstance(event, int):
            raise RuntimeError(f"Binary event types must be integers, got {event}")
        return struct.pack(">I", event) + bytes(data)

    def _preview_frame(self, image_type: str, image: Any, max_size: int | None, metadata: dict | None = None):
        from PIL import Image, ImageOps

        from server.ws import PreviewFrame
        if max_size is not None:
            image = ImageOps.contain(image, (max_size, max_size), Image.Resampling.BILINEAR)
        fmt = _IMAGE_FORMATS.get(str(image_type).upper(), 1)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG" if fmt == 2 else "JPEG", quality=95, compress_level=1)
        meta = metadata or {}
        return PreviewFrame(buffer.getvalue(), fmt, str(meta.get("prompt_id") or self.last_prompt_id or ""),
                            str(meta.get("node_id") or self.last_node_id or ""))


class PromptQueue:
    """ComfyUI's server.prompt_queue, read from our durable queue (empty when not serving)."""

    def __init__(self, state: Any):
        self._state = state

    def get_tasks_remaining(self) -> int:
        return self._state.store.remaining() if self._state is not None else 0

    def get_current_queue(self) -> tuple[list, list]:
        """(running items, pending items), each ComfyUI's [number, prompt_id, prompt, extra_data,
        outputs_to_execute]."""
        if self._state is None:
            return [], []
        store = self._state.store
        return ([json.loads(t) for t in store.queue_items("running")],
                [json.loads(t) for t in store.queue_items("pending")])

    get_current_queue_volatile = get_current_queue

    def get_history(self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1) -> dict:
        if self._state is None:
            return {}
        store = self._state.store
        if prompt_id is not None:
            entry = store.history_entry(prompt_id)
            return {} if entry is None else {prompt_id: entry}
        return json.loads(store.history_text(max_items, None if offset < 0 else offset))

    def wipe_queue(self) -> None:
        if self._state is not None:
            self._state.worker.forget(self._state.store.delete_pending())
            self._state.notify_queue_threadsafe()

    def delete_queue_item(self, function: Callable[[list], bool]) -> bool:
        """Drop the first pending item for which function(item) is true."""
        if self._state is None:
            return False
        for item in self.get_current_queue()[1]:
            if function(item):
                self._state.worker.forget(self._state.store.delete_pending([item[1]]))
                self._state.notify_queue_threadsafe()
                return True
        return False
