"""The server side of the cluster: one slot per worker actor, and the dispatcher between them.

Each slot is a server.worker.Worker whose prompts run on its actor instead of in this process: it
has its own thread, takes a job when its actor is idle, streams the run's events to the client
that queued it and writes the history exactly as the single-process worker does. Only two things
differ, through Worker's seam: where a job comes from (`_next_job`: the dispatcher) and where it
runs (`_execute`: the actor).

Dispatch happens under one lock, only when a worker is idle, so a prompt stays pending (and
deletable, and overtaken by `front` prompts) until a worker is free to run it: the first pending
prompt in queue order goes to the idle worker that holds its checkpoint, else to the one idle
longest. A worker that lacks a node type the prompt needs is passed over while another can run
it; if none can, the worker refuses the prompt and its history says why.

A worker that dies mid-prompt: the actor is killed for certain (so the run cannot go on
unseen) and Ray restarts it; the prompt, still 'running' in the store, runs once more on another
worker (its history notes the lost run), and after a second loss it is recorded as failed.
"""
from __future__ import annotations

import argparse
import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError

from graph.executor import Executor, RunResult
from graph.validation import ValidationResult
from server.cluster.actor import ALL_CLIENTS, PromptWorker, checkpoint_names, class_types
from server.cluster.ray_setup import actor_options, connect, plan_workers, worker_args
from server.preview import Previewer
from server.queue import Job, PromptStore
from server.worker import Worker, _now_ms
from server.ws import ALL, Hub, target_for

log = logging.getLogger(__name__)

# A prompt whose worker died this many times is recorded as failed instead of run again.
MAX_WORKER_LOSSES = 2
PROBE_INTERVAL_S = 1.0


class WorkerLost(Exception):
    """The actor running a prompt died or became unreachable."""


