"""Validation of an API-format prompt before anything runs.

Every error is collected, not just the first, in ComfyUI's structured shape. The result carries
a normalised copy of the prompt (literals cast to their declared types) and the output nodes
that can run; a prompt runs when at least one of its outputs is valid.
"""
from __future__ import annotations

import contextlib
import difflib
import math
from dataclasses import dataclass, field
from typing import Any

from graph.aio import run_sync
from graph.contract import InputSpec, NodeType, types_compatible
from graph.errors import describe_value, error, input_error
from graph.prompt import is_link, output_node_ids, unwrap, wrap
from graph.registry import NodeRegistry

COMBO_LIST_ELIDE = 20


@dataclass
class ValidationResult:
    ok: bool
    prompt: dict
    outputs: list[str]
    error: dict | None = None
    node_errors: dict = field(default_factory=dict)
    graph: LinkGraph | None = None  # every link as source -> consumer, reused by the executor

    def as_dict(self) -> dict:
        return {"error": self.error, "node_errors": self.node_errors}


def validate_prompt(prompt: Any, registry: NodeRegistry, targets: list | None = None) -> ValidationResult:
    if not isinstance(prompt, dict) or not all(isinstance(k, str) for k in prompt):
        return _fail(error("invalid_prompt", "Invalid prompt",
                           "the prompt must be a JSON object mapping node ids to nodes"), {})
    problems: dict[str, list[dict]] = {}
    normalised: dict[str, dict] = {}
    broken: dict[str, dict] = {}  # nodes that cannot be checked (e.g. unknown types): their links only
    for node_id, node in prompt.items():
        shape = _node_shape_error(node, registry)
        inputs = node.get("inputs") if isinstance(node, dict) else None
        inputs = {k: [str(v[0]), v[1]] if is_link(v) else v for k, v in inputs.items()} \
            if isinstance(inputs, dict) else {}
        if shape:
            problems[node_id] = [shape]
            broken[node_id] = {"inputs": {k: v for k, v in inputs.items() if is_link(v)}}
        else:
            normalised[node_id] = {"class_type": node["class_type"], "inputs": inputs}
    structural = bool(problems)

    graph = _link_graph({**normalised, **broken})
    for component in cycles(graph):
        members = ", ".join(sorted(component))
        for node_id in component:
            problems.setdefault(node_id, []).append(
                error("dependency_cycle", "Dependency cycle", f"nodes {members} depend on each other"))

    if targets is not None and not isinstance(targets, list):
        return _fail(error("invalid_prompt", "Invalid prompt", "partial_execution_targets must be a list"), {})
    outputs = output_node_ids(normalised, registry, targets)

    needed = reachable(graph.pred, outputs)
    specs = _SpecMemo(registry)
    for node_id in sorted(needed):
        if node_id in problems:
            continue
        own = _validate_node(node_id, normalised, registry, specs, broken)
        if own:
            problems[node_id] = own

    tainted = reachable(graph.succ, [n for n in problems if n in graph.pred])
    valid_outputs = [o for o in outputs if o not in tainted]
    node_errors = _node_errors(problems, outputs, graph, prompt)

    if structural:
        return _fail(error("invalid_prompt", "Invalid prompt", _summary(node_errors)), node_errors)
    if not outputs:
        return _fail(error("prompt_no_outputs", "Prompt has no outputs",
                           "no node of the prompt is an output node (SaveImage, PreviewImage, ...)"),
                     node_errors)
    if not valid_outputs:
        return _fail(error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                           _summary(node_errors)), node_errors)
    return ValidationResult(True, normalised, valid_outputs, None, node_errors, graph)


@dataclass
class LinkGraph:
    """A prompt's links both ways: node -> the nodes it takes inputs from, and -> those taking its outputs."""

    pred: dict[str, set[str]]
    succ: dict[str, set[str]]


