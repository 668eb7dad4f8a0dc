"""Per-node progress of one prompt, reported as ComfyUI's `progress_state` message.

Each change (a node starts, reports a step, finishes) sends the state of every node that has
started: `{"prompt_id", "nodes": {id: {value, max, state, node_id, prompt_id, display_node_id,
parent_node_id, real_node_id}}}`, state being "running" or "finished". The official frontend draws
running nodes and their bars from it; the server sends it to the client that queued the prompt.
"""
from __future__ import annotations

from typing import Callable

from graph.dynprompt import DynamicPrompt

RUNNING = "running"
FINISHED = "finished"


class NodeProgress:
    def __init__(self, prompt_id: str, dynprompt: DynamicPrompt, emit: Callable[[str, dict], None] | None):
        """`emit` None: nobody listens, and no message is built."""
        self.prompt_id = prompt_id
        self.dynprompt = dynprompt
        self.emit = emit
        # Each entry is replaced, never changed, once sent: a message is a shallow copy of this map
        # (cheap for big graphs) and messages already handed out keep their values.
        self.nodes: dict[str, dict] = {}

    def start(self, node_id: str) -> None:
        self._set(node_id, RUNNING, 0.0, 1.0)

    def update(self, node_id: str, value: float, total: float) -> None:
        self._set(node_id, RUNNING, value, total)

    def finish(self, node_id: str) -> None:
        entry = self.nodes.get(node_id)
        total = entry["max"] if entry is not None else 1.0
        self._set(node_id, FINISHED, total, total)

    def _set(self, node_id: str, state: str, value: float, total: float) -> None:
        if self.emit is None:
            return
        dyn = self.dynprompt
        self.nodes[node_id] = {"value": value, "max": total, "state": state, "node_id": node_id,
                               "prompt_id": self.prompt_id, "display_node_id": dyn.get_display_node_id(node_id),
                               "parent_node_id": dyn.get_parent_node_id(node_id),
                               "real_node_id": dyn.get_real_node_id(node_id)}
        self.emit("progress_state", {"prompt_id": self.prompt_id, "nodes": dict(self.nodes)})
