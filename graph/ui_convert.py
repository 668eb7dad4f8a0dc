"""Server-side conversion of a ComfyUI UI save ("workflow", litegraph JSON) into an API prompt.

ComfyUI only does this in the browser, so clients that hold a saved workflow cannot queue it
without the editor. A UI save stores widget values by position, not by name; mapping positions
to input names needs the node definitions (/object_info), which is why both are arguments.

Both the 0.4 schema (links as arrays) and the version-1 schema (`state`, links as objects) are
read, and subgraphs from `definitions.subgraphs` are flattened into "outer:inner" ids.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from graph.contract import WIDGET_TYPES, types_compatible
from graph.prompt import wrap

MODE_NEVER = 2
MODE_BYPASS = 4

# litegraph's pseudo node ids for a subgraph's boundary: links that enter a subgraph start at
# the input node, links that leave it end at the output node.
SUBGRAPH_INPUT_ID = "-10"
SUBGRAPH_OUTPUT_ID = "-20"

# Frontend-only node types. They only count as virtual when object_info does not define them,
# so a real node class that happens to share a name still wins.
REROUTE_TYPES = frozenset({"Reroute"})
PRIMITIVE_TYPES = frozenset({"PrimitiveNode"})
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})

CONTROL_MODES = frozenset({"fixed", "increment", "decrement", "randomize", "increment-wrap"})
# Older frontends added the seed control by input name instead of by the option.
LEGACY_SEED_INPUTS = frozenset({"seed", "noise_seed"})
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")


class WorkflowFormatError(ValueError):
    """A UI workflow whose structure is broken; the message names the node or link at fault."""


def is_ui_workflow(doc: Any) -> bool:
    """True for a litegraph/UI save: a `nodes` list plus `links` (0.4) or `state` (version 1)."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("nodes"), list):
        return False
    return "links" in doc or "state" in doc or doc.get("version") == 1


def ui_to_api(workflow: dict, object_info: dict[str, dict]) -> dict:
    """Return the API-format prompt for a UI-format workflow.

    Raises WorkflowFormatError for a structurally malformed document (the message names the
    node id or link id that is wrong). Nodes of unknown types are kept, so that validation
    reports them, rather than silently dropped.
    """
    if not isinstance(workflow, Mapping):
        raise WorkflowFormatError(f"a workflow must be a JSON object, got {type(workflow).__name__}")
    if not isinstance(object_info, Mapping):
        raise TypeError("object_info must be a dict of node definitions")
    root = _parse_graph(workflow, "workflow")
    converter = _Converter(object_info, _parse_definitions(workflow))
    return converter.convert(_Scope(root, "", None, None))


# ---------------------------------------------------------------------------------------------
# Parsing: turn the JSON into checked structures, failing with messages that name the culprit.

@dataclass(frozen=True)
class _Link:
    id: str
    origin: str
    origin_slot: int
    target: str
    target_slot: int
    type: Any


@dataclass(frozen=True)
class _Graph:
    """One level of nodes and links: the root workflow or one subgraph definition."""

    name: str
    nodes: dict[str, dict]  # node id (as a string) -> node, in save order
    links: dict[str, _Link]
    inputs: list  # a subgraph's boundary inputs and outputs; empty for the root
    outputs: list


def _parse_graph(doc: Mapping, name: str) -> _Graph:
    return _Graph(name, _parse_nodes(doc.get("nodes"), name), _parse_links(doc.get("links"), name),
                  _boundary(doc, "inputs", name), _boundary(doc, "outputs", name))


