"""Runs validated prompts: only what the outputs need, in topological order, with caching.

The executor lives across prompts (its caches and node instances persist). It reports through
`emit(event, data)` with ComfyUI's websocket vocabulary; the server forwards those events and
the command line draws them.
"""
from __future__ import annotations

import contextlib
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import networkx as nx

from graph.blocker import ExecutionBlocker
from graph.cache import ClassicCache, Entry, OutputCache, safe_node_key
from graph.context import Emit, Interrupted, NodeContext, current_context
from graph.contract import NodeType
from graph.errors import PromptError, describe_value, exception_message
from graph.graph_builder import GraphBuilder
from graph.prompt import is_link, unwrap
from graph.registry import NodeRegistry
from graph.validation import ValidationResult, reachable, validate_prompt


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

    @property
    def ok(self) -> bool:
        return self.status == "success"


def _now() -> int:
    return int(time.time() * 1000)


class Executor:
    def __init__(self, registry: NodeRegistry, cache: OutputCache | None = None,
                 on_preview: Callable[[Any, NodeContext], None] | None = None,
                 call_context: Callable[[], Any] | None = None):
        """`call_context` wraps every node call (the runtime passes torch.inference_mode)."""
        self.registry = registry
        self.call_context = call_context or contextlib.nullcontext
        self.cache = cache if cache is not None else ClassicCache()
        self.on_preview = on_preview
        self.interrupt_flag = threading.Event()
        self._instances: dict[tuple[str, str], Any] = {}

    def interrupt(self) -> None:
        self.interrupt_flag.set()

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
        return run.go()


