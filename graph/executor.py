"""Runs validated prompts: only what the outputs need, as their inputs become ready, with caching.

The executor lives across prompts (its cache and node instances persist). Each prompt runs on an
asyncio loop of the calling thread, as in ComfyUI: a node is staged when nothing it needs is
pending (graph/schedule.py), and a node whose function is `async def` runs as a task, so
independent async nodes overlap while the loop moves on to other ready nodes. Lazy inputs, node
expansion and execution blockers follow ComfyUI's executor case for case. The executor reports
through `emit(event, data)` in ComfyUI's websocket vocabulary; the server forwards the events and
the command line draws them.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from graph.aio import run_sync
from graph.blocker import ExecutionBlocker
from graph.cache import ClassicCache, Entry, OutputCache, safe_node_key
from graph.context import Emit, Interrupted, NodeContext, current_context
from graph.contract import NodeType
from graph.dynprompt import DynamicPrompt
from graph.errors import PromptError, describe_value, exception_message, is_out_of_memory
from graph.graph_builder import GraphBuilder
from graph.progress import NodeProgress
from graph.prompt import is_link, unwrap
from graph.registry import NodeRegistry
from graph.schedule import DependencyCycle, ExecutionList
from graph.validation import ValidationResult, reachable, validate_prompt

log = logging.getLogger(__name__)

DONE, PENDING = "done", "pending"
HIDDEN_KINDS_FILLED = ("PROMPT", "DYNPROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "AUTH_TOKEN_COMFY_ORG",
                       "API_KEY_COMFY_ORG")


class NodeFailure(Exception):
    """A node raised; carries the execution_error payload."""


@dataclass
class RunResult:
    prompt_id: str
    status: str  # "success" | "error" | "interrupted"
    outputs: dict[str, dict] = field(default_factory=dict)  # node id -> ui dict
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    messages: list[list] = field(default_factory=list)
    error: dict | None = None
    blocked: list[dict] = field(default_factory=list)  # {"node_id", "message"} per reported blocker
    meta: dict[str, dict] = field(default_factory=dict)  # node id -> {node_id, display_node, parent_node, real_node_id}

    @property
    def ok(self) -> bool:
        return self.status == "success"


def _now() -> int:
    return int(time.time() * 1000)


class Executor:
    def __init__(self, registry: NodeRegistry, cache: OutputCache | None = None,
                 on_preview: Callable[[Any, NodeContext], None] | None = None,
                 call_context: Callable[[], Any] | None = None):
        """`call_context` wraps every prompt's run (the runtime passes torch.inference_mode)."""
        self.registry = registry
        self.call_context = call_context or contextlib.nullcontext
        self.cache = cache if cache is not None else ClassicCache()
        self.on_preview = on_preview
        self.interrupt_flag = threading.Event()
        self.active: NodeContext | None = None  # the node that started last (for plugins' fallbacks)
        # Node instances by (node id, class), as ComfyUI keeps them: those of the submitted prompt's
        # nodes, and those its expansions used in the last run (with the node they came from).
        self._instances: dict[tuple[str, str], Any] = {}
        self._expanded_instances: dict[tuple[str, str], str] = {}

    def interrupt(self) -> None:
        self.interrupt_flag.set()

    def unload_models(self, why: str) -> None:
        """Every model off the compute device through the model-lifetime service (as ComfyUI does
        after an out-of-memory error), so that the next prompt has the room."""
        models = getattr(self.registry.env, "models", None)
        if models is not None:
            log.error("%s; unloading all models", why)
            models.unload_all_models()

    def validate(self, prompt: Any, targets: list | None = None) -> ValidationResult:
        return validate_prompt(prompt, self.registry, targets)

    def run(self, prompt: Any, prompt_id: str | None = None, extra_data: dict | None = None,
            emit: Emit | None = None, targets: list | None = None) -> RunResult:
        """Validate, then execute; raises PromptError for an invalid prompt."""
        checked = self.validate(prompt, targets)
        if not checked.ok:
            raise PromptError(checked.error, checked.node_errors)
        return self.execute(checked, prompt_id, extra_data, emit, original=prompt)

    def execute(self, checked: ValidationResult, prompt_id: str | None = None, extra_data: dict | None = None,
                emit: Emit | None = None, original: dict | None = None) -> RunResult:
        run = _Run(self, checked, prompt_id or str(uuid.uuid4()), extra_data or {}, emit, original)
        return run_sync(run.go())

    # -- node instances --------------------------------------------------------------------
    def _begin_instances(self, prompt: dict) -> None:
        """Drop instances of nodes the new prompt no longer has, as ComfyUI does."""
        def kept(key: tuple[str, str]) -> bool:
            node_id, class_type = key
            if key in self._expanded_instances:
                return self._expanded_instances[key] in prompt
            return prompt.get(node_id, {}).get("class_type") == class_type
        self._instances = {k: v for k, v in self._instances.items() if kept(k)}
        self._expanded_instances = {k: v for k, v in self._expanded_instances.items() if k in self._instances}

    def _end_instances(self, used: set[tuple[str, str]]) -> None:
        """Instances of expanded nodes survive only if this run used them."""
        for key in [k for k in self._expanded_instances if k not in used]:
            del self._expanded_instances[key]
            self._instances.pop(key, None)

    def _instance(self, dyn: DynamicPrompt, node_id: str, node_type: NodeType) -> Any:
        key = (node_id, node_type.name)
        if key not in self._instances:
            self._instances[key] = node_type.instantiate()
            if node_id not in dyn.original_prompt:
                self._expanded_instances[key] = dyn.get_real_node_id(node_id)
        return self._instances[key]


