"""The one thread that runs prompts, in queue order, and reports what happens.

The HTTP side only ever writes the queue and wakes this thread, so a long prompt never holds
up a request. Events from the executor are forwarded to websocket clients as they happen (the
hub hops them onto the event loop); the result goes to history before the final
`executing {node: null}`, so a client that reacts to it can already read /history.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any, Callable

from app import console
from graph.context import NodeContext
from graph.executor import Executor, RunResult
from graph.validation import ValidationResult
from server.preview import Previewer, RateLimiter
from server.queue import Job, PromptStore
from server.ws import Hub, PreviewFrame, target_for

log = logging.getLogger(__name__)

# A prompt that takes the whole process down (a native crash, the OOM killer) would otherwise
# take it down again on every start; after this many lost runs it is recorded as failed instead.
MAX_RESTARTS = 3


def _now_ms() -> int:
    return int(time.time() * 1000)


def restart_marker(prompt_id: str) -> list:
    """The history message saying a run was cut short by the server stopping."""
    return ["execution_interrupted", {"prompt_id": prompt_id, "node_id": None, "node_type": None, "executed": [],
                                      "timestamp": _now_ms(), "reason": "server_restart",
                                      "exception_message": "The server stopped while this prompt was running; "
                                                           "it was run again after the restart."}]


class Worker:
    def __init__(self, executor: Executor, store: PromptStore, hub: Hub, previewer: Previewer,
                 on_queue_change: Callable[[], None], preview_interval_s: float = 0.1):
        self.executor = executor
        self.store = store
        self.hub = hub
        self.previewer = previewer
        self.on_queue_change = on_queue_change
        self.limiter = RateLimiter(preview_interval_s)
        self.current: Job | None = None
        self.current_node: str | None = None
        self._checked: dict[str, ValidationResult] = {}  # validated by POST /prompt; spares a re-run
        self._interrupt_job: str | None = None
        self._free = {"unload_models": False, "free_memory": False}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prompt-worker", daemon=True)
        self._preview_failed = False
        executor.on_preview = self._on_preview

    # -- control (any thread) --------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, prompt_id: str, checked: ValidationResult) -> None:
        with self._lock:
            self._checked[prompt_id] = checked
        self._wake.set()

    def forget(self, prompt_ids: list[str]) -> None:
        with self._lock:
            for p in prompt_ids:
                self._checked.pop(p, None)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Stop the running prompt (only if it is `prompt_id`, when given); True if one was hit."""
        job = self.current
        if job is None or (prompt_id is not None and job.prompt_id != prompt_id):
            return False
        self._interrupt_job = job.prompt_id
        self.executor.interrupt()
        return True

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        """Applied after the running prompt, or right away when idle."""
        with self._lock:
            self._free["unload_models"] |= unload_models
            self._free["free_memory"] |= free_memory
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after interrupting the running prompt; it stays 'running' in the store, so the
        next start runs it again and marks its history."""
        self._stopping.set()
        if self.current is not None:
            self.executor.interrupt()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._apply_free()
                job = self.store.claim_next()
            except Exception:
                log.exception("prompt queue unavailable; retrying")
                time.sleep(1)
                continue
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception:  # the worker must outlive any bug below it
                log.exception("internal error while running prompt %s", job.prompt_id)
                self._finish_failed(job, "internal_error", "The server failed while running this prompt")
            finally:
                self.current = None
                self.current_node = None
                self._interrupt_job = None

    def _run(self, job: Job) -> None:
        self.current = job
        self.current_node = None
        self.on_queue_change()
        if job.restarts >= MAX_RESTARTS:
            self._finish_failed(job, "server_restart", f"The server stopped {job.restarts} times while running "
                                                       "this prompt; it is not run again")
            return
        with self._lock:
            checked = self._checked.pop(job.prompt_id, None)
        if checked is None:  # queued before a restart: validate against today's nodes
            checked = self.executor.validate(job.prompt, job.outputs)
        if not checked.ok:
            err = checked.error or {}
            self._finish_failed(job, err.get("type", "invalid_prompt"),
                                f"{err.get('message', 'Invalid prompt')}: {err.get('details', '')}".rstrip(": "))
            return
        client = job.client_id

        def emit(event: str, data: dict) -> None:
            if event == "executing":
                self.current_node = data.get("node")
            elif event == "execution_start" and (self._interrupt_job == job.prompt_id or self._stopping.is_set()):
                self.executor.interrupt()  # asked for before the run began (it clears the flag)
            self.hub.post(event, data, target_for(event, client))

        started = time.perf_counter()
        result = self.executor.execute(checked, job.prompt_id, job.extra_data, emit, original=job.prompt)
        self.limiter.forget(job.prompt_id)
        if self._stopping.is_set() and result.status == "interrupted":
            return  # left 'running' on purpose: it runs again after the restart
        self._finish(job, result)
        console.report_run(result, time.perf_counter() - started, getattr(self.executor.registry.env, "folders", None),
                           console.log.info)

    def _finish(self, job: Job, result: RunResult) -> None:
        messages = [restart_marker(job.prompt_id) for _ in range(job.restarts)] + result.messages
        status = {"status_str": "success" if result.ok else "error", "completed": result.ok, "messages": messages}
        self.store.finish(job.prompt_id, result.outputs, status, result.meta)
        self._announce_done(job)

    def _finish_failed(self, job: Job, kind: str, message: str) -> None:
        """History for a prompt that could not run at all (e.g. a node pack gone after a restart)."""
        error = {"prompt_id": job.prompt_id, "node_id": None, "node_type": None, "executed": [],
                 "exception_message": message, "exception_type": kind, "traceback": [],
                 "current_inputs": {}, "current_outputs": [], "timestamp": _now_ms()}
        self.hub.post("execution_error", error, target_for("execution_error", job.client_id))
        messages = [restart_marker(job.prompt_id) for _ in range(job.restarts)] + [["execution_error", error]]
        try:
            self.store.finish(job.prompt_id, {}, {"status_str": "error", "completed": False, "messages": messages}, {})
        except Exception:
            log.exception("cannot record the failure of prompt %s", job.prompt_id)
        self._announce_done(job)

    def _announce_done(self, job: Job) -> None:
        self.current = None
        self.current_node = None
        self.on_queue_change()
        self.hub.post("executing", {"node": None, "display_node": None, "prompt_id": job.prompt_id},
                      target_for("executing", job.client_id))

    def _apply_free(self) -> None:
        with self._lock:
            free = dict(self._free)
            self._free = {"unload_models": False, "free_memory": False}
        if free["free_memory"] or free["unload_models"]:
            # Models live in the output cache (loader nodes' outputs), so dropping the cache
            # is what unloads them until a model manager exists.
            self.executor.cache.clear()
            gc.collect()
            try:
                import torch
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except Exception:  # pragma: no cover - best effort
                pass
            log.info("freed cached outputs (%s)", ", ".join(k for k, v in free.items() if v))

    def _on_preview(self, preview: Any, ctx: NodeContext) -> None:
        """Called on the worker thread from a node's progress report."""
        if not self.previewer.enabled or not self.limiter.allow(ctx.prompt_id):
            return
        try:
            encoded = self.previewer.encode(preview)
        except Exception as exc:  # a preview is never worth failing the prompt over
            if not self._preview_failed:
                log.warning("cannot make a live preview: %s", exc)
                self._preview_failed = True
            return
        if encoded is None:
            return
        job = self.current
        client = job.client_id if job is not None else None
        frame = PreviewFrame(encoded[1], encoded[0], ctx.prompt_id, ctx.node_id)
        self.hub.post_preview(frame, target_for("progress", client))
