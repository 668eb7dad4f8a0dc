"""ExecutionBlocker: a value a node returns for an output to stop everything downstream.

As in ComfyUI (`comfy_execution.graph.ExecutionBlocker`): a node that receives a blocker as an
input does not run; it passes a blocker on for each of its outputs. With a message, the first
node that receives it reports an execution_error "Execution Blocked: <message>" (the rest of the
prompt still runs) and passes on a silent blocker; with None nothing is reported.
"""
from __future__ import annotations


class ExecutionBlocker:
    def __init__(self, message: str | None = None):
        self.message = message

    def __repr__(self) -> str:
        return f"ExecutionBlocker({self.message!r})"