class _Run:
    """The state of one prompt's execution."""

    def __init__(self, executor: Executor, checked: ValidationResult, prompt_id: str, extra_data: dict,
                 emit: Emit | None, original: dict | None):
        self.ex = executor
        self.dyn = DynamicPrompt(checked.prompt)  # grows with the nodes that expansion adds
        self.original = original if original is not None else checked.prompt
        self.outputs = checked.outputs
        self.graph = checked.graph
        self.prompt_id = prompt_id
        self.extra_data = extra_data
        self.result = RunResult(prompt_id, "success")
        self._sink = emit
        self.progress = NodeProgress(prompt_id, self.dyn, self.emit if emit is not None else None)
        self.keys: dict[str, str] = {}
        self.results: dict[str, Entry] = {}  # outputs available to this run, by node id
        self.executed: set[str] = set()
        self._pending_async: dict[str, list] = {}  # node -> per-call results, some still tasks
        self._pending_expansion: dict[str, list] = {}  # node -> per-call (values, subgraph or None)
        self._consumers: dict[str, set[str]] = {}  # without a retaining cache: who still needs a node
        self._expansion_sources: dict[str, set[str]] = {}  # expanded node -> what its results link to
        self._specs: dict[str, dict] = {}
        self._preference: dict[str, tuple[bool, bool]] = {}
        self._lazy: dict[str, frozenset[str]] = {}
        self._hidden: dict[str, dict[str, str]] = {}
        self._used_instances: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task] = set()
        self.list: ExecutionList | None = None

    def emit(self, event: str, data: dict) -> None:
        if event.startswith("execution_"):
            self.result.messages.append([event, data])  # kept for the history's status
        if self._sink is not None:
            self._sink(event, data)

    def node_type(self, node_id: str) -> NodeType:
        return self.ex.registry.get(self.dyn.get_node(node_id)["class_type"])

    def specs(self, node_type: NodeType) -> dict:
        if node_type.name not in self._specs:
            self._specs[node_type.name] = node_type.inputs()
        return self._specs[node_type.name]

    def lazy_inputs(self, node_id: str) -> frozenset[str]:
        class_type = self.dyn.get_node(node_id)["class_type"]
        if class_type not in self._lazy:
            specs = self.specs(self.ex.registry.get(class_type))
            self._lazy[class_type] = frozenset(n for n, spec in specs.items() if spec.lazy)
        return self._lazy[class_type]

    def hidden_inputs(self, node_type: NodeType) -> dict[str, str]:
        """{input name: hidden kind}, read once per class per prompt."""
        if node_type.name not in self._hidden:
            raw = node_type.input_types().get("hidden") or {}
            self._hidden[node_type.name] = {name: _hidden_kind(kind) for name, kind in raw.items()}
        return self._hidden[node_type.name]

    # -- the run -----------------------------------------------------------------------------
    async def go(self) -> RunResult:
        self.ex.interrupt_flag.clear()
        self.ex._begin_instances(self.dyn.original_prompt)
        self.emit("execution_start", {"prompt_id": self.prompt_id, "timestamp": _now()})
        try:
            with self.ex.call_context():
                await self._plan()
                self.list = ExecutionList(self.dyn.get_node, self.lazy_inputs, self.available, self._preferred,
                                          self.dyn.get_display_node_id)
                for node_id in self.outputs:
                    self.list.add_node(node_id)
                while not self.list.is_empty():
                    try:
                        node_id = await self.list.stage()
                    except DependencyCycle as cycle:
                        raise NodeFailure(self._error_payload(cycle.blamed, cycle, {}, "graph.DependencyCycleError"))
                    try:
                        status = await self._execute(node_id)
                    except (Interrupted, NodeFailure):
                        raise
                    except Exception as exc:  # the engine's own checks failed on odd plugin output
                        raise NodeFailure(self._error_payload(node_id, exc, {})) from exc
                    if status is PENDING:
                        self.list.unstage()
                    else:
                        self.list.complete()
        except Interrupted as stop:
            self.result.status = "interrupted"
            node_id = getattr(stop, "node_id", None) or (self.list.staged if self.list else None)
            real = self.dyn.get_real_node_id(node_id) if node_id else None
            node = self.dyn.get_node(real) if real else {}
            self.emit("execution_interrupted", {"prompt_id": self.prompt_id, "node_id": real,
                                                "node_type": node.get("class_type"),
                                                "executed": list(self.result.executed), "timestamp": _now()})
        except NodeFailure as failure:
            self.result.status = "error"
            self.result.error = failure.args[0]
            if is_out_of_memory(failure.__cause__):
                self.ex.unload_models("a node ran out of memory")
            self.emit("execution_error", failure.args[0])
        else:
            self.emit("execution_success", {"prompt_id": self.prompt_id, "timestamp": _now()})
        finally:
            await self._cancel_tasks()
            self.ex._end_instances(self._used_instances)
            self.ex.active = None
        return self.result

    async def _cancel_tasks(self) -> None:
        """Async calls still running when the prompt ends (after an error) are cancelled."""
        running = [t for t in self._tasks if not t.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    async def _plan(self) -> None:
        """Key every node the outputs could use, tell the cache, and announce the cache hits."""
        wanted = reachable(self.graph.pred, self.outputs)
        sources = {node_id: self._sources(node_id) & wanted for node_id in wanted}
        for node_id in _sources_first(sources):
            self.keys[node_id] = await self._key(node_id)
        self.ex.cache.begin_prompt(self.keys.values())
        self.result.cached = sorted(n for n in wanted if self.ex.cache.get(self.keys[n]) is not None)
        self.emit("execution_cached", {"nodes": self.result.cached, "prompt_id": self.prompt_id, "timestamp": _now()})
        if not self.ex.cache.retains:
            for node_id, linked in sources.items():
                for source in linked:
                    self._consumers.setdefault(source, set()).add(node_id)

    async def _key(self, node_id: str) -> str:
        """A node's cache key, from its class, literals, IS_CHANGED and its sources' keys."""
        node = self.dyn.get_node(node_id)
        node_type = self.node_type(node_id)
        changed = None
        if node_type.has_is_changed():
            changed = await self._is_changed(node_id, node, node_type)
        by_id = node_type.not_idempotent or "UNIQUE_ID" in self.hidden_inputs(node_type).values()
        return safe_node_key(node["class_type"], node["inputs"], self.keys, changed, node_id if by_id else None)

    async def _is_changed(self, node_id: str, node: dict, node_type: NodeType) -> Any:
        """IS_CHANGED with the node's constants only (links are None), as ComfyUI calls it."""
        constants = {k: (None if is_link(v) else unwrap(v)) for k, v in node["inputs"].items()}
        if not node_type.declarative and not node_type.v3:
            for name, kind in self.hidden_inputs(node_type).items():
                if kind in HIDDEN_KINDS_FILLED:
                    constants[name] = self._hidden_value(kind, node_id)
        try:
            if node_type.v3:
                value = node_type.hook("is_changed", hidden=self._hidden_kinds(node_type, node_id))(**constants)
            else:
                value = node_type.is_changed(constants)
            if asyncio.iscoroutine(value):
                value = await value
            return None if isinstance(value, ExecutionBlocker) else value
        except Exception as exc:
            log.warning("IS_CHANGED of node %s (%s) raised %s: %s; the node runs again", node_id,
                        node["class_type"], type(exc).__name__, exc)
            return float("nan")  # a failing IS_CHANGED means "always re-run"

    # -- what is available -------------------------------------------------------------------
    def available(self, node_id: str) -> bool:
        """Whether a node's outputs exist for this run: computed here, or found in the cache."""
        if node_id in self.results:
            return True
        key = self.keys.get(node_id)
        entry = self.ex.cache.get(key) if key is not None else None
        if entry is None:
            return False
        self.results[node_id] = entry
        return True

    def _preferred(self, node_id: str) -> tuple[bool, bool]:
        """(is an output node, is async) of a node's class: the scheduler runs these first."""
        class_type = self.dyn.get_node(node_id)["class_type"]
        if class_type not in self._preference:
            node_type = self.ex.registry.get(class_type)
            self._preference[class_type] = (node_type.is_output_node, node_type.is_async())
        return self._preference[class_type]

    # -- one node ----------------------------------------------------------------------------
    async def _execute(self, node_id: str) -> str:
        """Run (or continue) one staged node: DONE, or PENDING when it waits for more."""
        node = self.dyn.get_node(node_id)
        class_type = node["class_type"]
        node_type = self.node_type(node_id)
        if node_id in self._pending_async:
            calls = self._finished_calls(node_id, node_type)
        elif node_id in self._pending_expansion:
            entry = self._resolve_expansion(node_id, node_type, self._pending_expansion.pop(node_id))
            return self._finish(node_id, entry)
        elif self.available(node_id):  # a cached output node, or one whose twin ran first
            entry = self.results[node_id]
            self._report_ui(node_id, entry)
            self.progress.finish(node_id)
            return DONE
        else:
            if self.ex.interrupt_flag.is_set():
                raise _interrupted(node_id)
            self.progress.start(node_id)
            inputs, missing = self._gather(node_id, node, node_type)
            self.emit("executing", {"node": node_id, "display_node": self.dyn.get_display_node_id(node_id),
                                    "prompt_id": self.prompt_id})
            ctx = NodeContext(self.prompt_id, node_id, class_type, self.ex.registry.env, self.original,
                              self.extra_data, self.ex.interrupt_flag, self.emit, self.ex.on_preview, self.progress)
            self.ex.active = ctx
            hidden = self._hidden_kinds(node_type, node_id)
            try:
                instance = self._instance(node_id, node_type)
                if node_type.has_hook("lazy"):
                    wanted = await self._lazy_requests(ctx, node_type, instance, inputs, hidden)
                    wanted = [n for n in wanted if n not in inputs or n in missing]
                    if wanted:
                        for name in wanted:
                            self.list.make_input_strong_link(node_id, name)
                        return PENDING
                calls = await self._map(ctx, node_type, inputs, lambda kw: node_type.call(instance, ctx, kw, hidden),
                                        blocker=lambda b: self._pass_blocker(b, ctx), prefix=True)
            except (Interrupted, NodeFailure):
                raise
            except Exception as exc:
                raise NodeFailure(self._error_payload(node_id, exc, inputs)) from exc
            if any(isinstance(c, asyncio.Task) for c in calls):
                self._await_calls(node_id, calls)
                return PENDING
        try:
            values, ui, subgraphs = self._split_calls(node_type, calls)
        except Exception as exc:
            raise NodeFailure(self._error_payload(node_id, exc, {})) from exc
        if ui is not None:
            self._report_ui(node_id, Entry([], ui))
        if subgraphs is not None:
            await self._expand(node_id, node_type, subgraphs)
            return PENDING
        return self._finish(node_id, Entry(values, ui))

    def _finish(self, node_id: str, entry: Entry) -> str:
        self.results[node_id] = entry
        self.ex.cache.put(self.keys[node_id], entry)
        self.progress.finish(node_id)
        self.executed.add(node_id)
        self.result.executed.append(node_id)
        self._release(node_id)
        return DONE

    def _gather(self, node_id: str, node: dict, node_type: NodeType) -> tuple[dict[str, list], set[str]]:
        """Every input as a list (upstream outputs already are lists; literals become one item),
        and the names of linked inputs whose values are not there yet (unasked lazy inputs)."""
        specs = self.specs(node_type)
        data: dict[str, list] = {}
        missing: set[str] = set()
        for name, value in node["inputs"].items():
            spec = specs.get(name)
            if is_link(value) and not (spec is not None and spec.raw_link):
                source = str(value[0])
                entry = self.results[source] if self.available(source) else None
                if entry is None or not 0 <= value[1] < len(entry.outputs):
                    missing.add(name)
                    data[name] = [None]
                else:
                    data[name] = entry.outputs[value[1]]
            elif spec is not None:  # undeclared literals are dropped, as in ComfyUI
                data[name] = [unwrap(value)]
        if not node_type.v3:
            for name, kind in self.hidden_inputs(node_type).items():
                if kind in HIDDEN_KINDS_FILLED and node_type.takes(name):
                    data[name] = [self._hidden_value(kind, node_id)]
        return data, missing

    def _hidden_value(self, kind: str, node_id: str) -> Any:
        if kind == "PROMPT":
            return self.original
        if kind == "DYNPROMPT":
            return self.dyn
        if kind == "EXTRA_PNGINFO":
            return self.extra_data.get("extra_pnginfo")
        if kind == "UNIQUE_ID":
            return node_id
        return self.extra_data.get(kind.lower())  # AUTH_TOKEN_COMFY_ORG, API_KEY_COMFY_ORG

    def _hidden_kinds(self, node_type: NodeType, node_id: str) -> dict[str, Any] | None:
        """What a V3 node finds in `cls.hidden`, by hidden kind."""
        if not node_type.v3:
            return None
        return {kind: self._hidden_value(kind, node_id) for kind in self.hidden_inputs(node_type).values()
                if kind in HIDDEN_KINDS_FILLED}

    def _instance(self, node_id: str, node_type: NodeType) -> Any:
        self._used_instances.add((node_id, node_type.name))
        return self.ex._instance(self.dyn, node_id, node_type)

    async def _lazy_requests(self, ctx: NodeContext, node_type: NodeType, instance: Any, inputs: dict,
                             hidden: dict | None) -> list[str]:
        """check_lazy_status over the input lists (one call per item, as the function is called);
        the union of the names it asks for."""
        check = node_type.hook("lazy", instance, hidden)
        calls = await self._map(ctx, node_type, inputs, lambda kw: check(**kw))
        asked: list[str] = []
        for value in await _resolve(calls):
            if isinstance(value, list):
                asked += [n for n in value if isinstance(n, str) and n not in asked]
        return asked

    async def _map(self, ctx: NodeContext, node_type: NodeType, inputs: dict[str, list], call: Callable,
                   blocker: Callable | None = None, prefix: bool = False) -> list:
        """ComfyUI's list mapping: one call per item of the longest input list (shorter lists
        repeat their last item), or one call with every list when the node takes INPUT_IS_LIST.
        A call given an ExecutionBlocker is not made. Async calls become tasks; a task that
        finishes at once is replaced by its result."""
        if node_type.input_is_list:
            batches = [inputs]
        elif any(len(v) == 0 for v in inputs.values()):
            batches = []
        else:
            count = max((len(v) for v in inputs.values()), default=1)
            batches = [{k: v[min(i, len(v) - 1)] for k, v in inputs.items()} for i in range(count)]
        results: list = []
        for index, kwargs in enumerate(batches):
            ctx.check_interrupt()
            given = (x for v in kwargs.values() for x in (v if node_type.input_is_list else (v,)))
            stop = next((x for x in given if isinstance(x, ExecutionBlocker)), None)
            if stop is not None:
                results.append(blocker(stop) if blocker else stop)
                continue
            if prefix:
                GraphBuilder.set_default_prefix(ctx.node_id, index, 0)
            token = current_context.set(ctx)
            try:
                value = call(kwargs)
                if asyncio.iscoroutine(value):
                    value = asyncio.ensure_future(value)  # the task keeps this context (and prefix)
                    self._tasks.add(value)
            finally:
                current_context.reset(token)
            if isinstance(value, asyncio.Task):
                await asyncio.sleep(0)  # let it start; it may finish without waiting for anything
                if value.done():
                    value = value.result()
            results.append(value)
        return results

    def _await_calls(self, node_id: str, calls: list) -> None:
        """Hold the node back until its async calls finish; the loop runs other nodes meanwhile."""
        self._pending_async[node_id] = calls
        unblock = self.list.add_external_block(node_id)

        async def wait() -> None:
            await asyncio.gather(*[c for c in calls if isinstance(c, asyncio.Task)], return_exceptions=True)
            unblock()

        waiter = asyncio.ensure_future(wait())
        self._tasks.add(waiter)

    def _finished_calls(self, node_id: str, node_type: NodeType) -> list:
        calls = self._pending_async.pop(node_id)
        out = []
        for call in calls:
            if isinstance(call, asyncio.Task):
                exc = call.exception()
                if isinstance(exc, (Interrupted, NodeFailure)):
                    raise exc
                if exc is not None:
                    raise NodeFailure(self._error_payload(node_id, exc, {})) from exc
                call = call.result()
            out.append(call)
        return out

    # -- results -----------------------------------------------------------------------------
    def _split_calls(self, node_type: NodeType, calls: list) -> tuple[list[list], dict | None, list | None]:
        """Per-slot output lists and the merged ui of all calls; with an expansion, instead the
        per-call (values, subgraph) to resolve once the subgraphs have run."""
        done: list[tuple] = []
        ui: dict | None = None
        for result in calls:
            if isinstance(result, ExecutionBlocker):
                result = (result,) * len(node_type.outputs)
            subgraph = result.get("expand") if isinstance(result, dict) else None
            values, call_ui = _split_result(node_type, result)
            done.append((values, subgraph))
            if call_ui is not None:
                ui = ui or {}
                for k, v in call_ui.items():
                    ui[k] = ui.get(k, []) + list(v) if isinstance(v, (list, tuple)) else v
        if any(subgraph is not None for _, subgraph in done):
            return [], ui, done
        per_slot: list[list] = [[] for _ in node_type.outputs]
        for values, _ in done:
            for slot, value in enumerate(values):
                _collect(node_type, per_slot, slot, value)
        return per_slot, ui, None

    def _report_ui(self, node_id: str, entry: Entry) -> None:
        if entry.ui is None:
            return
        self.result.outputs[node_id] = entry.ui
        self.result.meta[node_id] = {"node_id": node_id, "display_node": self.dyn.get_display_node_id(node_id),
                                     "parent_node": self.dyn.get_parent_node_id(node_id),
                                     "real_node_id": self.dyn.get_real_node_id(node_id)}
        self.emit("executed", {"node": node_id, "display_node": self.dyn.get_display_node_id(node_id),
                               "output": entry.ui, "prompt_id": self.prompt_id})

    def _release(self, node_id: str) -> None:
        """Without a retaining cache, drop a node's outputs once every consumer has run."""
        if self.ex.cache.retains:
            return
        for source in self._sources(node_id) | self._expansion_sources.pop(node_id, set()):
            waiting = self._consumers.get(source)
            if waiting is None:
                continue
            waiting.discard(node_id)
            if not waiting and source not in self.outputs:
                self.results.pop(source, None)

    # -- node expansion ----------------------------------------------------------------------
    async def _expand(self, node_id: str, node_type: NodeType, calls: list) -> None:
        """Add the subgraphs a node returned to the prompt; the node waits for its output nodes
        and for what its results link to, and is resolved when staged again."""
        added: list[str] = []
        links: list[tuple[str, int]] = []
        try:
            for values, subgraph in calls:
                if subgraph is None:
                    continue
                added += self._add_subgraph(node_id, subgraph)
                for value in values:
                    if is_link(value):
                        if not self.dyn.has_node(str(value[0])):
                            raise ValueError(f"expansion result links to unknown node {value[0]!r}")
                        links.append((str(value[0]), value[1]))
        except (ValueError, TypeError) as exc:
            raise NodeFailure(self._error_payload(node_id, exc, {})) from exc
        self._pending_expansion[node_id] = calls
        for new_id in [*added, *(source for source, _ in links)]:
            await self._admit(new_id)
        self.ex.cache.expanded(self.keys[n] for n in added)
        self._expansion_sources[node_id] = {source for source, _ in links}
        if not self.ex.cache.retains:
            for source, _ in links:
                self._consumers.setdefault(source, set()).add(node_id)
        for new_id in added:
            if self.node_type(new_id).is_output_node:
                self.list.add_node(new_id)
        for source, slot in links:
            self.list.add_strong_link(source, slot, node_id)

    def _add_subgraph(self, parent: str, subgraph: Any) -> list[str]:
        if not isinstance(subgraph, dict):
            raise ValueError("'expand' must be a dict of API-format nodes")
        new: dict[str, dict] = {}
        for raw_id, info in subgraph.items():
            new_id = str(raw_id)
            if self.dyn.has_node(new_id) or new_id in new:
                raise ValueError(f"Attempt to add duplicate node {new_id}. Ensure node ids are unique "
                                 "and deterministic or use graph_builder.GraphBuilder.")
            if not isinstance(info, dict) or self.ex.registry.get(info.get("class_type")) is None:
                raise ValueError(f"expanded node {new_id} has an unknown class_type "
                                 f"{info.get('class_type') if isinstance(info, dict) else info!r}")
            inputs = {k: [str(v[0]), v[1]] if is_link(v) else v for k, v in (info.get("inputs") or {}).items()}
            new[new_id] = {"class_type": info["class_type"], "inputs": inputs,
                           "display": str(info.get("override_display_id", parent))}
        for new_id, node in new.items():
            for name, value in node["inputs"].items():
                if not is_link(value):
                    continue
                source = new.get(value[0]) or (self.dyn.get_node(value[0]) if self.dyn.has_node(value[0]) else None)
                if source is None:
                    raise ValueError(f"expanded node {new_id} input {name!r} links to unknown node {value[0]!r}")
                count = len(self.ex.registry.get(source["class_type"]).outputs)
                if not 0 <= value[1] < count:
                    raise ValueError(f"expanded node {new_id} input {name!r} links to output {value[1]} of "
                                     f"node {value[0]}, which has {count} output(s)")
        for new_id, node in new.items():
            display = node.pop("display")
            self.dyn.add_ephemeral_node(new_id, node, parent, display)
        return list(new)

    async def _admit(self, node_id: str) -> None:
        """Key the nodes the plan did not cover that `node_id` needs (itself included), sources
        first. Nodes on a cycle (and what follows them) get keys that match nothing; the
        scheduler then reports the cycle."""
        new: set[str] = set()
        stack = [node_id]
        while stack:
            current = stack.pop()
            if current in new or current in self.keys:
                continue
            new.add(current)
            stack += [s for s in self._sources(current) if self.dyn.has_node(s)]
        if not new:
            return
        order = _sources_first({n: self._sources(n) & new for n in new})
        for n in new.difference(order):  # on a cycle or fed by one
            self.keys[n] = "cycle:" + uuid.uuid4().hex
        for n in order:
            self.keys[n] = await self._key(n)
        if not self.ex.cache.retains:
            for n in new:
                for source in self._sources(n):
                    self._consumers.setdefault(source, set()).add(n)

    def _sources(self, node_id: str) -> set[str]:
        return {str(v[0]) for v in self.dyn.get_node(node_id)["inputs"].values() if is_link(v)}

    def _resolve_expansion(self, node_id: str, node_type: NodeType, calls: list) -> Entry:
        """The node's outputs with the links into its subgraphs replaced by their values."""
        per_slot: list[list] = [[] for _ in node_type.outputs]
        for values, subgraph in calls:
            for slot, value in enumerate(values):
                if subgraph is not None and is_link(value):
                    source = self.results[str(value[0])].outputs if self.available(str(value[0])) else None
                    if source is None or not 0 <= value[1] < len(source):
                        exc = ValueError(f"expansion result links to output {value[1]} of node {value[0]}, "
                                         f"which has {len(source or [])} output(s)")
                        raise NodeFailure(self._error_payload(node_id, exc, {}))
                    per_slot[slot].extend(source[value[1]])
                else:
                    _collect(node_type, per_slot, slot, value)
        return Entry(per_slot, self.result.outputs.get(node_id))

    # -- blockers and errors -----------------------------------------------------------------
    def _pass_blocker(self, blocker: ExecutionBlocker, ctx: NodeContext) -> ExecutionBlocker:
        """As ComfyUI: a blocker with a message is reported once, by the first node it stops,
        as an execution_error (the prompt goes on); what that node passes on is silent."""
        if blocker.message is None:
            return blocker
        if self._sink is not None:  # sent, not recorded: ComfyUI keeps it out of the history status
            self._sink("execution_error", {
                "prompt_id": self.prompt_id, "node_id": ctx.node_id, "node_type": ctx.class_type,
                "executed": list(self.result.executed),
                "exception_message": f"Execution Blocked: {blocker.message}",
                "exception_type": "ExecutionBlocked", "traceback": [], "current_inputs": [],
                "current_outputs": [], "timestamp": _now()})
        self.result.blocked.append({"node_id": ctx.node_id, "message": blocker.message})
        return ExecutionBlocker(None)

    def _error_payload(self, node_id: str, exc: BaseException, inputs: dict,
                       exception_type: str | None = None) -> dict:
        """ComfyUI's execution_error: an error inside an expansion is the error of the submitted
        node that expanded (the one the editor shows), with the inner exception's details."""
        real = self.dyn.get_real_node_id(node_id)
        return {
            "prompt_id": self.prompt_id,
            "node_id": real,
            "node_type": self.dyn.get_node(real)["class_type"],
            "executed": list(self.result.executed),
            "exception_message": exception_message(exc),
            "exception_type": exception_type or _type_name(type(exc)),
            # ComfyUI's field: the frames only (format_tb), no header and no chained exceptions
            "traceback": traceback.format_tb(exc.__traceback__) if exception_type is None else [],
            "current_inputs": {k: [describe_value(x, 120) for x in v] for k, v in inputs.items()
                               if not isinstance(v, dict)},
            "current_outputs": list(self.results),
            "timestamp": _now(),
        }


def _sources_first(sources: dict[str, set[str]]) -> list[str]:
    """The nodes of `sources` (node -> the nodes it links to, all among them) in an order where
    each comes after its sources: Kahn's algorithm. Nodes on a cycle, and those fed by one, are
    left out (validation has refused cycles among the nodes an output needs)."""
    waiting = {node_id: len(linked) for node_id, linked in sources.items()}
    consumers: dict[str, list[str]] = {}
    for node_id, linked in sources.items():
        for source in linked:
            consumers.setdefault(source, []).append(node_id)
    order = [node_id for node_id, count in waiting.items() if count == 0]
    for node_id in order:  # grows while it is walked
        for consumer in consumers.get(node_id, ()):
            waiting[consumer] -= 1
            if waiting[consumer] == 0:
                order.append(consumer)
    return order


async def _resolve(calls: list) -> list:
    """Per-call results with tasks awaited (the first exception raised)."""
    tasks = [c for c in calls if isinstance(c, asyncio.Task)]
    if tasks:
        await asyncio.gather(*tasks)
    return [c.result() if isinstance(c, asyncio.Task) else c for c in calls]


def _interrupted(node_id: str) -> Interrupted:
    stop = Interrupted(f"interrupted before node {node_id}")
    stop.node_id = node_id
    return stop


def _type_name(cls: type) -> str:
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _collect(node_type: NodeType, per_slot: list[list], slot: int, value: Any) -> None:
    """Add one call's output to its slot: a list output contributes its items (a blocker stands
    for the whole list), any other output the value itself."""
    if node_type.output_is_list[slot] and not isinstance(value, ExecutionBlocker):
        per_slot[slot].extend(value)
    else:
        per_slot[slot].append(value)


def _hidden_kind(kind: Any) -> str:
    return kind[0] if isinstance(kind, (tuple, list)) and kind else str(kind)


def _split_result(node_type: NodeType, result: Any) -> tuple[tuple, dict | None]:
    """A node returns a tuple, or {"ui": ..., "result": ...}; check it matches RETURN_TYPES."""
    ui = None
    if isinstance(result, dict) and ("ui" in result or "result" in result or "expand" in result):
        ui = result.get("ui")
        result = result.get("result", ())
        if ui is not None and not isinstance(ui, dict):
            raise TypeError(f"{node_type.name} returned a 'ui' that is not a dict")
    if isinstance(result, ExecutionBlocker):
        result = (result,) * len(node_type.outputs)
    if result is None:
        result = ()
    if isinstance(result, list):
        result = tuple(result)
    if not isinstance(result, tuple):
        raise TypeError(f"{node_type.name} must return a tuple of outputs, got {type(result).__name__}")
    if len(result) != len(node_type.outputs) and not (len(result) == 0 and ui is not None):
        raise TypeError(f"{node_type.name} returned {len(result)} value(s) but declares "
                        f"{len(node_type.outputs)} output(s) {list(node_type.outputs)}")
    if len(result) == 0:
        result = (None,) * len(node_type.outputs)
    return result, ui