def _parse_definitions(workflow: Mapping) -> dict[str, _Graph]:
    definitions = workflow.get("definitions")
    if definitions is None:
        return {}
    if not isinstance(definitions, Mapping):
        raise WorkflowFormatError("workflow: 'definitions' must be an object")
    raw = definitions.get("subgraphs") or []
    if not isinstance(raw, list):
        raise WorkflowFormatError("workflow: 'definitions.subgraphs' must be a list")
    graphs = {}
    for index, sub in enumerate(raw):
        sub_id = sub.get("id") if isinstance(sub, Mapping) else None
        if not isinstance(sub_id, str) or not sub_id:
            raise WorkflowFormatError(f"workflow: definitions.subgraphs[{index}] has no string 'id'")
        graphs[sub_id] = _parse_graph(sub, f"subgraph {sub.get('name') or sub_id!r}")
    return graphs


def _parse_nodes(raw: Any, where: str) -> dict[str, dict]:
    if not isinstance(raw, list):
        raise WorkflowFormatError(f"{where}: 'nodes' must be a list, got {type(raw).__name__}")
    nodes: dict[str, dict] = {}
    for index, node in enumerate(raw):
        if not isinstance(node, Mapping):
            raise WorkflowFormatError(f"{where}: nodes[{index}] is not an object")
        node_id = _id_key(node.get("id"))
        if node_id is None:
            raise WorkflowFormatError(f"{where}: nodes[{index}] has no valid 'id' (got {node.get('id')!r})")
        if node_id in nodes:
            raise WorkflowFormatError(f"{where}: node id {node_id} is used by more than one node")
        _check_node(node, node_id, where)
        nodes[node_id] = node
    return nodes


def _check_node(node: Mapping, node_id: str, where: str) -> None:
    if not isinstance(node.get("type"), str) or not node["type"]:
        raise WorkflowFormatError(f"{where}: node {node_id} has no 'type'")
    inputs = node.get("inputs")
    if inputs is not None and not isinstance(inputs, list):
        raise WorkflowFormatError(f"{where}: node {node_id}: 'inputs' must be a list")
    for slot, entry in enumerate(inputs or []):
        if not isinstance(entry, Mapping):
            raise WorkflowFormatError(f"{where}: node {node_id}: inputs[{slot}] is not an object")
        if entry.get("link") is not None and _id_key(entry["link"]) is None:
            raise WorkflowFormatError(
                f"{where}: node {node_id}: input {entry.get('name')!r} has an invalid link id {entry['link']!r}")
    values = node.get("widgets_values")
    if values is not None and not isinstance(values, (list, Mapping)):
        raise WorkflowFormatError(f"{where}: node {node_id}: 'widgets_values' must be a list or an object")


def _parse_links(raw: Any, where: str) -> dict[str, _Link]:
    if raw is None:
        return {}
    if not isinstance(raw, list):
        raise WorkflowFormatError(f"{where}: 'links' must be a list, got {type(raw).__name__}")
    links: dict[str, _Link] = {}
    for index, entry in enumerate(raw):
        if entry is None:  # some editors leave holes where links were deleted
            continue
        link = _parse_link(entry, f"{where}: links[{index}]")
        if link.id in links and links[link.id] != link:
            raise WorkflowFormatError(f"{where}: link id {link.id} is used by two different links")
        links[link.id] = link
    return links


