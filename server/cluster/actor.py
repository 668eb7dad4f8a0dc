"""The prompt worker that lives in a Ray actor: its own runtime (built-in and custom nodes, model
folders, model cache) and executor, running one prompt at a time for the server's dispatcher.

`run` is a streaming generator: while the prompt runs on a thread of the actor, the events it
raises (ComfyUI's websocket vocabulary), encoded preview frames and custom nodes' own
`PromptServer.send_sync` messages are yielded in batches, and the last item is the result. The
server forwards them to the client that queued the prompt as they arrive. `interrupt`, `free` and
`describe` run on other threads of the actor (it is created with max_concurrency > 1), so they
reach a running prompt.

Nothing here touches the server's queue or history: a worker that dies takes only its own run
with it, and the server decides what happens to the prompt.
"""
from __future__ import annotations

import argparse
import logging
import os
import queue
import socket
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

# Wire form of the hub's ALL target (object identity does not survive pickling).
ALL_CLIENTS = 1


def checkpoint_names(prompt: Any) -> set[str]:
    """The checkpoint file names a prompt loads (literal `ckpt_name` inputs of any node)."""
    names = set()
    if isinstance(prompt, dict):
        for node in prompt.values():
            inputs = node.get("inputs") if isinstance(node, dict) else None
            name = inputs.get("ckpt_name") if isinstance(inputs, dict) else None
            if isinstance(name, str):
                names.add(name)
    return names


def class_types(prompt: Any) -> set[str]:
    """Every node type a prompt names."""
    if not isinstance(prompt, dict):
        return set()
    return {node["class_type"] for node in prompt.values()
            if isinstance(node, dict) and isinstance(node.get("class_type"), str)}