def cycles(graph: LinkGraph) -> list[set[str]]:
    """The groups of nodes that depend on each other (strongly connected components holding a
    cycle, a node linked to itself included): Tarjan's algorithm, with an explicit stack so a
    long chain of nodes cannot exhaust Python's recursion limit."""
    order: dict[str, int] = {}  # node -> when the walk reached it
    low: dict[str, int] = {}  # node -> the earliest node still on `path` that it reaches
    path: list[str] = []
    on_path: set[str] = set()
    found = []
    for root in graph.succ:
        if root in order:
            continue
        walk = [(root, iter(graph.succ[root]))]
        order[root] = low[root] = len(order)
        path.append(root)
        on_path.add(root)
        while walk:
            node, consumers = walk[-1]
            for consumer in consumers:
                if consumer not in order:
                    order[consumer] = low[consumer] = len(order)
                    path.append(consumer)
                    on_path.add(consumer)
                    walk.append((consumer, iter(graph.succ[consumer])))
                    break
                if consumer in on_path:
                    low[node] = min(low[node], order[consumer])
            else:  # every consumer of `node` is done
                walk.pop()
                if walk:
                    parent = walk[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == order[node]:
                    component = set()
                    while True:
                        member = path.pop()
                        on_path.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph.succ[node]:
                        found.append(component)
    return found


def reachable(adjacency, starts) -> set[str]:
    """Every node reachable from `starts` (included) along `adjacency`, in one pass."""
    seen = set(starts)
    stack = list(seen)
    while stack:
        for nxt in adjacency[stack.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


class _SpecMemo:
    """INPUT_TYPES is evaluated once per class per validation, not once per node."""

    def __init__(self, registry: NodeRegistry):
        self.registry = registry
        self._memo: dict[str, tuple] = {}
        self.folders: dict[str, list[str]] = {}  # class -> folder keys its INPUT_TYPES listed

    def __call__(self, class_type: str) -> tuple:
        if class_type not in self._memo:
            node_type = self.registry.get(class_type)
            folders = getattr(self.registry.env, "folders", None)
            listed: list[str] = []
            try:
                with folders.recording() if folders is not None else contextlib.nullcontext(listed) as listed:
                    self._memo[class_type] = (node_type.inputs(), node_type.validator(), None)
            except Exception as exc:
                self._memo[class_type] = (None, None, exc)
            self.folders[class_type] = list(listed)
        return self._memo[class_type]

    def list_hint(self, class_type: str, choices: tuple) -> str:
        """Where the files of a node's choice list come from, and what to do when it is empty."""
        folders = getattr(self.registry.env, "folders", None)
        keys = self.folders.get(class_type) or []
        if folders is None or not keys:
            return "" if choices else " (the list is empty: no matching files were found)"
        if choices:
            sources = [key for key in keys if set(choices) <= set(folders.filenames(key))]
            dirs = [str(d) for key in sources for d in folders.model_dirs(key)]
            if not dirs:
                return ""
            return (f" (files listed from {', '.join(dirs)}; to use another file, put it in {dirs[0]} and "
                    "try again (the editor lists new files after R))")
        empty = [key for key in keys if not folders.filenames(key)] or keys
        dirs = [folders.model_dirs(key) for key in empty]
        where = " and ".join(f"the {key} folder {d[0]}" for key, d in zip(empty, dirs) if d)
        others = [str(x) for d in dirs for x in d[1:] if x.is_dir()]
        return (f" (the list is empty: no files in {where}"
                + (f" nor in {', '.join(others)}" if others else "")
                + "; put the model file there and try again (the editor lists new files after R))")


def _fail(err: dict, node_errors: dict) -> ValidationResult:
    return ValidationResult(False, {}, [], err, node_errors)


def _summary(node_errors: dict) -> str:
    return "\n".join(f"{e['message']}: {e['details']}" for entry in node_errors.values() for e in entry["errors"])


def _node_shape_error(node: Any, registry: NodeRegistry) -> dict | None:
    if not isinstance(node, dict):
        return error("invalid_prompt", "Node is not an object", f"got {describe_value(node)}")
    class_type = node.get("class_type")
    if class_type is None:
        return error("missing_node_type", "Node has no class_type", "every node needs a 'class_type'")
    if not isinstance(class_type, str) or class_type not in registry:
        return error("missing_node_type", "Unknown node type", registry.unknown_type_message(class_type),
                     class_type=describe_value(class_type))
    inputs = node.get("inputs", {})
    if not isinstance(inputs, dict):
        return error("invalid_prompt", "Node inputs are not an object", f"got {describe_value(inputs)}")
    return None


def _link_graph(prompt: dict) -> LinkGraph:
    """Every link whose source exists (nodes as {"inputs": ...})."""
    graph = LinkGraph({node_id: set() for node_id in prompt}, {node_id: set() for node_id in prompt})
    for node_id, node in prompt.items():
        for value in node["inputs"].values():
            if is_link(value) and value[0] in prompt:
                graph.pred[node_id].add(value[0])
                graph.succ[value[0]].add(node_id)
    return graph


def _node_errors(problems: dict, outputs: list[str], graph: LinkGraph, prompt: dict) -> dict:
    if not problems:
        return {}
    ancestry = {o: reachable(graph.pred, [o]) for o in outputs if o in graph.pred}
    result = {}
    for node_id, errors in problems.items():
        node = prompt.get(node_id)
        class_type = node.get("class_type") if isinstance(node, dict) else None
        result[node_id] = {
            "errors": errors,
            "dependent_outputs": [o for o, anc in ancestry.items() if node_id in anc],
            "class_type": class_type if isinstance(class_type, str) else describe_value(class_type),
        }
    return result


# ---------------------------------------------------------------------------------------------
# One node's own inputs.


def _validate_node(node_id: str, prompt: dict, registry: NodeRegistry, memo: _SpecMemo,
                   broken: dict) -> list[dict]:
    node = prompt[node_id]
    specs, validator, exc = memo(node["class_type"])
    if exc is not None:
        return [error("exception_during_validation", "Exception while reading the node's inputs",
                      f"{type(exc).__name__}: {exc}")]
    checked_by_node = set()
    if validator:
        _, names, has_kwargs, _ = validator
        checked_by_node = set(specs) if has_kwargs else names
    errors: list[dict] = []
    received_types: dict[str, Any] = {}
    inputs = node["inputs"]
    undeclared = [n for n in inputs if n not in specs]
    for name, spec in specs.items():
        if spec.section == "hidden":
            continue
        if name not in inputs:
            if spec.section == "required":
                errors.append(input_error("required_input_missing", "Required input is missing",
                                          name + _misspelt(name, undeclared, node["class_type"]), name,
                                          _config(spec)))
            continue
        value = inputs[name]
        if is_link(value) and str(value[0]) in broken:
            continue  # the source's own error says what is wrong with it
        if isinstance(value, (list, tuple)):
            err = _check_link(name, value, spec, prompt, registry, received_types,
                              wants_types=bool(validator and validator[3]))
        else:  # a node that validates an input itself waives its range and list checks
            err = _check_literal(name, value, spec, inputs, checked_by_node=name in checked_by_node,
                                 list_hint=lambda choices: memo.list_hint(node["class_type"], choices))
        if err:
            errors.append(err)
    for name in undeclared:
        value = inputs[name]
        if not is_link(value):
            del inputs[name]  # undeclared literals are dropped, as ComfyUI does
        elif str(value[0]) not in prompt and str(value[0]) not in broken:
            errors.append(input_error("bad_linked_input", "Link to a missing node",
                                      f"{name} links to node {value[0]!r}, which is not in the prompt", name))
    if validator and not errors:
        errors.extend(_run_validator(validator, specs, inputs, received_types))
    return errors


def _misspelt(name: str, undeclared: list[str], class_type: str) -> str:
    """A note for a missing input when the node was given an unknown input of a similar name."""
    close = difflib.get_close_matches(name, undeclared, n=1, cutoff=0.6) or \
        [n for n in undeclared if n.lower() == name.lower()]
    if not close:
        return ""
    return f" (unknown input {close[0]!r} given instead: {class_type} has no input of that name; did you mean {name!r}?)"


def _config(spec: InputSpec) -> list:
    kind = list(spec.choices) if spec.choices is not None else spec.type
    if isinstance(kind, list) and len(kind) > COMBO_LIST_ELIDE:
        kind = f"(list of length {len(kind)})"
    return [kind, dict(spec.options)] if spec.options else [kind]


def _check_link(name, value, spec, prompt, registry, received_types, wants_types) -> dict | None:
    if not is_link(value):
        return input_error("bad_linked_input", "Bad linked input, must be a length-2 list of [string, integer]",
                           f"{name}: {describe_value(value)}; wrap a literal list as {{\"__value__\": [...]}}",
                           name, _config(spec), received_value=describe_value(value))
    source_id, slot = str(value[0]), value[1]
    source = prompt.get(source_id)
    if source is None:
        return input_error("bad_linked_input", "Link to a missing node",
                           f"{name} links to node {source_id!r}, which is not in the prompt", name, _config(spec))
    source_type = registry.get(source["class_type"])
    if not 0 <= slot < len(source_type.outputs):
        return input_error("bad_linked_input", "Link to a missing output",
                           f"{name} links to output {slot} of node {source_id} ({source['class_type']}), "
                           f"which has {len(source_type.outputs)} output(s)", name, _config(spec),
                           linked_node=[source_id, slot])
    received = source_type.outputs[slot]
    received_types[name] = received
    expected = list(spec.choices) if spec.choices is not None else spec.type
    if not wants_types and not types_compatible(received, expected):
        return input_error("return_type_mismatch", "Return type mismatch between linked nodes",
                           f"{name}, received_type({received}) mismatch input_type({spec.type})",
                           name, _config(spec), received_type=received, linked_node=[source_id, slot])
    return None


def _check_literal(name: str, raw: Any, spec: InputSpec, inputs: dict, checked_by_node: bool = False,
                   list_hint=None) -> dict | None:
    value = unwrap(raw)
    try:
        value = _cast(spec, value)
    except (TypeError, ValueError) as exc:
        return input_error("invalid_input_type", f"Failed to convert an input value to a {spec.type} value",
                           f"{name}, {describe_value(value)}, {exc}", name, _config(spec),
                           received_value=describe_value(value))
    inputs[name] = wrap(value)
    if checked_by_node:
        return None
    opts = spec.options
    if spec.type in ("INT", "FLOAT"):
        if opts.get("min") is not None and value < opts["min"]:
            return input_error("value_smaller_than_min", f"Value {value} smaller than min of {opts['min']}",
                               f"{name}", name, _config(spec), received_value=value)
        if opts.get("max") is not None and value > opts["max"]:
            return input_error("value_bigger_than_max", f"Value {value} bigger than max of {opts['max']}",
                               f"{name}", name, _config(spec), received_value=value)
    if spec.type == "COMBO" and value not in spec.choices:
        shown = list(spec.choices) if len(spec.choices) <= COMBO_LIST_ELIDE else f"(list of length {len(spec.choices)})"
        hint = list_hint(spec.choices) if list_hint else \
            ("" if spec.choices else " (the list is empty: no matching files were found)")
        return input_error("value_not_in_list", "Value not in list",
                           f"{name}: {describe_value(value)} not in {shown}{hint}", name, _config(spec),
                           received_value=describe_value(value))
    return None


def _cast(spec: InputSpec, value: Any) -> Any:
    """Cast a literal to its declared type, refusing values that would change meaning silently."""
    kind = spec.type
    if kind == "INT":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(f"expected an integer, got {type(value).__name__}")
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            raise ValueError("not a whole number")
        return int(value)
    if kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(f"expected a number, got {type(value).__name__}")
        result = float(value)  # "inf" and "nan" strings too
        if not math.isfinite(result):
            raise ValueError(f"{result} is not a finite number")
        return result
    if kind == "STRING":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError(f"expected a string, got {type(value).__name__}")
        return value if isinstance(value, str) else str(value)
    if kind == "BOOLEAN":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise TypeError(f"expected true or false, got {describe_value(value)}")
    # As in ComfyUI, only the four primitives are converted; a literal for any other type (COMBO,
    # "*", a plugin's own type) reaches the node as it was written.
    return value


def _run_validator(validator, specs: dict, inputs: dict, received_types: dict) -> list[dict]:
    fn, names, has_kwargs, wants_types = validator
    constants = {n: (None if is_link(v) else unwrap(v)) for n, v in inputs.items()}
    if has_kwargs:
        kwargs = dict(constants)
    else:
        kwargs = {n: constants.get(n) for n in names if n != "input_types"}
    if wants_types:
        kwargs["input_types"] = received_types
    try:
        result = run_sync(fn(**kwargs))  # VALIDATE_INPUTS may be `async def`
    except Exception as exc:
        return [error("exception_during_inner_validation", "Exception in the node's input validation",
                      f"{type(exc).__name__}: {exc}")]
    if result is True:
        return []
    return [error("custom_validation_failed", "Custom validation failed for node", str(result),
                  input_name=next((n for n in names if n in specs), None))]
