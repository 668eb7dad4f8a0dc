"""The server's state, one object reached from handlers through the app (no module globals)."""
from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from app.runtime import Runtime
from server.config import ServerConfig
from server.preview import Previewer
from server.queue import PromptStore
from server.worker import Worker
from server.ws import ALL, Hub


@dataclass
class ServerState:
    runtime: Runtime
    config: ServerConfig
    store: PromptStore
    hub: Hub
    previewer: Previewer
    worker: Worker | None = None  # built after the state, since it reports back through it

    @property
    def folders(self):
        return self.runtime.env.folders

    def queue_status(self) -> dict:
        return {"exec_info": {"queue_remaining": self.store.remaining()}}

    def notify_queue(self) -> None:
        """Tell every client the queue changed (event loop thread)."""
        self.hub.send("status", {"status": self.queue_status()}, ALL)

    def notify_queue_threadsafe(self) -> None:
        self.hub.post("status", {"status": self.queue_status()}, ALL)

    def features(self) -> dict:
        return {"supports_preview_metadata": True, "max_upload_size": self.config.max_upload_bytes}


STATE = web.AppKey("latentgraph_state", ServerState)


def state_of(request: web.Request) -> ServerState:
    return request.app[STATE]
