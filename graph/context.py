"""What a running node can reach: progress reporting, the interrupt flag, its environment.

Built-in nodes get a NodeContext as `ctx`; classic plugin nodes reach the same context through
ProgressBar, which finds the node that is running on this thread.
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
    _last: tuple = field(default=(None, None), repr=False)

    def check_interrupt(self) -> None:
        if self.interrupt.is_set():
            raise Interrupted(f"interrupted in node {self.node_id} ({self.class_type})")

    def progress(self, value: float, total: float, preview: Any = None) -> None:
        """Report a step; raises Interrupted when the prompt was interrupted."""
        self.check_interrupt()
        if (value, total) != self._last:
            self._last = (value, total)
            self.emit("progress", {"value": value, "max": total, "prompt_id": self.prompt_id, "node": self.node_id})
        if preview is not None and self.on_preview is not None:
            self.on_preview(preview, self)


current_context: ContextVar[NodeContext | None] = ContextVar("current_context", default=None)


class ProgressBar:
    """ComfyUI's plugin-facing progress helper: update(n) steps or update_absolute(value)."""

    def __init__(self, total: int, node_id: str | None = None):
        self.total = total
        self.current = 0
        self.ctx = current_context.get()

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        if self.ctx is not None:
            self.ctx.progress(self.current, self.total, preview)

    def update(self, value: int) -> None:
        self.update_absolute(self.current + value)


def throw_if_interrupted() -> None:
    """For plugin code that wants to stop promptly without reporting progress."""
    ctx = current_context.get()
    if ctx is not None:
        ctx.check_interrupt()
