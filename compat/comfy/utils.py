"""`comfy.utils` for plugins: ComfyUI's progress bar, reporting through the engine.

`ProgressBar(total, node_id=None)` reports to the node that is running in this task or thread
(or to `node_id`): a `progress` event, the node's `progress_state`, and a live preview when one
is passed. Like ComfyUI it goes through the module's PROGRESS_BAR_HOOK, read when the bar is
made, so a plugin that installs its own hook with set_progress_bar_global_hook sees every update.
"""
from __future__ import annotations

from typing import Any, Callable

from graph.context import NodeContext, current_context


def _running_context() -> NodeContext | None:
    """The context of the node that called us; from a thread a node started (which does not
    inherit it), the node that started last, as ComfyUI falls back to its last node id."""
    ctx = current_context.get()
    if ctx is not None:
        return ctx
    from app import compat

    return compat.bound().executor.active if compat.is_bound() else None


def _report_progress(value: float, total: float, preview_image: Any = None, prompt_id: str | None = None,
                     node_id: str | None = None) -> None:
    ctx = _running_context()
    if ctx is not None:  # outside any prompt there is nobody to tell
        ctx.progress(value, total, preview_image, node_id=node_id)


PROGRESS_BAR_ENABLED = True
PROGRESS_BAR_HOOK: Callable[..., None] | None = _report_progress


def set_progress_bar_enabled(enabled: bool) -> None:
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = enabled


def set_progress_bar_global_hook(function: Callable[..., None] | None) -> None:
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    def __init__(self, total: float, node_id: str | None = None):
        self.total = total
        self.current = 0
        self.hook = PROGRESS_BAR_HOOK
        self.node_id = node_id

    def update_absolute(self, value: float, total: float | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)

    def update(self, value: float) -> None:
        self.update_absolute(self.current + value)
