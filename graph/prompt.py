"""The API format: {node_id: {"class_type", "inputs"}} with links as [source_id, output_index]."""
from __future__ import annotations

from typing import Any, Iterator


def is_link(value: Any) -> bool:
    """A link is a 2-item list: a node id (str, or an int written by hand) and an output index."""
    # exact type checks: this runs for every input of every node, and bools are not ids or slots
    if type(value) not in (list, tuple) or len(value) != 2:
        return False
    return type(value[0]) in (str, int) and type(value[1]) is int


def unwrap(value: Any) -> Any:
    """Literal lists travel wrapped as {"__value__": [...]} because a bare list means a link."""
    if isinstance(value, dict) and set(value) == {"__value__"}:
        return value["__value__"]
    return value


def wrap(value: Any) -> Any:
    """The inverse of unwrap: keep a literal list from being read as a link."""
    return {"__value__": value} if isinstance(value, (list, tuple)) else value


def links(node: dict) -> Iterator[tuple[str, str, int]]:
    """(input name, source id, output index) for every linked input of a node."""
    inputs = node.get("inputs") if isinstance(node, dict) else None
    if not isinstance(inputs, dict):
        return
    for name, value in inputs.items():
        if is_link(value):
            yield name, str(value[0]), value[1]


def output_node_ids(prompt: dict, registry, targets: list | None = None) -> list[str]:
    """Ids of the nodes whose class is an output node, limited to `targets` when given."""
    wanted = None if targets is None else {str(t) for t in targets}
    out = []
    for node_id, node in prompt.items():
        node_type = registry.get(node.get("class_type")) if isinstance(node, dict) else None
        if node_type and node_type.is_output_node and (wanted is None or node_id in wanted):
            out.append(node_id)
    return out
