"""`comfy_execution.graph` (ComfyUI's path): ExecutionBlocker, DynamicPrompt (what a hidden
"DYNPROMPT" input receives) and the errors and helpers plugins import from here."""
from __future__ import annotations

from typing import Any

from graph.blocker import ExecutionBlocker
from graph.dynprompt import DynamicPrompt, NodeNotFoundError
from graph.schedule import DependencyCycle as DependencyCycleError
from graph.schedule import NodeInputError


def get_input_info(class_def: Any, input_name: str, valid_inputs: dict | None = None) -> tuple:
    """(type, "required"|"optional"|"hidden", options) of one declared input, or (None, None, None)."""
    valid_inputs = valid_inputs or class_def.INPUT_TYPES()
    for section in ("required", "optional", "hidden"):
        entry = (valid_inputs.get(section) or {}).get(input_name)
        if entry is not None:
            if isinstance(entry, str):
                return entry, section, {}
            return entry[0], section, entry[1] if len(entry) > 1 else {}
    return None, None, None


__all__ = ["ExecutionBlocker", "DynamicPrompt", "DependencyCycleError", "NodeInputError", "NodeNotFoundError",
           "get_input_info"]
