"""`comfy_execution.utils` (ComfyUI's path): which node is running in this task or thread."""
from __future__ import annotations

from typing import NamedTuple, Optional

from graph.context import current_context


class ExecutionContext(NamedTuple):
    prompt_id: str
    node_id: str
    list_index: Optional[int]


def get_executing_context() -> Optional[ExecutionContext]:
    ctx = current_context.get()
    return None if ctx is None else ExecutionContext(ctx.prompt_id, ctx.node_id, None)
