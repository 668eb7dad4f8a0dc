"""GraphBuilder: build the API-format subgraph a node returns for node expansion.

The same public names as ComfyUI's `comfy_execution.graph_utils` (GraphBuilder, Node, is_link,
add_graph_prefix), so expansion plugins written for ComfyUI work unchanged:

    graph = GraphBuilder()
    a = graph.node("TestAdd", a=value, b=1)
    b = graph.node("TestAdd", a=a.out(0), b=2)
    return {"result": (b.out(0),), "expand": graph.finalize()}

Ids are prefixed "<expanding node id>.<call index>.<graph index>." so that they are unique in the
running prompt; the executor sets that default before each call of a node.
"""
from __future__ import annotations

from contextvars import ContextVar
from typing import Any


def is_link(obj: Any) -> bool:
    """[node_id (str), output index] -- the form GraphBuilder links take."""
    return (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], str)
            and isinstance(obj[1], (int, float)) and not isinstance(obj[1], bool))


class Node:
    def __init__(self, id: str, class_type: str, inputs: dict):
        self.id = id
        self.class_type = class_type
        self.inputs = inputs
        self.override_display_id = None

    def out(self, index: int) -> list:
        """A link to output `index` of this node."""
        return [self.id, index]

    def set_input(self, key: str, value: Any) -> None:
        if value is None:
            self.inputs.pop(key, None)
        else:
            self.inputs[key] = value

    def get_input(self, key: str) -> Any:
        return self.inputs.get(key)

    def set_override_display_id(self, override_display_id: str) -> None:
        self.override_display_id = override_display_id

    def serialize(self) -> dict:
        # The live inputs dict, as ComfyUI returns it: clients edit a node after finalize() and
        # the finalized prompt sees the change.
        doc = {"class_type": self.class_type, "inputs": self.inputs}
        if self.override_display_id is not None:
            doc["override_display_id"] = self.override_display_id
        return doc


class _Prefix:
    """The default id prefix of the node call that is running: "<node id>.<call index>.<graph>."."""

    def __init__(self, root: str = "", call_index: int = 0, graph_index: int = 0):
        self.root = root
        self.call_index = call_index
        self.graph_index = graph_index


# Per task: an async node that builds its subgraph after an await keeps its own prefix while
# other nodes run (ComfyUI keeps one process-wide prefix here).
_default_prefix: ContextVar[_Prefix] = ContextVar("graph_builder_prefix", default=_Prefix())


class GraphBuilder:
    def __init__(self, prefix: str | None = None):
        self.prefix = GraphBuilder.alloc_prefix() if prefix is None else prefix
        self.nodes: dict[str, Node] = {}
        self.id_gen = 1

    @classmethod
    def set_default_prefix(cls, prefix_root: str, call_index: int, graph_index: int = 0) -> None:
        _default_prefix.set(_Prefix(prefix_root, call_index, graph_index))

    @classmethod
    def alloc_prefix(cls, root: str | None = None, call_index: int | None = None,
                     graph_index: int | None = None) -> str:
        """The next "<root>.<call>.<graph>." prefix; each builder made in one call gets its own."""
        current = _default_prefix.get()
        root = current.root if root is None else root
        call_index = current.call_index if call_index is None else call_index
        graph_index = current.graph_index if graph_index is None else graph_index
        current.graph_index += 1
        return f"{root}.{call_index}.{graph_index}."

    def node(self, class_type: str, id: str | None = None, **kwargs) -> Node:
        """Add a node (or return the one already made with this id); inputs are keywords."""
        if id is None:
            id = str(self.id_gen)
            self.id_gen += 1
        full = self.prefix + id
        if full not in self.nodes:
            self.nodes[full] = Node(full, class_type, kwargs)
        return self.nodes[full]

    def lookup_node(self, id: str) -> Node | None:
        return self.nodes.get(self.prefix + id)

    def finalize(self) -> dict:
        """The subgraph in API format, for a node's {"expand": ...} result."""
        return {node_id: node.serialize() for node_id, node in self.nodes.items()}

    def replace_node_output(self, node_id: str, index: int, new_value: Any) -> None:
        """Point every input linked to output `index` of `node_id` at `new_value` (None removes it)."""
        target = self.prefix + node_id
        for node in self.nodes.values():
            for key, value in list(node.inputs.items()):
                if is_link(value) and value[0] == target and value[1] == index:
                    node.set_input(key, new_value)

    def remove_node(self, id: str) -> None:
        self.nodes.pop(self.prefix + id, None)


def add_graph_prefix(graph: dict, outputs: tuple | list, prefix: str) -> tuple[dict, tuple]:
    """Prefix every node id of an API subgraph (and links inside it) and of the output links."""
    inside = set(graph)

    def fix(value):
        return [prefix + value[0], value[1]] if is_link(value) and value[0] in inside else value

    new_graph = {prefix + node_id: {**node, "inputs": {k: fix(v) for k, v in node.get("inputs", {}).items()}}
                 for node_id, node in graph.items()}
    return new_graph, tuple(fix(o) for o in outputs)
