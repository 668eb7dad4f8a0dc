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
        self.on_queue_change = on_queue_change
        self.previews = PreviewFrames(previewer, preview_interval_s)
        self.current: Job | None = None
        self.current_node: str | None = None
        self._checked: dict[str, ValidationResult] = {}  # validated by POST /prompt; spares a re-run
        self._interrupt_job: str | None = None
        self.free_requests = FreeRequests()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="prompt-worker", daemon=True)
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
        self.free_requests.add(unload_models, free_memory)
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after interrupting the running prompt; it stays 'running' in the store, so the
        next start runs it again and marks its history."""
        self._stopping.set()
        self.interrupt()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._apply_free()
                job = self._next_job()
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
        result = self._execute(job, checked, emit)
        self.previews.forget(job.prompt_id)
        if self._stopping.is_set() and result.status == "interrupted":
            return  # left 'running' on purpose: it runs again after the restart
        self._finish(job, result)
        console.report_run(result, time.perf_counter() - started, getattr(self.executor.registry.env, "folders", None),
                           console.log.info)

    # -- the seam a cluster replaces (server/cluster): where jobs come from and run -------------
    def _next_job(self) -> Job | None:
        return self.store.claim_next()

    def _execute(self, job: Job, checked: ValidationResult, emit: Callable[[str, dict], None]) -> RunResult:
        return self.executor.execute(checked, job.prompt_id, job.extra_data, emit, original=job.prompt)

    def running(self) -> list[tuple[Job, str | None]]:
        """(job, node running now) of each running prompt."""
        job = self.current
        return [] if job is None else [(job, self.current_node)]

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
        self.free_requests.apply(self.executor)

    def _on_preview(self, preview: Any, ctx: NodeContext) -> None:
        """Called on the worker thread from a node's progress report."""
        frame = self.previews.frame(preview, ctx)
        if frame is not None:
            job = self.current
            self.hub.post_preview(frame, target_for("progress", job.client_id if job is not None else None))


class FreeRequests:
    """POST /free asks, applied between prompts: asks add up until applied.

    unload_models (also implied by free_memory, as in ComfyUI) takes every model off the compute
    device and releases the weights of every model that can be read again from its file, so
    process memory really falls; free_memory also drops the cached node outputs."""

    def __init__(self):
        self._lock = threading.Lock()
        self._unload = self._free = False

    def add(self, unload_models: bool, free_memory: bool) -> None:
        with self._lock:
            self._unload |= unload_models
            self._free |= free_memory

    def apply(self, executor: Executor) -> None:
        with self._lock:
            unload, free = self._unload, self._free
            self._unload = self._free = False
        if not (unload or free):
            return
        if free:
            executor.cache.clear()
        models = getattr(executor.registry.env, "models", None)
        released = models.drop_all() if models is not None else 0
        gc.collect()
        asked = ", ".join(k for k, v in (("unload_models", unload), ("free_memory", free)) if v)
        log.info("freed memory (%s): %d model(s) released", asked, released)


class PreviewFrames:
    """Nodes' previews as frames to send: at most one per interval per prompt, encoding failures
    logged once (a preview is never worth failing a prompt over)."""

    def __init__(self, previewer: Previewer, interval_s: float):
        self.previewer = previewer
        self.limiter = RateLimiter(interval_s)
        self._failed = False

    def frame(self, preview: Any, ctx: NodeContext) -> PreviewFrame | None:
        if not self.previewer.enabled or not self.limiter.allow(ctx.prompt_id):
            return None
        try:
            encoded = self.previewer.encode(preview)
        except Exception as exc:
            if not self._failed:
                log.warning("cannot make a live preview: %s", exc)
                self._failed = True
            return None
        return None if encoded is None else PreviewFrame(encoded[1], encoded[0], ctx.prompt_id, ctx.node_id)

    def forget(self, prompt_id: str) -> None:
        self.limiter.forget(prompt_id)
