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
    def __init__(self, prompt_id: str, dynprompt: DynamicPrompt, emit: Callable[[str, dict], None]):
        self.prompt_id = prompt_id
        self.dynprompt = dynprompt
        self.emit = emit
        self.nodes: dict[str, dict] = {}

    def start(self, node_id: str) -> None:
        self.nodes[node_id] = {"state": RUNNING, "value": 0.0, "max": 1.0}
        self._send()

    def update(self, node_id: str, value: float, total: float) -> None:
        self.nodes[node_id] = {"state": RUNNING, "value": value, "max": total}
        self._send()

    def finish(self, node_id: str) -> None:
        entry = self.nodes.setdefault(node_id, {"value": 0.0, "max": 1.0})
        entry["state"] = FINISHED
        entry["value"] = entry["max"]
        self._send()

    def _send(self) -> None:
        dyn = self.dynprompt
        nodes = {node_id: {"value": entry["value"], "max": entry["max"], "state": entry["state"],
                           "node_id": node_id, "prompt_id": self.prompt_id,
                           "display_node_id": dyn.get_display_node_id(node_id),
                           "parent_node_id": dyn.get_parent_node_id(node_id),
                           "real_node_id": dyn.get_real_node_id(node_id)}
                 for node_id, entry in self.nodes.items()}
        self.emit("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes})