class PromptWorker:
    """Created by the server as a Ray actor (server/cluster/dispatch.py); one prompt at a time."""

    def __init__(self, args: argparse.Namespace, index: int, threads: int | None):
        import torch

        from app.runtime import create_runtime
        from server.config import ServerConfig
        from server.preview import Previewer
        from server.worker import FreeRequests, PreviewFrames

        if threads:
            torch.set_num_threads(threads)
        self.index = index
        # The server holds the folders (lock, temp/): a worker neither locks nor empties them.
        self.runtime = create_runtime(args, log=lambda msg: print(msg, file=sys.stderr, flush=True), claim=False)
        self.executor = self.runtime.executor
        config = ServerConfig.from_args(args)
        folders = self.runtime.env.folders
        self.previews = PreviewFrames(Previewer(config.preview_method, folders.model_dirs("vae_approx"),
                                                config.preview_max_size), config.preview_interval_s)
        self.executor.on_preview = self._on_preview
        self._lock = threading.Lock()
        self._running: str | None = None
        self._interrupt_for: str | None = None
        self._outbox: queue.Queue | None = None
        self.free_requests = FreeRequests()
        self._checkpoints_seen: set[str] = set()
        # custom nodes' PromptServer.send_sync from this worker goes to the server's clients
        self.runtime.plugin_server.attach(_PluginRelay(self, config))

    # -- called by the server ------------------------------------------------------------------
    def describe(self) -> dict:
        """Who this worker is and what it can run; answered once the runtime is up."""
        return {"index": self.index, "pid": os.getpid(), "host": socket.gethostname(),
                "node_types": self.runtime.registry.names(), "held": self.held_checkpoints()}

    def run(self, prompt_id: str, prompt: dict, extra_data: dict, outputs: list[str]) -> Iterator[list[tuple]]:
        outbox: queue.Queue = queue.Queue()
        with self._lock:
            self._running, self._outbox = prompt_id, outbox
            if self._interrupt_for != prompt_id:  # a late one, for a prompt that ended here before
                self._interrupt_for = None
        thread = threading.Thread(target=self._execute, args=(prompt_id, prompt, extra_data, outputs, outbox),
                                  name=f"prompt-{prompt_id}", daemon=True)
        thread.start()
        while True:
            batch = [outbox.get()]
            while True:  # whatever piled up meanwhile travels as one object
                try:
                    batch.append(outbox.get_nowait())
                except queue.Empty:
                    break
            yield batch
            if batch[-1][0] == "result":
                return

    def interrupt(self, prompt_id: str) -> bool:
        """Stop `prompt_id` if it runs here, or as soon as it starts (the call may overtake it)."""
        with self._lock:
            self._interrupt_for = prompt_id
            hit = self._running == prompt_id
        if hit:
            self.executor.interrupt()
        return hit

    def free(self, unload_models: bool, free_memory: bool) -> None:
        """POST /free: applied now when idle, else before the next prompt."""
        self.free_requests.add(unload_models, free_memory)
        with self._lock:  # a prompt cannot start meanwhile
            if self._running is None:
                self.free_requests.apply(self.executor)

    # -- the prompt's thread ---------------------------------------------------------------------
    def _execute(self, prompt_id: str, prompt: dict, extra_data: dict, outputs: list[str],
                 outbox: queue.Queue) -> None:
        result: dict = {"status": "failed", "message": "no result"}
        try:
            self.free_requests.apply(self.executor)
            result = self._run(prompt_id, prompt, extra_data, outputs, outbox)
            self._checkpoints_seen |= checkpoint_names(prompt)
            result["held"] = self.held_checkpoints()
        except BaseException as exc:  # reported to the server, which records the failure
            result = {"status": "failed", "message": f"{type(exc).__name__}: {exc}",
                      "traceback": traceback.format_exc()}
        finally:
            with self._lock:
                self._running = self._outbox = None
                if self._interrupt_for == prompt_id:
                    self._interrupt_for = None
            outbox.put(("result", result))  # always: the stream ends with it

    def _run(self, prompt_id: str, prompt: dict, extra_data: dict, outputs: list[str],
             outbox: queue.Queue) -> dict:
        checked = self.executor.validate(prompt, outputs)
        if not checked.ok:  # e.g. a node type this machine lacks
            return {"status": "refused", "error": checked.error or {}, "node_errors": checked.node_errors}

        def emit(event: str, data: dict) -> None:
            if event == "execution_start" and self._interrupt_for == prompt_id:
                self.executor.interrupt()  # asked for before the run began (it clears the flag)
            outbox.put(("event", event, data))

        try:
            result = self.executor.execute(checked, prompt_id, extra_data, emit, original=prompt)
        finally:
            self.previews.forget(prompt_id)
        return {"status": result.status, "outputs": result.outputs, "messages": result.messages, "meta": result.meta}

    def _on_preview(self, preview: Any, ctx: Any) -> None:
        frame = self.previews.frame(preview, ctx)
        if frame is not None:
            self._send(("preview", frame))

    def _send(self, item: tuple) -> None:
        """Into the running prompt's stream; outside a prompt nobody listens."""
        outbox = self._outbox
        if outbox is not None:
            outbox.put(item)

    def held_checkpoints(self) -> list[str]:
        """Checkpoint names of past prompts whose file is still in this worker's model cache."""
        folders = self.runtime.env.folders
        cached = set(self.runtime.env.models.cached_paths("checkpoint"))
        held = []
        for name in sorted(self._checkpoints_seen):
            path = folders.full_path("checkpoints", name)
            if path is not None and str(path.resolve()) in cached:
                held.append(name)
        return held


class _PluginRelay:
    """What a worker's PromptServer sees as the server's state: messages a custom node sends
    with PromptServer.instance.send_sync travel with the prompt's stream to the server."""

    def __init__(self, worker: PromptWorker, config: Any):
        self.hub = _RelayHub(worker)
        self.config = config
        self.worker = None  # who runs what comes from the node's own context here


class _RelayHub:
    loop = None  # never a running loop here: PromptServer falls back to one that never runs

    def __init__(self, worker: PromptWorker):
        self._worker = worker
        self.clients: dict = {}  # no websockets in a worker

    @staticmethod
    def _wire(sid: Any) -> Any:
        from server.ws import ALL
        return ALL_CLIENTS if sid is ALL else sid

    def post(self, event: str, data: Any, sid: Any = None) -> None:
        self._worker._send(("plugin", event, data, self._wire(sid)))

    def post_preview(self, frame: Any, sid: Any = None) -> None:
        self._worker._send(("plugin_preview", frame, self._wire(sid)))

    def post_bytes(self, message: bytes, sid: Any = None) -> None:
        self._worker._send(("plugin_bytes", message, self._wire(sid)))
