"""What a running node can reach: progress reporting, the interrupt flag, its environment.

Built-in nodes get a NodeContext as `ctx`; plugin nodes reach the same context through ComfyUI's
`comfy.utils.ProgressBar` (compat/), which finds the node that is running in this task or thread
through `current_context`.
"""
from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable

Emit = Callable[[str, dict], None]


@dataclass(frozen=True)
class LatentPreview:
    """A sampler's current estimate, handed to ctx.progress(..., preview=) for live previews.

    `family` names the latent space ("sd1", "sd2", "sdxl", ...) so the previewer picks the right
    latent-to-RGB factors or TAESD decoder; `samples` is a [B, C, h, w] tensor.
    """

    samples: Any
    family: str = "sd1"


class Interrupted(Exception):
    """Raised inside a prompt when its interrupt flag is set."""


@dataclass
class NodeContext:
    prompt_id: str
    node_id: str
    class_type: str
    env: Any
    prompt: dict
    extra_data: dict
    interrupt: threading.Event
    emit: Emit
    on_preview: Callable[[Any, "NodeContext"], None] | None = None
    tracker: Any = None  # the prompt's graph.progress.NodeProgress, when run by the executor
    _last: tuple = field(default=(None, None, None), repr=False)

    def check_interrupt(self) -> None:
        if self.interrupt.is_set():
            raise Interrupted(f"interrupted in node {self.node_id} ({self.class_type})")

    def progress(self, value: float, total: float, preview: Any = None, node_id: str | None = None) -> None:
        """Report a step (ComfyUI's progress hook): a `progress` event and the node's progress_state;
        raises Interrupted when the prompt was interrupted. `node_id` reports for another node."""
        self.check_interrupt()
        node = node_id or self.node_id
        if (node, value, total) != self._last:
            self._last = (node, value, total)
            if self.tracker is not None:
                self.tracker.update(node, value, total)
            self.emit("progress", {"value": value, "max": total, "prompt_id": self.prompt_id, "node": node})
        if preview is not None and self.on_preview is not None:
            self.on_preview(preview, self)

    def set_progress(self, value: float, total: float, node_id: str | None = None, preview: Any = None) -> None:
        """ComfyUI's `ComfyAPI.execution.set_progress`: the progress_state (and a preview) only."""
        if self.tracker is not None:
            self.tracker.update(node_id or self.node_id, value, total)
        if preview is not None and self.on_preview is not None:
            self.on_preview(preview, self)


current_context: ContextVar[NodeContext | None] = ContextVar("current_context", default=None)


def throw_if_interrupted() -> None:
    """For plugin code that wants to stop promptly without reporting progress."""
    ctx = current_context.get()
    if ctx is not None:
        ctx.check_interrupt()
