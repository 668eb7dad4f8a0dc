"""The prompt as it grows while it runs: the submitted nodes plus those that expansion adds.

ComfyUI hands this object to nodes that declare a hidden "DYNPROMPT" input (loop nodes read the
graph around them through it), so it keeps ComfyUI's class and method names
(`comfy_execution.graph.DynamicPrompt`).
"""
from __future__ import annotations

from typing import Any


class NodeNotFoundError(Exception):
    pass


class DynamicPrompt:
    def __init__(self, original_prompt: dict):
        self.original_prompt = original_prompt
        self.ephemeral_prompt: dict[str, dict] = {}
        self.ephemeral_parents: dict[str, str] = {}  # added node -> the node whose expansion added it
        self.ephemeral_display: dict[str, str] = {}  # added node -> the node the editor shows for it

    def get_node(self, node_id: str) -> dict:
        node = self.ephemeral_prompt.get(node_id)
        if node is None:
            node = self.original_prompt.get(node_id)
        if node is None:
            raise NodeNotFoundError(f"Node {node_id} not found")
        return node

    def has_node(self, node_id: Any) -> bool:
        return node_id in self.ephemeral_prompt or node_id in self.original_prompt

    def add_ephemeral_node(self, node_id: str, node_info: dict, parent_id: str, display_id: str) -> None:
        self.ephemeral_prompt[node_id] = node_info
        self.ephemeral_parents[node_id] = parent_id
        self.ephemeral_display[node_id] = display_id

    def get_real_node_id(self, node_id: str) -> str:
        """The submitted node whose expansion (at any depth) produced `node_id`."""
        while node_id in self.ephemeral_parents:
            node_id = self.ephemeral_parents[node_id]
        return node_id

    def get_parent_node_id(self, node_id: str) -> str | None:
        return self.ephemeral_parents.get(node_id)

    def get_display_node_id(self, node_id: str) -> str:
        while node_id in self.ephemeral_display:
            node_id = self.ephemeral_display[node_id]
        return node_id

    def all_node_ids(self) -> set[str]:
        return set(self.original_prompt) | set(self.ephemeral_prompt)

    def get_original_prompt(self) -> dict:
        return self.original_prompt