class Refused(Exception):
    """The worker could not run the prompt (a node type it lacks, an invalid prompt there)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def worker_lost_marker(prompt_id: str, where: str) -> list:
    """The history message saying a run was cut short by its worker dying."""
    return ["execution_interrupted", {"prompt_id": prompt_id, "node_id": None, "node_type": None, "executed": [],
                                      "timestamp": _now_ms(), "reason": "worker_lost",
                                      "exception_message": f"The worker running this prompt ({where}) stopped; "
                                                           "it was run again on another worker."}]


class ClusterWorker:
    """Stands where server.worker.Worker stands (same methods), for `python main.py --ray`."""

    def __init__(self, args: argparse.Namespace, executor: Executor, store: PromptStore, hub: Hub,
                 previewer: Previewer, on_queue_change: Callable[[], None], preview_interval_s: float = 0.1):
        self.args = args
        self._parts = (executor, store, hub, previewer, on_queue_change, preview_interval_s)
        self.store = store
        self.slots: list[Slot] = []
        self.lock = threading.Lock()  # dispatch decisions, and the validated prompts below
        self.checked: dict[str, ValidationResult] = {}
        self._waiting: list[tuple[Job, Slot | None]] = []  # claimed, to run again elsewhere
        self.losses: dict[str, list[str]] = {}  # prompt id -> where its runs were lost
        connect(args.ray)  # before listening: a wrong address stops the server at once

    # -- the Worker interface ------------------------------------------------------------------
    def start(self) -> None:
        plan = plan_workers(self.args)
        remote = ray.remote(PromptWorker).options(**actor_options(plan))
        shipped = worker_args(self.args)
        log.info("starting %d Ray worker(s) (%s CPU, %s GPU each)", plan.count, plan.num_cpus, plan.num_gpus)
        for index in range(plan.count):
            slot = Slot(self, index, remote.remote(shipped, index, plan.threads), *self._parts)
            self.slots.append(slot)
        for slot in self.slots:
            slot.start()

    def submit(self, prompt_id: str, checked: ValidationResult) -> None:
        with self.lock:
            self.checked[prompt_id] = checked
        self._wake_idle()

    def forget(self, prompt_ids: list[str]) -> None:
        with self.lock:
            for p in prompt_ids:
                self.checked.pop(p, None)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Without a prompt id every running prompt stops (each worker runs one)."""
        hits = [slot.interrupt(prompt_id) for slot in self.slots]
        return any(hits)

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        for slot in self.slots:
            slot.actor.free.remote(unload_models, free_memory)

    def stop(self, timeout: float = 10.0) -> None:
        """Interrupt what runs (those prompts stay 'running' and run again after a restart), then
        let the workers go."""
        for slot in self.slots:
            slot.begin_stop()
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            slot.join(max(0.0, deadline - time.monotonic()))
        for slot in self.slots:
            try:
                ray.kill(slot.actor)
            except Exception as exc:  # already gone
                log.debug("worker #%d: %s", slot.index, exc)
        ray.shutdown()

    @property
    def current(self) -> Job | None:
        """The prompt that started last (what plugins asking 'which prompt runs' get)."""
        running = [s for s in self.slots if s.current is not None]
        return max(running, key=lambda s: s.started_at).current if running else None

    @property
    def current_node(self) -> str | None:
        running = [s for s in self.slots if s.current is not None]
        return max(running, key=lambda s: s.started_at).current_node if running else None

    def running(self) -> list[tuple[Job, str | None]]:
        return [pair for slot in self.slots for pair in slot.running()]

    # -- dispatch (slot threads) ---------------------------------------------------------------
    def take(self, slot: Slot) -> Job | None:
        """The job `slot` runs next, or None. Jobs that suit another idle slot better are handed
        to it on the way."""
        with self.lock:
            if slot.assigned:
                return self._give(slot, slot.assigned.popleft())
            for i, (job, lost_on) in enumerate(self._waiting):
                target = self._choose(job, avoid=lost_on)
                if target is not None:
                    del self._waiting[i]
                    if target is slot:
                        return self._give(slot, job)
                    self._hand(target, job)
                    break
            while slot.idle():
                job = self.store.claim_next()
                if job is None:
                    return None
                target = self._choose(job)
                if target is None:  # only a busy worker can run it: it waits for one
                    self._waiting.append((job, None))
                elif target is slot:
                    return self._give(slot, job)
                else:
                    self._hand(target, job)
            return None

    def _choose(self, job: Job, avoid: Slot | None = None) -> Slot | None:
        """The idle slot to run `job`: one that has every node type it names (while any live
        slot has them), not `avoid` (while another live slot can run it), the one holding its
        checkpoint, else the one idle longest. None: wait for a busy slot."""
        live = [s for s in self.slots if s.ready]
        needed = class_types(job.prompt)
        able = [s for s in live if needed <= s.node_types] or live  # none able: one refuses it
        if avoid is not None and len(able) > 1:
            able = [s for s in able if s is not avoid]
        idle = [s for s in able if s.idle()]
        if not idle:
            return None
        wanted = checkpoint_names(job.prompt)
        return min(idle, key=lambda s: (-len(wanted & s.held), s.idle_since))

    def _give(self, slot: Slot, job: Job) -> Job:
        slot.busy = True
        return job

    def _hand(self, target: Slot, job: Job) -> None:
        target.assigned.append(job)
        target.wake()

    def _wake_idle(self) -> None:
        for slot in self.slots:
            if slot.idle():
                slot.wake()

    def lost(self, job: Job, slot: Slot, error: Exception) -> None:
        """`slot`'s actor died running `job`: run it once more elsewhere, or record it failed."""
        where = slot.where()
        log.warning("worker %s was lost while running prompt %s: %s", where, job.prompt_id, error)
        slot.relaunch()
        with self.lock:
            places = self.losses.setdefault(job.prompt_id, [])
            places.append(where)
            again = len(places) < MAX_WORKER_LOSSES
            if again:
                self._waiting.insert(0, (job, slot))
        if again:
            self._wake_idle()
            return
        with self.lock:
            self.losses.pop(job.prompt_id, None)
        slot._finish_failed(job, "worker_lost", f"The workers running this prompt stopped {len(places)} times "
                                                f"({', '.join(places)}); it is not run again")