def _parse_link(entry: Any, where: str) -> _Link:
    if isinstance(entry, (list, tuple)) and len(entry) >= 5:
        fields = list(entry[:6]) + [None] * (6 - len(entry[:6]))
    elif isinstance(entry, Mapping):
        fields = [entry.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")]
    else:
        raise WorkflowFormatError(f"{where} is neither [id, origin, slot, target, slot, type] nor a link object")
    link_id, origin, origin_slot, target, target_slot, link_type = fields
    keys = (_id_key(link_id), _id_key(origin), _slot(origin_slot), _id_key(target), _slot(target_slot))
    if None in keys:
        names = ("id", "origin node", "origin slot", "target node", "target slot")
        bad = names[keys.index(None)]
        raise WorkflowFormatError(f"{where} (link {link_id!r}) has an invalid {bad}")
    return _Link(keys[0], keys[1], keys[2], keys[3], keys[4], link_type)


def _boundary(doc: Mapping, key: str, where: str) -> list:
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise WorkflowFormatError(f"{where}: '{key}' must be a list of objects")
    return value


def _id_key(value: Any) -> str | None:
    """Node and link ids as strings: JSON may hold them as numbers or strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value:
        return value
    return None


def _slot(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


# ---------------------------------------------------------------------------------------------
# Widget values: positional in the UI save, named in the API prompt.

@dataclass(frozen=True)
class _WidgetSlot:
    """One entry of a node's widgets_values: a real input, or a UI-only companion widget."""

    kind: str  # "value" | "control" | "filter" | "upload"
    name: str = ""
    options: Mapping = field(default_factory=dict)
    choices: tuple = ()


_MISSING = object()


def _widget_plan(info: Mapping) -> list[_WidgetSlot]:
    """The widgets the editor creates for a node class, in creation order."""
    plan: list[_WidgetSlot] = []
    declared = info.get("input") if isinstance(info.get("input"), Mapping) else {}
    for section in ("required", "optional"):
        specs = declared.get(section) if isinstance(declared.get(section), Mapping) else {}
        for name in _input_order(info, section, specs):
            plan.extend(_widgets_for(name, specs[name]))
        # the editor appends its upload button after the last required input
        if section == "required" and any(_upload_input(spec) for spec in specs.values()):
            plan.append(_WidgetSlot("upload"))
    return plan


def _input_order(info: Mapping, section: str, specs: Mapping) -> list[str]:
    """input_order when present: JSON objects need not keep their key order in transit."""
    orders = info.get("input_order")
    order = orders.get(section) if isinstance(orders, Mapping) else None
    names = [n for n in order if n in specs] if isinstance(order, list) else []
    return names + [n for n in specs if n not in names]


def _split_spec(spec: Any) -> tuple[Any, Mapping]:
    if not isinstance(spec, (list, tuple)) or not spec:
        return None, {}
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    return spec[0], options


def _widgets_for(name: str, spec: Any) -> list[_WidgetSlot]:
    kind, options = _split_spec(spec)
    is_combo = isinstance(kind, (list, tuple)) or kind == "COMBO"
    if not (is_combo or kind in WIDGET_TYPES) or options.get("forceInput"):
        return []
    choices = tuple(kind) if isinstance(kind, (list, tuple)) else tuple(options.get("options") or ())
    slots = [_WidgetSlot("value", name, options, choices)]
    if options.get("control_after_generate") or (kind == "INT" and name in LEGACY_SEED_INPUTS):
        slots.append(_WidgetSlot("control"))
        if is_combo:  # combo controls also get a filter text box
            slots.append(_WidgetSlot("filter"))
    return slots


def _upload_input(spec: Any) -> bool:
    _, options = _split_spec(spec)
    return any(options.get(key) for key in UPLOAD_OPTIONS)


def _default(slot: _WidgetSlot) -> Any:
    if "default" in slot.options:
        return slot.options["default"]
    return slot.choices[0] if slot.choices else _MISSING  # the editor preselects the first choice


def _read_widgets(plan: list[_WidgetSlot], values: Any) -> dict[str, Any]:
    """Named widget values; values the save lacks fall back to the input's default."""
    if isinstance(values, Mapping):
        named = {s.name: values.get(s.name, _default(s)) for s in plan if s.kind == "value"}
    else:
        named = _read_positional(plan, values if isinstance(values, list) else [])
    return {name: value for name, value in named.items() if value is not _MISSING}


def _read_positional(plan: list[_WidgetSlot], values: list) -> dict[str, Any]:
    named: dict[str, Any] = {}
    pos = 0
    control_seen = False
    for slot in plan:
        present = pos < len(values)
        if slot.kind == "control":
            # Only consume a saved mode: saves from before the control existed lack it.
            control_seen = present and _is_control_value(values[pos])
            pos += 1 if control_seen else 0
        elif slot.kind == "filter":
            pos += 1 if control_seen and present else 0
        elif slot.kind == "upload":
            pos += 1 if present else 0
        else:
            named[slot.name] = values[pos] if present else _default(slot)
            pos += 1 if present else 0
    return named


def _is_control_value(value: Any) -> bool:
    return isinstance(value, str) and value in CONTROL_MODES


# ---------------------------------------------------------------------------------------------
# Link resolution: follow a link to the node that really produces the value.

@dataclass(frozen=True)
class _Origin:
    node_id: str
    slot: int


@dataclass(frozen=True)
class _Literal:
    value: Any


_DROP = object()  # the input disappears: its source is muted, absent or unresolvable
_KEEP = object()  # an unconnected subgraph input: the inner node keeps its own widget value


@dataclass(frozen=True)
class _Scope:
    """A graph as placed somewhere: the root, or a subgraph inside one or more subgraph nodes."""

    graph: _Graph
    prefix: str  # "" at the root, "12:" inside subgraph node 12, "12:5:" one level deeper
    parent: _Scope | None
    instance: Mapping | None  # the subgraph node, in the parent scope, that holds this scope
    instance_id: str = ""

    def where(self, node_id: str) -> str:
        return f"node {self.prefix}{node_id}"


class _Converter:
    def __init__(self, object_info: Mapping[str, Mapping], definitions: dict[str, _Graph]):
        self.object_info = object_info
        self.definitions = definitions

    # -- emission ---------------------------------------------------------------------------
    def convert(self, root: _Scope) -> dict:
        prompt: dict[str, dict] = {}
        self._emit_scope(root, prompt)
        return prompt

    def _emit_scope(self, scope: _Scope, prompt: dict) -> None:
        for node_id, node in _execution_order(scope.graph.nodes):
            kind = self._kind(node)
            if kind in ("reroute", "primitive", "note") or _mode(node) in (MODE_NEVER, MODE_BYPASS):
                continue
            if kind == "subgraph":
                self._emit_scope(self._child_scope(scope, node_id, node), prompt)
            else:
                prompt[scope.prefix + node_id] = self._emit_node(scope, node_id, node)

    def _emit_node(self, scope: _Scope, node_id: str, node: Mapping) -> dict:
        info = self.object_info.get(node["type"])
        inputs = {}
        if isinstance(info, Mapping):
            widgets = _read_widgets(_widget_plan(info), node.get("widgets_values"))
            inputs = {name: wrap(value) for name, value in widgets.items()}
        for entry in node.get("inputs") or []:
            if entry.get("link") is not None:
                self._apply_link(scope, node_id, entry, inputs)
        return {"inputs": inputs, "class_type": node["type"], "_meta": {"title": self._title(node, info)}}

    def _apply_link(self, scope: _Scope, node_id: str, entry: Mapping, inputs: dict) -> None:
        name = _input_name(entry)
        where = f"{scope.where(node_id)} input {name!r}"
        found = self._follow(scope, _id_key(entry["link"]), where, frozenset())
        if found is _DROP:
            inputs.pop(name, None)  # a link to a node that does not run removes the input
        elif isinstance(found, _Origin):
            inputs[name] = [found.node_id, found.slot]
        elif isinstance(found, _Literal):
            inputs[name] = wrap(found.value)

    def _title(self, node: Mapping, info: Any) -> str:
        if isinstance(node.get("title"), str) and node["title"]:
            return node["title"]
        if isinstance(info, Mapping) and info.get("display_name"):
            return info["display_name"]
        return node["type"]

    def _kind(self, node: Mapping) -> str:
        node_type = node["type"]
        if node_type in self.definitions:
            return "subgraph"
        if node_type in self.object_info:
            return "real"
        if node_type in REROUTE_TYPES:
            return "reroute"
        if node_type in PRIMITIVE_TYPES:
            return "primitive"
        if node_type in NOTE_TYPES:
            return "note"
        return "unknown"  # emitted anyway, so validation can name the missing class

    def _child_scope(self, scope: _Scope, node_id: str, node: Mapping) -> _Scope:
        graph = self.definitions[node["type"]]
        outer: _Scope | None = scope
        while outer is not None:
            if outer.graph is graph:
                raise WorkflowFormatError(f"{scope.where(node_id)}: {graph.name} contains itself")
            outer = outer.parent
        return _Scope(graph, f"{scope.prefix}{node_id}:", scope, node, node_id)

    # -- resolution -------------------------------------------------------------------------
    def _follow(self, scope: _Scope, link_id: str | None, where: str, seen: frozenset) -> Any:
        link = scope.graph.links.get(link_id) if link_id is not None else None
        if link is None:
            raise WorkflowFormatError(f"{where} uses link {link_id}, which is not in the {scope.graph.name}'s links")
        return self._resolve(scope, link, seen)

    def _resolve(self, scope: _Scope, link: _Link, seen: frozenset) -> Any:
        if link.origin == SUBGRAPH_INPUT_ID:
            return self._from_subgraph_input(scope, link, seen)
        node = scope.graph.nodes.get(link.origin)
        if node is None:
            raise WorkflowFormatError(
                f"link {link.id} comes from node {scope.prefix}{link.origin}, which does not exist")
        step = (scope.prefix, link.origin, link.origin_slot)
        if step in seen:
            raise WorkflowFormatError(f"link {link.id}: the links through {scope.where(link.origin)} form a loop")
        return self._resolve_at(scope, node, link, seen | {step})

    def _resolve_at(self, scope: _Scope, node: Mapping, link: _Link, seen: frozenset) -> Any:
        kind = self._kind(node)
        if kind == "primitive":
            values = node.get("widgets_values")
            return _Literal(values[0]) if isinstance(values, list) and values else _DROP
        if kind == "reroute":
            return self._through_input(scope, link.origin, node, 0, seen)
        if kind == "note" or _mode(node) == MODE_NEVER:
            return _DROP
        if _mode(node) == MODE_BYPASS:
            index = _bypass_input(node, link)
            return _DROP if index is None else self._through_input(scope, link.origin, node, index, seen)
        if kind == "subgraph":
            return self._from_subgraph_output(self._child_scope(scope, link.origin, node), link.origin_slot, seen)
        return _Origin(scope.prefix + link.origin, link.origin_slot)

    def _through_input(self, scope: _Scope, node_id: str, node: Mapping, index: int, seen: frozenset) -> Any:
        inputs = node.get("inputs") or []
        if index >= len(inputs) or inputs[index].get("link") is None:
            return _DROP
        where = f"{scope.where(node_id)} input {_input_name(inputs[index])!r}"
        return self._follow(scope, _id_key(inputs[index]["link"]), where, seen)

    def _from_subgraph_output(self, inner: _Scope, slot: int, seen: frozenset) -> Any:
        link = _boundary_link(inner.graph, slot)
        return _DROP if link is None else self._resolve(inner, link, seen)

    def _from_subgraph_input(self, inner: _Scope, link: _Link, seen: frozenset) -> Any:
        if inner.instance is None or inner.parent is None:
            raise WorkflowFormatError(
                f"link {link.id} starts at a subgraph input, but the {inner.graph.name} is not a subgraph")
        index = _instance_input_index(inner, link.origin_slot)
        entries = inner.instance.get("inputs") or []
        if index is not None and entries[index].get("link") is not None:
            where = f"{inner.parent.where(inner.instance_id)} input {_input_name(entries[index])!r}"
            return self._follow(inner.parent, _id_key(entries[index]["link"]), where, seen)
        return _host_widget_value(inner, link.origin_slot)


# ---------------------------------------------------------------------------------------------
# Small helpers over the raw JSON.

def _mode(node: Mapping) -> int:
    mode = node.get("mode", 0)
    return mode if isinstance(mode, int) else 0


def _execution_order(nodes: dict[str, dict]) -> list[tuple[str, dict]]:
    """The order the editor saved as its execution order; save order where it is missing."""
    def key(item: tuple[int, tuple[str, dict]]) -> tuple:
        order = item[1][1].get("order")
        return (order if isinstance(order, int) and not isinstance(order, bool) else float("inf"), item[0])
    return [pair for _, pair in sorted(enumerate(nodes.items()), key=key)]


def _input_name(entry: Mapping) -> str:
    """The API input name: a converted widget's name, else the socket's name."""
    widget = entry.get("widget")
    if isinstance(widget, Mapping) and isinstance(widget.get("name"), str):
        return widget["name"]
    return str(entry.get("name", ""))


def _bypass_input(node: Mapping, link: _Link) -> int | None:
    """The input a bypassed node forwards to an output: same slot if its type fits, else the
    first input whose type fits."""
    outputs = node.get("outputs") or []
    slot = link.origin_slot
    out_type = link.type
    if 0 <= slot < len(outputs) and isinstance(outputs[slot], Mapping) and outputs[slot].get("type"):
        out_type = outputs[slot]["type"]
    inputs = node.get("inputs") or []
    if 0 <= slot < len(inputs) and _fits(out_type, inputs[slot].get("type")):
        return slot
    return next((i for i, entry in enumerate(inputs) if _fits(out_type, entry.get("type"))), None)


def _fits(output_type: Any, input_type: Any) -> bool:
    return output_type is not None and input_type is not None and types_compatible(output_type, input_type)


def _boundary_link(graph: _Graph, slot: int) -> _Link | None:
    """The link inside a subgraph that feeds its output `slot`."""
    if 0 <= slot < len(graph.outputs):
        for link_id in graph.outputs[slot].get("linkIds") or []:
            link = graph.links.get(_id_key(link_id) or "")
            if link is not None:
                return link
    return next((l for l in graph.links.values()
                 if l.target == SUBGRAPH_OUTPUT_ID and l.target_slot == slot), None)


def _instance_input_index(inner: _Scope, slot: int) -> int | None:
    """Which input of the subgraph node carries the subgraph's input `slot` (by name first)."""
    entries = inner.instance.get("inputs") or []
    boundary = inner.graph.inputs
    name = boundary[slot].get("name") if 0 <= slot < len(boundary) else None
    if name is not None:
        for index, entry in enumerate(entries):
            if entry.get("name") == name:
                return index
    return slot if 0 <= slot < len(entries) else None


def _host_widget_value(inner: _Scope, slot: int) -> Any:
    """The value the subgraph node itself holds for an unconnected input.

    The subgraph node's widgets_values line up with the subgraph inputs that feed a widget,
    in input order; when it holds nothing, the inner node keeps its own widget value.
    """
    values = inner.instance.get("widgets_values")
    boundary = inner.graph.inputs
    name = boundary[slot].get("name") if 0 <= slot < len(boundary) else None
    if isinstance(values, Mapping):
        return _Literal(values[name]) if name in values else _KEEP
    backed = [i for i in range(len(boundary)) if _feeds_widget(inner.graph, i)]
    if not isinstance(values, list) or slot not in backed or backed.index(slot) >= len(values):
        return _KEEP
    return _Literal(values[backed.index(slot)])


def _feeds_widget(graph: _Graph, slot: int) -> bool:
    for link in graph.links.values():
        if link.origin == SUBGRAPH_INPUT_ID and link.origin_slot == slot:
            target = graph.nodes.get(link.target)
            entries = (target or {}).get("inputs") or []
            if 0 <= link.target_slot < len(entries) and entries[link.target_slot].get("widget"):
                return True
    return False