class _Run:
    """The state of one prompt's execution."""

    def __init__(self, executor: Executor, checked: ValidationResult, prompt_id: str, extra_data: dict,
                 emit: Emit | None, original: dict | None):
        self.ex = executor
        self.prompt = dict(checked.prompt)  # grows with the nodes that expansion adds
        self.original = original if original is not None else checked.prompt
        self.outputs = checked.outputs
        self.graph = checked.graph
        self.prompt_id = prompt_id
        self.extra_data = extra_data
        self.result = RunResult(prompt_id, "success")
        self._sink = emit
        self.results: dict[str, Entry] = {}
        self._hidden: dict[str, dict[str, str]] = {}
        self._lazy: dict[str, frozenset[str]] = {}
        self.display: dict[str, str] = {}  # expanded node id -> the id the UI shows (its parent's)
        self._expansions: dict[str, list] = {}  # node id -> per-call (values, subgraph) to resolve
        self._running: set[str] = set()

    def emit(self, event: str, data: dict) -> None:
        if event.startswith("execution_"):
            self.result.messages.append([event, data])  # kept for the history's status
        if self._sink is not None:
            self._sink(event, data)

    # -- planning ---------------------------------------------------------------------------
    def plan(self) -> tuple[list[str], dict[str, str], set[str]]:
        """Keys of every node the outputs could use, which hit the cache, and the order of the
        nodes that must run. Sources of lazy inputs are keyed but only run when requested."""
        graph = self.graph
        wanted = reachable(graph.pred, self.outputs)
        order = [n for n in nx.topological_sort(graph) if n in wanted]
        self.position = {n: i for i, n in enumerate(order)}
        keys: dict[str, str] = {}
        for node_id in order:
            keys[node_id] = self.key(node_id, keys)
        self.ex.cache.begin_prompt(keys.values())
        hits = {n for n in order if self.ex.cache.get(keys[n]) is not None}
        needed = self.uncached_ancestry([o for o in self.outputs if o not in hits], hits)
        self.consumers = {n: sum(1 for c in graph.succ[n] if c in needed) for n in wanted}
        self.keys, self.hits = keys, hits
        return [n for n in order if n in needed], keys, hits

    def uncached_ancestry(self, starts: list[str], hits: set[str]) -> set[str]:
        """`starts` and everything they need through non-lazy links, stopping at cache hits."""
        needed: set[str] = set()
        stack = list(starts)
        while stack:
            node_id = stack.pop()
            if node_id in needed:
                continue
            needed.add(node_id)
            stack.extend(src for src in self.strong_sources(node_id) if src not in hits)
        return needed

    def strong_sources(self, node_id: str) -> list[str]:
        lazy = self.lazy_inputs(self.ex.registry.get(self.prompt[node_id]["class_type"]))
        return [v[0] for name, v in self.prompt[node_id]["inputs"].items() if is_link(v) and name not in lazy]

    def lazy_inputs(self, node_type: NodeType) -> frozenset[str]:
        if node_type.name not in self._lazy:
            self._lazy[node_type.name] = frozenset(n for n, spec in node_type.inputs().items() if spec.lazy)
        return self._lazy[node_type.name]

    def hidden_inputs(self, node_type: NodeType) -> dict[str, str]:
        """{input name: hidden kind}, read once per class per prompt."""
        if node_type.name not in self._hidden:
            raw = node_type.input_types().get("hidden") or {}
            self._hidden[node_type.name] = {name: _hidden_kind(kind) for name, kind in raw.items()}
        return self._hidden[node_type.name]

    def key(self, node_id: str, keys: dict[str, str]) -> str:
        node = self.prompt[node_id]
        node_type = self.ex.registry.get(node["class_type"])
        changed = None
        if node_type.has_is_changed():
            constants = {k: (None if is_link(v) else unwrap(v)) for k, v in node["inputs"].items()}
            try:
                changed = node_type.is_changed(constants)
            except Exception:
                changed = float("nan")  # a failing IS_CHANGED means "always re-run"
        by_id = node_type.not_idempotent or "UNIQUE_ID" in self.hidden_inputs(node_type).values()
        return safe_node_key(node["class_type"], node["inputs"], keys, changed, node_id if by_id else None)

    # -- running ----------------------------------------------------------------------------
    def go(self) -> RunResult:
        self.ex.interrupt_flag.clear()
        self.emit("execution_start", {"prompt_id": self.prompt_id, "timestamp": _now()})
        current = None
        try:
            order, keys, cached = self.plan()
            self.result.cached = sorted(cached)
            self.emit("execution_cached", {"nodes": self.result.cached, "prompt_id": self.prompt_id,
                                           "timestamp": _now()})
            for node_id in self.result.cached:  # hits feeding a node that runs, and cached outputs
                if node_id in self.outputs or self.consumers[node_id]:
                    self.results[node_id] = self.ex.cache.get(keys[node_id])
                if node_id in self.outputs:
                    self._report_ui(node_id, self.results[node_id])
            for node_id in order:
                current = node_id
                if node_id not in self.results:  # lazy requests may have run it already
                    self.step(node_id)
        except Interrupted:
            self.result.status = "interrupted"
            node = self.prompt.get(current, {}) if current else {}
            self.emit("execution_interrupted", {"prompt_id": self.prompt_id, "node_id": current,
                                                "node_type": node.get("class_type"),
                                                "executed": list(self.result.executed), "timestamp": _now()})
            return self.result
        except NodeFailure as failure:
            self.result.status = "error"
            self.result.error = failure.args[0]
            self.emit("execution_error", failure.args[0])
            return self.result
        self.emit("execution_success", {"prompt_id": self.prompt_id, "timestamp": _now()})
        return self.result

    def step(self, node_id: str) -> None:
        """Run one node (after whatever its lazy inputs ask for) and keep its result."""
        if self.ex.interrupt_flag.is_set():
            raise Interrupted(f"interrupted before node {node_id}")
        if node_id in self._running:  # an expansion linked back to a node that is still running
            raise NodeFailure(self._error_payload(node_id, self.prompt[node_id]["class_type"], RuntimeError(
                f"dependency cycle: node {node_id} needs its own output"), {}, "DependencyCycleError"))
        self._running.add(node_id)
        try:
            self.resolve_lazy(node_id)
            entry = self.run_node(node_id)
            calls = self._expansions.pop(node_id, None)
            if calls is not None:
                entry = self.expand(node_id, calls, entry.ui)
        finally:
            self._running.discard(node_id)
        self.results[node_id] = entry
        self.ex.cache.put(self.keys[node_id], entry)
        self.result.executed.append(node_id)
        self._report_ui(node_id, entry)
        self._release_inputs(node_id)

    def resolve_lazy(self, node_id: str) -> None:
        """Ask the node which lazy inputs it needs (check_lazy_status, as ComfyUI), run their
        sources, and ask again until it needs nothing more."""
        node = self.prompt[node_id]
        node_type = self.ex.registry.get(node["class_type"])
        lazy = self.lazy_inputs(node_type)
        instance = self._instance(node_id, node_type)
        if not lazy or not hasattr(instance, "check_lazy_status"):
            return
        while True:
            inputs = self.gather_inputs(node_id, node, node_type)
            args = inputs if node_type.input_is_list else {k: v[0] if v else None for k, v in inputs.items()}
            if any(_blocked(v) for v in inputs.values()):
                return  # a blocked node asks for nothing; it will not run
            try:
                requested = instance.check_lazy_status(**args) or []
            except Exception as exc:
                raise NodeFailure(self._error_payload(node_id, node["class_type"], exc, inputs)) from exc
            sources = [node["inputs"][name][0] for name in requested
                       if name in lazy and is_link(node["inputs"].get(name))
                       and node["inputs"][name][0] not in self.results]
            if not sources:
                return
            self.run_sources(sources)

    def run_sources(self, sources: list[str]) -> None:
        """Make `sources` available in self.results: load cache hits, run the rest (and what they
        need) in plan order."""
        done = self.hits | set(self.results)
        todo = self.uncached_ancestry([s for s in sources if s not in self.results], done)
        todo |= {s for n in todo for s in self.strong_sources(n) if s in self.hits}
        for src in sorted(todo, key=self.position.__getitem__):
            if src in self.results:
                continue
            if src in self.hits:
                self.results[src] = self.ex.cache.get(self.keys[src])
            else:
                self.step(src)

    # -- node expansion ---------------------------------------------------------------------
    def expand(self, node_id: str, calls: list, ui: dict | None) -> Entry:
        """Add the subgraphs a node returned to the prompt, run its output nodes and what the
        node's results link to, and return the node's outputs with those links resolved."""
        class_type = self.prompt[node_id]["class_type"]
        node_type = self.ex.registry.get(class_type)
        targets: list[str] = []
        for values, subgraph in calls:
            if subgraph is None:
                continue
            try:
                added = self._add_subgraph(node_id, subgraph)
                for value in values:
                    if is_link(value) and str(value[0]) not in self.prompt:
                        raise ValueError(f"expansion result links to unknown node {value[0]!r}")
            except (ValueError, TypeError) as exc:
                raise NodeFailure(self._error_payload(node_id, class_type, exc, {})) from exc
            targets += [n for n in added if self.ex.registry.get(self.prompt[n]["class_type"]).is_output_node]
            targets += [str(v[0]) for v in values if is_link(v)]
        self._admit(targets)
        self.run_sources(list(dict.fromkeys(targets)))
        per_slot: list[list] = [[] for _ in node_type.outputs]
        for values, subgraph in calls:
            for slot, value in enumerate(values):
                if subgraph is not None and is_link(value):
                    source = self.results[str(value[0])].outputs
                    if not 0 <= value[1] < len(source):
                        exc = ValueError(f"expansion result links to output {value[1]} of node {value[0]}, "
                                         f"which has {len(source)} output(s)")
                        raise NodeFailure(self._error_payload(node_id, class_type, exc, {}))
                    per_slot[slot].extend(source[value[1]])
                else:
                    _collect(node_type, per_slot, slot, value)
        return Entry(per_slot, ui)

    def _add_subgraph(self, parent: str, subgraph: Any) -> list[str]:
        if not isinstance(subgraph, dict):
            raise ValueError("'expand' must be a dict of API-format nodes")
        added = []
        for raw_id, info in subgraph.items():
            new_id = str(raw_id)
            if new_id in self.prompt:
                raise ValueError(f"Attempt to add duplicate node {new_id}. Ensure node ids are unique "
                                 "and deterministic or use graph_builder.GraphBuilder.")
            if not isinstance(info, dict) or self.ex.registry.get(info.get("class_type")) is None:
                raise ValueError(f"expanded node {new_id} has an unknown class_type "
                                 f"{info.get('class_type') if isinstance(info, dict) else info!r}")
            inputs = {k: [str(v[0]), v[1]] if is_link(v) else v for k, v in (info.get("inputs") or {}).items()}
            self.prompt[new_id] = {"class_type": info["class_type"], "inputs": inputs}
            self.display[new_id] = str(info.get("override_display_id", parent))
            added.append(new_id)
        for new_id in added:
            for name, value in self.prompt[new_id]["inputs"].items():
                if not is_link(value):
                    continue
                if value[0] not in self.prompt:
                    raise ValueError(f"expanded node {new_id} input {name!r} links to unknown node {value[0]!r}")
                count = len(self.ex.registry.get(self.prompt[value[0]]["class_type"]).outputs)
                if not 0 <= value[1] < count:
                    raise ValueError(f"expanded node {new_id} input {name!r} links to output {value[1]} of "
                                     f"node {value[0]}, which has {count} output(s)")
        return added

    def _admit(self, node_ids: list[str]) -> None:
        """Key, order and look up in the cache the nodes the plan did not cover (expanded nodes,
        or prompt nodes an expansion links to) that `node_ids` need."""
        new: set[str] = set()
        stack = [n for n in node_ids if n not in self.keys]
        while stack:
            node_id = stack.pop()
            if node_id in new or node_id in self.keys:
                continue
            new.add(node_id)
            stack += [v[0] for v in self.prompt[node_id]["inputs"].values() if is_link(v) and v[0] not in self.keys]
        sub = nx.DiGraph()
        sub.add_nodes_from(new)
        sub.add_edges_from((v[0], n) for n in new for v in self.prompt[n]["inputs"].values()
                           if is_link(v) and v[0] in new)
        try:
            order = list(nx.topological_sort(sub))
        except nx.NetworkXUnfeasible:
            cycle = [edge[0] for edge in nx.find_cycle(sub)]
            raise NodeFailure(self._error_payload(cycle[0], self.prompt[cycle[0]]["class_type"], RuntimeError(
                f"dependency cycle among expanded nodes {', '.join(cycle)}"), {}, "DependencyCycleError")) from None
        for node_id in order:
            self.position[node_id] = len(self.position)
            self.keys[node_id] = self.key(node_id, self.keys)
            if self.ex.cache.get(self.keys[node_id]) is not None:
                self.hits.add(node_id)

    def _report_ui(self, node_id: str, entry: Entry) -> None:
        if entry.ui is not None:
            self.result.outputs[node_id] = entry.ui
            self.emit("executed", {"node": node_id, "display_node": self.display_id(node_id), "output": entry.ui,
                                   "prompt_id": self.prompt_id})

    def display_id(self, node_id: str) -> str:
        """The prompt node an expanded node is shown as (its outermost expanding parent)."""
        while node_id in self.display:
            node_id = self.display[node_id]
        return node_id

    def _release_inputs(self, node_id: str) -> None:
        """Without a retaining cache, drop an output as soon as its last consumer has run."""
        if self.ex.cache.retains or node_id in self.display:  # expanded consumers were never counted
            return
        for value in self.prompt[node_id]["inputs"].values():
            if is_link(value) and value[0] in self.consumers:
                self.consumers[value[0]] -= 1
                if self.consumers[value[0]] <= 0:
                    self.results.pop(value[0], None)

    def run_node(self, node_id: str) -> Entry:
        node = self.prompt[node_id]
        class_type = node["class_type"]
        node_type = self.ex.registry.get(class_type)
        self.emit("executing", {"node": node_id, "display_node": self.display_id(node_id), "prompt_id": self.prompt_id})
        inputs = self.gather_inputs(node_id, node, node_type)
        ctx = NodeContext(self.prompt_id, node_id, class_type, self.ex.registry.env, self.original,
                          self.extra_data, self.ex.interrupt_flag, self.emit, self.ex.on_preview)
        token = current_context.set(ctx)
        try:
            instance = self._instance(node_id, node_type)
            with self.ex.call_context():
                return self.call_mapped(node_type, instance, ctx, inputs)
        except Interrupted:
            raise
        except Exception as exc:
            raise NodeFailure(self._error_payload(node_id, class_type, exc, inputs)) from exc
        finally:
            current_context.reset(token)

    def _instance(self, node_id: str, node_type: NodeType) -> Any:
        key = (node_id, node_type.name)
        if key not in self.ex._instances:
            self.ex._instances[key] = node_type.instantiate()
        return self.ex._instances[key]

    def gather_inputs(self, node_id: str, node: dict, node_type: NodeType) -> dict[str, list]:
        """Every input as a list: upstream outputs already are lists, literals become one item."""
        data: dict[str, list] = {}
        for name, value in node["inputs"].items():
            if is_link(value):
                source = self.results.get(value[0])
                data[name] = source.outputs[value[1]] if source is not None else [None]  # an unasked lazy input
            else:
                data[name] = [unwrap(value)]
        for name, kind in self.hidden_inputs(node_type).items():
            data[name] = [self._hidden_value(kind, node_id)]
        return data

    def _hidden_value(self, kind: str, node_id: str) -> Any:
        return {
            "PROMPT": self.original,
            "DYNPROMPT": self.original,
            "EXTRA_PNGINFO": self.extra_data.get("extra_pnginfo"),
            "UNIQUE_ID": node_id,
        }.get(kind)

    def call_mapped(self, node_type: NodeType, instance: Any, ctx: NodeContext, inputs: dict[str, list]) -> Entry:
        """ComfyUI's list mapping: one call per item of the longest input list, or one call with
        every list when the node takes INPUT_IS_LIST."""
        if node_type.input_is_list:
            calls = [inputs]
        else:
            count = max((len(v) for v in inputs.values()), default=1)
            if any(len(v) == 0 for v in inputs.values()):
                count = 0
            calls = [{k: v[min(i, len(v) - 1)] for k, v in inputs.items()} for i in range(count)]
        per_slot: list[list] = [[] for _ in node_type.outputs]
        ui: dict | None = None
        done: list[tuple] = []  # (values, subgraph or None) per call
        for index, kwargs in enumerate(calls):
            ctx.check_interrupt()
            given = (x for v in kwargs.values() for x in (v if node_type.input_is_list else (v,)))
            blocker = next((x for x in given if isinstance(x, ExecutionBlocker)), None)
            if blocker is not None:
                done.append(((self._pass_blocker(blocker, ctx),) * len(node_type.outputs), None))
                continue
            GraphBuilder.set_default_prefix(ctx.node_id, index, 0)
            result = node_type.call(instance, ctx, kwargs)
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
            self._expansions[ctx.node_id] = done  # step() runs the subgraphs and resolves the links
            return Entry(per_slot, ui)
        for values, _ in done:
            for slot, value in enumerate(values):
                _collect(node_type, per_slot, slot, value)
        return Entry(per_slot, ui)

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

    def _error_payload(self, node_id: str, class_type: str, exc: Exception, inputs: dict,
                       exception_type: str | None = None) -> dict:
        return {
            "prompt_id": self.prompt_id,
            "node_id": node_id,
            "node_type": class_type,
            "executed": list(self.result.executed),
            "exception_message": exception_message(exc),
            "exception_type": exception_type or f"{type(exc).__module__}.{type(exc).__qualname__}",
            "traceback": traceback.format_exception(exc),
            "current_inputs": {k: [describe_value(x, 120) for x in v] for k, v in inputs.items()
                               if not isinstance(v, dict)},
            "current_outputs": list(self.results),
            "timestamp": _now(),
        }


def _blocked(values: list) -> bool:
    return any(isinstance(v, ExecutionBlocker) for v in values)


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
    if isinstance(result, dict) and ("ui" in result or "result" in result):
        ui = result.get("ui")
        result = result.get("result", ())
        if ui is not None and not isinstance(ui, dict):
            raise TypeError(f"{node_type.name} returned a 'ui' that is not a dict")
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