class Slot(Worker):
    """One worker actor, seen from the server: a Worker that runs its prompts there."""

    def __init__(self, cluster: ClusterWorker, index: int, actor: Any, *parts: Any):
        super().__init__(*parts)
        self.cluster = cluster
        self.index = index
        self.actor = actor
        self._lock = cluster.lock  # Worker keeps validated prompts under it: shared by all slots
        self._checked = cluster.checked
        self._thread.name = f"ray-worker-{index}"
        self.ready = False
        self.info: dict = {}
        self.node_types: frozenset[str] = frozenset()
        self.held: set[str] = set()
        self.busy = False
        self.assigned: collections.deque[Job] = collections.deque()
        self.idle_since = 0.0
        self.started_at = 0.0
        self._probe = None
        self.dead: str | None = None  # why the actor cannot run at all

    def idle(self) -> bool:
        return self.ready and not self.busy and not self.assigned and not self._stopping.is_set()

    def where(self) -> str:
        return f"#{self.index} pid {self.info.get('pid', '?')} on {self.info.get('host', '?')}"

    def wake(self) -> None:
        self._wake.set()

    def begin_stop(self) -> None:
        self._stopping.set()
        self.interrupt()
        self._wake.set()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def relaunch(self) -> None:
        """Make sure the lost actor's process is gone (a worker that only lost its connection
        would otherwise go on running the prompt) and let Ray start a fresh one."""
        with self._lock:
            self.ready = False
            self.held = set()
        self._probe = None
        try:
            ray.kill(self.actor, no_restart=False)
        except Exception as exc:
            log.debug("killing lost worker #%d: %s", self.index, exc)

    # -- Worker's seam -------------------------------------------------------------------------
    def _next_job(self) -> Job | None:
        if self.dead is not None:
            self._stopping.wait(PROBE_INTERVAL_S)
            if all(slot.dead is not None for slot in self.cluster.slots):  # nothing can run: say so
                job = self.store.claim_next()
                if job is not None:
                    self._finish_failed(job, "no_workers", f"No Ray worker could start: {self.dead}")
            return None
        if not self.ready and not self._await_actor():
            self._wake.set()  # no idle wait: _await_actor has waited already
            return None
        return self.cluster.take(self)

    def _execute(self, job: Job, checked: ValidationResult, emit: Callable[[str, dict], None]) -> RunResult:
        client = job.client_id
        result: dict | None = None
        stream = self.actor.run.remote(job.prompt_id, job.prompt, job.extra_data, job.outputs)
        try:
            for ref in stream:
                for item in ray.get(ref):
                    kind = item[0]
                    if kind == "event":
                        emit(item[1], item[2])
                    elif kind == "preview":
                        self.hub.post_preview(item[1], target_for("progress", client))
                    elif kind == "plugin":
                        self.hub.post(item[1], item[2], _target(item[3]))
                    elif kind == "plugin_preview":
                        self.hub.post_preview(item[1], _target(item[2]))
                    elif kind == "plugin_bytes":
                        self.hub.post_bytes(item[1], _target(item[2]))
                    elif kind == "result":
                        result = item[1]
        except RayActorError as exc:
            raise WorkerLost(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
        if result is None:
            raise WorkerLost("the worker's stream ended without a result")
        self.held = set(result.get("held", ()))
        status = result["status"]
        if status == "refused":
            err = result.get("error") or {}
            message = f"{err.get('message', 'Invalid prompt')}: {err.get('details', '')}".rstrip(": ")
            raise Refused(err.get("type", "invalid_prompt"), f"worker {self.where()} cannot run this prompt: {message}")
        if status == "failed":
            log.error("worker %s failed running prompt %s:\n%s", self.where(), job.prompt_id, result.get("traceback"))
            raise Refused("internal_error", f"The worker {self.where()} failed while running this prompt: "
                                            f"{result.get('message')}")
        return RunResult(job.prompt_id, status, outputs=result["outputs"], messages=result["messages"],
                         meta=result["meta"])

    def _run(self, job: Job) -> None:
        self.started_at = time.monotonic()
        try:
            super()._run(job)
        except WorkerLost as exc:
            self.cluster.lost(job, self, exc)
        except Refused as exc:
            self._finish_failed(job, exc.kind, str(exc))
        finally:
            with self._lock:
                self.busy = False
                self.idle_since = time.monotonic()

    def _finish(self, job: Job, result: RunResult) -> None:
        with self._lock:
            lost_at = self.cluster.losses.pop(job.prompt_id, [])
        result.messages[:0] = [worker_lost_marker(job.prompt_id, where) for where in lost_at]
        super()._finish(job, result)

    def _finish_failed(self, job: Job, kind: str, message: str) -> None:
        with self._lock:
            self.cluster.losses.pop(job.prompt_id, None)
        super()._finish_failed(job, kind, message)

    def _apply_free(self) -> None:
        pass  # POST /free goes to the actors themselves (ClusterWorker.request_free)

    def interrupt(self, prompt_id: str | None = None) -> bool:
        job = self.current
        if job is None or (prompt_id is not None and job.prompt_id != prompt_id):
            return False
        self._interrupt_job = job.prompt_id
        self.actor.interrupt.remote(job.prompt_id)
        return True

    # -- the actor's life ----------------------------------------------------------------------
    def _await_actor(self) -> bool:
        """True once the actor answers after a start or a restart (waits up to PROBE_INTERVAL_S)."""
        if self._probe is None:
            self._probe = self.actor.describe.remote()
        try:
            info = ray.get(self._probe, timeout=PROBE_INTERVAL_S)
        except GetTimeoutError:
            return False
        except ActorDiedError as exc:  # its __init__ raised, or Ray gave up on it
            self.dead = str(exc)
            log.error("worker #%d cannot start: %s", self.index, exc)
            return False
        except RayActorError:  # restarting: ask again
            self._probe = None
            return False
        self._probe = None
        with self._lock:
            self.info = info
            self.node_types = frozenset(info["node_types"])
            self.held = set(info["held"])
            self.idle_since = time.monotonic()
            self.ready = True
        log.info("worker %s ready (%d node types)", self.where(), len(self.node_types))
        self.cluster._wake_idle()
        return True


def _target(wire: Any) -> Any:
    return ALL if wire == ALL_CLIENTS else wire
